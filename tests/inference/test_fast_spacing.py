"""FastSpacingd: MONAI's Spacingd geometry, resampled separably in float32, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd

from aiaa_server.inference.fast_spacing import FastSpacingd


def _affine(kind: str) -> np.ndarray:
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 5.0]
    if kind == "lps":
        affine[:2] *= -1.0
    if kind == "oblique":
        c, s = np.cos(0.3), np.sin(0.3)
        affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]
    return affine


def _image(kind: str, dtype: type = np.int16) -> MetaTensor:
    rng = np.random.default_rng(7)
    voxels = rng.integers(-1000, 1000, size=(1, 45, 38, 14)).astype(dtype)
    return MetaTensor(torch.from_numpy(voxels), affine=torch.as_tensor(_affine(kind)))


def _spy_on_monai(monkeypatch: pytest.MonkeyPatch, spacing: Spacingd) -> list[int]:
    """Counts the eager (resampling) calls of `spacing`'s array transform."""
    calls: list[int] = []
    transform = spacing.spacing_transform
    original = type(transform).__call__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self is transform and not kwargs.get("lazy"):
            calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(transform), "__call__", counting)
    return calls


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_matches_monai_spacingd(kind: str, padding_mode: str, dtype: str | None) -> None:
    """Same shape, affine and applied operations as MONAI's Spacingd; values within float32 rounding
    (MONAI's float32 grid_sample normalises coordinates, ~1e-5 of the range; its float64 path agrees ~1e-8).
    Spacingd never rotates, so an oblique volume's voxel → voxel matrix is still axis-aligned: fast path too."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    spacing = Spacingd(keys="image", pixdim=[2.5, 2.0, 3.0], mode="bilinear", padding_mode=padding_mode, **kwargs)
    reference = spacing({"image": _image(kind)})["image"]
    fast = FastSpacingd(spacing)({"image": _image(kind)})["image"]
    assert fast.shape == reference.shape
    assert fast.dtype == torch.float32
    np.testing.assert_allclose(fast.affine.numpy(), reference.affine.numpy(), atol=1e-9)
    tolerance = 1e-3 if dtype is None else 0.05  # of values in [-1000, 1000]: float32 rounding
    assert float((fast.as_tensor() - reference.as_tensor().float()).abs().max()) <= tolerance
    assert [op["class"] for op in fast.applied_operations] == [op["class"] for op in reference.applied_operations]


def test_int16_and_float32_inputs_give_the_same_result() -> None:
    """The fast path reads int16 directly: no float copy of the input needed first."""
    spacing = Spacingd(keys="image", pixdim=[2.5, 2.5, 2.5], mode="bilinear", dtype="float32")
    from_int16 = FastSpacingd(spacing)({"image": _image("ras")})["image"]
    from_float = FastSpacingd(spacing)({"image": _image("ras", np.float32)})["image"]
    assert torch.equal(from_int16.as_tensor(), from_float.as_tensor())


def test_fast_path_skips_monai_resampling(monkeypatch: pytest.MonkeyPatch) -> None:
    spacing = Spacingd(keys="image", pixdim=[2.5, 2.5, 2.5], mode="bilinear")
    calls = _spy_on_monai(monkeypatch, spacing)
    FastSpacingd(spacing)({"image": _image("lps")})
    assert calls == []


@pytest.mark.parametrize("options", [{"mode": "nearest"}, {"mode": "bilinear", "align_corners": True},
                                     {"mode": "bilinear", "padding_mode": "reflection"}])
def test_other_modes_fall_back_to_monai(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    spacing = Spacingd(keys="image", pixdim=[2.5, 2.5, 2.5], **options)
    reference = spacing({"image": _image("ras")})["image"]
    calls = _spy_on_monai(monkeypatch, spacing)
    out = FastSpacingd(spacing)({"image": _image("ras")})["image"]
    assert calls == [1]
    assert torch.equal(out.as_tensor(), reference.as_tensor())


def test_inverse_undoes_like_monai() -> None:
    """Invertd-style round trip: MONAI's inverse finds the operation the fast path recorded."""
    spacing = Spacingd(keys="image", pixdim=[2.5, 2.5, 2.5], mode="bilinear")
    wrapped = FastSpacingd(spacing)
    image = _image("ras")
    back = wrapped.inverse(wrapped({"image": image}))["image"]
    assert back.shape == image.shape
    np.testing.assert_allclose(back.affine.numpy(), image.affine.numpy(), atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("fortran", [False, True])
def test_slabs_equal_one_pass(padding_mode: str, fortran: bool) -> None:
    """Resampling slab by slab (a few planes at a time, flipped and permuted axes), from a C- or a
    Fortran-ordered (NIfTI) source, gives the one-pass result."""
    from aiaa_server.imaging.sampling import sample_grid
    from aiaa_server.inference.fast_spacing import _sample_in_slabs

    source = _image("ras").as_tensor()
    if fortran:
        source = torch.from_numpy(np.asfortranarray(source[0].numpy()))[None]
        assert source.stride()[1] == 1
    matrix = np.array([[0.0, 0.0, 0.5, 1.0], [-2.7, 0.0, 0.0, 37.0], [0.0, 3.1, 0.0, -0.4], [0.0, 0.0, 0.0, 1.0]])
    shape = (6, 12, 20)
    whole = sample_grid(source, matrix, shape, padding_mode=padding_mode)
    slabbed = _sample_in_slabs(source, matrix, shape, padding_mode, slab_voxels=3 * 6 * 12)
    assert torch.equal(slabbed, whole)
