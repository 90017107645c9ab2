"""Training scenes painted from real label maps, in the style of SynthSeg (Billot et al., 2023).

A scene is sampled from a label map (real anatomy: the AAL atlas on Colin27 with its brain mask and head;
the abdominal phantoms; the synthetic shapes) under a random rotation, flip, scale and voxel grid (isotropic
or thick slices), then every label is painted with a random intensity: labels share one of a few random
"tissue" intensities so touching neighbours are often alike, each gets its own texture, and the whole image
gets blur, a smooth bias field, a gamma change and noise. The networks thus learn where a clicked structure
ends from edges and shape, whatever the modality, contrast, size (3 mm to beyond the crop) or resolution.

Held out (never a training target, and removed from the training label maps so their outlines are never
seen): the AAL regions evaluated by `aiaa_demo.evaluate_real`, on both sides (`HELD_OUT_AAL`). The other
evaluated structures come from volumes never used here (the PyRadiomics scans, MNI152); the Colin27 T1
intensities are never used either (only its label maps). Unions of many regions (a hemisphere, the brain)
are never targets; the brain outline is however seen as the edge between brain labels and the head label.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from aiaa_demo.synthetic_shapes import Scene, scene_affine

HELD_OUT_AAL = (r"Amygdala_[LR]", r"Pallidum_[LR]", r"Hippocampus_[LR]", r"Putamen_[LR]", r"Thalamus_[LR]",
                r"Temporal_Mid_[LR]", r"Cerebelum_.*")
WHITE_MATTER, HEAD = 250, 251  # labels added to the AAL map: unlabelled brain, non-brain head tissue
SCENE_FOV_MM = 160.0
MAX_SCENE_SIDE = 112  # voxels per scene axis


@dataclass
class LabelMap:
    """A real or generated label map (uint8 `[i, j, k]`, 0 = outside) at `spacing` mm.

    `targets` are the label values that may be (the seed of) a training target; `points` holds a few
    voxel indices inside each of them, to centre scenes without scanning the map."""

    name: str
    labels: np.ndarray
    spacing: np.ndarray
    targets: tuple[int, ...]
    points: dict[int, np.ndarray]

    @classmethod
    def build(cls, name: str, labels: np.ndarray, spacing: np.ndarray, targets: tuple[int, ...],
              rng: np.random.Generator) -> LabelMap:
        flat = labels.ravel()
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], targets)
        ends = np.searchsorted(flat[order], targets, side="right")
        points = {}
        for value, lo, hi in zip(targets, starts, ends):
            if hi > lo:
                picked = order[lo + rng.integers(0, hi - lo, size=min(64, hi - lo))]
                points[int(value)] = np.stack(np.unravel_index(picked, labels.shape), axis=1)
        return cls(name, labels, np.asarray(spacing, dtype=np.float64), tuple(points), points)


def held_out_values(names: dict[str, int]) -> list[int]:
    """The AAL values whose names match `HELD_OUT_AAL`."""
    return [value for name, value in names.items() if any(re.fullmatch(p, name) for p in HELD_OUT_AAL)]


def remove_labels(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """Give every voxel of `values` the label of its nearest voxel outside them (their outlines vanish)."""
    removed = np.isin(labels, values)
    nearest = ndimage.distance_transform_edt(removed, return_distances=False, return_indices=True)
    return labels[tuple(nearest)]


def aal_head_map(cache: Path | None, rng: np.random.Generator) -> LabelMap:
    """AAL on Colin27 minus the held-out regions, plus unlabelled brain (WM) and the head around the brain."""
    from aiaa_demo.datasets import load

    t1, affine, aal, names = load("colin27_aal", cache)
    _, _, brain, _ = load("colin27_brain", cache)
    labels = remove_labels(aal, held_out_values(names)).astype(np.uint8)
    brain_mask = brain > 0
    labels[brain_mask & (labels == 0)] = WHITE_MATTER
    head = ndimage.binary_closing(t1 > 0.2 * np.percentile(t1, 99), iterations=2)
    head = ndimage.binary_fill_holes(head)
    labels[head & ~brain_mask & (labels == 0)] = HEAD
    kept = tuple(int(v) for v in np.unique(labels) if v)
    return LabelMap.build("colin27_aal", labels, np.linalg.norm(affine[:3, :3], axis=0), kept, rng)


def phantom_map(rng: np.random.Generator) -> LabelMap:
    """An abdominal phantom's organs plus body, fat-like and bone-like regions cut from its own HU image."""
    from aiaa_demo.phantoms import make_abdomen_phantom

    phantom = make_abdomen_phantom(rng)
    labels = phantom.labels.astype(np.uint8)
    free = labels == 0
    labels[free & (phantom.image > 250)] = 20
    labels[free & (phantom.image > -200) & (phantom.image <= 250)] = 21
    labels[free & (phantom.image > -600) & (phantom.image <= -200)] = 22
    kept = tuple(int(v) for v in np.unique(labels) if v)
    return LabelMap.build("phantom", labels, np.linalg.norm(phantom.affine[:3, :3], axis=0), kept, rng)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        matrix = matrix @ rot
    return matrix


def scene_grid(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Random voxel spacing (60 % isotropic 1–3 mm, else 0.7–1.6 mm in plane and 2.5–6 mm slices), shape."""
    if rng.random() < 0.6:
        spacing = np.full(3, rng.uniform(1.0, 3.0))
    else:
        spacing = np.array([rng.uniform(0.7, 1.6)] * 2 + [rng.uniform(2.5, 6.0)])
    shape = tuple(int(min(MAX_SCENE_SIDE, math.ceil(SCENE_FOV_MM / s))) for s in spacing)
    return spacing, shape  # type: ignore[return-value]


def sample_labels(rng: np.random.Generator, source: LabelMap, centre_vox: np.ndarray, spacing: np.ndarray,
                  shape: tuple[int, int, int], zoom: float) -> np.ndarray:
    """`source` resampled (nearest) on a `shape` grid of `spacing` mm centred on `centre_vox`, the anatomy
    scaled by `zoom`, randomly rotated (±20°) and flipped."""
    flips = np.where(rng.random(3) < 0.5, -1.0, 1.0)
    matrix = (_rotation(rng, 20.0) * flips) * (spacing / zoom)[None, :] / source.spacing[:, None]
    offset = centre_vox - matrix @ ((np.asarray(shape) - 1) / 2.0)
    return ndimage.affine_transform(source.labels, matrix, offset=offset, output_shape=shape, order=0,
                                    mode="constant", cval=0, prefilter=False)


def choose_target(rng: np.random.Generator, labels: np.ndarray, seed_value: int, targets: tuple[int, ...],
                  ) -> np.ndarray:
    """The seed label, or (35 %) its union with 1–4 touching target labels."""
    mask = labels == seed_value
    if rng.random() < 0.35:
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        touching = [int(v) for v in np.unique(labels[ring]) if v in targets and v != seed_value]
        if touching:
            extra = rng.choice(touching, size=min(len(touching), int(rng.integers(1, 5))), replace=False)
            mask |= np.isin(labels, extra)
    return mask


def paint(rng: np.random.Generator, labels: np.ndarray, spacing: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A random-contrast image of `labels` (float32 in about [0, 1000])."""
    groups = int(rng.integers(3, 13))
    tissue = rng.uniform(0.0, 1.0, groups)
    group_of = rng.integers(0, groups, 256)
    means = tissue[group_of] + rng.normal(0, 0.03, 256)
    if rng.random() < 0.6:  # the target's own intensity, near a neighbour's or not
        values = labels[target]
        means[np.unique(values)] = rng.uniform(0, 1)
    means[0] = rng.uniform(0, 0.15) if rng.random() < 0.7 else rng.uniform(0, 1)
    stds = rng.uniform(0.0, 0.08, 256)
    noise = _smooth_noise(rng, labels.shape, rng.uniform(0.5, 2.0))
    image = means[labels] + stds[labels] * noise
    image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.2) * spacing.min() / spacing)
    image *= _bias_field(rng, labels.shape, rng.uniform(0.0, 0.35))
    image = np.clip(image, 0.0, None)
    image = (image / max(float(image.max()), 1e-6)) ** math.exp(rng.normal(0.0, 0.25))
    image += rng.normal(0.0, rng.uniform(0.0, 0.05), image.shape)
    return (image * 1000.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    coarse = rng.normal(0.0, strength, (4, 4, 4))
    return np.exp(ndimage.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest"))


def painted_scene(rng: np.random.Generator, bank: list[LabelMap], min_mm3: float = 15.0,
                  max_tries: int = 20) -> tuple[Scene, np.ndarray]:
    """A painted scene of a random label map of `bank` and its target mask (at least `min_mm3`).

    Returns:
        (scene, target): `scene.image` float32 `[i, j, k]`, `scene.labels` the sampled label map (int16),
        `scene.affine` RAS (or LPS-flipped) with the scene spacing; `target` bool on the same grid.
    """
    for _ in range(max_tries):
        source = bank[int(rng.integers(0, len(bank)))]
        seed_value = int(rng.choice(source.targets))
        points = source.points[seed_value]
        centre = points[int(rng.integers(0, len(points)))] + rng.uniform(-3, 3, 3)
        spacing, shape = scene_grid(rng)
        zoom = math.exp(rng.uniform(math.log(0.3), math.log(1.6)))
        labels = sample_labels(rng, source, centre, spacing, shape, zoom)
        if not (labels == seed_value).any():
            continue
        target = choose_target(rng, labels, seed_value, source.targets)
        if target.sum() * float(np.prod(spacing)) < min_mm3:
            continue
        image = paint(rng, labels, spacing, target)
        affine = scene_affine(shape, spacing, lps=bool(rng.random() < 0.5))
        return Scene(image=image, labels=labels.astype(np.int16), affine=affine), target
    raise RuntimeError("no target found in the label maps")


def training_bank(rng: np.random.Generator, cache: Path | None = None, phantoms: int = 3) -> list[LabelMap]:
    """The label maps scenes are painted from: AAL/Colin27 (needs the dataset cache) and `phantoms`
    abdominal phantoms."""
    return [aal_head_map(cache, rng)] + [phantom_map(rng) for _ in range(phantoms)]


def mixed_scene(rng: np.random.Generator, bank: list[LabelMap], synthetic_share: float = 0.25,
                min_mm3: float = 15.0) -> tuple[Scene, np.ndarray]:
    """A painted scene (`1 - synthetic_share` of the time) or one of the project's synthetic shape scenes
    (kept so the synthetic figures hold), with its target mask."""
    if rng.random() >= synthetic_share:
        return painted_scene(rng, bank, min_mm3)
    from aiaa_demo.training import scene_objects

    scene, labels = scene_objects(rng, 1, max(min_mm3, 200.0))
    return scene, scene.mask(labels[0])
