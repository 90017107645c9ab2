"""DICOM SEG where the services meet it: a result written as a SEG against the image's source series, a SEG
uploaded as a label decoded onto the image's grid, and a saved label sent back to a PACS as a SEG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aiaa_server.errors import BadRequest
from aiaa_server.imaging.dicom_headers import load_headers
from aiaa_server.imaging.dicom_seg import write_dicom_seg
from aiaa_server.imaging.dicom_seg_read import read_dicom_seg
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume, encode_volume
from aiaa_server.imaging.limits import DecodeLimits

SEG_MEDIA_TYPE = "application/dicom"
NOT_FROM_DICOM = ("a DICOM SEG result needs an image that came as a DICOM series (a session or datastore image "
                  "uploaded as DICOM files, or a DICOMweb series); this one did not")


def seg_bytes(labels: Any, volume: Volume, headers: Path | None, label_names: Mapping[int, str],
              limits: DecodeLimits, algorithm: str | None = None, version: str = "") -> bytes:
    """A label map on `volume`'s grid as a DICOM SEG referencing the series `headers` describes.

    Args:
        labels: (I, J, K) integer label map on the volume's grid.
        volume: the image the labels lie on (its affine is checked against the headers).
        headers: the source series' headers file; None: the image has no DICOM source (400).
        label_names: label value -> segment name.
        limits: bounds for reading the headers.
        algorithm: the model that made the labels (AUTOMATIC segments); None: MANUAL (an annotator's label).
        version: the model's version.

    Raises:
        BadRequest: (400) no DICOM source. IncompatibleInput: (422) labels not on the series' grid.
        InvalidImage, InvalidParams: (400) see `write_dicom_seg`.
    """
    if headers is None:
        raise BadRequest(NOT_FROM_DICOM, result_extension=".dcm")
    return write_dicom_seg(np.asarray(labels), volume.affine, load_headers(headers, limits), label_names,
                           algorithm=algorithm, algorithm_version=version)


def seg_to_label_file(seg: Path, reference: Volume, target: Path, limits: DecodeLimits, gzip_level: int) -> Path:
    """Decode an uploaded DICOM SEG onto `reference`'s grid and write it as a NIfTI-gz label map at `target`.

    Raises:
        InvalidImage: (400) not a SEG that decodes. IncompatibleInput: (422) frames off the image's slices.
        PayloadTooLarge: (413) over `limits`.
    """
    decoded = read_dicom_seg(seg, reference=reference, limits=limits)
    dtype = np.dtype(np.uint8) if int(decoded.labels.max(initial=0)) < 256 else np.dtype(np.uint16)
    target.write_bytes(encode_volume(decoded.labels, reference, ImageFormat.NIFTI_GZ, dtype=dtype, compress=True,
                                     gzip_level=gzip_level))
    return target


def label_names_from(params: Mapping[str, Any]) -> dict[int, str]:
    """Segment names from a save-label request: MONAI Label's `label_info` ([{"name", "idx"}]) or `label_names`
    ({name: value}); label values without a name become "label N" in the SEG."""
    names: dict[int, str] = {}
    for entry in params.get("label_info") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("idx"), int):
            names[entry["idx"]] = entry["name"][:64]
    given = params.get("label_names")
    if isinstance(given, dict):
        names.update({value: str(name)[:64] for name, value in given.items()
                      if isinstance(value, int) and not isinstance(value, bool)})
    return {value: name for value, name in names.items() if 0 < value < 2**16}
