"""Random 3D "CT-like" scenes of generic shapes, and DeepGrow/DExtr3D click simulation.

Used to train and evaluate the bundled interactive DEMO models (DeepGrow 2D/3D, DExtr3D) without patient
data.  A scene is a volume in Hounsfield-like units with several objects (ellipsoids, smoothly deformed
blobs, tubes, rounded boxes, tori) on a textured background; objects may touch each other and are painted
with different intensities.  Shape families can be held out (`HELDOUT_FAMILIES`) to check that a model
segments "the structure that was clicked" rather than shapes it has memorised.

All geometry is defined in world millimetres (RAS, NIfTI convention) and sampled through the scene's
affine, so scenes can have any spacing and an RAS or LPS-style axis layout.  Everything is vectorised
numpy; each object is evaluated only inside its bounding box.

Clicks follow the DeepGrow papers: the first click at the object's most interior point (distance-transform
maximum, with jitter), later clicks at the most interior point of the largest error region (foreground
click in a false-negative region, background click in a false-positive one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from aiaa_server.imaging.masks import dice, foreground_box  # dice re-exported (`__all__`): the one Dice of the project

__all__ = [
    "ALL_FAMILIES",
    "HELDOUT_FAMILIES",
    "TRAIN_FAMILIES",
    "Clicks",
    "Scene",
    "dice",
    "extreme_points",
    "first_click",
    "make_scene",
    "next_click",
    "pick_object",
    "scene_affine",
]

TRAIN_FAMILIES: tuple[str, ...] = ("ellipsoid", "blob", "tube", "box")
HELDOUT_FAMILIES: tuple[str, ...] = ("torus",)
ALL_FAMILIES: tuple[str, ...] = TRAIN_FAMILIES + HELDOUT_FAMILIES

Field = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # local mm coords -> inside-ness (<=0 inside)


@dataclass
class Scene:
    """A generated volume: `image` HU float32 `[i, j, k]`, `labels` int16 (0 background, 1..n objects)."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    families: list[str] = field(default_factory=list)  # families[k-1] is the family of label k

    @property
    def spacing(self) -> tuple[float, float, float]:
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def mask(self, label: int) -> np.ndarray:
        return self.labels == label

    def object_sizes(self) -> np.ndarray:
        """Voxel count of each label 1..n."""
        return np.bincount(self.labels.ravel(), minlength=len(self.families) + 1)[1:]


@dataclass
class Clicks:
    foreground: list[list[int]] = field(default_factory=list)
    background: list[list[int]] = field(default_factory=list)
    current: list[int] | None = None

    def params(self) -> dict[str, object]:
        """The request params a client would send."""
        params: dict[str, object] = {"foreground": self.foreground, "background": self.background}
        if self.current is not None:
            params["current_point"] = [self.current]
        return params

    @property
    def count(self) -> int:
        return len(self.foreground) + len(self.background)


# --------------------------------------------------------------------------------------------------- #
# geometry
# --------------------------------------------------------------------------------------------------- #


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def _deformation(rng: np.random.Generator, amplitude: float, scale_mm: float, waves: int = 4) -> Field:
    """A smooth random displacement of the implicit function (sum of low-frequency plane waves)."""
    directions = rng.normal(size=(waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    freqs = rng.uniform(0.6, 2.0, size=waves) * (2 * np.pi / max(scale_mm, 1.0))
    phases = rng.uniform(0, 2 * np.pi, size=waves)
    weights = rng.uniform(-1.0, 1.0, size=waves) * amplitude / np.sqrt(waves)

    def deform(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
        for d, f, p, a in zip(directions, freqs, phases, weights):
            total += np.float32(a) * np.sin(np.float32(f) * (d[0] * u + d[1] * v + d[2] * w) + np.float32(p))
        return total

    return deform


def _shape_field(family: str, rng: np.random.Generator, size: float) -> tuple[Field, float]:
    """Implicit function in local mm coordinates (<= 0 inside, roughly a distance in units of `size`) and
    the radius of a sphere that contains the shape."""
    if family == "ellipsoid":
        semi = size * rng.uniform(0.55, 1.0, size=3)
        return (lambda u, v, w: np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2) - 1.0,
                float(semi.max()))
    if family == "blob":
        semi = size * rng.uniform(0.6, 1.0, size=3)
        deform = _deformation(rng, amplitude=rng.uniform(0.25, 0.45), scale_mm=size * 1.2, waves=5)
        return (lambda u, v, w: np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2) - 1.0
                + deform(u, v, w), float(semi.max()) * 1.5)
    if family == "tube":
        radius = size * rng.uniform(0.25, 0.45)
        half_length = size * rng.uniform(1.0, 1.6)
        bend = rng.uniform(-0.6, 0.6) / half_length  # curvature of the axis in the u-v plane

        def tube(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
            radial = np.sqrt((v - bend * w * w) ** 2 + u * u) / radius
            along = np.abs(w) / half_length
            return np.maximum(radial, along) - 1.0

        return tube, float(np.hypot(half_length, radius + abs(bend) * half_length ** 2)) * 1.05
    if family == "box":
        half = size * rng.uniform(0.5, 0.9, size=3)
        rounding = 4.0  # superellipse exponent: 2 = ellipsoid, large = sharp box

        def box(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
            s = (np.abs(u / half[0]) ** rounding + np.abs(v / half[1]) ** rounding
                 + np.abs(w / half[2]) ** rounding)
            return s ** (1.0 / rounding) - 1.0

        return box, float(np.linalg.norm(half))
    if family == "torus":
        major = size * rng.uniform(0.55, 0.8)
        minor = major * rng.uniform(0.3, 0.5)

        def torus(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
            ring = np.sqrt(u * u + v * v) - major
            return np.sqrt(ring * ring + w * w) / minor - 1.0

        return torus, major + minor
    raise ValueError(f"unknown shape family {family!r}; known: {', '.join(ALL_FAMILIES)}")


def _index_box(affine: np.ndarray, shape: tuple[int, int, int], centre: np.ndarray, radius: float
               ) -> tuple[slice, slice, slice] | None:
    """Index-space bounding box of a world sphere, clipped to the volume (None if outside)."""
    inverse = np.linalg.inv(affine)
    corners = np.array([[centre[0] + sx * radius, centre[1] + sy * radius, centre[2] + sz * radius, 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    indices = (inverse @ corners.T)[:3]
    lo = np.maximum(np.floor(indices.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(indices.max(axis=1)).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))


def _local_coords(affine: np.ndarray, box: tuple[slice, slice, slice], centre: np.ndarray, rotation: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object-local mm coordinates (u, v, w) of every voxel in `box` (float32 arrays of the box's shape)."""
    i, j, k = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    origin, steps = affine[:3, 3], affine[:3, :3]
    world = [
        (origin[a] - centre[a]) + steps[a, 0] * i[:, None, None] + steps[a, 1] * j[None, :, None]
        + steps[a, 2] * k[None, None, :]
        for a in range(3)
    ]
    world = [np.asarray(c, dtype=np.float32) for c in world]
    r = rotation.T.astype(np.float32)  # world -> local
    return tuple(r[row, 0] * world[0] + r[row, 1] * world[1] + r[row, 2] * world[2] for row in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------- #
# scenes
# --------------------------------------------------------------------------------------------------- #


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (filtered white noise computed at a coarse scale)."""
    factor = max(1, int(sigma_vox // 2))
    coarse_shape = tuple(max(2, int(np.ceil(s / factor))) for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32),
                                     sigma=max(sigma_vox / factor, 0.5))
    fine = F.interpolate(torch.from_numpy(coarse)[None, None], size=tuple(shape), mode="trilinear",
                         align_corners=True)[0, 0].numpy()
    fine -= fine.mean()
    return fine / (fine.std() + 1e-6)


def scene_affine(shape: tuple[int, int, int], spacing: Sequence[float], lps: bool = False,
                 centre: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """An axis-aligned affine whose field-of-view centre is at `centre` (world mm)."""
    sign = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    steps = sign * np.asarray(spacing, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(steps)
    affine[:3, 3] = np.asarray(centre, dtype=np.float64) - steps * (np.asarray(shape) - 1) / 2.0
    return affine


def _background(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    """Textured soft-tissue/fat background with a few large low-frequency patches."""
    base = rng.uniform(-60.0, 80.0)
    sigma_vox = float(rng.uniform(6.0, 14.0) / spacing.mean())
    texture = _smooth_noise(rng, shape, sigma_vox) * rng.uniform(8.0, 30.0)
    patches = _smooth_noise(rng, shape, float(25.0 / spacing.mean()))
    fat = np.where(patches > rng.uniform(0.6, 1.2), rng.uniform(-130.0, -60.0) - base, 0.0).astype(np.float32)
    return (base + texture + fat).astype(np.float32)


def _object_intensity(rng: np.random.Generator, avoid: Sequence[float], min_contrast: float) -> float:
    for _ in range(50):
        value = float(rng.choice([rng.uniform(-180.0, 10.0), rng.uniform(10.0, 160.0), rng.uniform(160.0, 450.0)],
                                 p=[0.2, 0.45, 0.35]))
        if all(abs(value - a) >= min_contrast for a in avoid):
            return value
    return value


def make_scene(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (96, 96, 96),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    families: Sequence[str] = TRAIN_FAMILIES,
    n_objects: tuple[int, int] = (3, 6),
    size_mm: tuple[float, float] = (12.0, 40.0),
    lps: bool | None = None,
    noise_hu: tuple[float, float] = (5.0, 25.0),
    touch_probability: float = 0.5,
) -> Scene:
    """A random scene; objects are placed near the centre, some touching a previously placed one."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if lps is None:
        lps = bool(rng.random() < 0.5)
    affine = scene_affine(shape, spacing_arr, lps, centre=rng.uniform(-20, 20, size=3))
    fov_centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    fov_half = spacing_arr * np.asarray(shape) / 2.0

    image = _background(rng, shape, spacing_arr)
    labels = np.zeros(shape, dtype=np.int16)
    placed: list[tuple[np.ndarray, float, float]] = []  # (centre, radius, intensity)
    chosen: list[str] = []
    count = int(rng.integers(n_objects[0], n_objects[1] + 1))
    for _ in range(count):
        family = str(rng.choice(list(families)))
        size = float(rng.uniform(*size_mm))
        implicit, radius = _shape_field(family, rng, size)
        if placed and rng.random() < touch_probability:
            anchor, anchor_radius, _ = placed[int(rng.integers(len(placed)))]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            centre = anchor + direction * (anchor_radius + radius) * rng.uniform(0.45, 0.75)
        else:
            centre = fov_centre + rng.uniform(-0.55, 0.55, size=3) * np.maximum(fov_half - radius * 0.5, 1.0)
        box = _index_box(affine, shape, centre, radius)
        if box is None:
            continue
        neighbours = [p[2] for p in placed if np.linalg.norm(p[0] - centre) < (p[1] + radius) * 1.1]
        background_level = float(np.median(image[box]))
        intensity = _object_intensity(rng, neighbours + [background_level], min_contrast=45.0)
        inside = implicit(*_local_coords(affine, box, centre, _random_rotation(rng))) <= 0.0
        if inside.sum() < 30:
            continue
        region = image[box]
        inner_texture = _smooth_noise(rng, inside.shape, 3.0)[...] * rng.uniform(0.0, 15.0)
        region[inside] = (intensity + inner_texture[inside]).astype(np.float32)
        label = len(chosen) + 1
        labels[box][inside] = label
        chosen.append(family)
        placed.append((centre, radius, intensity))
    image = ndimage.gaussian_filter(image, sigma=float(rng.uniform(0.4, 0.9)))  # partial-volume blur
    image += rng.normal(0.0, rng.uniform(*noise_hu), size=shape).astype(np.float32)
    return Scene(image=image.astype(np.float32), labels=labels, affine=affine, families=chosen)


def pick_object(rng: np.random.Generator, scene: Scene, min_voxels: int = 200) -> int | None:
    """A random label that is big enough to be clicked on, or None."""
    sizes = scene.object_sizes()
    candidates = np.nonzero(sizes >= min_voxels)[0] + 1
    if candidates.size == 0:
        return None
    return int(rng.choice(candidates))


# --------------------------------------------------------------------------------------------------- #
# clicks
# --------------------------------------------------------------------------------------------------- #


def _interior_point(region: np.ndarray, rng: np.random.Generator | None, jitter: float = 0.0,
                    sampling: Sequence[float] | None = None) -> list[int]:
    """A point deep inside `region`: the distance-transform maximum, or (with jitter > 0) a random voxel
    among those at least (1 - jitter) of the maximum depth."""
    inner = tuple(slice(1, -1) for _ in range(region.ndim))
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=sampling)[inner]
    peak = float(distance.max())
    if rng is not None and jitter > 0:
        candidates = np.argwhere(distance >= peak * (1.0 - jitter))
        return [int(c) for c in candidates[int(rng.integers(len(candidates)))]]
    return [int(c) for c in np.unravel_index(int(np.argmax(distance)), distance.shape)]


def _cropped(mask: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`mask` cut to its bounding box (+margin), and the box origin."""
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - margin, 0)
    hi = np.minimum(nz.max(axis=0) + margin + 1, mask.shape)
    return mask[tuple(slice(a, b) for a, b in zip(lo, hi))], lo


def first_click(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.0,
                spacing: Sequence[float] | None = None) -> list[int]:
    """The first DeepGrow click: a foreground voxel far from the object's boundary (2D or 3D masks)."""
    sub, origin = _cropped(mask)
    point = _interior_point(sub, rng, jitter, spacing)
    return [int(p + o) for p, o in zip(point, origin)]


def next_click(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None
               ) -> tuple[bool, list[int]] | None:
    """The corrective click: (is_foreground, point) at the most interior voxel of the largest error region
    (false negatives → foreground click, false positives → background click; a tie goes to the foreground);
    None if nothing is wrong.  Works inside the bounding box of the errors (same result, bounded cost)."""
    box = foreground_box(np.logical_xor(truth, prediction))
    if box is None:
        return None
    truth, prediction = np.asarray(truth[box], dtype=bool), np.asarray(prediction[box], dtype=bool)
    best: tuple[int, bool, np.ndarray] | None = None
    for is_fg, errors in ((True, truth & ~prediction), (False, prediction & ~truth)):
        if not errors.any():
            continue
        components, _count = ndimage.label(errors)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), is_fg, components == largest)
    if best is None:
        return None
    return best[1], [int(p + b.start) for p, b in zip(first_click(best[2], spacing=spacing), box)]


def extreme_points(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: int = 0) -> list[list[int]]:
    """Six boundary points: for each axis, a voxel on the min and on the max face of the object (the one
    closest to the face's centre), optionally jittered by up to `jitter` voxels, clipped to the volume."""
    points: list[list[int]] = []
    nz = np.argwhere(mask)
    for axis in range(3):
        for index in (nz[:, axis].min(), nz[:, axis].max()):
            on_face = nz[nz[:, axis] == index]
            centre = on_face.mean(axis=0)
            point = on_face[int(np.argmin(np.linalg.norm(on_face - centre, axis=1)))].astype(int)
            if rng is not None and jitter > 0:
                point = point + rng.integers(-jitter, jitter + 1, size=3)
            points.append([int(np.clip(p, 0, s - 1)) for p, s in zip(point, mask.shape)])
    return points
