"""Recognising upload formats from the client's file name and the file's first bytes.

Clients send file names as they have them (relative, absolute, Windows paths) and content types that
say nothing (`application/octet-stream`), so the name's compound suffix decides and the bytes confirm.
"""

from __future__ import annotations

import enum
import struct
from pathlib import Path

from aiaa_server.errors import InvalidImage


class ImageFormat(str, enum.Enum):
    """An upload or result file format; its value is the file suffix (`.nii.gz` for gzip-compressed NIfTI)."""

    NIFTI = ".nii"
    NIFTI_GZ = ".nii.gz"
    NRRD = ".nrrd"
    PNG = ".png"
    DICOM = ".dcm"
    ZIP = ".zip"

    @property
    def media_type(self) -> str:
        """The HTTP content type of a result in this format: `image/png`, else `application/octet-stream`."""
        return "image/png" if self is ImageFormat.PNG else "application/octet-stream"

    @property
    def is_volume_format(self) -> bool:
        """Whether `read_volume` reads it and results can be written in it: NIfTI, NIfTI-gz or NRRD."""
        return self in (ImageFormat.NIFTI, ImageFormat.NIFTI_GZ, ImageFormat.NRRD)


_SUFFIXES: dict[str, ImageFormat] = {
    ".nii.gz": ImageFormat.NIFTI_GZ,
    ".nii": ImageFormat.NIFTI,
    ".nrrd": ImageFormat.NRRD,
    ".png": ImageFormat.PNG,
    ".dcm": ImageFormat.DICOM,
    ".dicom": ImageFormat.DICOM,
    ".zip": ImageFormat.ZIP,
}

GZIP_MAGIC = b"\x1f\x8b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
SNIFF_BYTES = 1024


def client_basename(filename: str | None) -> str:
    """The file's base name whatever path style the client used (`/` or `\\`)."""
    if not filename:
        return ""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def format_from_name(filename: str | None) -> ImageFormat | None:
    """The format the suffix of a client file name names (case-insensitive; `.dicom` counts as `.dcm`), else None."""
    name = client_basename(filename).lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    return None


def parse_extension(extension: str) -> ImageFormat:
    """The format a `result_extension` value names, such as `.nrrd`, `nii.gz` or `.NII.GZ` (dot optional).

    Raises:
        InvalidImage: anything but `.nii.gz`, `.nii`, `.nrrd`, `.png` or `.dcm` (a DICOM SEG).
    """
    ext = extension.strip().lower()
    if not ext.startswith("."):
        ext = "." + ext
    fmt = _SUFFIXES.get(ext)
    if fmt is None or not fmt.is_volume_format and fmt not in (ImageFormat.PNG, ImageFormat.DICOM):
        raise InvalidImage(
            f"unsupported result_extension {extension!r}; use one of .nii.gz, .nii, .nrrd, .dcm (DICOM SEG)",
            result_extension=extension,
        )
    return fmt


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for endian in ("<", ">"):
        (size,) = struct.unpack(endian + "i", head[:4])
        if size == 348 and head[344:347] in (b"n+1", b"ni1"):
            return True
        if size == 540 and len(head) >= 8 and head[4:7] in (b"n+2", b"ni2"):
            return True
    return False


_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_DICOM_FIRST_GROUPS = (0x0002, 0x0008)  # file meta, or identification for files without the meta group


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file's first bytes can start DICOM: the `DICM` marker after the 128-byte preamble, or (files
    without a preamble) a first element of group 0002/0008 with a valid explicit VR or a small implicit length.

    Args:
        head: the file's first bytes (at least 132 for a file with a preamble).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    for endian in ("<", ">"):
        group, _, length = struct.unpack(endian + "HHI", head[:8])
        if group in _DICOM_FIRST_GROUPS and (head[4:6] in _DICOM_VRS or length < 2**16):
            return True
    return False


def sniff_format(head: bytes) -> ImageFormat | None:
    """Guess the format from the first bytes of a file (`SNIFF_BYTES` suffice), None when none matches.

    Any gzip stream counts as NIfTI-gz; DICOM is recognised only by the `DICM` marker after its preamble.
    """
    if head.startswith(GZIP_MAGIC):
        return ImageFormat.NIFTI_GZ
    if head.startswith(b"NRRD000"):
        return ImageFormat.NRRD
    if head.startswith(PNG_MAGIC):
        return ImageFormat.PNG
    if head.startswith(ZIP_MAGIC):
        return ImageFormat.ZIP
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ImageFormat.DICOM
    if _is_nifti_header(head):
        return ImageFormat.NIFTI
    return None


def detect_format(path: Path, filename: str | None) -> ImageFormat:
    """Format of an uploaded file: the name's suffix, confirmed (or replaced) by the bytes.

    Args:
        path: the uploaded file on disk.
        filename: the name the client gave it, any path style; None or no known suffix: the bytes decide.

    Returns:
        The format. `.nii` and `.nii.gz` names are interchangeable (the bytes decide, as Slicer names
        uncompressed files `.nii.gz`); a `.dcm` name is trusted without the `DICM` marker.

    Raises:
        InvalidImage: an empty file, bytes of no known format, or bytes contradicting the name's suffix.
    """
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    shown = client_basename(filename) or "upload"
    if not head:
        raise InvalidImage(f"uploaded file {shown!r} is empty")
    sniffed = sniff_format(head)
    named = format_from_name(filename)
    if named is None:
        if sniffed is None:
            raise InvalidImage(
                f"uploaded file {shown!r} is not a recognised image: expected NIfTI (.nii/.nii.gz) or NRRD",
            )
        return sniffed
    if sniffed is None:
        if named is ImageFormat.DICOM:  # DICOM files without the 128-byte preamble exist
            return named
        raise InvalidImage(f"uploaded file {shown!r} is named {named.value} but its content is not {named.value}")
    gzip_or_not = {ImageFormat.NIFTI, ImageFormat.NIFTI_GZ}
    if named in gzip_or_not and sniffed in gzip_or_not:
        # Slicer names uncompressed temp files `.nii.gz` when "compress data" is off: trust the bytes.
        return sniffed
    if named is not sniffed:
        raise InvalidImage(f"uploaded file {shown!r} is named {named.value} but looks like {sniffed.value}")
    return named
