"""The `aiaa` command as a subprocess against the real server: outputs, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.client.conftest import (
    ADMIN_TOKEN,
    CLASSIFIER_MODEL,
    DEEPGROW_MODEL,
    DEXTR3D_MODEL,
    SEG_MODEL,
    cli_json,
    run_cli,
)
from tests.support.server import free_port

POINT_ARGS = [arg for p in ("30,35,20", "59,35,20", "45,20,20", "45,49,20", "45,35,10", "45,35,29")
              for arg in ("--point", p)]


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def assert_mask_file(path: Path, mask: np.ndarray, affine: np.ndarray) -> None:
    array, written_affine = load(path)
    assert np.array_equal(array, mask)
    assert np.allclose(written_affine, affine)


def test_models(live):
    models = cli_json(run_cli("models", server=live.base_url))
    assert {m["name"] for m in models} == {SEG_MODEL, DEXTR3D_MODEL, DEEPGROW_MODEL, CLASSIFIER_MODEL}
    only = cli_json(run_cli("models", "--type", "annotation", server=live.base_url))
    assert [m["name"] for m in only] == [DEXTR3D_MODEL]
    one = cli_json(run_cli("models", "--model", SEG_MODEL, server=live.base_url))
    assert one["name"] == SEG_MODEL and one["labels"] == ["bright"]


def test_server_from_environment(live):
    result = run_cli("models", env={"AIAA_SERVER": live.base_url})
    assert SEG_MODEL in {m["name"] for m in cli_json(result)}


def test_segment_writes_the_mask(live, cube, tmp_path):
    path, mask, affine = cube
    output = tmp_path / "seg.nii.gz"
    summary = cli_json(run_cli("segment", "--model", SEG_MODEL, str(path), "-o", str(output), server=live.base_url))
    assert summary["output"] == str(output)
    assert summary["params"]["bbox"] == [[30, 20, 10], [59, 49, 29]]
    assert_mask_file(output, mask, affine)


def test_segment_unknown_model_exits_3(live, cube, tmp_path):
    path, _, _ = cube
    result = run_cli("segment", "--model", "no_such_model", str(path), "-o", str(tmp_path / "x.nii.gz"),
                     server=live.base_url)
    assert result.returncode == 3
    assert "no_such_model" in result.stderr and result.stdout == ""
    assert not (tmp_path / "x.nii.gz").exists()
    assert run_cli("models", "--model", "no_such_model", server=live.base_url).returncode == 3


def test_segment_bad_file_exits_5(live, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage" * 100)
    result = run_cli("segment", "--model", SEG_MODEL, str(bad), server=live.base_url)
    assert result.returncode == 5 and "aiaa: error:" in result.stderr


def test_unknown_model_error_lists_the_models(live, cube, tmp_path):
    path, _, _ = cube
    result = run_cli("segment", "--model", "no_such_model", str(path), server=live.base_url)
    assert result.returncode == 3
    listed = result.stderr.split("models on the server:")[1]
    assert all(name in listed for name in (SEG_MODEL, DEXTR3D_MODEL, DEEPGROW_MODEL))


def test_segment_without_output_writes_next_to_the_input(live, cube, tmp_path):
    path, mask, affine = cube
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(path.read_bytes())
    summary = cli_json(run_cli("segment", "--model", SEG_MODEL, str(image), server=live.base_url))
    assert summary["output"] == str(tmp_path / "scan_segment.nii.gz")
    assert_mask_file(tmp_path / "scan_segment.nii.gz", mask, affine)


def test_infer_with_a_classifier_prints_its_json_and_writes_nothing(live, cube, tmp_path):
    path, _, _ = cube
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(path.read_bytes())
    before = sorted(tmp_path.iterdir())
    result = run_cli("infer", "--model", CLASSIFIER_MODEL, str(image), server=live.base_url)
    assert result.returncode == 0, result.stderr
    summary = cli_json(result)
    assert "output" not in summary
    assert summary["params"]["model"] == CLASSIFIER_MODEL
    assert summary["params"]["prediction"] in summary["params"]["labels"]
    assert sorted(tmp_path.iterdir()) == before  # no scan_infer.nii.gz


def test_output_folder_is_never_created(live, cube, tmp_path):
    path, _, _ = cube
    target = tmp_path / "no" / "such" / "dir" / "x.nii.gz"
    result = run_cli("segment", "--model", SEG_MODEL, str(path), "-o", str(target), server=live.base_url)
    assert result.returncode == 3 and "output folder does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


def test_json_is_compact(live):
    result = run_cli("models", server=live.base_url)
    assert result.returncode == 0 and result.stdout.count("\n") == 1
    assert isinstance(json.loads(result.stdout), list)


def test_every_subcommand_help_lists_its_actions():
    result = subprocess.run([sys.executable, "-m", "aiaa_client", "session", "--help"], capture_output=True,
                            text=True, check=True)
    for action in ("create", "get", "close"):
        assert f"    {action} " in result.stdout


def test_missing_input_file_exits_3(live, tmp_path):
    result = run_cli("segment", "--model", SEG_MODEL, str(tmp_path / "none.nii.gz"), server=live.base_url)
    assert result.returncode == 3 and "none.nii.gz" in result.stderr


def test_deepgrow(live, cube, tmp_path):
    path, mask, affine = cube
    output = tmp_path / "dg.nii.gz"
    cli_json(run_cli("deepgrow", "--model", DEEPGROW_MODEL, "--fg", "40,30,15", "--fg", "41,30,15",
                     "--bg", "5,5,5", str(path), "-o", str(output), server=live.base_url))
    assert_mask_file(output, mask, affine)


def test_dextr3d_client_and_server_crop(live, cube, tmp_path):
    path, mask, affine = cube
    for extra, name in (([], "client.nii.gz"), (["--server-crop"], "server.nii.gz")):
        output = tmp_path / name
        summary = cli_json(run_cli("dextr3d", "--model", DEXTR3D_MODEL, *POINT_ARGS, *extra, str(path),
                                   "-o", str(output), server=live.base_url))
        assert_mask_file(output, mask, affine)
        # the answer's extreme points are in the uploaded image's voxels, whichever side cropped
        points = summary["params"]["points"]
        assert len(points) == 6 and all(mask[tuple(p)] for p in points), (name, points)
        extents = [sorted({p[axis] for p in points[2 * axis: 2 * axis + 2]}) for axis in range(3)]
        assert extents == [[30, 59], [20, 49], [10, 29]], (name, points)


def test_usage_errors_exit_2(live, cube):
    path, _, _ = cube
    assert run_cli(server=live.base_url).returncode == 2  # no command
    assert run_cli("deepgrow", "--model", DEEPGROW_MODEL, "--fg", "1,2", str(path),
                   server=live.base_url).returncode == 2
    few = run_cli("dextr3d", "--model", DEXTR3D_MODEL, *POINT_ARGS[:10], str(path), server=live.base_url)
    assert few.returncode == 2 and "6" in few.stderr
    assert run_cli("segment", "--model", SEG_MODEL, server=live.base_url).returncode == 2  # no image, no session


def test_sessions(live, cube, tmp_path):
    path, mask, affine = cube
    created = cli_json(run_cli("session", "create", str(path), "--expiry", "60", server=live.base_url))
    session_id = created["session_id"]
    assert isinstance(cli_json(run_cli("session", "get", session_id, server=live.base_url)), dict)
    output = tmp_path / "s.nii.gz"
    cli_json(run_cli("segment", "--model", SEG_MODEL, "--session", session_id, "-o", str(output),
                     server=live.base_url))
    assert_mask_file(output, mask, affine)
    cli_json(run_cli("session", "close", session_id, server=live.base_url))
    assert run_cli("session", "get", session_id, server=live.base_url).returncode == 3
    expired = run_cli("segment", "--model", SEG_MODEL, "--session", session_id, "-o", str(output),
                      server=live.base_url)
    assert expired.returncode == 4 and "440" in expired.stderr


def test_upload_and_delete(live, mmar_source, cube, tmp_path):
    path, mask, affine = cube
    name = "cli_uploaded"
    denied = run_cli("upload", name, str(mmar_source), server=live.base_url)
    assert denied.returncode == 5
    cli_json(run_cli("--token", ADMIN_TOKEN, "upload", name, str(mmar_source), server=live.base_url))
    try:
        output = tmp_path / "u.nii.gz"
        cli_json(run_cli("segment", "--model", name, str(path), "-o", str(output), server=live.base_url))
        assert_mask_file(output, mask, affine)
        config = cli_json(run_cli("config", name, env={"AIAA_SERVER": live.base_url, "AIAA_TOKEN": ADMIN_TOKEN}))
        assert config["type"] == "segmentation"
    finally:
        cli_json(run_cli("--token", ADMIN_TOKEN, "delete", name, server=live.base_url))
    assert run_cli("--token", ADMIN_TOKEN, "delete", name, server=live.base_url).returncode == 3
    assert run_cli("models", "--model", name, server=live.base_url).returncode == 3


def test_connection_refused_exits_7():
    result = run_cli("models", server=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 7 and "aiaa: error:" in result.stderr


def test_progress_on_stderr_for_large_uploads(live, tmp_path):
    image = np.full((128, 128, 40), -800.0, np.float32)
    image[40:80, 40:80, 10:30] = 300.0
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    big = tmp_path / "big.nii"  # uncompressed: 2.5 MiB
    nib.save(nib.Nifti1Image(image, affine), str(big))
    output = tmp_path / "big_seg.nii.gz"
    result = run_cli("segment", "--model", SEG_MODEL, str(big), "-o", str(output), server=live.base_url)
    assert result.returncode == 0, result.stderr
    assert "upload" in result.stderr and "MiB (100%)" in result.stderr
    assert np.array_equal(load(output)[0], (image > 0).astype(np.uint8))
    quiet = run_cli("--quiet", "segment", "--model", SEG_MODEL, str(big), server=live.base_url)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "aiaa"
    assert script.exists(), "run `pip install -e .` to install the `aiaa` console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "exit codes" in result.stdout


def test_importing_the_client_loads_no_heavy_modules():
    code = ("import sys, aiaa_client, aiaa_client.cli; "
            "print(json.dumps(sorted(m for m in ('numpy', 'nibabel', 'torch', 'httpx', 'requests') "
            "if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
