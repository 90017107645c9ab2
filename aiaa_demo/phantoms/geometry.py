"""World-coordinate geometry of the phantoms: voxel grids, (deformed) ellipsoids and the painted canvas.

Mask functions take broadcastable float32 world coordinates ``X, Y, Z`` (RAS mm) of a box, shapes
``(n, 1, 1)``, ``(1, m, 1)``, ``(1, 1, l)``, and return a boolean mask that broadcasts to the box.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

MaskFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

WORLD_BOUND_MM = 400.0  # a world-box bound (mm) beyond any volume


class Box(NamedTuple):
    """A sub-block of the volume with broadcastable world coordinates."""

    sl: tuple[slice, slice, slice]
    X: np.ndarray  # (n, 1, 1)
    Y: np.ndarray  # (1, m, 1)
    Z: np.ndarray  # (1, 1, l)


class Grid:
    """World coordinates of the voxel centres of an axis-aligned (diagonal) affine."""

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.axes = [
            (affine[a, a] * np.arange(shape[a]) + affine[a, 3]).astype(np.float32) for a in range(3)
        ]

    def full(self) -> Box:
        x, y, z = self.axes
        return Box((slice(None),) * 3, x[:, None, None], y[None, :, None], z[None, None, :])  # type: ignore[arg-type]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
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
        return Box(tuple(sls), x[:, None, None], y[None, :, None], z[None, None, :])  # type: ignore[arg-type]


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from Euler angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    return rotation(*np.deg2rad(rng.uniform(-max_deg, max_deg, size=3)))


class Deform:
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


class Ellipsoid:
    """(Optionally rotated and deformed) solid ellipsoid in world coordinates.

    ``R`` has the ellipsoid's local axes (u, v, w) as columns.
    """

    def __init__(self, center, semi, R: np.ndarray | None = None, deform: Deform | None = None) -> None:
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


def intersect(*fns: MaskFn) -> MaskFn:
    def f(X, Y, Z):
        m = fns[0](X, Y, Z)
        for g in fns[1:]:
            m = m & g(X, Y, Z)
        return m

    return f


class Canvas:
    """Image + label volume being painted, tissue after tissue (later wins)."""

    def __init__(self, grid: Grid, rng: np.random.Generator) -> None:
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
