"""The body being painted (habitus, landmarks) and its non-organ tissues: body wall, thorax, muscles,
bowel, spine and ribs.

Every painter draws its random numbers from the shared ``rng``, in order: the painting order in
:func:`aiaa_demo.phantoms.generate.make_abdomen_phantom` fixes the phantom of a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aiaa_demo.phantoms.geometry import (
    WORLD_BOUND_MM,
    Canvas,
    Deform,
    Ellipsoid,
    Grid,
    MaskFn,
    intersect,
    random_rotation,
)
from aiaa_demo.phantoms.phantom import ORGAN_LABELS


@dataclass
class Abdomen:
    """The body being painted: habitus, landmarks, and the canvas every painter paints on.

    World coordinates as in the package docstring (RAS mm); ``X, Y, Z`` arguments of the mask functions are
    broadcastable float32 coordinate arrays of a box (shapes ``(n, 1, 1)``, ``(1, m, 1)``, ``(1, 1, l)``).
    """

    rng: np.random.Generator
    grid: Grid
    cv: Canvas
    A0: float  # lateral semi-axis of the body (mm)
    B0: float  # antero-posterior semi-axis
    y0: float  # body centre (antero-posterior)
    wob_f: float
    wob_p: float
    tf: float  # subcutaneous fat thickness
    tm: float  # abdominal wall muscle thickness
    # landmarks, set by place_landmarks
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
        return intersect(self.cavity_fn, self.below_dome)  # abdominal cavity proper



def paint_body_layers(ab: Abdomen, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> None:
    """Fat, abdominal wall muscle and cavity (full volume, vectorised)."""
    u, cv = ab.rng.uniform, ab.cv
    muscle_fn = ab.ellipse_fn(ab.tf)
    body = ab.body_fn(X, Y, Z)
    cv.image[body] = u(-120, -85)
    muscle = muscle_fn(X, Y, Z)
    cv.image[muscle] = u(35, 60)
    cavity = ab.cavity_fn(X, Y, Z)
    cv.image[cavity] = u(-110, -75)


def place_landmarks(ab: Abdomen) -> None:
    """Spleen height, spine position and size, diaphragm dome (lungs above it, abdominal organs below)."""
    u = ab.rng.uniform
    ab.z_sp = u(5.0, 35.0)
    ab.xv = u(-5, 5)
    ab.rvx, ab.rvy = u(17, 23), u(14, 19)
    ab.yv = ab.y0 - ab.b_cav + u(15, 25)
    ab.zd = ab.z_sp + u(45, 65)
    ab.dome_c = 35.0


def paint_thorax(ab: Abdomen) -> None:
    """Diaphragm muscle, lungs, heart."""
    u, cv, rng, big, cavity_fn, dome = ab.rng.uniform, ab.cv, ab.rng, WORLD_BOUND_MM, ab.cavity_fn, ab.dome
    zd, y0, b_cav = ab.zd, ab.y0, ab.b_cav
    zlo = zd - ab.dome_c * 1.3 - 5
    cv.paint([-big, -big, zlo - 5], [big, big, big], intersect(cavity_fn, lambda X, Y, Z: Z >= dome(X, Y) - 4.0), u(35, 55))
    cv.paint([-big, -big, zlo], [big, big, big], intersect(cavity_fn, lambda X, Y, Z: Z >= dome(X, Y)), u(-900, -800))
    heart = Ellipsoid([u(-25, 0), y0 + 0.25 * b_cav, zd + u(25, 45)], [u(55, 70), u(45, 55), u(45, 55)], random_rotation(rng, 15))
    cv.paint(*heart.extent(), intersect(heart, cavity_fn, lambda X, Y, Z: Z >= dome(X, Y)), u(30, 50))


def paint_paraspinal_muscles(ab: Abdomen) -> None:
    """Erector spinae muscles on both sides behind the spine (the full z extent of the body)."""
    u = ab.rng.uniform
    for s in (-1, 1):
        ps = Ellipsoid([ab.xv + s * u(28, 38), ab.yv - ab.rvy - u(25, 35), 0], [u(20, 28), u(16, 22), 1e4])
        ab.cv.paint(*ps.extent(), intersect(ps, ab.body_fn), u(40, 60))


def kidney_heights(ab: Abdomen) -> tuple[float, float]:
    """Centre heights (left, right) of the kidneys (needed by the psoas before the kidneys are painted)."""
    u = ab.rng.uniform
    zk_l = ab.z_sp - u(35, 55)
    zk_r = zk_l - u(0, 20)
    return zk_l, zk_r


def paint_psoas(ab: Abdomen, psoas_top: float) -> None:
    """Both psoas muscles beside the spine, widening downwards from ``psoas_top`` (mm)."""
    u, xv, yv, big, cavity_fn = ab.rng.uniform, ab.xv, ab.yv, WORLD_BOUND_MM, ab.cavity_fn
    for s in (-1, 1):
        xp = xv + s * u(25, 35)
        slope = u(0.15, 0.3)

        def psoas_fn(X, Y, Z, xp=xp, slope=slope):
            r = np.clip((np.float32(psoas_top) - Z) * np.float32(slope), 0, 28) + 1e-3
            return ((X - np.float32(xp)) / r) ** 2 + ((Y - np.float32(yv + 5)) / (np.float32(0.8) * r)) ** 2 < 1.0

        ab.cv.paint([xp - 30, yv - 30, -big], [xp + 30, yv + 40, psoas_top], intersect(psoas_fn, cavity_fn), u(40, 60))


def paint_bowel(ab: Abdomen) -> None:
    """Bowel loops (painted first; organs override): a wall and gas, fluid or faeces content."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    a_cav, b_cav, y0, z_sp = ab.a_cav, ab.b_cav, ab.y0, ab.z_sp
    for _ in range(int(rng.integers(10, 22))):
        c = [u(-0.75, 0.75) * a_cav, y0 + u(-0.3, 0.85) * b_cav, u(z_sp - 140, z_sp - 10)]
        r = u(10, 28)
        loop = Ellipsoid(c, [r * u(0.7, 1.5), r * u(0.7, 1.3), r * u(0.6, 1.6)], random_rotation(rng, 90), Deform(rng, 0.15))
        lo, hi = loop.extent()
        cv.paint(lo, hi, intersect(loop, abd), u(25, 50))  # wall
        inner = Ellipsoid(loop.c, loop.s - u(2.5, 4.0), loop.R, loop.deform)
        content = rng.choice(3, p=[0.4, 0.35, 0.25])
        hu = [-1000.0, u(0, 30), u(-150, 60)][content]
        cv.paint(lo, hi, intersect(inner, abd), hu)


def paint_colon_flexure(ab: Abdomen) -> None:
    """Colon splenic flexure: gas tube anterior/lateral-inferior to the spleen."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    th = np.deg2rad(u(150, 175))
    fc = [ab.a_cav * 0.8 * math.cos(th), ab.y0 + ab.b_cav * 0.55 * math.sin(th) + u(0, 25), ab.z_sp - u(15, 40)]
    flex = Ellipsoid(fc, [u(18, 25), u(15, 22), u(30, 50)], random_rotation(rng, 30), Deform(rng, 0.1))
    cv.paint(*flex.extent(), intersect(flex, abd), u(25, 45))
    flex_in = Ellipsoid(flex.c, flex.s - 3.0, flex.R, flex.deform)
    cv.paint(*flex.extent(), intersect(flex_in, abd), -1000.0 if rng.random() < 0.7 else u(-200, 40))



def paint_spine(ab: Abdomen) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs), posterior elements and the spinal canal."""
    u, cv, big = ab.rng.uniform, ab.cv, WORLD_BOUND_MM
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
    cv.paint(lo, hi, intersect(post_elem, ab.body_fn), u(400, 900), ORGAN_LABELS["spine"])
    cv.paint(lo, hi, lambda X, Y, Z: (X - np.float32(xv)) ** 2 + (Y - np.float32(yc)) ** 2 < np.float32(rc * rc), u(0, 20), 0)


def paint_ribs(ab: Abdomen) -> None:
    """Ribs of the lower thoracic cage around the liver and spleen, sloping down anteriorly."""
    u, big, y0, xv = ab.rng.uniform, WORLD_BOUND_MM, ab.y0, ab.xv
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

