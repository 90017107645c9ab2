"""A series' headers kept without pixels or bulk values, stored as DICOM JSON and loaded back under bounds, enough
to write a DICOM SEG once the files are gone."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.dicom import read_dicom_series_with_headers, read_series_headers
from aiaa_server.imaging.dicom_headers import FORMAT, load_headers, save_headers, strip_header
from aiaa_server.imaging.dicom_seg import write_dicom_seg
from aiaa_server.imaging.dicom_seg_read import read_dicom_seg
from aiaa_server.imaging.dicom_volume import dicom_series_to_file
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.limits import DecodeLimits
from tests.support.dicom_series import hu_volume, oblique, write_ct_series


def bulky(_k: int, ds: Dataset) -> None:
    ds.ImageComments = "x" * 10_000  # over the defer size: left in the file, never read
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x00291010, "OB", b"\0" * 64)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.add_new(0x00111010, "LO", "private in a sequence")
    ds.ReferencedImageSequence = [item]


def test_headers_keep_what_describes_the_slice_and_nothing_bulky(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)), edit=bulky)
    headers = read_series_headers(written.paths, tmp_path / "work")
    for header, uid in zip(headers, written.uids):
        assert header.SOPInstanceUID == uid and header.FrameOfReferenceUID == "1.2.3.4.5"
        assert "ImagePositionPatient" in header and header.PatientName == "Test^Patient"
        assert "PixelData" not in header and "ImageComments" not in header and "file_meta" not in dir(header)
        assert not any(element.tag.is_private for element in header.iterall())
        assert header.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3"


def test_saved_headers_write_a_seg_once_the_files_are_gone(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume(), directions=oblique(), order="reversed", edit=bulky)
    volume, headers = read_dicom_series_with_headers(written.paths, tmp_path / "work")
    save_headers(headers, tmp_path / "headers.json")
    shutil.rmtree(tmp_path / "dcm")
    loaded = load_headers(tmp_path / "headers.json")
    assert [h.to_json_dict() for h in loaded] == [h.to_json_dict() for h in headers]
    mask = np.zeros(volume.spatial_shape, np.uint8)
    mask[3:9, 2:7, 2:6] = 1
    data = write_dicom_seg(mask, volume.affine, loaded, {1: "liver"})
    np.testing.assert_array_equal(read_dicom_seg(data, reference=volume).labels, mask)
    seg = pydicom.dcmread(io.BytesIO(data))
    assert {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence} == set(written.uids[2:6])


def test_stored_series_keeps_its_headers_beside_the_volume(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 4)))
    stored = dicom_series_to_file(written.paths, tmp_path / "work", tmp_path / "image.nii.gz", ImageFormat.NIFTI_GZ,
                                  headers_path=tmp_path / "headers.json")
    headers = load_headers(tmp_path / "headers.json")
    assert [h.SOPInstanceUID for h in headers] == written.uids
    mask = np.ones(stored.volume.spatial_shape, np.uint8)  # on the stored NIfTI's grid (float32 affine)
    assert read_dicom_seg(write_dicom_seg(mask, stored.volume.affine, headers), stored.volume).labels.all()


def test_loading_is_bounded_before_parsing(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "dcm", hu_volume((6, 5, 3)))
    save_headers(read_series_headers(written.paths, tmp_path / "work"), tmp_path / "headers.json")
    with pytest.raises(PayloadTooLarge, match=r"hold 3 slices, over the limit of 2 \(max_dicom_files\)"):
        load_headers(tmp_path / "headers.json", DecodeLimits(max_dicom_files=2))
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"format": FORMAT, "headers": [{"00100020": {"vr": "LO", "Value": ["x" * 300_000]}}]}))
    with pytest.raises(PayloadTooLarge, match="stored DICOM headers take"):
        load_headers(big, DecodeLimits(max_dicom_files=1))


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not JSON"),
    ('{"format": "other", "headers": []}', "not a DICOM headers file"),
    (json.dumps({"format": FORMAT, "headers": [{"nottag": {"vr": "LO", "Value": ["x"]}}]}), "do not parse"),
])
def test_malformed_headers_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "headers.json").write_text(text)
    with pytest.raises(InvalidImage, match=message):
        load_headers(tmp_path / "headers.json")


def test_strip_header_leaves_the_original_alone() -> None:
    ds = Dataset()
    ds.PatientID, ds.PixelData = "P", b"\0\0"
    ds["PixelData"].VR = "OW"
    stripped = strip_header(ds)
    assert "PixelData" in ds and "PixelData" not in stripped and stripped.PatientID == "P"
