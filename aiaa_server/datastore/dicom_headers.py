"""Where a datastore keeps the headers of the DICOM series an image was decoded from (`<root>/.aiaa/dicom/<id>.json`),
so that DICOM SEG results and labels can be written against the series long after the upload."""

from __future__ import annotations

import os
from pathlib import Path

from aiaa_server.datastore.ids import check_image_id
from aiaa_server.mmar.fsync import fsync_dir


class DicomHeaders:
    """The DICOM headers part of `LocalDatastore` (it provides `_meta_root`)."""

    _meta_root: Path

    def _headers_file(self, image_id: str) -> Path:
        return self._meta_root / "dicom" / f"{image_id}.json"

    def _keep_headers(self, image_id: str, headers: Path | None) -> None:
        target = self._headers_file(image_id)
        if headers is None:
            target.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(headers, target)
        fsync_dir(target.parent)

    def dicom_headers_path(self, image_id: str) -> Path | None:
        """The headers of the DICOM series image `image_id` was decoded from; None when it came otherwise."""
        path = self._headers_file(check_image_id(image_id))
        return path if path.is_file() else None
