"""The peer's own virtual environment for `monailabel_peer.py`: MONAI Label 0.8.5 on a CPU-only torch.

MONAI Label 0.8.5 declares `torchvision` (through `monai[torchvision]`) and `sam2` as requirements. The PyPI
torchvision wheel is a CUDA build and sam2 builds against a torch of its own, so neither is installed: a stub
`torchvision` distribution (a version, and the two `torchvision.utils` names `monailabel.transform.post`
imports at module level) stands in, and MONAI Label goes in with `--no-deps` after its 0.8.5
`install_requires` minus sam2 (and minus the monai extras no inference path imports: torchvision, mlflow,
openslide, tensorboard, gdown, lmdb).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEFAULT_PEER_VENV = Path.home() / ".cache" / "aiaa-bench" / "monailabel-0.8.5"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PEER_VERSION = "0.8.5"
TORCH_VERSION = "2.13.0"
STUB_TORCHVISION_VERSION = "0.28.0"
PEER_REQUIREMENTS = [
    f"torch=={TORCH_VERSION}", "monai[nibabel,skimage,pillow,itk,tqdm,psutil,fire,ignite]==1.5.1",
    "pydicom==2.4.4", "pynetdicom==2.0.2", "dicomweb-client[gcp]==0.59.3",
    "uvicorn>=0.29.0", "pydantic>=2.7.0", "pydantic-settings>=2.2.1", "python-dotenv>=1.0.1",
    "fastapi>=0.110.2", "python-multipart>=0.0.9", "httpx>=0.27.0", "schedule>=1.2.1", "timeloop>=1.0.2",
    "expiringdict>=1.2.2", "expiring_dict>=1.1.0", "cachetools>=5.3.3", "watchdog>=4.0.0",
    "pydicom-seg>=0.4.1", "pynrrd>=1.0.0", "numpymaxflow>=0.0.7", "girder-client>=3.2.3", "ninja>=1.11.1.1",
    "einops>=0.7.0", "pyyaml>=6.0.1", "filelock>=3.11.0", "passlib>=1.7.4", "pyjwt>=2.8.0", "bcrypt>=4.1.2",
    "shapely>=2.0.4", "requests>=2.31.0", "requests-toolbelt>=1.0.0", "urllib3>=2.2.1", "scikit-learn", "scipy",
    "google-auth>=2.29.0",
]

_STUB_UTILS = '''"""Stub: MONAI Label imports these at module level; only its 2D debug transforms call them."""


def make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision stub (aiaa-server bench/monailabel_peer_venv.py)")


def save_image(*args, **kwargs):
    raise NotImplementedError("torchvision stub (aiaa-server bench/monailabel_peer_venv.py)")
'''


def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def peer_ready(venv: Path) -> bool:
    """Whether `venv` already imports MONAI Label (the marker is written after a complete install)."""
    return (venv / "aiaa-peer-ready").exists() and peer_python(venv).exists()


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _write_stub_torchvision(site_packages: Path) -> None:
    """A `torchvision` pip sees as installed: the package and its `.dist-info` (no build, no network)."""
    package = site_packages / "torchvision"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(f'__version__ = "{STUB_TORCHVISION_VERSION}"\n')
    (package / "utils.py").write_text(_STUB_UTILS)
    info = site_packages / f"torchvision-{STUB_TORCHVISION_VERSION}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {STUB_TORCHVISION_VERSION}\n")
    (info / "INSTALLER").write_text("aiaa-bench\n")
    (info / "RECORD").write_text("")


def create_peer_venv(venv: Path, log: Path) -> None:
    """Create `venv` with MONAI Label 0.8.5 (several minutes; pip's output goes to `log`).

    Raises:
        subprocess.CalledProcessError: when a step fails (e.g. no network).
    """
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        def step(*command: str | Path) -> None:
            subprocess.run([str(part) for part in command], stdout=out, stderr=subprocess.STDOUT, check=True)

        step(sys.executable, "-m", "venv", venv)
        _write_stub_torchvision(_site_packages(venv))
        pip = [peer_python(venv), "-m", "pip", "install"]
        try:  # a CPU wheel from the configured indexes / find-links, as the main venv got its torch
            step(*pip, f"torch=={TORCH_VERSION}+cpu")
        except subprocess.CalledProcessError:
            step(*pip, "--index-url", TORCH_CPU_INDEX, f"torch=={TORCH_VERSION}+cpu")
        step(*pip, *PEER_REQUIREMENTS)
        step(*pip, "--no-deps", f"monailabel=={PEER_VERSION}")
        step(peer_python(venv), "-c", "import monailabel, monailabel.transform.post, monailabel.transform.writer")
    (venv / "aiaa-peer-ready").write_text(PEER_VERSION + "\n")
