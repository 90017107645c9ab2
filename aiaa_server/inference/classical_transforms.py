"""Weight-free "networks": transforms a config names as its `inference.network` instead of a TorchScript model.

Configs name them by short name (`RegionGrowd`) or as `aiaa.transforms.RegionGrowd`. The pipeline runs the
network transform on the pre-processed data in place of the engine (`ModelPipeline.infer`); it reads the
image under `keys` (the config's `inference.input` unless its args say otherwise) and writes the result under
`output` (`inference.output`). The classes must be defined in this module: the MMAR allow-list
(`mmar.safety`) accepts `aiaa.transforms.*` classes of the modules it lists, this one among them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import MapTransform

from aiaa_server.errors import InvalidParams, ModelError
from aiaa_server.imaging.region_growing import RegionGrowError, RegionGrowParams, grow_region
from aiaa_server.inference.click_geometry import spacing_of
from aiaa_server.inference.click_transforms import _click_arrays, _original_grid
from aiaa_server.inference.tensors import plain_tensor

__all__ = ["RegionGrowd"]


class RegionGrowd(MapTransform):
    """DeepGrow 3D without a network: confidence-connected region growing from the request's clicks
    (`imaging.region_growing.grow_region`), on the input grid, any modality.

    The image must be the input as loaded (`LoadImaged`, optionally `EnsureChannelFirstd`): the algorithm works
    on the input's voxels and spacing, and the mask it writes under `output` is a uint8 (X, Y, Z) array on
    that grid. With no foreground click, `current_point` counts as one unless it is also a background click;
    with none at all the mask is empty. `result[crop]` = the ROI grown in, `[[x0, x1], [y0, y1], [z0, z1]]`.

    Args:
        keys: the image key (the first one is used).
        output: the data key of the mask.
        k, iterations, smoothing_mm, seed_radius_mm, roi_mm, max_roi_voxels, opening_voxels, boundary_mm,
            fill_holes, reach: the algorithm's parameters (see `RegionGrowParams`; out-of-range values raise
            ValueError, so a config naming them does not load).
        foreground, background, current_point: the data keys of the click lists (the protocol's by default).
        result, crop: where the ROI box goes in the result JSON; `crop=None`: nowhere.
    """

    def __init__(self, keys: Any = "image", output: str = "pred", k: float = 2.5, iterations: int = 4,
                 smoothing_mm: float = 1.0, seed_radius_mm: float = 4.0, roi_mm: float = 256.0,
                 max_roi_voxels: int = 256**3, opening_voxels: int = 1, boundary_mm: float = 1.5,
                 fill_holes: bool = True, reach: float = 2.0, foreground: str = "foreground", background: str = "background",
                 current_point: str = "current_point", result: str = "result", crop: str | None = "crop",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output = output
        self.params = RegionGrowParams(
            k=k, iterations=iterations, smoothing_mm=smoothing_mm, seed_radius_mm=seed_radius_mm, roi_mm=roi_mm,
            max_roi_voxels=max_roi_voxels, opening_voxels=opening_voxels, boundary_mm=boundary_mm,
            fill_holes=fill_holes, reach=reach,
        )
        self.keys_clicks = (foreground, background, current_point)
        self.result = result
        self.crop = crop

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with the mask under `output` (and the ROI box in the result JSON).

        Raises:
            InvalidParams: (400) a click outside the image, or foreground clicks spanning more than
                `max_roi_voxels`.
            ModelError: (500) the image is not the input as loaded (resampled, several channels).
        """
        d = dict(data)
        key = self.first_key(d)
        affine, shape = _original_grid(d[key], key)
        values = plain_tensor(d[key]).detach().cpu().numpy()
        while values.ndim > 3 and values.shape[0] == 1:
            values = values[0]
        current_affine = np.asarray(d[key].affine, dtype=np.float64)
        if tuple(values.shape) != tuple(shape) or not np.allclose(current_affine, affine, atol=1e-4):
            raise ModelError(f"RegionGrowd needs the image on its input grid (shape {list(shape)}), got "
                             f"{list(values.shape)}: no resampling, reorienting or cropping pre-transform may come before it")
        foreground, background, current = _click_arrays(d, self.keys_clicks, shape)
        if not len(foreground) and len(current) and not any(np.array_equal(current[-1], b) for b in background):
            foreground = current[-1:]
        try:
            grown = grow_region(values, spacing_of(affine), foreground, background, self.params)
        except RegionGrowError as exc:
            raise InvalidParams(str(exc)) from exc
        d[self.output] = grown.mask
        if self.crop:
            d[self.result] = {**(d.get(self.result) or {}), self.crop: grown.roi}
        return d
