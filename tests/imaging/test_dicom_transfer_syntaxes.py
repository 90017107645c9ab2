"""Every transfer syntax pydicom can decode with the installed packages reads as a series, and docs/dicom.md
lists exactly those."""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from aiaa_server.imaging.dicom import read_dicom_series
from tests.support.dicom_series import write_ct_series

DOC = Path(__file__).resolve().parents[2] / "docs" / "dicom.md"


def _plain(syntax: UID) -> Callable[[Dataset], None]:
    def encode(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = syntax

    return encode


def _big_endian(ds: Dataset) -> None:
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _pydicom(syntax: UID) -> Callable[[Dataset], None]:
    def encode(ds: Dataset) -> None:
        ds.compress(syntax)

    return encode


def _pillow(syntax: UID, fmt: str, eight_bit: bool = False) -> Callable[[Dataset], None]:
    """Compressed by Pillow (pydicom has no JPEG or JPEG 2000 encoder here); JPEG takes 8-bit samples only."""
    def encode(ds: Dataset) -> None:
        pixels = ds.pixel_array
        if eight_bit:
            pixels = (pixels // 16).astype(np.uint8)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        out = io.BytesIO()
        options = {"quality": 100} if fmt == "JPEG" else {"irreversible": False, "no_jp2": True}
        Image.fromarray(pixels).save(out, format=fmt, **options)
        ds.PixelData = encapsulate([out.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax

    return encode


def _gdcm(syntax: UID) -> Callable[[Dataset], None]:
    """Compressed by GDCM (JPEG Lossless: neither pydicom nor Pillow encodes it)."""
    def encode(ds: Dataset) -> None:
        import gdcm
        import pydicom

        codes = {JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
                 JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1}
        with tempfile.TemporaryDirectory() as folder:
            source, target = str(Path(folder) / "in.dcm"), str(Path(folder) / "out.dcm")
            ds.save_as(source, enforce_file_format=True)
            reader = gdcm.ImageReader()
            reader.SetFileName(source)
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
            assert reader.Read()
            change.SetInput(reader.GetImage())
            assert change.Change()
            writer = gdcm.ImageWriter()
            writer.SetFileName(target)
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            assert writer.Write()
            encoded = pydicom.dcmread(target)
        ds.PixelData = encoded.PixelData
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax

    return encode


# syntax -> (encoder, lossy: compare within this many stored units)
ENCODINGS: dict[UID, tuple[Callable[[Dataset], None], float]] = {
    ImplicitVRLittleEndian: (_plain(ImplicitVRLittleEndian), 0),
    ExplicitVRLittleEndian: (_plain(ExplicitVRLittleEndian), 0),
    DeflatedExplicitVRLittleEndian: (_plain(DeflatedExplicitVRLittleEndian), 0),
    ExplicitVRBigEndian: (_big_endian, 0),
    RLELossless: (_pydicom(RLELossless), 0),
    JPEGLSLossless: (_pydicom(JPEGLSLossless), 0),
    JPEGLSNearLossless: (_pydicom(JPEGLSNearLossless), 0),
    JPEG2000Lossless: (_pillow(JPEG2000Lossless, "JPEG2000"), 0),
    JPEG2000: (_pillow(JPEG2000, "JPEG2000"), 0),
    JPEGBaseline8Bit: (_pillow(JPEGBaseline8Bit, "JPEG", eight_bit=True), 4),
    JPEGExtended12Bit: (_pillow(JPEGExtended12Bit, "JPEG", eight_bit=True), 4),
    JPEGLossless: (_gdcm(JPEGLossless), 0),
    JPEGLosslessSV1: (_gdcm(JPEGLosslessSV1), 0),
}


def decodable() -> set[str]:
    found = set()
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                found.add(str(uid))
        except NotImplementedError:
            pass
    return found


@pytest.mark.parametrize("syntax", ENCODINGS, ids=lambda uid: UID(uid).name)
def test_series_in_each_decodable_transfer_syntax_reads(tmp_path: Path, syntax: UID) -> None:
    encode, tolerance = ENCODINGS[syntax]
    hu = np.random.default_rng(5).integers(-1000, 1400, size=(20, 16, 3)).astype(np.int16)
    written = write_ct_series(tmp_path / "dcm", hu, edit=lambda _k, ds: encode(ds))
    volume = read_dicom_series(written.paths, tmp_path / "work")
    expected = (hu + 1024) // 16 - 1024 if tolerance else hu  # 8-bit JPEG: stored values / 16
    assert np.abs(volume.array.astype(np.int32) - expected).max() <= tolerance


def test_every_decodable_transfer_syntax_is_tested() -> None:
    assert {str(uid) for uid in ENCODINGS} == decodable()


def test_the_doc_lists_exactly_the_decodable_transfer_syntaxes() -> None:
    section = DOC.read_text().split("## Transfer syntaxes", 1)[1].split("\n## ", 1)[0]
    supported = section.split("Not decoded", 1)[0]
    listed = set(re.findall(r"`(1\.2\.840\.10008\.1\.2[.0-9]*)`", supported))
    assert listed == decodable()
    for uid in listed:
        assert UID(uid).name in supported, uid


def test_twelve_bit_jpeg_extended_is_refused_when_decoded(tmp_path: Path) -> None:
    from aiaa_server.errors import InvalidImage

    def twelve_bit(_k: int, ds: Dataset) -> None:
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit

    written = write_ct_series(tmp_path / "dcm", np.zeros((6, 5, 2), np.int16), edit=twelve_bit)
    with pytest.raises(InvalidImage, match="Pillow does not support 'JPEG Extended' for samples with 12-bit"):
        read_dicom_series(written.paths, tmp_path / "work")
