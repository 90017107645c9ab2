"""Upload validation in a confined child process: what it may not do, and that honest uploads pass."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.sandbox import SandboxLimits, validate_isolated
from tests.support.mmars import segmentation_config, write_threshold_mmar


def mmar_with_custom_code(folder: Path, body: str) -> Path:
    """A threshold MMAR whose pipeline also uses `custom.hook.Identityd`; `body` runs at its import."""
    mmar = write_threshold_mmar(folder)
    (mmar / "custom").mkdir()
    (mmar / "custom" / "hook.py").write_text(
        "from monai.transforms import MapTransform\n"
        "class Identityd(MapTransform):\n"
        "    def __call__(self, data):\n"
        "        return data\n" + body
    )
    pre = [*segmentation_config()["pre_transforms"], {"name": "custom.hook.Identityd", "args": {"keys": "image"}}]
    (mmar / "config" / "config_aiaa.json").write_text(json.dumps(segmentation_config(pre=pre)))
    return mmar


def test_honest_upload_passes_and_may_write_inside_its_folder(tmp_path: Path) -> None:
    mmar = mmar_with_custom_code(tmp_path / "ok", "open(__file__ + '.note', 'w').write('inside')\n")
    verdict = validate_isolated(mmar, "ok", allow_code=True, default_device="cpu")
    assert verdict["ok"] is True
    assert (mmar / "custom" / "hook.py.note").read_text() == "inside"


@pytest.mark.parametrize(("body", "words"), [
    ("open({marker!r}, 'w').write('x')\n", "writing"),
    ("import os\nos.makedirs({marker!r})\n", "outside the upload"),
    ("import subprocess\nsubprocess.run(['touch', {marker!r}])\n", "subprocess.Popen"),
    ("import os\nos.system('touch ' + {marker!r})\n", "os.system"),
    ("import ctypes\nctypes.CDLL(None).system(b'touch ' + {marker!r}.encode())\n", "ctypes"),
])
def test_side_effects_outside_the_upload_refused(tmp_path: Path, body: str, words: str) -> None:
    marker = str(tmp_path / "marker")
    mmar = mmar_with_custom_code(tmp_path / "evil", body.format(marker=marker))
    with pytest.raises(InvalidModel, match=words):
        validate_isolated(mmar, "evil", allow_code=True, default_device="cpu")
    assert not Path(marker).exists()


def test_no_network_from_the_sandbox(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        body = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
        mmar = mmar_with_custom_code(tmp_path / "net", body)
        with pytest.raises(InvalidModel, match="socket"):
            validate_isolated(mmar, "net", allow_code=True, default_device="cpu")
        with pytest.raises(TimeoutError):
            listener.accept()


def test_memory_limit_ends_validation(tmp_path: Path) -> None:
    mmar = mmar_with_custom_code(tmp_path / "hog", "hog = bytearray(6 * 2**30)\n")
    with pytest.raises(InvalidModel, match="memory"):
        validate_isolated(mmar, "hog", allow_code=True, default_device="cpu",
                          limits=SandboxLimits(memory_bytes=4 * 2**30))


def test_wall_clock_limit_ends_validation(tmp_path: Path) -> None:
    mmar = mmar_with_custom_code(tmp_path / "sleepy", "import time\ntime.sleep(600)\n")
    with pytest.raises(InvalidModel, match="longer than"):
        validate_isolated(mmar, "sleepy", allow_code=True, default_device="cpu",
                          limits=SandboxLimits(wall_seconds=20))


def test_refusals_keep_their_status_and_code(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "m", pre=[{"name": "LoadImage", "args": {"reader": "os.system"}}])
    with pytest.raises(InvalidModel, match="not allowed") as caught:
        validate_isolated(mmar, "m", allow_code=False, default_device="cpu")
    assert caught.value.status == 422
    assert caught.value.code == "invalid_model"


def test_a_program_upload_loads_in_the_sandbox(tmp_path: Path) -> None:
    from tests.support.mmars import ThresholdNet
    from tests.support.programs import add_program

    mmar = write_threshold_mmar(tmp_path / "pt2")
    (mmar / "models" / "model.ts").unlink()
    add_program(mmar, ThresholdNet())
    assert validate_isolated(mmar, "pt2", allow_code=True, default_device="cpu")["ok"] is True
    (mmar / "models" / "model.pt2").write_bytes(b"PK\x03\x04" + bytes(64))  # and a broken one is refused there
    with pytest.raises(InvalidModel, match=r"model\.pt2 is not a loadable torch\.export program"):
        validate_isolated(mmar, "pt2", allow_code=True, default_device="cpu")
