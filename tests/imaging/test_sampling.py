"""Resampling between voxel grids: the axis-aligned fast path and the oblique path must both agree with
torch's grid_sample on the whole source (the definition), for both padding modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aiaa_server.imaging.sampling import sample_grid


def reference(source: torch.Tensor, matrix: np.ndarray, shape: tuple[int, ...], padding_mode: str) -> torch.Tensor:
    """grid_sample over the whole source, coordinates normalised for align_corners=True."""
    ndim = len(shape)
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    coords = index @ matrix[:ndim, :ndim].T + matrix[:ndim, ndim]
    sizes = np.asarray(source.shape[1:], dtype=np.float64) - 1
    normalised = coords / sizes * 2 - 1
    grid = torch.from_numpy(normalised[..., ::-1].copy()).float()
    return F.grid_sample(source[None].float(), grid[None], mode="bilinear", padding_mode=padding_mode,
                         align_corners=True)[0]


def homogeneous(linear: np.ndarray, offset: list[float]) -> np.ndarray:
    matrix = np.eye(len(offset) + 1)
    matrix[:-1, :-1] = linear
    matrix[:-1, -1] = offset
    return matrix


@pytest.fixture(scope="module")
def source() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, 41, 37, 23), generator=generator) * 100


AXIS_ALIGNED = [
    homogeneous(np.diag([0.5, 0.7, 0.3]), [3.2, 1.1, 2.0]),            # zoom in
    homogeneous(np.diag([2.5, -2.5, 1.5]), [1.0, 36.0, 0.3]),          # zoom out with a flip
    homogeneous(np.array([[0, 1.2, 0], [-0.9, 0, 0], [0, 0, 0.8]]), [-3.0, 30.0, 5.0]),  # axes swapped
    homogeneous(np.diag([1.3, 1.3, 1.3]), [-8.0, 20.0, 15.0]),         # partly outside the source
]


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("matrix", AXIS_ALIGNED, ids=["zoom-in", "flip", "swap", "outside"])
def test_axis_aligned_grids_match_grid_sample(source: torch.Tensor, matrix: np.ndarray, padding_mode: str) -> None:
    shape = (19, 17, 13)
    got = sample_grid(source, matrix, shape, padding_mode=padding_mode)
    assert got.shape == (2, *shape) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference(source, matrix, shape, padding_mode), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_oblique_grids_match_grid_sample_on_the_whole_source(source: torch.Tensor, padding_mode: str) -> None:
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for offset in ([12.0, 4.0, 3.0], [30.0, 30.0, 18.0], [60.0, 2.0, 2.0]):  # inside, across the edge, outside
        matrix = homogeneous(rotation * 0.9, offset)
        got = sample_grid(source, matrix, (15, 14, 9), padding_mode=padding_mode)
        torch.testing.assert_close(got, reference(source, matrix, (15, 14, 9), padding_mode), atol=2e-3, rtol=1e-4)


def test_two_dimensional_grids_and_integer_sources() -> None:
    image = torch.arange(20 * 30, dtype=torch.int16).reshape(1, 20, 30)
    matrix = homogeneous(np.diag([0.5, 2.0]), [2.0, 1.0])
    got = sample_grid(image, matrix, (10, 12))
    torch.testing.assert_close(got, reference(image, matrix, (10, 12), "border"), atol=1e-3, rtol=1e-5)
    assert float(got[0, 1, 0]) == pytest.approx(float(image[0, 2, 1]) * 0.5 + float(image[0, 3, 1]) * 0.5)


def test_unknown_padding_mode_is_refused(source: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        sample_grid(source, np.eye(4), (2, 2, 2), padding_mode="reflection")
