"""A DICOM Segmentation (SEG) object → a label map [i, j, k] on its own grid or on a reference image's grid.

Sizes are checked from the header before anything is allocated: frames × rows × columns against the decode
limits, the frame count and the pixel data's declared length against the file's size. Then every frame is
placed by its ImagePositionPatient (PlanePositionSequence) and the shared or per-frame orientation and pixel
spacing, and only then are the frames decoded, one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels
from pydicom.tag import BaseTag, Tag

from aiaa_server.errors import IncompatibleInput, InvalidImage, PayloadTooLarge
from aiaa_server.imaging.dicom import SEGMENTATION_CLASSES, orientation, slice_affine, slice_tolerance_mm
from aiaa_server.imaging.dicom_files import (
    MAX_HEADER_READS,
    Deadline,
    check_transfer_syntax,
    malformed_is_invalid,
    read_header,
)
from aiaa_server.imaging.io import LPS_TO_RAS, Volume, check_affine
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits, check_shape

PER_FRAME_GROUPS = Tag(0x5200, 0x9230)
MIN_BYTES_PER_FRAME = 64  # a frame's functional groups (position, segment, source) take at least this much
READS_PER_FRAME = 200  # pydicom reads per frame's functional groups (about 2 per element)
GRID_TOLERANCE_VOXELS = 0.25  # a frame must lie this close (in voxels) to a slice of the reference grid
BITS = {"BINARY": (1,), "FRACTIONAL": (8,), "LABELMAP": (8, 16)}


class SegLabels(NamedTuple):
    """A decoded SEG: `labels` (I, J, K) [i(column), j(row), k(slice)] uint8/uint16 segment numbers (0:
    background), its voxel → RAS `affine`, and `names`, segment number → SegmentLabel."""

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]


@dataclass
class _Frames:
    """Where each frame goes: its segment, its position, and the plane every frame shares."""

    segments: np.ndarray  # (F,) segment number of each frame (0 for a LABELMAP, whose pixels are the numbers)
    positions: np.ndarray  # (F, 3) LPS ImagePositionPatient
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # between rows, between columns
    spacing_between: float | None  # SpacingBetweenSlices, when given


def _before_per_frame_groups(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag >= PER_FRAME_GROUPS


def _check_declared_sizes(head: Dataset, size: int, limits: DecodeLimits) -> tuple[int, int, int]:
    """Frames, rows, columns from the header, refused before anything is allocated for them."""
    if str(head.get("SOPClassUID", "")) not in SEGMENTATION_CLASSES:
        raise InvalidImage("not a DICOM Segmentation (SEG) object (its SOPClassUID is not Segmentation Storage)")
    kind = str(head.get("SegmentationType", ""))
    bits = int(head.get("BitsAllocated", 0) or 0)
    if bits not in BITS.get(kind, ()):
        raise InvalidImage(f"a DICOM SEG of type {kind or 'none'} with {bits} bits per pixel is not supported "
                           "(BINARY 1, FRACTIONAL 8, LABELMAP 8 or 16)")
    frames, rows, columns = (int(head.get(k, 0) or 0) for k in ("NumberOfFrames", "Rows", "Columns"))
    check_shape((columns, rows, frames), 1, limits, what="DICOM SEG")
    if frames * MIN_BYTES_PER_FRAME > size:
        raise InvalidImage(f"the DICOM SEG declares {frames} frames but holds only {size} bytes")
    check_transfer_syntax(head)
    meta = getattr(head, "file_meta", None)
    encapsulated = meta is not None and "TransferSyntaxUID" in meta and meta.TransferSyntaxUID.is_encapsulated
    if not encapsulated and math.ceil(frames * rows * columns * bits / 8) > size:
        raise InvalidImage(f"the DICOM SEG declares {frames} frames of {rows} × {columns} pixels: more pixel data "
                           f"than its {size} bytes hold")
    return frames, rows, columns


def _item(group: Dataset | None, keyword: str) -> Dataset | None:
    sequence = group.get(keyword) if group is not None else None
    return sequence[0] if sequence else None


def _value(frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> object:
    for group in (frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _geometry(ds: Dataset, frames: int) -> _Frames:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if len(per_frame) != frames:
        raise InvalidImage(f"the DICOM SEG has {len(per_frame)} per-frame functional groups for {frames} frames")
    labelmap = str(ds.SegmentationType) == "LABELMAP"
    segments, positions, orientations, spacings = [], [], [], []
    for number, frame in enumerate(per_frame):
        position = _value(frame, shared, "PlanePositionSequence", "ImagePositionPatient")
        cosines = _value(frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _value(frame, shared, "PixelMeasuresSequence", "PixelSpacing")
        segment = _value(frame, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if position is None or cosines is None or spacing is None or (segment is None and not labelmap):
            raise InvalidImage(f"frame {number + 1} of the DICOM SEG has no position, orientation, pixel spacing or "
                               "segment number: it cannot be placed")
        positions.append([float(v) for v in position])
        orientations.append([float(v) for v in cosines])
        spacings.append([float(v) for v in spacing])
        segments.append(0 if labelmap else int(segment))
    if not (np.allclose(orientations, orientations[0], atol=1e-4) and np.allclose(spacings, spacings[0], rtol=1e-4)):
        raise InvalidImage("the frames of the DICOM SEG have different orientations or pixel spacings")
    plane = Dataset()
    plane.ImageOrientationPatient = orientations[0]
    row, col, normal = orientation(plane)
    between = _value(None, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
    return _Frames(np.asarray(segments), np.asarray(positions).reshape(-1, 3), row, col, normal,
                   (spacings[0][0], spacings[0][1]),
                   float(between) if between not in (None, "") and float(between) > 0 else None)


def _names(ds: Dataset, frames: _Frames) -> dict[int, str]:
    names = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in ds.get("SegmentSequence") or []}
    if str(ds.SegmentationType) == "LABELMAP":
        names.pop(0, None)  # a label map SEG may describe its background
    if not names or min(names) < 1 or max(names) > 65535:
        raise InvalidImage("the DICOM SEG describes no segments, or segment numbers outside 1…65535")
    undescribed = sorted(set(frames.segments.tolist()) - set(names) - {0})
    if undescribed:
        raise InvalidImage(f"frames of the DICOM SEG belong to segments {undescribed[:5]} that it does not describe")
    return names


def _own_grid(frames: _Frames) -> tuple[np.ndarray, np.ndarray, int]:
    """The SEG's own grid: its planes' span along the normal, in steps of SpacingBetweenSlices when the planes
    lie on it (else of their smallest gap), the step then fitted to the planes. Returns (affine, k of each frame,
    slices)."""
    distances = frames.positions @ frames.normal
    planes, plane_of = np.unique(np.round(distances, 3), return_inverse=True)
    gaps = np.diff(planes)
    guess = float(gaps.min()) if len(gaps) else (frames.spacing_between or 1.0)
    if frames.spacing_between and _on_grid(gaps, frames.spacing_between):
        guess = frames.spacing_between
    if not _on_grid(gaps, guess):
        raise InvalidImage("the planes of the DICOM SEG are not evenly spaced along their normal: no one grid holds "
                           "them; read it with a reference image")
    plane_k = np.concatenate([[0], np.cumsum(np.rint(gaps / guess).astype(np.int64))])  # per gap: no drift
    span = int(plane_k[-1])
    step = (planes[-1] - planes[0]) / span if span else guess
    if np.abs(planes - planes[0] - plane_k * step).max() > slice_tolerance_mm(step):
        raise InvalidImage("the planes of the DICOM SEG drift off a regular grid along their normal; read it with a "
                           "reference image")
    ks = plane_k[plane_of.reshape(-1)]
    first = frames.positions[np.argmin(distances)]
    vector = (frames.positions[np.argmax(distances)] - first) / span if span else frames.normal * step
    if not np.allclose(frames.positions, first + np.outer(ks, vector), atol=slice_tolerance_mm(step)):
        raise InvalidImage("the frames of the DICOM SEG are shifted within their planes: no one grid holds them")
    affine = slice_affine(frames.row, frames.col, frames.pixel_spacing, vector, first)
    check_affine(affine)
    return affine, ks, span + 1


def _on_grid(gaps: np.ndarray, step: float) -> bool:
    """Whether every gap is a whole number (at least 1) of steps, within the slice tolerance."""
    multiples = gaps / step
    return bool(np.all((np.abs(multiples - np.rint(multiples)) * step <= slice_tolerance_mm(step))
                       & (np.rint(multiples) >= 1)))


def _reference_grid(frames: _Frames, columns: int, rows: int, reference: Volume) -> np.ndarray:
    """The k of each frame on the reference image's grid; a frame off it is refused."""
    shape = reference.spatial_shape
    if len(shape) != 3 or shape[:2] != (columns, rows):
        raise IncompatibleInput(f"the DICOM SEG has frames of {columns} × {rows} pixels (columns × rows); the "
                                f"reference image has shape {list(shape)}")
    to_voxels = np.linalg.inv(np.asarray(reference.affine, dtype=np.float64)) @ LPS_TO_RAS
    row_spacing, col_spacing = frames.pixel_spacing
    far = frames.row * col_spacing * (columns - 1) + frames.col * row_spacing * (rows - 1)
    ks = np.rint(((to_voxels[:3, :3] @ frames.positions.T).T + to_voxels[:3, 3])[:, 2]).astype(np.int64)
    for corner, (i, j) in ((np.zeros(3), (0, 0)), (far, (columns - 1, rows - 1))):
        voxels = (to_voxels[:3, :3] @ (frames.positions + corner).T).T + to_voxels[:3, 3]
        off = np.abs(voxels - np.stack([np.full(len(ks), i), np.full(len(ks), j), ks], axis=1)).max(axis=1)
        bad = np.flatnonzero((off > GRID_TOLERANCE_VOXELS) | (ks < 0) | (ks >= shape[2]))
        if len(bad):
            n = int(bad[0])
            where = ", ".join(f"{v:.2f}" for v in voxels[n])
            raise IncompatibleInput(
                f"frame {n + 1} of the DICOM SEG (at {np.round(frames.positions[n], 2).tolist()} mm) is not on a "
                f"slice of the reference image (it falls on voxel ({where})): the SEG was not made on this image",
                frame=n + 1)
    return ks


def _packed_frames(ds: Dataset, order: Sequence[int]) -> Iterator[np.ndarray]:
    """Uncompressed BINARY frames (bits packed across frame boundaries) as [row, column] uint8, in `order`."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    size = rows * columns
    data = np.frombuffer(ds.PixelData, dtype=np.uint8)
    for index in order:
        start, end = index * size, (index + 1) * size
        bits = np.unpackbits(data[start // 8:(end + 7) // 8], bitorder="little")
        yield bits[start % 8:start % 8 + size].reshape(rows, columns)


def _frames_in(ds: Dataset, order: Sequence[int]) -> Iterator[np.ndarray]:
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated if "TransferSyntaxUID" in ds.file_meta else False
    if int(ds.BitsAllocated) == 1 and not encapsulated:
        return _packed_frames(ds, order)
    return iter_pixels(ds, indices=list(order))


def _paint(ds: Dataset, frames: _Frames, ks: np.ndarray, labels: np.ndarray, deadline: Deadline) -> None:
    """Decode the frames one at a time onto `labels`; where segments overlap the highest number wins."""
    kind = str(ds.SegmentationType)
    threshold = float(ds.get("MaximumFractionalValue", 255) or 255) / 2 if kind == "FRACTIONAL" else 0
    order = np.argsort(frames.segments, kind="stable").tolist()
    for index, pixels in zip(order, _frames_in(ds, order)):
        deadline.check()
        plane = labels[:, :, ks[index]]
        if kind == "LABELMAP":
            np.copyto(plane, pixels.T, where=pixels.T > 0, casting="unsafe")
        else:
            plane[pixels.T > threshold] = frames.segments[index]


def _source_bytes(source: Path | bytes, limits: DecodeLimits) -> bytes:
    if isinstance(source, bytes):
        return source
    size = source.stat().st_size
    if size > limits.max_bytes:
        raise PayloadTooLarge(f"the DICOM SEG file has {size} bytes, over the limit of {limits.max_bytes} "
                              "(the server option --max_image_mb raises it)", limit="max_image_mb")
    return source.read_bytes()


def read_dicom_seg(source: Path | bytes, reference: Volume | None = None,
                   limits: DecodeLimits = DEFAULT_LIMITS) -> SegLabels:
    """Decode a DICOM SEG (BINARY, FRACTIONAL or LABELMAP) into a label map of its segment numbers.

    Args:
        source: the SEG file, or its bytes.
        reference: the image the SEG was made on (e.g. its series from `read_dicom_series`); its frames are
            then placed on this image's grid by position. None: on the SEG's own grid, from its planes'
            positions, orientation, pixel spacing and SpacingBetweenSlices (spanning only the planes it has).
        limits: `max_voxels`/`max_bytes` bound frames × rows × columns and the label map; `max_bytes` the file;
            `dicom_timeout_s` the decode.

    Returns:
        A `SegLabels`: labels (I, J, K) [i(column), j(row), k(slice along the normal)] with the segment numbers
        (0 background; FRACTIONAL pixels count above half their maximum; where BINARY segments overlap the
        highest number wins), uint8 (uint16 past 255), the voxel → RAS affine (the reference's when given),
        and segment number → label.

    Raises:
        PayloadTooLarge: (413) a file, frame count or frame size over `limits`, before anything is allocated.
        InvalidImage: (400) not a SEG, an unsupported type or transfer syntax, a frame count or pixel data the
            file's size cannot hold, frames that cannot be placed, or planes on no one grid.
        IncompatibleInput: (422) a frame that is not on a slice of `reference`, or frames of another size.
    """
    data = _source_bytes(source, limits)
    deadline = Deadline(limits.dicom_timeout_s)
    with malformed_is_invalid("the DICOM SEG"):
        head = read_header(data, deadline, stop_when=_before_per_frame_groups)
        count, rows, columns = _check_declared_sizes(head, len(data), limits)
        ds = read_header(data, deadline, max_reads=MAX_HEADER_READS + READS_PER_FRAME * count)
        frames = _geometry(ds, count)
        names = _names(ds, frames)
        if reference is None:
            affine, ks, slices = _own_grid(frames)
        else:
            ks, affine, slices = _reference_grid(frames, columns, rows, reference), reference.affine, None
        shape = (columns, rows, slices or reference.spatial_shape[2])
        dtype = np.uint16 if max(names) > 255 or int(ds.BitsAllocated) == 16 else np.uint8
        check_shape(shape, np.dtype(dtype).itemsize, limits, what="label map of the DICOM SEG")
        labels = np.zeros(shape, dtype=dtype)
        _paint(ds, frames, ks, labels, deadline)
    return SegLabels(labels, np.asarray(affine, dtype=np.float64), names)


__all__ = ["SegLabels", "read_dicom_seg"]
