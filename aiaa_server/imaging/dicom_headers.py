"""A DICOM series' headers kept without its pixels, so that a DICOM SEG can be written against the series long
after the upload (the files themselves are not kept).

The headers are stored as DICOM JSON (PS3.18 F.2, pydicom's `to_json_dict`), one dataset per slice in the order
of the decoded volume's k axis, without pixel data, bulk (binary) values or private elements: a few KiB a slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits

FORMAT = "aiaa-dicom-headers/1"
MAX_HEADERS_BYTES_PER_SLICE = 256 * 2**10  # a stripped CT header is 2-5 KiB of JSON
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
SKIPPED_GROUPS = frozenset({0x7FE0, 0xFFFA})  # pixel data; digital signatures


def _is_deferred(dataset: Dataset, tag: int) -> bool:
    raw = dataset.get_item(tag, keep_deferred=True)
    return isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0


def strip_header(dataset: Dataset) -> Dataset:
    """A copy of `dataset` with only what describes the image: no pixel data, bulk values, private elements.

    Args:
        dataset: a header as read from a file, values over the defer size still on disk (never read here).

    Returns:
        A new dataset (no file meta) that needs neither the file nor a decoder; nested sequences are stripped
        the same way. Elements whose value cannot be converted are left out.
    """
    kept = Dataset()
    for tag in list(dataset.keys()):
        if tag.is_private or tag.group in SKIPPED_GROUPS or _is_deferred(dataset, tag):
            continue
        try:
            element = dataset[tag]
        except Exception:  # noqa: BLE001, S112 - a malformed value of an element the SEG does not need
            continue
        if element.VR in BULK_VRS:
            continue
        if element.VR == "SQ":
            kept.add_new(tag, "SQ", DicomSequence([strip_header(item) for item in element.value]))
        else:
            kept.add(element)
    return kept


def save_headers(datasets: Sequence[Dataset], path: Path) -> None:
    """Write the headers of one series as DICOM JSON, atomically (a temporary file renamed into place).

    Args:
        datasets: stripped headers (`strip_header`), in the order of the volume's k axis.
        path: the file to write.
    """
    body = {"format": FORMAT,
            "headers": [ds.to_json_dict(suppress_invalid_tags=True) for ds in datasets]}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(temporary, path)


def load_headers(path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> list[Dataset]:
    """Read headers written by `save_headers`, bounded before the JSON is parsed.

    Args:
        path: the file `save_headers` wrote.
        limits: `max_dicom_files` bounds the number of headers, and with it the file's size
            (MAX_HEADERS_BYTES_PER_SLICE each).

    Returns:
        The datasets, in the order they were saved (the volume's k axis).

    Raises:
        PayloadTooLarge: (413) a file over `max_dicom_files` × MAX_HEADERS_BYTES_PER_SLICE bytes, or more
            than `max_dicom_files` headers.
        InvalidImage: (400) not a headers file of this format, or a header pydicom cannot read.
    """
    most = limits.max_dicom_files * MAX_HEADERS_BYTES_PER_SLICE
    size = path.stat().st_size
    if size > most:
        raise PayloadTooLarge(f"the stored DICOM headers take {size} bytes, over {most}", limit="max_dicom_files")
    try:
        body = json.loads(path.read_bytes())
    except ValueError as exc:
        raise InvalidImage(f"the stored DICOM headers are not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("headers"), list):
        raise InvalidImage(f"not a DICOM headers file of format {FORMAT}")
    if len(body["headers"]) > limits.max_dicom_files:
        raise PayloadTooLarge(f"the stored DICOM headers hold {len(body['headers'])} slices, over the limit of "
                              f"{limits.max_dicom_files} (max_dicom_files)", limit="max_dicom_files")
    try:
        return [Dataset.from_json(item) for item in body["headers"]]
    except Exception as exc:  # pydicom raises many types for malformed DICOM JSON
        raise InvalidImage(f"the stored DICOM headers do not parse: {exc}") from exc


__all__ = ["load_headers", "save_headers", "strip_header"]
