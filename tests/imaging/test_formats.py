"""Recognising uploads by name and bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format, format_from_name
from tests.support.volumes import save_nifti


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test-data/image.nii.gz", ImageFormat.NIFTI_GZ),
        (r"C:\Users\me\CT.NII.GZ", ImageFormat.NIFTI_GZ),
        ("/tmp/tmpab12cd.nii", ImageFormat.NIFTI),
        ("scan.nrrd", ImageFormat.NRRD),
        ("image_3.dcm", ImageFormat.DICOM),
        ("slice.png", ImageFormat.PNG),
        ("blob", None),
    ],
)
def test_format_from_client_names(name: str, expected: ImageFormat | None) -> None:
    assert format_from_name(name) == expected


def test_basename_handles_both_separators() -> None:
    assert client_basename(r"C:\data\a/b\ct.nii.gz") == "ct.nii.gz"


def test_bytes_decide_when_name_is_missing_or_wrong(tmp_path: Path) -> None:
    plain = save_nifti(tmp_path / "v.nii", np.zeros((4, 4, 4), np.int16), np.eye(4))
    assert detect_format(plain, None) is ImageFormat.NIFTI
    assert detect_format(plain, "named.nii.gz") is ImageFormat.NIFTI  # Slicer with compression off
    packed = tmp_path / "v.bin"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert detect_format(packed, "datapoint") is ImageFormat.NIFTI_GZ
    assert detect_format(packed, "v.nii") is ImageFormat.NIFTI_GZ


def test_mismatch_and_garbage_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "t"
    text.write_text("hello")
    with pytest.raises(InvalidImage, match="not a recognised image"):
        detect_format(text, "notes.txt")
    with pytest.raises(InvalidImage, match="named .nrrd"):
        detect_format(text, "scan.nrrd")
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty"):
        detect_format(empty, "x.nii.gz")
