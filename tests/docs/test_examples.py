"""Every shell and Python example in the READMEs and the model docs runs as written against a real server.

A fenced block is an example when its language is `bash`, `sh` or `python`. The documents' examples
run in order (README first: the others use its phantom `ct.nii.gz`) in one scratch folder that has the
repository's `models/` (the docs are written for the checkout's root), against a server started here with the bundled models, exactly as the README's quick start
starts it. The one substitution: port 5000 becomes this server's port. A block may opt out with an HTML
comment right above it, `<!-- not run: why -->` (installing software, starting a second server, training for
an hour); every opt-out names its reason and the list of them is checked below, so none slips in unseen.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import LiveServer, start_server

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "client" / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "models").glob("*/docs/Readme.md"))]
EXAMPLE_LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.+?)\s*-->")
ADMIN_TOKEN = "docs-example-token"
EXAMPLE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason, for an opted-out block

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def fenced_blocks(doc: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file, with the `not run` reason written right above each."""
    lines = doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        reason = NOT_RUN.search(previous)
        yield Block(doc, index + 1, fence.group(1), "\n".join(lines[index + 1:end]) + "\n",
                    reason.group("why") if reason else None)
        index = end + 1


def examples(doc: Path) -> list[Block]:
    return [b for b in fenced_blocks(doc) if b.language in EXAMPLE_LANGUAGES]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("docs") / "workspace", env={"AIAA_ADMIN_TOKEN": ADMIN_TOKEN})
    yield live
    live.stop()


def run_example(block: Block, server: LiveServer, folder: Path) -> subprocess.CompletedProcess[str]:
    code = block.code.replace("127.0.0.1:5000", f"127.0.0.1:{server.port}")
    command = ["bash", "-euo", "pipefail", "-c", code] if EXAMPLE_LANGUAGES[block.language] == "bash" \
        else [sys.executable, "-c", code]
    env = {**{k: v for k, v in os.environ.items() if k != "AIAA_SERVER"}, "AIAA_ADMIN_TOKEN": ADMIN_TOKEN,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, check=False, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    (folder / "models").symlink_to(REPO / "models")
    return folder


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_examples_run_as_written(doc: Path, server: LiveServer, scratch: Path) -> None:
    runnable = [b for b in examples(doc) if b.not_run is None]
    for block in runnable:
        result = run_example(block, server, scratch)
        assert result.returncode == 0, f"{block.where} failed ({result.returncode}):\n{block.code}\n" \
                                       f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def test_the_quick_start_server_starts_without_warnings(server: LiveServer) -> None:
    startup = server.output().split("Application startup complete")[0]
    assert "Warning" not in startup and "WARNING" not in startup, startup


def test_the_examples_leave_real_masks(scratch: Path) -> None:
    """Runs after the examples (file order): what they wrote are masks on the phantom's grid, not error JSON."""
    import nibabel as nib
    import numpy as np

    ct = nib.load(scratch / "ct.nii.gz")
    for name in ("spleen.nii.gz", "grow.nii.gz", "ct_segment.nii.gz", "grow2.nii.gz"):
        mask = nib.load(scratch / name)
        assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine), name
        assert 0 < np.count_nonzero(np.asanyarray(mask.dataobj)) < np.prod(ct.shape) // 4, name


def test_only_these_examples_are_not_run() -> None:
    skipped = {b.where.split(":")[0] + " " + b.not_run for doc in DOCS for b in examples(doc) if b.not_run}
    assert skipped == {
        "README.md installs the project and starts the server in the foreground (.ci/run installs the same way)",
        "README.md the test command itself (.ci/run runs it verbatim)",
        "README.md the tests run the tests",
        "README.md starts a second server, in the foreground",
        "README.md downloads from NVIDIA NGC (needs the internet and NGC's terms)",
        "README.md starts a training job (minutes of CPU; tests/api/test_training_api.py runs one)",
        "client/README.md installs the client",
        "models/demo_deepgrow_2d/docs/Readme.md training: tens of minutes (a short run is tested in tests/demo)",
        "models/demo_deepgrow_3d/docs/Readme.md training: tens of minutes (a short run is tested in tests/demo)",
        "models/demo_dextr3d_annotation/docs/Readme.md training: tens of minutes (a short run is tested in tests/demo)",
        "models/demo_spleen_ct_segmentation/docs/Readme.md training: tens of minutes (the short run below is run)",
        ("models/demo_spleen_presence_classification/docs/Readme.md training and evaluation: minutes of CPU "
         "(tests/demo/test_classifier_scripts.py runs a short one)"),
    }


def test_the_readme_test_command_is_what_ci_runs() -> None:
    command = next(b.code.strip() for b in examples(REPO / "README.md") if b.not_run and "test command" in b.not_run)
    ci = (REPO / ".ci" / "run").read_text()
    install, run = command.split(" && bash ", 1)
    assert 'pip install -e ".[test]"' in install and 'pip install --quiet -e ".[test]"' in ci
    assert f"bash {run}" in ci.splitlines()


def test_curl_examples_fail_on_http_errors() -> None:
    """Without --fail curl saves an error's JSON under the image's name and exits 0."""
    missing = []
    for doc in DOCS:
        for block in examples(doc):
            for line in block.code.replace("\\\n", " ").splitlines():
                if line.lstrip().startswith("curl ") or " curl " in line:
                    words = shlex.split(line.split("#", 1)[0], posix=True)
                    flags = [w for w in words if w.startswith("-") and not w.startswith("--")]
                    if "--fail" not in words and not any("f" in w for w in flags):
                        missing.append(f"{block.where}: {line.strip()}")
    assert missing == []
