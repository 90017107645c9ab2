"""The phantom generator: body habitus and field of view, the painters in order, then the scanner."""

from __future__ import annotations

import numpy as np

from aiaa_demo.phantoms.body import (
    Abdomen,
    kidney_heights,
    paint_body_layers,
    paint_bowel,
    paint_colon_flexure,
    paint_paraspinal_muscles,
    paint_psoas,
    paint_ribs,
    paint_spine,
    paint_thorax,
    place_landmarks,
)
from aiaa_demo.phantoms.geometry import Canvas, Grid
from aiaa_demo.phantoms.organs import (
    paint_great_vessels,
    paint_kidneys,
    paint_liver,
    paint_pancreas,
    paint_spleen,
    paint_stomach,
    place_great_vessels,
    place_spleen,
)
from aiaa_demo.phantoms.phantom import Phantom


def _acquire(image: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """The scanner: blur (physical, in mm, and along z), noise, and the CT value range.

    Args:
        image: the painted HU volume, shape ``(I, J, K)`` float32 (changed in place when not blurred).
        rng: the phantom's random generator.
        spacing: voxel size in mm along the three axes.

    Returns:
        The acquired float32 image, same shape, clipped to [-1024, 3071] HU.
    """
    u = rng.uniform
    sx, sy, sz = spacing
    phys_blur = u(0.5, 1.0)
    sig = [phys_blur / sx, phys_blur / sy, u(0.3, 1.0) / sz]
    sig = [s if s >= 0.25 else 0.0 for s in sig]
    if any(s > 0 for s in sig):
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=sig, truncate=2.5, output=np.float32)
    noise = u(8, 25)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
    np.clip(image, -1024.0, 3071.0, out=image)
    return image



def _default_geometry(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
    body_half_width: float,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    fov_xy = float(np.clip(max(rng.uniform(300.0, 420.0), 2.1 * body_half_width), 300.0, 420.0))
    fov_z = rng.uniform(150.0, 260.0)
    if spacing is None:
        if shape is None:
            # keep random volumes modest: 160-256 voxels in plane covering the abdomen
            n = int(rng.integers(160, 257))
            sxy = fov_xy / n
            sz = float(rng.uniform(1.25, 5.0))
            return (n, n, max(8, round(fov_z / sz))), (sxy, sxy, sz)
        sxy = float(rng.uniform(0.6, 1.0))
        spacing = (sxy, sxy, float(rng.uniform(1.25, 5.0)))
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if shape is None:
        shape = (
            round(fov_xy / spacing[0]),
            round(fov_xy / spacing[1]),
            max(8, round(fov_z / spacing[2])),
        )
    return tuple(int(s) for s in shape), spacing  # type: ignore[return-value]


def make_abdomen_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    lps_orientation: bool | None = None,
) -> Phantom:
    """Generate a random synthetic abdominal CT with organ labels.

    Args:
        rng: numpy random generator (all randomness comes from it).
        shape: array shape ``(I, J, K)``.  ``None``: chosen so the field of view
            covers an abdomen (300-420 mm in plane, 150-260 mm in z).
        spacing: voxel size in mm.  ``None``: in-plane 0.6-1.0 mm and slice
            1.25-5 mm when ``shape`` is given; when both are ``None`` the volume
            is kept modest (160-256 voxels in plane, hence in-plane spacing
            FOV/n ~ 1.2-2.6 mm; slice spacing 1.25-5 mm).
        lps_orientation: ``True``: affine ``diag(-sx, -sy, sz)`` (DICOM-derived
            layout), ``False``: ``diag(sx, sy, sz)``; ``None``: random.

    Returns:
        A :class:`Phantom` (HU image, uint8 labels per :data:`ORGAN_LABELS`,
        affine).  The field-of-view centre is at the world origin plus a small
        random translation; the anatomy is centred on the world origin.
    """
    u = rng.uniform
    # ---------------- body habitus and geometry ---------------- #
    A0 = u(140.0, 180.0)  # lateral semi-axis of the body (mm)
    B0 = u(100.0, 130.0)  # antero-posterior semi-axis
    shape, spacing = _default_geometry(rng, shape, spacing, A0)
    if lps_orientation is None:
        lps_orientation = bool(rng.random() < 0.5)

    n = np.asarray(shape, dtype=np.float64)
    centre = np.array([u(-15, 15), u(-15, 15), u(-15, 15)])  # world position of the FOV centre
    sign = np.array([-1.0, -1.0, 1.0]) if lps_orientation else np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(sign * np.array(spacing))
    affine[:3, 3] = centre - sign * np.array(spacing) * (n - 1) / 2.0

    grid = Grid(affine, shape)
    full = grid.full()
    y0 = u(-10, 10)
    wob_f, wob_p = u(0.01, 0.03), u(0, 2 * np.pi)
    tf = u(8.0, 30.0)
    tm = u(6.0, 14.0)
    ab = Abdomen(rng, grid, Canvas(grid, rng), A0, B0, y0, wob_f, wob_p, tf, tm)

    # ---------------- tissues, in painting order (later wins) ---------------- #
    paint_body_layers(ab, full.X, full.Y, full.Z)
    place_landmarks(ab)
    paint_thorax(ab)
    paint_paraspinal_muscles(ab)
    zk_l, zk_r = kidney_heights(ab)
    paint_psoas(ab, max(zk_l, zk_r) + 10.0)
    paint_bowel(ab)
    paint_colon_flexure(ab)
    spleen = place_spleen(ab)  # defined early: the liver avoids it
    paint_stomach(ab)
    vessels = place_great_vessels(ab)
    paint_pancreas(ab, spleen, vessels)
    paint_liver(ab, spleen)
    paint_spleen(ab, spleen)
    paint_kidneys(ab, zk_l, zk_r)
    paint_great_vessels(ab, vessels)
    paint_spine(ab)
    paint_ribs(ab)

    image = _acquire(ab.cv.image, rng, spacing)
    return Phantom(image=image, labels=ab.cv.labels, affine=affine)

