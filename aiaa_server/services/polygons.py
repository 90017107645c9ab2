"""Polygon use cases (protocol 7.5, 7.6): a mask → polygons per slice; move one vertex → polygons and mask.

2D images travel as PNG, 3D ones as NIfTI/NRRD; the polygon geometry itself is `aiaa_server.imaging.polygons`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiaa_server.errors import BadRequest, InvalidImage, InvalidParams
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import Volume, encode_volume, read_volume
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.imaging.png import decode_png, encode_png, png_shape
from aiaa_server.imaging.polygon_raster import polygons_to_mask, polygons_to_slice
from aiaa_server.imaging.polygons import (
    PolygonError,
    mask_to_polygons,
    move_vertex,
    move_vertex_3d,
)
from aiaa_server.services.inference import ImageUpload
from aiaa_server.services.polygon_params import (
    FixPolygonParams,
    Mask2PolygonParams,
    check_index,
    parse_polygon_slices,
    parse_polygons,
    validate_params,
)


@dataclass(frozen=True)
class FixedPolygon:
    """fixpolygon's answer: the moved polygons, their mask encoded like the input, and its file name."""

    poly: list[Any]
    mask: bytes
    filename: str


class PolygonService:
    """mask2polygon and fixpolygon on uploaded files, decoded within `limits`.

    Both take the request's `params` as sent and the uploaded file (None when the client sent none); they
    block (decoding, rasterising), so async callers run them in a worker thread.
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits

    def mask_to_polygons(self, params: dict[str, Any], upload: ImageUpload | None) -> list[Any]:
        """Polygons of a 3D mask (or a 2D PNG one), one list per z slice; a 2D mask is one slice."""
        more_points = validate_params(Mask2PolygonParams, params).more_points
        mask = self._read_mask(require_upload(upload))
        if mask.ndim not in (2, 3) or mask.size == 0:
            raise InvalidImage(f"mask2polygon takes a non-empty 2D or 3D mask, got shape {list(mask.shape)}")
        try:
            return mask_to_polygons(mask, more_points)
        except PolygonError as exc:
            raise InvalidImage(str(exc)) from exc

    def fix_polygon(self, params: dict[str, Any], upload: ImageUpload | None) -> FixedPolygon:
        """Move one vertex (and its neighbours) of `params.poly`; the mask is drawn on the uploaded image's grid."""
        parsed = validate_params(FixPolygonParams, params)
        upload = require_upload(upload)
        fmt = detect_format(upload.path, upload.filename)
        try:
            if parsed.dims() == 2:
                if fmt is not ImageFormat.PNG:
                    raise InvalidImage(f"2D fixpolygon takes a PNG image, got {fmt.value}")
                poly, mask, extension = self._fix_2d(upload, parsed)
            else:
                if not fmt.is_volume_format:
                    raise InvalidImage(f"3D fixpolygon takes a NIfTI or NRRD volume, got {fmt.value}")
                poly, mask, extension = self._fix_3d(upload, parsed)
        except PolygonError as exc:  # too far outside the image, or too costly to rasterise
            raise InvalidParams(str(exc)) from exc
        return FixedPolygon(poly, mask, fixed_filename(upload.filename, extension))

    def _read_mask(self, upload: ImageUpload) -> np.ndarray:
        if detect_format(upload.path, upload.filename) is ImageFormat.PNG:
            return decode_png(upload.path.read_bytes(), limits=self.limits).T  # [x, y], as volumes are
        return read_volume(upload.path, upload.filename, limits=self.limits).array

    def _fix_2d(self, upload: ImageUpload, params: FixPolygonParams) -> tuple[list[Any], bytes, str]:
        rows, columns = png_shape(upload.path.read_bytes(), limits=self.limits)
        polygons = parse_polygons(params.poly)
        check_index(polygons, params.polygon_index, "polygon_index")
        check_index(polygons[params.polygon_index], params.vertex_index, "vertex_index")
        updated = move_vertex(polygons, params.polygon_index, params.vertex_index, params.vertex_offset,
                              params.propagate_neighbor)
        mask = polygons_to_slice(updated, (columns, rows))  # [x, y]; PNG rows are y
        return updated, encode_png(mask.T), "png"

    def _fix_3d(self, upload: ImageUpload, params: FixPolygonParams) -> tuple[list[Any], bytes, str]:
        volume = self._read_3d_volume(upload)
        if len(params.poly) > volume.spatial_shape[2]:
            raise InvalidParams(f"poly has {len(params.poly)} slices but the volume only {volume.spatial_shape[2]}")
        slices = parse_polygon_slices(params.poly)
        check_index(slices, params.slice_index, "slice_index")
        check_index(slices[params.slice_index], params.polygon_index, "polygon_index")
        check_index(slices[params.slice_index][params.polygon_index], params.vertex_index, "vertex_index")
        updated = move_vertex_3d(slices, params.slice_index, params.polygon_index, params.vertex_index,
                                 params.vertex_offset, params.propagate_neighbor, params.propagate_neighbor_3d)
        mask = polygons_to_mask(updated, volume.spatial_shape)  # type: ignore[arg-type]
        fmt = volume.format
        payload = encode_volume(mask, volume, fmt, compress=fmt is not ImageFormat.NIFTI)
        return updated, payload, fmt.value.lstrip(".")

    def _read_3d_volume(self, upload: ImageUpload) -> Volume:
        # read_volume already refused empty images and bad geometry; a 2D NIfTI still has no z to draw on
        volume = read_volume(upload.path, upload.filename, limits=self.limits)
        if volume.array.ndim != 3:
            raise InvalidImage(f"3D fixpolygon needs a 3D volume, got shape {list(volume.spatial_shape)}")
        return volume


def require_upload(upload: ImageUpload | None) -> ImageUpload:
    """The uploaded image; BadRequest when the client sent none."""
    if upload is None:
        raise BadRequest("no image uploaded: send the image as a multipart file part")
    return upload


def fixed_filename(client_filename: str, extension: str) -> str:
    """`<stem>_fixed.<extension>`, the stem taken from the client's file name (`image` when it has none)."""
    stem = Path(client_basename(client_filename) or "image").name.split(".")[0] or "image"
    return f"{stem}_fixed.{extension}"
