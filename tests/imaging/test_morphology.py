"""Cross-shaped erosion and dilation by slicing, against scipy's generic implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aiaa_server.imaging.morphology import dilate_cross, erode_cross


@pytest.mark.parametrize("shape", [(17, 13, 9), (12, 8)])
def test_the_same_as_scipy_with_the_cross(shape: tuple[int, ...]) -> None:
    mask = np.random.default_rng(1).random(shape) > 0.35
    cross = ndimage.generate_binary_structure(len(shape), 1)
    within = np.random.default_rng(2).random(shape) > 0.2
    np.testing.assert_array_equal(dilate_cross(mask), ndimage.binary_dilation(mask, cross))
    np.testing.assert_array_equal(dilate_cross(mask, within), ndimage.binary_dilation(mask, cross) & within)
    # scipy's border_value=1 is "outside counts as inside", as here
    np.testing.assert_array_equal(erode_cross(mask), ndimage.binary_erosion(mask, cross, border_value=1))


def test_inputs_are_not_changed() -> None:
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    before = mask.copy()
    assert dilate_cross(mask).sum() == 7 and not erode_cross(mask).any()
    np.testing.assert_array_equal(mask, before)
