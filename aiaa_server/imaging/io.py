"""Reading uploaded volumes and writing result masks on exactly the input's grid and header.

A `Volume` keeps the decoded voxels in NIfTI/ITK index order (`array[i, j, k]`, i fastest on disk), the
voxel→RAS affine, and the original header so that a result written in the input's format carries the
input's geometry unchanged.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from aiaa_server.errors import InvalidImage, InvalidParams, PayloadTooLarge
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits, check_shape, read_exactly
from aiaa_server.imaging.nrrd_reader import LPS_TO_RAS, nrrd_affine, read_nrrd_data, read_nrrd_header
from aiaa_server.imaging.png import decode_png

try:  # python-isal's igzip: 3-4x faster than zlib on CT, ~20x on label masks (bench/gzip_codecs.py)
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - the stdlib is the fallback
    _igzip = None

UINT8 = np.dtype(np.uint8)
RESULT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

MAX_NIFTI_HEADER_BYTES = 64 * 2**20  # header + extensions, read into memory before the data

_NRRD_TYPES = {
    "uint8": "uint8", "int8": "int8", "uint16": "uint16", "int16": "int16",
    "uint32": "uint32", "int32": "int32", "float32": "float", "float64": "double",
}


@dataclass
class Volume:
    """A decoded image: voxels in [i, j, k] order, its voxel→RAS affine, and where it came from.

    Attributes:
        array: (X, Y, Z) or (X, Y) voxels in NIfTI index order, in the stored dtype (float for a scaled
            NIfTI); an uncompressed NIfTI is a copy-on-write memory map of the file.
        affine: 4 × 4 voxel index → RAS (mm) transform.
        format: the format it was decoded from.
        header: the NIfTI header (nibabel), the NRRD header fields (dict), or None (DICOM).
        name: the client's file name without its image suffix.
        extra: format-specific facts (DICOM: `slices`, `modality`).
    """

    array: np.ndarray
    affine: np.ndarray
    format: ImageFormat
    header: Any = None
    name: str = "image"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The array's shape as Python ints: (X, Y, Z), or (X, Y) for a 2D image."""
        return tuple(int(s) for s in self.array.shape)

    def without_voxels(self) -> Volume:
        """Geometry and headers only: `array` becomes a zero-strided array of the same shape and dtype (no memory)."""
        return Volume(np.broadcast_to(np.zeros((), dtype=self.array.dtype), self.array.shape), self.affine,
                      self.format, self.header, self.name, dict(self.extra))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the array axes i, j, k: the column norms of the affine (always 3 values)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_volume(path: Path, filename: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS) -> Volume:
    """Decode an uploaded NIfTI or NRRD file, checking every size in its header before reading the data.

    Args:
        path: the uploaded file.
        filename: the name the client gave it (its suffix decides the format, confirmed by the bytes).
        limits: bounds on voxels and decoded bytes (`--max_image_voxels`, `--max_image_mb`).

    Returns:
        A `Volume`: array [i, j, k] (2D or 3D; trailing singleton dimensions dropped), voxel → RAS affine.

    Raises:
        InvalidImage: (400) an undecodable, truncated or detached file, fewer than 2 dimensions, a
            dimension of 0, RGB or complex voxels, more than 3 dimensions, or a NaN / infinite / singular
            affine.
        PayloadTooLarge: (413) a declared shape over `limits`; raised before any data is decompressed.
    """
    fmt = detect_format(path, filename)
    shown = client_basename(filename) or path.name
    if not fmt.is_volume_format:
        raise InvalidImage(f"{fmt.value} files are not accepted here; send a NIfTI (.nii/.nii.gz) or NRRD volume")
    try:
        volume = _read_nrrd(path, limits) if fmt is ImageFormat.NRRD else _read_nifti(path, fmt, limits)
    except PayloadTooLarge:
        raise
    except InvalidImage as exc:
        raise InvalidImage(f"could not decode {shown!r} as {fmt.value}: {exc.message}", format=fmt.value,
                           **exc.details) from exc
    except Exception as exc:  # nibabel/pynrrd/zlib raise many types for corrupt or truncated files
        raise InvalidImage(f"could not decode {shown!r} as {fmt.value}: {exc}", format=fmt.value) from exc
    volume.name = _stem(shown)
    return _squeeze_trailing_singletons(volume)


def read_image(path: Path, filename: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
               allow_png: bool = False) -> Volume:
    """`read_volume`, or with `allow_png` (models of 2D images) a PNG as a 2D image: array [x, y] (columns,
    rows) of its grayscale values (colour as luminance), 1 mm pixels, identity affine.

    Raises:
        InvalidImage, PayloadTooLarge: see `read_volume` and `decode_png`.
    """
    if not allow_png or detect_format(path, filename) is not ImageFormat.PNG:
        return read_volume(path, filename, limits)
    array = decode_png(path.read_bytes(), limits=limits).T
    return Volume(array=array, affine=np.eye(4), format=ImageFormat.PNG,
                  name=_stem(client_basename(filename) or path.name))


def check_affine(affine: np.ndarray, axes: int = 3) -> None:
    """Refuse geometry that no client can place: NaN / infinite values, or voxel axes that are zero or collinear.

    Args:
        affine: the 4 × 4 voxel → RAS affine.
        axes: how many of its first columns are voxel axes of the image (2 for a 2D NRRD).

    Raises:
        InvalidImage: a non-finite value, or a singular (rank-deficient) matrix of voxel axes.
    """
    if not np.all(np.isfinite(affine)):
        raise InvalidImage("image geometry has NaN or infinite values (voxel spacing, directions or origin)")
    singular = np.linalg.svd(affine[:3, :axes], compute_uv=False)
    if singular[0] == 0 or singular[-1] <= 1e-9 * singular[0]:
        raise InvalidImage("image geometry is singular: a voxel spacing is zero or two voxel axes are parallel")


def _read_nifti(path: Path, fmt: ImageFormat, limits: DecodeLimits) -> Volume:
    compressed = fmt is ImageFormat.NIFTI_GZ
    with _open_nifti(path, compressed) as stream:
        header = _nifti_header(stream)
        shape, dtype, slope, inter = _check_nifti(header, limits)
        offset = int(header.get_data_offset())
        if compressed:
            array = np.empty(shape, dtype=dtype, order="F")
            read_exactly(stream, array)  # straight into the final array: no intermediate buffer
    if not compressed:
        if path.stat().st_size < offset + math.prod(shape) * dtype.itemsize:
            raise InvalidImage("NIfTI file is shorter than the data its header declares (truncated file?)")
        array = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F")  # as nibabel maps it
    if slope is not None:
        array = apply_read_scaling(array, slope, inter)  # exactly what nibabel's dataobj would give
    return Volume(array=array, affine=header.get_best_affine().astype(np.float64), format=fmt, header=header)


def _open_nifti(path: Path, compressed: bool) -> Any:
    if not compressed:
        return open(path, "rb")
    return _igzip.open(path, "rb") if _igzip is not None else gzip.open(path, "rb")


def _nifti_header(stream: Any) -> nib.Nifti1Header:
    """Header and extensions, reading exactly up to the data: nibabel alone reads extensions of any
    declared size, to the end of the stream when vox_offset is small."""
    fixed = stream.read(4)
    size = _header_size(fixed)
    fixed += stream.read(size - 4)
    header_class = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    offset = float(header_class(fixed, check=False)["vox_offset"])
    if not size <= offset <= MAX_NIFTI_HEADER_BYTES:
        raise InvalidImage(f"NIfTI vox_offset {offset:g} is outside {size}..{MAX_NIFTI_HEADER_BYTES} bytes")
    rest = stream.read(int(offset) - size)
    return header_class.from_fileobj(io.BytesIO(fixed + rest))


def _check_nifti(header: nib.Nifti1Header, limits: DecodeLimits) -> tuple[tuple[int, ...], np.dtype, Any, Any]:
    """Shape, stored dtype and scaling (None when identity) of a header, refused if the image is not one we
    can place or decode within `limits`."""
    if np.asarray(header["magic"]).item() not in (b"n+1", b"n+2"):
        raise InvalidImage("file is not a single-file NIfTI-1/2 image (a .hdr/.img pair is not accepted)")
    dtype = header.get_data_dtype()
    if dtype.fields is not None:
        raise InvalidImage(f"RGB images are not supported (NIfTI voxel type {header.get_value_label('datatype')});"
                           " send a scalar volume")
    if dtype.kind not in "iuf":
        raise InvalidImage(f"NIfTI voxel type {header.get_value_label('datatype')} is not supported")
    shape = tuple(int(s) for s in header.get_data_shape())
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope, inter or 0.0) != (1.0, 0.0)
    check_shape(shape, 8 if scaled else dtype.itemsize, limits, what="NIfTI image")  # scaling gives float64
    if not np.all(np.isfinite(header["pixdim"][1 : len(shape) + 1])):
        raise InvalidImage("NIfTI pixdim (voxel spacing) has NaN or infinite values")
    check_affine(header.get_best_affine())
    return shape, dtype, (slope if scaled else None), inter


def _header_size(raw: bytes) -> int:
    if len(raw) < 4:
        raise InvalidImage("file is too short to be a NIfTI image")
    little, big = struct.unpack("<i", raw)[0], struct.unpack(">i", raw)[0]
    return 540 if 540 in (little, big) else 348


def gzip_compress(data: bytes | memoryview | list[bytes | memoryview], level: int = 1) -> bytes:
    """gzip of `data` (or of the concatenation of a list of buffers, streamed: never joined in memory) with
    igzip when installed (levels 1-3 / 4-6 / 7-9 map to its 1 / 2 / 3), else zlib.  mtime is 0."""
    parts = data if isinstance(data, list) else [data]
    if _igzip is None or level <= 0:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    else:
        compressor = _isal_zlib.compressobj(min(3, (level + 2) // 3), _isal_zlib.DEFLATED, 31)
    return b"".join([*(compressor.compress(part) for part in parts), compressor.flush()])


def gzip_decompress(data: bytes) -> bytes:
    """The whole decompressed stream, with igzip when installed: unbounded, so never used on uploads."""
    return _igzip.decompress(data) if _igzip is not None else gzip.decompress(data)


def _read_nrrd(path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> Volume:
    with open(path, "rb") as handle:
        header = read_nrrd_header(handle)
        check_shape(header.shape, header.dtype.itemsize, limits, what="NRRD image")
        affine = nrrd_affine(header.fields, len(header.shape))
        check_affine(affine, min(len(header.shape), 3))
        array = read_nrrd_data(handle, header)
    return Volume(array=array, affine=affine, format=ImageFormat.NRRD, header=header.fields)


def _squeeze_trailing_singletons(volume: Volume) -> Volume:
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise InvalidImage(
            f"image has shape {tuple(array.shape)}: multi-channel / 4D images are not supported, send one 3D volume"
        )
    volume.array = array
    return volume


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".png", ".dcm"):
        if lower.endswith(suffix):
            return name[: -len(suffix)] or "image"
    return name or "image"


def check_result_dtype(dtype: str | None) -> np.dtype:
    """The numpy dtype a `result_dtype` parameter names; None gives uint8.

    Raises:
        InvalidParams: (400) a name not in `RESULT_DTYPES`.
    """
    if dtype is None:
        return np.dtype(np.uint8)
    if str(dtype) not in RESULT_DTYPES:
        raise InvalidParams(f"unsupported result_dtype {dtype!r}; use one of {', '.join(RESULT_DTYPES)}")
    return np.dtype(str(dtype))


def encode_volume(
    array: np.ndarray,
    reference: Volume,
    fmt: ImageFormat,
    dtype: np.dtype = UINT8,
    compress: bool | None = None,
    gzip_level: int = 1,
) -> bytes:
    """Encode `array` (on `reference`'s grid) in `fmt`, carrying the reference geometry exactly.

    Args:
        array: (X, Y, Z) (or (X, Y)) values in NIfTI index order, of shape `reference.spatial_shape`.
        reference: the input volume: its affine, and its NIfTI header when it has one (qform/sform codes kept;
            scaling and cal_min/cal_max reset).
        fmt: `ImageFormat.NIFTI`, `NIFTI_GZ` or `NRRD` (written little-endian in LPS space).
        dtype: the stored voxel type, one of `RESULT_DTYPES`; values are cast, not rescaled.
        compress: gzip the file (NRRD: gzip encoding); None: NIfTI-gz compressed, NIfTI and NRRD not.
        gzip_level: 0-9 (igzip, when installed, maps 1-3 / 4-6 / 7-9 to its levels 1 / 2 / 3).

    Returns:
        The file's bytes.

    Raises:
        ValueError: `array` is not on the reference grid.
        InvalidParams: `fmt` is not a volume format.
    """
    if tuple(array.shape) != reference.spatial_shape:
        raise ValueError(f"result shape {array.shape} is not the input grid {reference.spatial_shape}")
    data = np.asarray(array).astype(dtype, copy=False)
    if fmt in (ImageFormat.NIFTI, ImageFormat.NIFTI_GZ):
        parts = _nifti_parts(data, reference)
        if compress is None:
            compress = fmt is ImageFormat.NIFTI_GZ
        return gzip_compress(parts, gzip_level) if compress else b"".join(parts)
    if fmt is ImageFormat.NRRD:
        return _nrrd_bytes(data, reference, gzip_level if compress else None)
    raise InvalidParams(f"cannot write results as {fmt.value}")


def _nifti_parts(data: np.ndarray, reference: Volume) -> list[bytes | memoryview]:
    """A single-file NIfTI as [header and padding, voxels]: the voxels are a view of `data` when it is in
    the header's byte order and Fortran order (a click's mask is built that way), so a 31 M-voxel result is
    never copied before compression."""
    header = reference.header
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        header = header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = image_class(data, None, header=header)
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
        if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            image.set_sform(reference.affine, code=1)
            image.set_qform(reference.affine, code=1)
    else:
        image = nib.Nifti1Image(data, reference.affine)
        image.set_qform(reference.affine, code=1)
        image.set_sform(reference.affine, code=1)
    out_header = image.header
    out_header.set_data_dtype(data.dtype)
    out_header.set_slope_inter(1.0, 0.0)
    out_header["cal_min"] = 0
    out_header["cal_max"] = 0
    image.update_header()
    buffer = io.BytesIO()
    out_header.write_to(buffer)
    head = buffer.getvalue()
    offset = int(out_header.get_data_offset())
    head = head + b"\0" * max(offset - len(head), 0)
    voxels = np.asfortranarray(data.astype(out_header.get_data_dtype(), copy=False))
    return [head, memoryview(voxels.reshape(-1, order="F")).cast("B")]


def _nrrd_bytes(data: np.ndarray, reference: Volume, gzip_level: int | None) -> bytes:
    """A single-file NRRD (detached headers are not useful over HTTP)."""
    lps = LPS_TO_RAS @ reference.affine
    dim = data.ndim
    directions = " ".join("(" + ",".join(f"{v:.17g}" for v in lps[:3, axis]) + ")" for axis in range(dim))
    origin = "(" + ",".join(f"{v:.17g}" for v in lps[:3, 3]) + ")"
    encoding = "gzip" if gzip_level is not None else "raw"
    lines = [
        "NRRD0004",
        "# written by aiaa-server",
        f"type: {_NRRD_TYPES[data.dtype.name]}",
        f"dimension: {dim}",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in data.shape),
        f"space directions: {directions}",
        "kinds: " + " ".join(["domain"] * dim),
        "endian: little",
        f"encoding: {encoding}",
        f"space origin: {origin}",
    ]
    payload = np.asarray(data, dtype=data.dtype.newbyteorder("<")).tobytes(order="F")
    if gzip_level is not None:
        payload = gzip_compress(payload, gzip_level)
    return ("\n".join(lines) + "\n\n").encode("ascii") + payload


def decode_result(payload: bytes, fmt: ImageFormat) -> tuple[np.ndarray, np.ndarray]:
    """Decode result bytes (used by tests and the client): returns (array, affine).

    Args:
        payload: a NIfTI file, gzip-compressed or not (the bytes decide), or an NRRD file.
        fmt: `ImageFormat.NIFTI`, `NIFTI_GZ` or `NRRD`.

    Returns:
        The (X, Y, Z) array in the stored dtype and its 4 × 4 voxel → RAS affine.

    Raises:
        ValueError: another format.
    """
    if fmt in (ImageFormat.NIFTI, ImageFormat.NIFTI_GZ):
        raw = gzip_decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
        image = nib.Nifti1Image.from_bytes(raw)
        return np.asanyarray(image.dataobj), image.affine
    if fmt is ImageFormat.NRRD:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".nrrd") as handle:
            handle.write(payload)
            handle.flush()
            volume = _read_nrrd(Path(handle.name))
        return volume.array, volume.affine
    raise ValueError(f"cannot decode {fmt.value}")


__all__ = ["RESULT_DTYPES", "Volume", "check_affine", "check_result_dtype", "decode_result", "encode_volume", "read_volume"]
