"""A label map on a DICOM series' grid → a DICOM Segmentation (SEG) object referencing that series.

The SEG (highdicom `Segmentation`, BINARY) has one segment per label value 1…max: segment number = label value,
so a SEG read back gives the same label map; its label is the model's name for it, its codes those of
`dicom_seg_codes`. Each frame lies on the source instance of its slice: frame k copies the position and
orientation of `source[k]` and references its SOP Instance UID. Frames with no voxel of their segment are left
out.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import highdicom as hd
import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from aiaa_server import __version__
from aiaa_server.errors import AIAAError, IncompatibleInput, InvalidImage, InvalidParams
from aiaa_server.imaging.dicom_seg_codes import segment_codes
from aiaa_server.imaging.io import LPS_TO_RAS, check_affine

MANUFACTURER = "aiaa-server"
MAX_SEGMENTS = 255  # label values; highdicom scans every frame once per described segment
GRID_TOLERANCE_VOXELS = 0.25  # a source pixel must fall within a quarter voxel of its mask voxel
PLACEMENT = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
REFERENCES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
# Type 2 attributes highdicom copies from the first source image: empty when the upload had none
_EMPTY_IF_MISSING = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName")


def _label_map(labels: np.ndarray) -> np.ndarray:
    """The mask as unsigned integers, refused when it has values a label map cannot have."""
    if labels.ndim != 3:
        raise InvalidParams(f"the mask has {labels.ndim} dimensions; a DICOM SEG needs a 3D [i, j, k] label map")
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iuf":
        raise InvalidParams(f"the mask has {labels.dtype} values; a label map needs integers")
    if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
        raise InvalidParams("the mask has fractional values; a label map needs integers")
    low, high = (float(labels.min()), float(labels.max())) if labels.size else (0.0, 0.0)
    if low < 0 or high > MAX_SEGMENTS:
        raise InvalidParams(f"the mask has label values from {low:g} to {high:g}; a DICOM SEG takes 0 (background) to "
                            f"{MAX_SEGMENTS}")
    return labels.astype(np.uint8)


def _check_source(source: Sequence[Dataset]) -> None:
    if not source:
        raise InvalidParams("a DICOM SEG needs the headers of its source series; none were given")
    for keyword in PLACEMENT + REFERENCES:
        missing = sum(keyword not in ds for ds in source)
        if missing:
            raise InvalidImage(f"{missing} of the {len(source)} source DICOM headers have no {keyword}: a DICOM SEG "
                               "cannot reference the series")


def _source_points(source: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """LPS positions of the first and of the last pixel (last row, last column) of every source slice."""
    first, last = [], []
    for ds in source:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
        first.append(origin)
        last.append(origin + iop[:3] * col_spacing * (int(ds.Columns) - 1) + iop[3:] * row_spacing * (int(ds.Rows) - 1))
    return np.asarray(first), np.asarray(last)


def _check_grid(shape: tuple[int, ...], affine: np.ndarray, source: Sequence[Dataset]) -> None:
    """The mask's voxel (0, 0, k) and (I-1, J-1, k) must be the first and last pixel of source slice k."""
    expected = (int(source[0].Columns), int(source[0].Rows), len(source))
    if tuple(shape) != expected:
        raise IncompatibleInput(f"the mask has shape {list(shape)} but its source series is {list(expected)} "
                                "(columns, rows, slices): a DICOM SEG needs the mask on the series' own grid")
    check_affine(np.asarray(affine, dtype=np.float64))
    to_voxels = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ LPS_TO_RAS
    first, last = _source_points(source)
    slices = np.arange(len(source), dtype=np.float64)
    for points, i, j in ((first, 0, 0), (last, shape[0] - 1, shape[1] - 1)):
        voxels = (to_voxels[:3, :3] @ points.T).T + to_voxels[:3, 3]
        wanted = np.stack([np.full_like(slices, i), np.full_like(slices, j), slices], axis=1)
        worst = float(np.abs(voxels - wanted).max())
        if worst > GRID_TOLERANCE_VOXELS:
            raise IncompatibleInput(f"the mask's affine does not match its source series (a source pixel is {worst:.2f} "
                                    "voxels off its mask voxel): it is not on the series' own grid")


def _descriptions(top: int, names: Mapping[int, str],
                  algorithm: hd.AlgorithmIdentificationSequence | None) -> list[hd.seg.SegmentDescription]:
    kind = "AUTOMATIC" if algorithm is not None else "MANUAL"
    described = []
    for number in range(1, top + 1):
        name = str(names.get(number) or f"label {number}")
        coded = segment_codes(name)
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=coded.category,
            segmented_property_type=coded.type, algorithm_type=kind, algorithm_identification=algorithm)
        if coded.modifier is not None:
            modifier = hd.sr.CodedConcept.from_code(coded.modifier)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        described.append(description)
    return described


def _first_source(first: Dataset) -> Dataset:
    completed = Dataset()  # the caller's dataset stays as it was
    for element in first:
        completed.add(element)
    for keyword in _EMPTY_IF_MISSING:
        if keyword not in completed:
            setattr(completed, keyword, None)
    if "Modality" not in completed:
        completed.Modality = "OT"
    return completed


@contextmanager
def _bad_source_is_invalid() -> Iterator[None]:
    try:
        yield
    except AIAAError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # malformed header values; highdicom's own checks
        raise InvalidImage(f"could not write a DICOM SEG for this series: {exc}") from exc


def _algorithm(name: str | None, version: str) -> hd.AlgorithmIdentificationSequence | None:
    if not name:
        return None
    return hd.AlgorithmIdentificationSequence(name=name[:64], family=codes.cid7162.ArtificialIntelligence,
                                              version=version[:64] or "unknown")


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    source: Sequence[Dataset],
    label_names: Mapping[int, str] | None = None,
    *,
    algorithm: str | None = None,
    algorithm_version: str = "",
    series_description: str = "aiaa-server segmentation",
    series_number: int = 1000,
) -> bytes:
    """Encode a label map as a DICOM SEG (BINARY) referencing its source series.

    Args:
        labels: (I, J, K) label map [i(column), j(row), k(slice)], integer values 0…MAX_SEGMENTS, on the grid
            of the source series as `read_dicom_series` decodes it (the same shape and affine).
        affine: the mask's 4 × 4 voxel → RAS affine, checked against the source headers' geometry.
        source: the source series' headers, `source[k]` for slice k (`read_dicom_series_with_headers`,
            `read_series_headers` or `load_headers`); no pixel data needed.
        label_names: label value → name (the segment's label, and its codes); unnamed values are "label N".
        algorithm: the model that made the mask (AUTOMATIC segments identified by it); None: MANUAL.
        algorithm_version: the model's version, stored with its name.
        series_description: the SEG series' description.
        series_number: the SEG series' number.

    Returns:
        The SEG file's bytes (Explicit VR Little Endian, Part 10). Segments 1…max(label present or named), each
        segment number equal to its label value; each frame is slice k of one segment, transposed to
        [row, column], placed and referenced on `source[k]`; empty frames are left out.

    Raises:
        InvalidParams: (400) no source headers, a mask not 3D or not integral, or label values outside
            0…MAX_SEGMENTS.
        IncompatibleInput: (422) a mask whose shape or affine is not the source series' grid.
        InvalidImage: (400) source headers without what a SEG must copy or reference (e.g. FrameOfReferenceUID),
            or from more than one series; a NaN or singular affine.
    """
    names = {int(k): v for k, v in (label_names or {}).items() if int(k) > 0}
    values = _label_map(np.asarray(labels))
    top = max([int(values.max()) if values.size else 0, *names])
    if top == 0:
        raise InvalidParams("the mask is empty and no label is named: a DICOM SEG needs at least one segment")
    if top > MAX_SEGMENTS:
        raise InvalidParams(f"label value {top} is named; a DICOM SEG takes label values up to {MAX_SEGMENTS}")
    identification = _algorithm(algorithm, algorithm_version)
    with _bad_source_is_invalid():
        _check_source(source)
        _check_grid(values.shape, affine, source)
        seg = hd.seg.Segmentation(
            source_images=[_first_source(source[0]), *source[1:]],
            pixel_array=np.ascontiguousarray(values.transpose(2, 1, 0)),  # frames [k, row, column]
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_descriptions(top, names, identification),
            series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER, software_versions=__version__,
            device_serial_number="1", series_description=series_description[:64], omit_empty_frames=True)
    buffer = io.BytesIO()
    dcmwrite(buffer, seg, enforce_file_format=True)
    return buffer.getvalue()


__all__ = ["MANUFACTURER", "MAX_SEGMENTS", "write_dicom_seg"]
