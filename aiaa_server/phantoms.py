"""Synthetic abdominal CT phantoms.

This module generates simple but anatomically *plausible* abdominal CT volumes
together with a ground-truth organ label map.  They are used to train and test
the bundled DEMO spleen segmentation model and to exercise the server end to end
without shipping any patient data.

All anatomy is defined in patient/world coordinates (NIfTI RAS+ millimetres:
``+x`` towards the patient's right, so the patient's LEFT is ``-x``; ``+y``
anterior; ``+z`` superior).  The voxel array is then sampled through the phantom's affine, so the
spleen is always on the patient's left/posterior side whatever the array
orientation (RAS or the DICOM-derived LPS layout) is.

Everything is vectorised numpy: organs are evaluated only inside their
bounding boxes, so a 512x512x120 volume takes a few seconds.

Example::

    rng = np.random.default_rng(0)
    ph = make_abdomen_phantom(rng)
    save_nifti(ph, "/tmp/img.nii.gz")
    save_nifti(ph, "/tmp/lbl.nii.gz", labels=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["ORGAN_LABELS", "Phantom", "make_abdomen_phantom", "save_nifti"]

#: Label value of every organ present in :attr:`Phantom.labels` (0 = background
#: / unlabelled tissue such as fat, muscle, bowel, lung, ribs).
ORGAN_LABELS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "aorta": 5,
    "spine": 6,
    "stomach": 7,
    "inferior_vena_cava": 8,
    "pancreas": 9,
}

MaskFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT volume and its label map.

    Attributes:
        image: float32 CT values in Hounsfield units, indexed ``[i, j, k]``
            (NIfTI voxel order).
        labels: uint8 label map of the same shape, values from
            :data:`ORGAN_LABELS` (0 = background).
        affine: 4x4 float64 voxel -> RAS millimetre matrix (NIfTI convention).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        norms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(I, J, K)``."""
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# geometry helpers
# --------------------------------------------------------------------------- #


class _Box(NamedTuple):
    """A sub-block of the volume with broadcastable world coordinates."""

    sl: tuple[slice, slice, slice]
    X: np.ndarray  # (n, 1, 1)
    Y: np.ndarray  # (1, m, 1)
    Z: np.ndarray  # (1, 1, l)


class _Grid:
    """World coordinates of the voxel centres of an axis-aligned (diagonal) affine."""

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.axes = [
            (affine[a, a] * np.arange(shape[a]) + affine[a, 3]).astype(np.float32) for a in range(3)
        ]

    def full(self) -> _Box:
        x, y, z = self.axes
        return _Box((slice(None),) * 3, x[:, None, None], y[None, :, None], z[None, None, :])  # type: ignore[arg-type]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> _Box | None:
        """Voxels whose world position lies in ``[lo, hi]`` (None when empty)."""
        sls = []
        coords = []
        for a in range(3):
            idx = np.nonzero((self.axes[a] >= lo[a]) & (self.axes[a] <= hi[a]))[0]
            if idx.size == 0:
                return None
            s = slice(int(idx[0]), int(idx[-1]) + 1)
            sls.append(s)
            coords.append(self.axes[a][s])
        x, y, z = coords
        return _Box(tuple(sls), x[:, None, None], y[None, :, None], z[None, None, :])  # type: ignore[arg-type]


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from Euler angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rand_rot(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    return _rot(*np.deg2rad(rng.uniform(-max_deg, max_deg, size=3)))


class _Deform:
    """Smooth low-frequency radial deformation on the unit sphere."""

    def __init__(self, rng: np.random.Generator, amplitude: float, n_waves: int = 4, freq: tuple[float, float] = (1.0, 2.5)) -> None:
        dirs = rng.normal(size=(n_waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.k = dirs * rng.uniform(*freq, size=(n_waves, 1))
        self.phase = rng.uniform(0, 2 * np.pi, size=n_waves)
        a = rng.uniform(0.3, 1.0, size=n_waves)
        self.amp = a / a.sum() * amplitude
        self.max = float(amplitude)

    def __call__(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = 0.0
        for (k0, k1, k2), ph, am in zip(self.k, self.phase, self.amp):
            out = out + np.float32(am) * np.sin(np.float32(k0) * u + np.float32(k1) * v + np.float32(k2) * w + np.float32(ph))
        return out  # type: ignore[return-value]


class _Ellipsoid:
    """(Optionally rotated and deformed) solid ellipsoid in world coordinates.

    ``R`` has the ellipsoid's local axes (u, v, w) as columns.
    """

    def __init__(self, center, semi, R: np.ndarray | None = None, deform: _Deform | None = None) -> None:
        self.c = np.asarray(center, dtype=np.float64)
        self.s = np.asarray(semi, dtype=np.float64)
        self.R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
        self.deform = deform

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.R * self.s[None, :]) ** 2).sum(axis=1))
        if self.deform is not None:
            half = half * (1.0 + self.deform.max)
        half = half + 1.0
        return self.c - half, self.c + half

    def local(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised local coordinates (unit sphere = ellipsoid surface)."""
        dX = X - np.float32(self.c[0])
        dY = Y - np.float32(self.c[1])
        dZ = Z - np.float32(self.c[2])
        R = self.R.astype(np.float32)
        u = (R[0, 0] * dX + R[1, 0] * dY + R[2, 0] * dZ) / np.float32(self.s[0])
        v = (R[0, 1] * dX + R[1, 1] * dY + R[2, 1] * dZ) / np.float32(self.s[1])
        w = (R[0, 2] * dX + R[1, 2] * dY + R[2, 2] * dZ) / np.float32(self.s[2])
        return u, v, w

    def __call__(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        u, v, w = self.local(X, Y, Z)
        q2 = u * u + v * v + w * w
        if self.deform is None:
            return q2 < 1.0
        r = 1.0 + self.deform(u, v, w)
        return q2 < r * r


def _and(*fns: MaskFn) -> MaskFn:
    def f(X, Y, Z):
        m = fns[0](X, Y, Z)
        for g in fns[1:]:
            m = m & g(X, Y, Z)
        return m

    return f


class _Canvas:
    """Image + label volume being painted, tissue after tissue (later wins)."""

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.image = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(grid.shape, dtype=np.uint8)

    def paint(self, lo, hi, fn: MaskFn, hu: float, label: int = 0, texture: float = 0.0) -> np.ndarray | None:
        """Paint ``hu``/``label`` where ``fn`` is true inside the world box [lo, hi].

        ``texture`` adds a smooth low-frequency HU modulation of that amplitude.
        Returns the mask (in box coordinates) or None when outside the volume.
        """
        box = self.grid.box(np.asarray(lo), np.asarray(hi))
        if box is None:
            return None
        m = fn(box.X, box.Y, box.Z)
        m = np.broadcast_to(m, tuple(s.stop - s.start for s in _resolve(box.sl, self.grid.shape)))
        if not m.any():
            return m
        img = self.image[box.sl]
        if texture > 0:
            k = self.rng.normal(size=(3, 3)) / 25.0
            ph = self.rng.uniform(0, 2 * np.pi, size=3)
            t = 0.0
            for n in range(3):
                t = t + np.sin(np.float32(k[n, 0]) * box.X + np.float32(k[n, 1]) * box.Y + np.float32(k[n, 2]) * box.Z + np.float32(ph[n]))
            val = np.broadcast_to(np.float32(hu) + np.float32(texture / 3.0) * t, m.shape)
            img[m] = val[m]
        else:
            img[m] = hu
        self.labels[box.sl][m] = label
        return m


def _resolve(sl: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> list[slice]:
    return [slice(*s.indices(n)[:2]) for s, n in zip(sl, shape)]


# --------------------------------------------------------------------------- #
# organ painters (each draws its random numbers from the shared rng, in order)
# --------------------------------------------------------------------------- #

_BIG = 400.0  # a world-box bound (mm) beyond any volume


@dataclass
class _Abdomen:
    """The body being painted: habitus, landmarks, and the canvas every painter paints on.

    World coordinates as in the module docstring (RAS mm); ``X, Y, Z`` arguments of the mask functions are
    broadcastable float32 coordinate arrays of a box (shapes ``(n, 1, 1)``, ``(1, m, 1)``, ``(1, 1, l)``).
    """

    rng: np.random.Generator
    grid: _Grid
    cv: _Canvas
    A0: float  # lateral semi-axis of the body (mm)
    B0: float  # antero-posterior semi-axis
    y0: float  # body centre (antero-posterior)
    wob_f: float
    wob_p: float
    tf: float  # subcutaneous fat thickness
    tm: float  # abdominal wall muscle thickness
    # landmarks, set by _place_landmarks
    z_sp: float = 0.0  # spleen centre height
    xv: float = 0.0  # spine
    rvx: float = 0.0
    rvy: float = 0.0
    yv: float = 0.0
    zd: float = 0.0  # diaphragm dome top
    dome_c: float = 35.0

    @property
    def a_cav(self) -> float:
        return self.A0 - self.tf - self.tm  # nominal cavity semi-axes

    @property
    def b_cav(self) -> float:
        return self.B0 - self.tf - self.tm

    def semi(self, z: np.ndarray, inset: float) -> tuple[np.ndarray, np.ndarray]:
        f = (1.0 + 0.04 * np.sin(self.wob_f * z + self.wob_p)).astype(np.float32)
        return np.float32(self.A0) * f - np.float32(inset), np.float32(self.B0) * f - np.float32(inset)

    def ellipse_fn(self, inset: float) -> MaskFn:
        def fn(X, Y, Z):
            a, b = self.semi(Z, inset)
            return (X / a) ** 2 + ((Y - np.float32(self.y0)) / b) ** 2 < 1.0

        return fn

    @property
    def body_fn(self) -> MaskFn:
        return self.ellipse_fn(0.0)

    @property
    def cavity_fn(self) -> MaskFn:
        return self.ellipse_fn(self.tf + self.tm)

    def dome(self, X, Y):
        return np.float32(self.zd) - np.float32(self.dome_c) * (
            (X / np.float32(self.a_cav)) ** 2 + ((Y - np.float32(self.y0)) / np.float32(self.b_cav)) ** 2
        )

    def below_dome(self, X, Y, Z):
        return Z < self.dome(X, Y) - 4.0

    @property
    def abd(self) -> MaskFn:
        return _and(self.cavity_fn, self.below_dome)  # abdominal cavity proper


class _Spleen(NamedTuple):
    """The spleen geometry, placed before the other organs (which avoid it)."""

    outer: _Ellipsoid
    hilum: _Ellipsoid
    c: np.ndarray  # centre (world mm), shape (3,)
    R: np.ndarray  # local axes as columns, shape (3, 3)
    sw: float  # semi-axis along the inward normal

    def fn(self, X, Y, Z):
        return self.outer(X, Y, Z) & ~self.hilum(X, Y, Z)


class _Vessels(NamedTuple):
    """Aorta (centre xa, ya; radius ra) and inferior vena cava (centre xi, yi; semi-axes ri) in the axial plane."""

    xa: float
    ya: float
    ra: float
    xi: float
    yi: float
    ri: tuple[float, float]


def _paint_body_layers(ab: _Abdomen, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> None:
    """Fat, abdominal wall muscle and cavity (full volume, vectorised)."""
    u, cv = ab.rng.uniform, ab.cv
    muscle_fn = ab.ellipse_fn(ab.tf)
    body = ab.body_fn(X, Y, Z)
    cv.image[body] = u(-120, -85)
    muscle = muscle_fn(X, Y, Z)
    cv.image[muscle] = u(35, 60)
    cavity = ab.cavity_fn(X, Y, Z)
    cv.image[cavity] = u(-110, -75)


def _place_landmarks(ab: _Abdomen) -> None:
    """Spleen height, spine position and size, diaphragm dome (lungs above it, abdominal organs below)."""
    u = ab.rng.uniform
    ab.z_sp = u(5.0, 35.0)
    ab.xv = u(-5, 5)
    ab.rvx, ab.rvy = u(17, 23), u(14, 19)
    ab.yv = ab.y0 - ab.b_cav + u(15, 25)
    ab.zd = ab.z_sp + u(45, 65)
    ab.dome_c = 35.0


def _paint_thorax(ab: _Abdomen) -> None:
    """Diaphragm muscle, lungs, heart."""
    u, cv, rng, big, cavity_fn, dome = ab.rng.uniform, ab.cv, ab.rng, _BIG, ab.cavity_fn, ab.dome
    zd, y0, b_cav = ab.zd, ab.y0, ab.b_cav
    zlo = zd - ab.dome_c * 1.3 - 5
    cv.paint([-big, -big, zlo - 5], [big, big, big], _and(cavity_fn, lambda X, Y, Z: Z >= dome(X, Y) - 4.0), u(35, 55))
    cv.paint([-big, -big, zlo], [big, big, big], _and(cavity_fn, lambda X, Y, Z: Z >= dome(X, Y)), u(-900, -800))
    heart = _Ellipsoid([u(-25, 0), y0 + 0.25 * b_cav, zd + u(25, 45)], [u(55, 70), u(45, 55), u(45, 55)], _rand_rot(rng, 15))
    cv.paint(*heart.extent(), _and(heart, cavity_fn, lambda X, Y, Z: Z >= dome(X, Y)), u(30, 50))


def _paint_paraspinal_muscles(ab: _Abdomen) -> None:
    u = ab.rng.uniform
    for s in (-1, 1):
        ps = _Ellipsoid([ab.xv + s * u(28, 38), ab.yv - ab.rvy - u(25, 35), 0], [u(20, 28), u(16, 22), 1e4])
        ab.cv.paint(*ps.extent(), _and(ps, ab.body_fn), u(40, 60))


def _kidney_heights(ab: _Abdomen) -> tuple[float, float]:
    """Centre heights (left, right) of the kidneys (needed by the psoas before the kidneys are painted)."""
    u = ab.rng.uniform
    zk_l = ab.z_sp - u(35, 55)
    zk_r = zk_l - u(0, 20)
    return zk_l, zk_r


def _paint_psoas(ab: _Abdomen, psoas_top: float) -> None:
    u, xv, yv, big, cavity_fn = ab.rng.uniform, ab.xv, ab.yv, _BIG, ab.cavity_fn
    for s in (-1, 1):
        xp = xv + s * u(25, 35)
        slope = u(0.15, 0.3)

        def psoas_fn(X, Y, Z, xp=xp, slope=slope):
            r = np.clip((np.float32(psoas_top) - Z) * np.float32(slope), 0, 28) + 1e-3
            return ((X - np.float32(xp)) / r) ** 2 + ((Y - np.float32(yv + 5)) / (np.float32(0.8) * r)) ** 2 < 1.0

        ab.cv.paint([xp - 30, yv - 30, -big], [xp + 30, yv + 40, psoas_top], _and(psoas_fn, cavity_fn), u(40, 60))


def _paint_bowel(ab: _Abdomen) -> None:
    """Bowel loops (painted first; organs override): a wall and gas, fluid or faeces content."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    a_cav, b_cav, y0, z_sp = ab.a_cav, ab.b_cav, ab.y0, ab.z_sp
    for _ in range(int(rng.integers(10, 22))):
        c = [u(-0.75, 0.75) * a_cav, y0 + u(-0.3, 0.85) * b_cav, u(z_sp - 140, z_sp - 10)]
        r = u(10, 28)
        loop = _Ellipsoid(c, [r * u(0.7, 1.5), r * u(0.7, 1.3), r * u(0.6, 1.6)], _rand_rot(rng, 90), _Deform(rng, 0.15))
        lo, hi = loop.extent()
        cv.paint(lo, hi, _and(loop, abd), u(25, 50))  # wall
        inner = _Ellipsoid(loop.c, loop.s - u(2.5, 4.0), loop.R, loop.deform)
        content = rng.choice(3, p=[0.4, 0.35, 0.25])
        hu = [-1000.0, u(0, 30), u(-150, 60)][content]
        cv.paint(lo, hi, _and(inner, abd), hu)


def _paint_colon_flexure(ab: _Abdomen) -> None:
    """Colon splenic flexure: gas tube anterior/lateral-inferior to the spleen."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    th = np.deg2rad(u(150, 175))
    fc = [ab.a_cav * 0.8 * math.cos(th), ab.y0 + ab.b_cav * 0.55 * math.sin(th) + u(0, 25), ab.z_sp - u(15, 40)]
    flex = _Ellipsoid(fc, [u(18, 25), u(15, 22), u(30, 50)], _rand_rot(rng, 30), _Deform(rng, 0.1))
    cv.paint(*flex.extent(), _and(flex, abd), u(25, 45))
    flex_in = _Ellipsoid(flex.c, flex.s - 3.0, flex.R, flex.deform)
    cv.paint(*flex.extent(), _and(flex_in, abd), -1000.0 if rng.random() < 0.7 else u(-200, 40))


def _place_spleen(ab: _Abdomen) -> _Spleen:
    """Spleen geometry on the posterolateral LEFT wall (x<0, y<0), long axis anterior and tilted down."""
    u, rng, a_cav, b_cav = ab.rng.uniform, ab.rng, ab.a_cav, ab.b_cav
    ang = np.deg2rad(u(200, 235))
    su = u(40, 70)  # half length: 8-14 cm long
    sv = su * u(0.45, 0.6)
    sw = u(15, 24)
    px, py = a_cav * math.cos(ang), b_cav * math.sin(ang)
    normal = np.array([math.cos(ang) / a_cav, math.sin(ang) / b_cav, 0.0])
    normal /= np.linalg.norm(normal)  # outward
    inward = -normal
    tangent = np.array([-normal[1], normal[0], 0.0])
    if tangent[1] < 0:  # make the long axis point anteriorly
        tangent = -tangent
    tilt = np.deg2rad(u(25, 50))  # anterior pole lower (along the 10th rib)
    ax_u = tangent * math.cos(tilt) + np.array([0, 0, -1.0]) * math.sin(tilt)
    ax_w = inward
    ax_v = np.cross(ax_w, ax_u)
    R_sp = np.stack([ax_u, ax_v, ax_w], axis=1) @ _rand_rot(rng, 12)
    c_sp = np.array([px, ab.y0 + py, ab.z_sp]) + inward * (sw + u(3, 10))
    spleen_outer = _Ellipsoid(c_sp, [su, sv, sw], R_sp, _Deform(rng, u(0.06, 0.16)))
    hilum = _Ellipsoid(
        c_sp + R_sp[:, 2] * sw * u(1.2, 1.6), [su * u(0.5, 0.7), sv * u(0.6, 0.8), sw * u(0.7, 1.0)], R_sp
    )
    return _Spleen(spleen_outer, hilum, c_sp, R_sp, sw)


def _paint_stomach(ab: _Abdomen) -> None:
    """Stomach (left upper, anterior-medial to the spleen): wall, fluid content and a gas cap."""
    u, rng, cv, abd, label = ab.rng.uniform, ab.rng, ab.cv, ab.abd, ORGAN_LABELS["stomach"]
    st = _Ellipsoid(
        [-u(0.2, 0.4) * ab.a_cav, ab.y0 + u(0.1, 0.35) * ab.b_cav, ab.z_sp + u(-20, 5)],
        [u(35, 55), u(25, 40), u(35, 55)],
        _rand_rot(rng, 25),
        _Deform(rng, 0.12),
    )
    cv.paint(*st.extent(), _and(st, abd), u(30, 50), label)
    st_in = _Ellipsoid(st.c, st.s - u(3, 6), st.R, st.deform)
    gas_level = st.c[1] + u(0.0, 0.6) * st.s[1]
    cv.paint(*st.extent(), _and(st_in, abd, lambda X, Y, Z: Y < gas_level), u(0, 40), label)
    cv.paint(*st.extent(), _and(st_in, abd, lambda X, Y, Z: Y >= gas_level), -1000.0, label)


def _place_great_vessels(ab: _Abdomen) -> _Vessels:
    u, xv, yv, rvy = ab.rng.uniform, ab.xv, ab.yv, ab.rvy
    ra = u(9, 13)
    xa, ya = xv - u(5, 18), yv + rvy + ra + u(1, 5)
    ri = (u(10, 15), u(7, 11))
    xi, yi = xv + u(18, 30), yv + rvy + ri[1] + u(3, 10)
    return _Vessels(xa, ya, ra, xi, yi, ri)


def _paint_pancreas(ab: _Abdomen, spleen: _Spleen, vessels: _Vessels) -> None:
    """Pancreas: tail at the splenic hilum, body in front of the aorta, head near the duodenum."""
    u, abd = ab.rng.uniform, ab.abd
    z_pa = ab.z_sp - u(15, 30)
    tail = spleen.c + spleen.R[:, 2] * spleen.sw * u(1.5, 2.2)
    pts = np.array([
        [tail[0], tail[1], z_pa + u(5, 15)],
        [vessels.xa - 15, vessels.ya + vessels.ra + u(12, 20), z_pa],
        [vessels.xi + u(10, 25), vessels.yi + u(10, 25), z_pa - u(5, 15)],
    ])
    rp = u(8, 13)
    for t in np.linspace(0, 1, 16):
        p = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t**2 * pts[2]
        r = rp * (0.75 + 0.5 * t)
        sph = _Ellipsoid(p, [r, r * 0.8, r])
        ab.cv.paint(*sph.extent(), _and(sph, abd), u(45, 70), ORGAN_LABELS["pancreas"])


def _paint_liver(ab: _Abdomen, spleen: _Spleen) -> None:
    """Liver (right upper quadrant + left lobe), its brighter vessels, and usually a gallbladder (fluid)."""
    u, rng, cv, grid, abd = ab.rng.uniform, ab.rng, ab.cv, ab.grid, ab.abd
    a_cav, b_cav, y0 = ab.a_cav, ab.b_cav, ab.y0
    c_lv = np.array([u(0.35, 0.5) * a_cav, y0 + u(-0.1, 0.15) * b_cav, ab.z_sp + u(-10, 15)])
    liver_r = _Ellipsoid(c_lv, [u(0.5, 0.62) * a_cav, u(0.7, 0.85) * b_cav, u(65, 90)], _rand_rot(rng, 12), _Deform(rng, u(0.08, 0.15)))
    liver_l = _Ellipsoid(
        [-u(0.0, 0.2) * a_cav, y0 + u(0.4, 0.6) * b_cav, c_lv[2] + u(0, 20)],
        [u(45, 70), u(22, 35), u(28, 45)],
        _rand_rot(rng, 15),
        _Deform(rng, 0.1),
    )
    hu_liver = u(80, 120)
    for lobe in (liver_r, liver_l):
        cv.paint(*lobe.extent(), _and(lobe, abd, lambda X, Y, Z: ~spleen.fn(X, Y, Z)), hu_liver, ORGAN_LABELS["liver"], texture=8.0)
    # hepatic / portal vessels (brighter) and gallbladder (fluid), inside the liver
    for _ in range(int(rng.integers(2, 5))):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        R = np.stack([d, np.cross(d, [0, 0, 1.0]) / (np.linalg.norm(np.cross(d, [0, 0, 1.0])) + 1e-6), [0, 0, 1.0]], axis=1)
        R, _ = np.linalg.qr(R)
        vr = u(3, 6)
        vessel = _Ellipsoid(c_lv + rng.normal(size=3) * 20, [u(30, 60), vr, vr], R)
        lo, hi = vessel.extent()
        box = grid.box(lo, hi)
        if box is not None:
            m = vessel(box.X, box.Y, box.Z) & (cv.labels[box.sl] == ORGAN_LABELS["liver"])
            cv.image[box.sl][m] = hu_liver + u(30, 80)
    gb = _Ellipsoid(
        [c_lv[0] - u(0.2, 0.4) * liver_r.s[0], c_lv[1] + u(0.3, 0.6) * liver_r.s[1], c_lv[2] - u(0.4, 0.6) * liver_r.s[2]],
        [u(12, 18), u(12, 18), u(25, 40)],
        _rand_rot(rng, 30),
    )
    if rng.random() < 0.7:
        box = grid.box(*gb.extent())
        if box is not None:
            m = gb(box.X, box.Y, box.Z) & (cv.labels[box.sl] == ORGAN_LABELS["liver"])
            cv.image[box.sl][m] = u(0, 25)
            cv.labels[box.sl][m] = 0


def _paint_spleen(ab: _Abdomen, spleen: _Spleen) -> None:
    hu_spleen = ab.rng.uniform(90, 130)
    ab.cv.paint(*spleen.outer.extent(), _and(spleen.fn, ab.abd), hu_spleen, ORGAN_LABELS["spleen"], texture=8.0)


def _paint_kidneys(ab: _Abdomen, zk_l: float, zk_r: float) -> None:
    """Both kidneys: cortex/medulla and the renal sinus at the antero-medial hilum."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    for s, zk, name in ((-1, zk_l, "left_kidney"), (1, zk_r, "right_kidney")):
        ck = np.array([ab.xv + s * u(50, 65), ab.yv + u(0, 12), zk])
        # long axis ~ z, upper pole tilted medially/posteriorly, hilum antero-medial
        Rk = _rot(np.deg2rad(u(-20, -5)), np.deg2rad(s * u(5, 20)), np.deg2rad(s * u(20, 40)))
        kid = _Ellipsoid(ck, [u(22, 30), u(17, 24), u(45, 60)], Rk, _Deform(rng, 0.06))
        lo, hi = kid.extent()
        cv.paint(lo, hi, _and(kid, abd), u(150, 200), ORGAN_LABELS[name], texture=6.0)
        hil_dir = np.array([-s, 0.6, 0.0]) / math.hypot(1.0, 0.6)  # antero-medial
        sinus = _Ellipsoid(ck + hil_dir * kid.s[0] * 0.5, kid.s * np.array([0.45, 0.45, 0.55]), Rk)
        cv.paint(lo, hi, _and(sinus, kid, abd), u(-40, 30), ORGAN_LABELS[name])


def _paint_great_vessels(ab: _Abdomen, vessels: _Vessels) -> None:
    """Inferior vena cava and aorta (the aorta drifting slightly in x along z)."""
    u, big = ab.rng.uniform, _BIG
    xa, ya, ra, xi, yi, ri = vessels
    drift = u(-0.05, 0.05)

    def ivc_fn(X, Y, Z):
        return ((X - np.float32(xi)) / np.float32(ri[0])) ** 2 + ((Y - np.float32(yi)) / np.float32(ri[1])) ** 2 < 1.0

    ab.cv.paint([xi - 20, yi - 20, -big], [xi + 20, yi + 20, ab.zd + 20], _and(ivc_fn, ab.cavity_fn), u(90, 160), ORGAN_LABELS["inferior_vena_cava"])

    def aorta_fn(X, Y, Z):
        return (X - np.float32(xa) - np.float32(drift) * Z) ** 2 + (Y - np.float32(ya)) ** 2 < np.float32(ra * ra)

    ab.cv.paint([xa - 40, ya - 20, -big], [xa + 40, ya + 20, big], aorta_fn, u(150, 250), ORGAN_LABELS["aorta"])


def _paint_spine(ab: _Abdomen) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs), posterior elements and the spinal canal."""
    u, cv, big = ab.rng.uniform, ab.cv, _BIG
    xv, yv, rvx, rvy = ab.xv, ab.yv, ab.rvx, ab.rvy
    period = u(28, 34)
    zphase = u(0, period)

    def body_v(X, Y, Z):
        return ((X - np.float32(xv)) / np.float32(rvx)) ** 2 + ((Y - np.float32(yv)) / np.float32(rvy)) ** 2 < 1.0

    def disc(Z):
        return np.mod(Z - np.float32(zphase), np.float32(period)) < 7.0

    lo = [xv - 60, yv - rvy - 60, -big]
    hi = [xv + 60, yv + rvy + 2, big]
    cv.paint(lo, hi, body_v, u(600, 1000), ORGAN_LABELS["spine"])  # cortex
    cort = u(1.5, 3.0)

    def body_in(X, Y, Z):
        return ((X - np.float32(xv)) / np.float32(rvx - cort)) ** 2 + ((Y - np.float32(yv)) / np.float32(rvy - cort)) ** 2 < 1.0

    cv.paint(lo, hi, body_in, u(200, 350), ORGAN_LABELS["spine"])  # cancellous bone
    cv.paint(lo, hi, lambda X, Y, Z: body_v(X, Y, Z) & disc(Z), u(70, 100), 0)  # discs
    yc = yv - rvy - u(8, 11)  # spinal canal
    rc = u(7, 9)

    def post_elem(X, Y, Z):
        dx, dy = X - np.float32(xv), Y - np.float32(yc)
        ring = (dx * dx + dy * dy) < np.float32((rc + 5) ** 2)
        spinous = (np.abs(dx) < 4.0) & (dy < 0) & (dy > -np.float32(u_sp))
        zz = np.mod(Z - np.float32(zphase), np.float32(period))
        transverse = (np.abs(dy) < 5.0) & (np.abs(dx) < np.float32(u_tr)) & (zz > 10.0) & (zz < 20.0)
        return (ring | spinous | transverse) & ~disc(Z)

    u_sp, u_tr = u(30, 45), u(35, 50)
    cv.paint(lo, hi, _and(post_elem, ab.body_fn), u(400, 900), ORGAN_LABELS["spine"])
    cv.paint(lo, hi, lambda X, Y, Z: (X - np.float32(xv)) ** 2 + (Y - np.float32(yc)) ** 2 < np.float32(rc * rc), u(0, 20), 0)


def _paint_ribs(ab: _Abdomen) -> None:
    """Ribs of the lower thoracic cage around the liver and spleen, sloping down anteriorly."""
    u, big, y0, xv = ab.rng.uniform, _BIG, ab.y0, ab.xv
    rib_hu = u(300, 700)
    z_rib = ab.zd + u(0, 10)
    rib_gap = u(22, 30)
    drop = u(40, 70)
    while z_rib > ab.z_sp - 70:
        zr = z_rib

        def rib_fn(X, Y, Z, zr=zr):
            a, b = ab.semi(Z, ab.tf + ab.tm)
            rho = np.sqrt((X / a) ** 2 + ((Y - np.float32(y0)) / b) ** 2)
            ring = (rho > 1.0) & (rho < 1.0 + 9.0 / np.float32(min(ab.A0, ab.B0)))
            yn = (Y - np.float32(y0)) / b
            zc = np.float32(zr) - np.float32(drop) * (yn + 1.0) / 2.0  # ribs slope down anteriorly
            return ring & (np.abs(Z - zc) < 4.5) & (yn < 0.5) & (np.abs(X - np.float32(xv)) > 30.0)

        ab.cv.paint([-big, -big, zr - drop - 8], [big, big, zr + 8], rib_fn, rib_hu)
        z_rib -= rib_gap


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


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


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

    grid = _Grid(affine, shape)
    full = grid.full()
    y0 = u(-10, 10)
    wob_f, wob_p = u(0.01, 0.03), u(0, 2 * np.pi)
    tf = u(8.0, 30.0)
    tm = u(6.0, 14.0)
    ab = _Abdomen(rng, grid, _Canvas(grid, rng), A0, B0, y0, wob_f, wob_p, tf, tm)

    # ---------------- tissues, in painting order (later wins) ---------------- #
    _paint_body_layers(ab, full.X, full.Y, full.Z)
    _place_landmarks(ab)
    _paint_thorax(ab)
    _paint_paraspinal_muscles(ab)
    zk_l, zk_r = _kidney_heights(ab)
    _paint_psoas(ab, max(zk_l, zk_r) + 10.0)
    _paint_bowel(ab)
    _paint_colon_flexure(ab)
    spleen = _place_spleen(ab)  # defined early: the liver avoids it
    _paint_stomach(ab)
    vessels = _place_great_vessels(ab)
    _paint_pancreas(ab, spleen, vessels)
    _paint_liver(ab, spleen)
    _paint_spleen(ab, spleen)
    _paint_kidneys(ab, zk_l, zk_r)
    _paint_great_vessels(ab, vessels)
    _paint_spine(ab)
    _paint_ribs(ab)

    image = _acquire(ab.cv.image, rng, spacing)
    return Phantom(image=image, labels=ab.cv.labels, affine=affine)


def save_nifti(phantom: Phantom, path: str | Path, labels: bool = False) -> Path:
    """Write the phantom image (int16 HU) or its label map (uint8) as NIfTI.

    The phantom affine is stored as both qform and sform (code 1, scanner).
    Parent directories are created.  Returns the written path.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels:
        data = np.asarray(phantom.labels, dtype=np.uint8)
    else:
        data = np.clip(np.rint(phantom.image), -32768, 32767).astype(np.int16)
    affine = np.asarray(phantom.affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path
