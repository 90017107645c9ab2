"""Hostile NIfTI and NRRD uploads: every size, skip and geometry is refused from the header, before the data is
read or allocated (security issue items 1, 2, 3 and 6). Each hostile file is built here, small.

A refusal with `PayloadTooLarge` from a header whose data is absent (or a stream that is not even valid)
shows the check ran before any read: reading would have failed differently.
"""

from __future__ import annotations

import bz2
import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.io import read_volume
from aiaa_server.imaging.limits import DecodeLimits, check_shape, read_exactly
from aiaa_server.imaging.nrrd_reader import MAX_LINE_SKIP

NRRD_BASICS = {"type": "uint8", "dimension": "3", "sizes": "4 3 2", "encoding": "raw"}


def nrrd_bytes(fields: dict[str, str], data: bytes = b"", extra_lines: str = "") -> bytes:
    """An attached NRRD: magic, `fields` (over NRRD_BASICS), optional raw lines, the blank line, `data`."""
    lines = "".join(f"{key}: {value}\n" for key, value in {**NRRD_BASICS, **fields}.items())
    return f"NRRD0004\n{lines}{extra_lines}\n".encode() + data


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def nifti_header_bytes(shape: tuple[int, ...], dtype: type = np.int16, **fields: object) -> bytes:
    """A NIfTI header (and the 4-byte extension flag) declaring `shape`, with no voxel data after it: NIfTI-2
    when a size does not fit NIfTI-1's int16 dims. `fields` are set last, as they are (e.g. a NaN pixdim)."""
    header = nib.Nifti2Header() if max(shape, default=0) > 32767 else nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header["vox_offset"] = header.single_vox_offset
    for name, value in fields.items():
        header[name] = value
    buffer = io.BytesIO()
    header.write_to(buffer)
    return buffer.getvalue() + b"\0" * 4


def nifti_gz_claiming(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A .nii.gz of a few hundred bytes whose header claims `shape` (40000³ int16 is 128 TB)."""
    return gzip.compress(nifti_header_bytes(shape) + data)


def nifti_with(path: Path, shape: tuple[int, ...] = (6, 5, 4), **fields: object) -> Path:
    """A complete int16 .nii / .nii.gz (zeros) with header `fields` overridden as given."""
    raw = nifti_header_bytes(shape, **fields) + bytes(2 * int(np.prod(shape)))
    return write(path, gzip.compress(raw) if path.name.endswith(".gz") else raw)


def nan_affine_nifti(path: Path) -> Path:
    """pixdim[1] NaN with the qform (built from pixdim) as the geometry readers use."""
    return nifti_with(path, pixdim=[1.0, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], qform_code=1, sform_code=0)


def rgb24_nifti(path: Path) -> Path:
    voxels = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), str(path))
    return path


# -- the shared helpers --------------------------------------------------------------------------------------


def test_check_shape_names_the_limit_and_option() -> None:
    limits = DecodeLimits(max_voxels=1000, max_bytes=1500)
    assert check_shape((10, 10, 10), 1, limits) == 1000
    with pytest.raises(PayloadTooLarge, match="max_image_voxels") as voxels:
        check_shape((10, 10, 11), 1, limits)
    assert voxels.value.details["limit"] == "max_image_voxels"
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        check_shape((10, 10, 10), 2, limits)
    with pytest.raises(PayloadTooLarge, match="max_image_voxels"):  # Python ints: no int64 wrap-around to small
        check_shape((2**32, 2**32, 2**32), 1)


@pytest.mark.parametrize("shape", [(5, 0, 3), (0,), (7,), (4, -2, 3), ()])
def test_check_shape_refuses_empty_and_one_dimensional_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidImage):
        check_shape(shape, 1)


def test_read_exactly_stops_at_the_array_and_reports_short_streams() -> None:
    stream = io.BytesIO(bytes(range(10)) * 3)
    array = np.empty((2, 4), dtype=np.uint8, order="F")
    read_exactly(stream, array, chunk=3)
    assert stream.tell() == 8  # nothing past the array was consumed
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.uint8).reshape(2, 4, order="F"))
    with pytest.raises(InvalidImage, match="ends after 2 of the 8 bytes"):
        read_exactly(io.BytesIO(b"ab"), np.empty(8, np.uint8))


# -- NIfTI ---------------------------------------------------------------------------------------------------


def test_gzip_nifti_claiming_40000_cubed_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb.nii.gz", nifti_gz_claiming((40000, 40000, 40000)))
    assert bomb.stat().st_size < 1000
    with pytest.raises(PayloadTooLarge, match="--max_image_voxels"):
        read_volume(bomb, "bomb.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_over_the_byte_limit_is_refused_before_reading(tmp_path: Path, suffix: str) -> None:
    raw = nifti_header_bytes((64, 64, 64))  # 512 KiB declared, none of it present
    path = write(tmp_path / f"big{suffix}", gzip.compress(raw) if suffix == ".nii.gz" else raw)
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        read_volume(path, path.name, limits=DecodeLimits(max_bytes=2**18))
    with pytest.raises(InvalidImage, match="truncated"):  # within the limits: now the missing data is noticed
        read_volume(path, path.name)


def test_scaled_nifti_counts_the_float64_it_decodes_to(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((16, 16, 16), np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "s.nii.gz"))
    assert read_volume(tmp_path / "s.nii.gz", "s.nii.gz").array.dtype == np.float64
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):  # 8 KiB stored, 32 KiB decoded
        read_volume(tmp_path / "s.nii.gz", "s.nii.gz", limits=DecodeLimits(max_bytes=16 * 2**10))


def test_nifti_with_a_huge_vox_offset_is_refused(tmp_path: Path) -> None:
    raw = bytearray(nifti_header_bytes((4, 4, 4)))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header["vox_offset"] = 2.0**31  # nibabel alone would read (decompress) up to here as "extensions"
    buffer = io.BytesIO()
    header.write_to(buffer)
    path = write(tmp_path / "offset.nii.gz", gzip.compress(buffer.getvalue() + b"\1\0\0\0"))
    with pytest.raises(InvalidImage, match="vox_offset"):
        read_volume(path, path.name)


def test_nan_pixdim_and_nan_affine_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="NaN"):
        read_volume(nan_affine_nifti(tmp_path / "nan.nii"), "nan.nii")
    with pytest.raises(InvalidImage, match="pixdim"):  # the sform is fine, but pixdim is still the spacing
        read_volume(nifti_with(tmp_path / "p.nii.gz", pixdim=[1.0, 1.0, np.inf, 1.0, 1, 1, 1, 1]), "p.nii.gz")
    with pytest.raises(InvalidImage, match="NaN or infinite"):
        read_volume(nifti_with(tmp_path / "inf.nii.gz", srow_y=[0.0, np.inf, 0.0, 0.0]), "inf.nii.gz")


def test_singular_affine_is_refused(tmp_path: Path) -> None:
    flat = nifti_with(tmp_path / "flat.nii.gz", srow_z=[0.0, 0.0, 0.0, 5.0])  # the k axis has no extent
    with pytest.raises(InvalidImage, match="singular"):
        read_volume(flat, "flat.nii.gz")
    assert read_volume(nifti_with(tmp_path / "fine.nii.gz"), "fine.nii.gz").spatial_shape == (6, 5, 4)


def test_rgb24_nifti_is_a_clean_400(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="RGB images are not supported"):
        read_volume(rgb24_nifti(tmp_path / "rgb.nii.gz"), "rgb.nii.gz")


@pytest.mark.parametrize("shape", [(6, 0, 4), (9,)])
def test_nifti_without_voxels_or_with_one_dimension_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = write(tmp_path / "odd.nii", nifti_header_bytes(shape) + b"\0" * 32)
    with pytest.raises(InvalidImage, match="shape"):
        read_volume(path, "odd.nii")


# -- NRRD ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["data file: /dev/zero", "datafile: /dev/zero", "data file: LIST\n/etc/passwd"])
def test_detached_nrrd_is_refused_without_touching_the_data_file(tmp_path: Path, field: str) -> None:
    path = write(tmp_path / "d.nrrd", nrrd_bytes({"encoding": "gzip"}, extra_lines=field + "\n"))
    with pytest.raises(InvalidImage, match="detached NRRD") as refused:
        read_volume(path, "d.nrrd")
    assert "/dev/zero" not in refused.value.message and "passwd" not in refused.value.message


def test_detached_nrrd_error_says_nothing_about_other_files(tmp_path: Path) -> None:
    """The file it names does not exist, exists, or is unreadable: the answer must be the same."""
    messages = set()
    for target in ("/etc/passwd", "/etc/shadow", "/no/such/file", str(tmp_path)):
        path = write(tmp_path / "p.nrrd", nrrd_bytes({"sizes": "100 1 1"}, extra_lines=f"data file: {target}\n"))
        with pytest.raises(InvalidImage) as refused:
            read_volume(path, "p.nrrd")
        messages.add(refused.value.message)
    assert len(messages) == 1


def test_bzip2_bomb_claiming_8_gb_is_refused_before_decompressing(tmp_path: Path) -> None:
    bomb = write(tmp_path / "b.nrrd", nrrd_bytes({"sizes": "2048 2048 2048", "encoding": "bzip2"},
                                                  data=b"not even bzip2"))
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        read_volume(bomb, "b.nrrd", limits=DecodeLimits(max_voxels=2**40, max_bytes=2**30))
    with pytest.raises(PayloadTooLarge, match="--max_image_voxels"):
        read_volume(bomb, "b.nrrd", limits=DecodeLimits(max_voxels=2**30))


@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_stream_longer_than_declared_is_cut_and_refused(tmp_path: Path, encoding: str) -> None:
    """A small header over 16 MiB of zeros: decompression stops one byte past the 24 declared."""
    compress = gzip.compress if encoding == "gzip" else bz2.compress
    path = write(tmp_path / "long.nrrd", nrrd_bytes({"encoding": encoding}, data=compress(b"\0" * 2**24)))
    with pytest.raises(InvalidImage, match="longer than its header declares"):
        read_volume(path, "long.nrrd")


@pytest.mark.parametrize("encoding", ["gzip", "bzip2", "raw"])
def test_stream_shorter_than_declared_is_refused(tmp_path: Path, encoding: str) -> None:
    compress = {"gzip": gzip.compress, "bzip2": bz2.compress, "raw": bytes}[encoding]
    path = write(tmp_path / "short.nrrd", nrrd_bytes({"encoding": encoding}, data=compress(b"\1" * 23)))
    with pytest.raises(InvalidImage, match="truncated"):
        read_volume(path, "short.nrrd")


def test_line_skip_is_bounded(tmp_path: Path) -> None:
    hostile = write(tmp_path / "ls.nrrd", nrrd_bytes({"line skip": "100000000"}, data=b"\0" * 24))
    with pytest.raises(InvalidImage, match="line skip"):
        read_volume(hostile, "ls.nrrd")
    assert MAX_LINE_SKIP >= 1000
    long_line = b"x" * 200_000 + b"\n"  # a skipped "line" may be long: read in pieces, still skipped
    ok = write(tmp_path / "ok.nrrd", nrrd_bytes({"line skip": "2"}, data=b"comment\n" + long_line + bytes(range(24))))
    np.testing.assert_array_equal(read_volume(ok, "ok.nrrd").array.ravel(order="F"), np.arange(24))
    short = write(tmp_path / "short.nrrd", nrrd_bytes({"line skip": "3"}, data=b"one\ntwo\n"))
    with pytest.raises(InvalidImage, match="line skip"):
        read_volume(short, "short.nrrd")


@pytest.mark.parametrize(("encoding", "skip"), [("raw", "-2"), ("gzip", "-1"), ("gzip", "100000000"),
                                                ("raw", "100000000")])
def test_byte_skip_out_of_bounds_is_refused(tmp_path: Path, encoding: str, skip: str) -> None:
    data = gzip.compress(b"\0" * 24) if encoding == "gzip" else b"\0" * 24
    path = write(tmp_path / "bs.nrrd", nrrd_bytes({"encoding": encoding, "byte skip": skip}, data=data))
    with pytest.raises(InvalidImage):
        read_volume(path, "bs.nrrd")


def test_byte_skip_minus_one_reads_the_data_at_the_end(tmp_path: Path) -> None:
    path = write(tmp_path / "end.nrrd", nrrd_bytes({"byte skip": "-1"}, data=b"junk before" + bytes(range(24))))
    np.testing.assert_array_equal(read_volume(path, "end.nrrd").array.ravel(order="F"), np.arange(24))


@pytest.mark.parametrize(("fields", "match"), [
    ({"space origin": "(nan,0,0)", "space directions": "(1,0,0) (0,1,0) (0,0,1)"}, "NaN or infinite"),
    ({"space directions": "(1,0,0) (0,inf,0) (0,0,1)"}, "NaN or infinite"),
    ({"space directions": "(1,0,0) (2,0,0) (0,0,1)"}, "singular"),
    ({"spacings": "1 0 1"}, "singular"),
    ({"spacings": "nan 1 1"}, "NaN or infinite"),
    ({"sizes": "4 0 2"}, "at least one voxel"),
    ({"dimension": "1", "sizes": "24"}, "at least 2 dimensions"),
    ({"type": "block"}, "not supported"),
    ({"encoding": "lz4"}, "not supported"),
])
def test_nrrd_header_refusals(tmp_path: Path, fields: dict[str, str], match: str) -> None:
    path = write(tmp_path / "h.nrrd", nrrd_bytes({"space": "left-posterior-superior", **fields}, data=b"\0" * 24))
    with pytest.raises(InvalidImage, match=match):
        read_volume(path, "h.nrrd")


def test_nrrd_header_without_end_or_too_long_is_refused(tmp_path: Path) -> None:
    endless = write(tmp_path / "e.nrrd", b"NRRD0004\ntype: uint8\n" + b"#" * (2**20 + 10))
    with pytest.raises(InvalidImage, match="header"):
        read_volume(endless, "e.nrrd")
    cut = write(tmp_path / "c.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3")
    with pytest.raises(InvalidImage, match="blank line"):
        read_volume(cut, "c.nrrd")


def test_the_caps_hold_with_the_stdlib_gzip_fallback(tmp_path: Path) -> None:
    """Without python-isal the stdlib gzip reader is used: the same declared-size cap must apply."""
    import subprocess
    import sys

    nifti = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(5, 4, 3), np.eye(4))
    nib.save(nifti, str(tmp_path / "ok.nii.gz"))
    write(tmp_path / "long.nrrd", nrrd_bytes({"encoding": "gzip"}, data=gzip.compress(b"\0" * 2**22)))
    write(tmp_path / "huge.nii.gz", nifti_gz_claiming((40000, 40000, 40000)))
    script = f"""
import sys
sys.modules["isal"] = None  # as if python-isal were not installed
from pathlib import Path
import numpy as np
from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging import io, nrrd_reader
assert io._igzip is None and nrrd_reader._igzip is None
folder = Path({str(tmp_path)!r})
assert np.array_equal(io.read_volume(folder / "ok.nii.gz").array, np.arange(60).reshape(5, 4, 3))
for name, error in (("long.nrrd", InvalidImage), ("huge.nii.gz", PayloadTooLarge)):
    try:
        io.read_volume(folder / name)
    except error as exc:
        print(name, type(exc).__name__, exc.message)
    else:
        raise SystemExit(name + " was accepted")
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert "long.nrrd InvalidImage" in done.stdout and "longer than its header declares" in done.stdout
    assert "huge.nii.gz PayloadTooLarge" in done.stdout and "--max_image_voxels" in done.stdout
