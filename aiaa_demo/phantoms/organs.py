"""The labelled organs: spleen, stomach, pancreas, liver, kidneys, aorta and inferior vena cava.

Every painter draws its random numbers from the shared ``rng``, in order (see :mod:`aiaa_demo.phantoms.body`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from aiaa_demo.phantoms.body import Abdomen
from aiaa_demo.phantoms.geometry import WORLD_BOUND_MM, Deform, Ellipsoid, intersect, random_rotation, rotation
from aiaa_demo.phantoms.phantom import ORGAN_LABELS


class Spleen(NamedTuple):
    """The spleen geometry, placed before the other organs (which avoid it)."""

    outer: Ellipsoid
    hilum: Ellipsoid
    c: np.ndarray  # centre (world mm), shape (3,)
    R: np.ndarray  # local axes as columns, shape (3, 3)
    sw: float  # semi-axis along the inward normal

    def fn(self, X, Y, Z):
        return self.outer(X, Y, Z) & ~self.hilum(X, Y, Z)


class Vessels(NamedTuple):
    """Aorta (centre xa, ya; radius ra) and inferior vena cava (centre xi, yi; semi-axes ri) in the axial plane."""

    xa: float
    ya: float
    ra: float
    xi: float
    yi: float
    ri: tuple[float, float]


def place_spleen(ab: Abdomen) -> Spleen:
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
    R_sp = np.stack([ax_u, ax_v, ax_w], axis=1) @ random_rotation(rng, 12)
    c_sp = np.array([px, ab.y0 + py, ab.z_sp]) + inward * (sw + u(3, 10))
    spleen_outer = Ellipsoid(c_sp, [su, sv, sw], R_sp, Deform(rng, u(0.06, 0.16)))
    hilum = Ellipsoid(
        c_sp + R_sp[:, 2] * sw * u(1.2, 1.6), [su * u(0.5, 0.7), sv * u(0.6, 0.8), sw * u(0.7, 1.0)], R_sp
    )
    return Spleen(spleen_outer, hilum, c_sp, R_sp, sw)


def paint_stomach(ab: Abdomen) -> None:
    """Stomach (left upper, anterior-medial to the spleen): wall, fluid content and a gas cap."""
    u, rng, cv, abd, label = ab.rng.uniform, ab.rng, ab.cv, ab.abd, ORGAN_LABELS["stomach"]
    st = Ellipsoid(
        [-u(0.2, 0.4) * ab.a_cav, ab.y0 + u(0.1, 0.35) * ab.b_cav, ab.z_sp + u(-20, 5)],
        [u(35, 55), u(25, 40), u(35, 55)],
        random_rotation(rng, 25),
        Deform(rng, 0.12),
    )
    cv.paint(*st.extent(), intersect(st, abd), u(30, 50), label)
    st_in = Ellipsoid(st.c, st.s - u(3, 6), st.R, st.deform)
    gas_level = st.c[1] + u(0.0, 0.6) * st.s[1]
    cv.paint(*st.extent(), intersect(st_in, abd, lambda X, Y, Z: Y < gas_level), u(0, 40), label)
    cv.paint(*st.extent(), intersect(st_in, abd, lambda X, Y, Z: Y >= gas_level), -1000.0, label)


def place_great_vessels(ab: Abdomen) -> Vessels:
    """Aorta and inferior vena cava positions in front of the spine (placed before the pancreas that wraps them)."""
    u, xv, yv, rvy = ab.rng.uniform, ab.xv, ab.yv, ab.rvy
    ra = u(9, 13)
    xa, ya = xv - u(5, 18), yv + rvy + ra + u(1, 5)
    ri = (u(10, 15), u(7, 11))
    xi, yi = xv + u(18, 30), yv + rvy + ri[1] + u(3, 10)
    return Vessels(xa, ya, ra, xi, yi, ri)


def paint_pancreas(ab: Abdomen, spleen: Spleen, vessels: Vessels) -> None:
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
        sph = Ellipsoid(p, [r, r * 0.8, r])
        ab.cv.paint(*sph.extent(), intersect(sph, abd), u(45, 70), ORGAN_LABELS["pancreas"])


def paint_liver(ab: Abdomen, spleen: Spleen) -> None:
    """Liver (right upper quadrant + left lobe), its brighter vessels, and usually a gallbladder (fluid)."""
    u, rng, cv, grid, abd = ab.rng.uniform, ab.rng, ab.cv, ab.grid, ab.abd
    a_cav, b_cav, y0 = ab.a_cav, ab.b_cav, ab.y0
    c_lv = np.array([u(0.35, 0.5) * a_cav, y0 + u(-0.1, 0.15) * b_cav, ab.z_sp + u(-10, 15)])
    liver_r = Ellipsoid(c_lv, [u(0.5, 0.62) * a_cav, u(0.7, 0.85) * b_cav, u(65, 90)], random_rotation(rng, 12), Deform(rng, u(0.08, 0.15)))
    liver_l = Ellipsoid(
        [-u(0.0, 0.2) * a_cav, y0 + u(0.4, 0.6) * b_cav, c_lv[2] + u(0, 20)],
        [u(45, 70), u(22, 35), u(28, 45)],
        random_rotation(rng, 15),
        Deform(rng, 0.1),
    )
    hu_liver = u(80, 120)
    for lobe in (liver_r, liver_l):
        cv.paint(*lobe.extent(), intersect(lobe, abd, lambda X, Y, Z: ~spleen.fn(X, Y, Z)), hu_liver, ORGAN_LABELS["liver"], texture=8.0)
    # hepatic / portal vessels (brighter) and gallbladder (fluid), inside the liver
    for _ in range(int(rng.integers(2, 5))):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        R = np.stack([d, np.cross(d, [0, 0, 1.0]) / (np.linalg.norm(np.cross(d, [0, 0, 1.0])) + 1e-6), [0, 0, 1.0]], axis=1)
        R, _ = np.linalg.qr(R)
        vr = u(3, 6)
        vessel = Ellipsoid(c_lv + rng.normal(size=3) * 20, [u(30, 60), vr, vr], R)
        lo, hi = vessel.extent()
        box = grid.box(lo, hi)
        if box is not None:
            m = vessel(box.X, box.Y, box.Z) & (cv.labels[box.sl] == ORGAN_LABELS["liver"])
            cv.image[box.sl][m] = hu_liver + u(30, 80)
    gb = Ellipsoid(
        [c_lv[0] - u(0.2, 0.4) * liver_r.s[0], c_lv[1] + u(0.3, 0.6) * liver_r.s[1], c_lv[2] - u(0.4, 0.6) * liver_r.s[2]],
        [u(12, 18), u(12, 18), u(25, 40)],
        random_rotation(rng, 30),
    )
    if rng.random() < 0.7:
        box = grid.box(*gb.extent())
        if box is not None:
            m = gb(box.X, box.Y, box.Z) & (cv.labels[box.sl] == ORGAN_LABELS["liver"])
            cv.image[box.sl][m] = u(0, 25)
            cv.labels[box.sl][m] = 0


def paint_spleen(ab: Abdomen, spleen: Spleen) -> None:
    """The spleen (textured), clipped to the abdominal cavity."""
    hu_spleen = ab.rng.uniform(90, 130)
    ab.cv.paint(*spleen.outer.extent(), intersect(spleen.fn, ab.abd), hu_spleen, ORGAN_LABELS["spleen"], texture=8.0)


def paint_kidneys(ab: Abdomen, zk_l: float, zk_r: float) -> None:
    """Both kidneys: cortex/medulla and the renal sinus at the antero-medial hilum."""
    u, rng, cv, abd = ab.rng.uniform, ab.rng, ab.cv, ab.abd
    for s, zk, name in ((-1, zk_l, "left_kidney"), (1, zk_r, "right_kidney")):
        ck = np.array([ab.xv + s * u(50, 65), ab.yv + u(0, 12), zk])
        # long axis ~ z, upper pole tilted medially/posteriorly, hilum antero-medial
        Rk = rotation(np.deg2rad(u(-20, -5)), np.deg2rad(s * u(5, 20)), np.deg2rad(s * u(20, 40)))
        kid = Ellipsoid(ck, [u(22, 30), u(17, 24), u(45, 60)], Rk, Deform(rng, 0.06))
        lo, hi = kid.extent()
        cv.paint(lo, hi, intersect(kid, abd), u(150, 200), ORGAN_LABELS[name], texture=6.0)
        hil_dir = np.array([-s, 0.6, 0.0]) / math.hypot(1.0, 0.6)  # antero-medial
        sinus = Ellipsoid(ck + hil_dir * kid.s[0] * 0.5, kid.s * np.array([0.45, 0.45, 0.55]), Rk)
        cv.paint(lo, hi, intersect(sinus, kid, abd), u(-40, 30), ORGAN_LABELS[name])


def paint_great_vessels(ab: Abdomen, vessels: Vessels) -> None:
    """Inferior vena cava and aorta (the aorta drifting slightly in x along z)."""
    u, big = ab.rng.uniform, WORLD_BOUND_MM
    xa, ya, ra, xi, yi, ri = vessels
    drift = u(-0.05, 0.05)

    def ivc_fn(X, Y, Z):
        return ((X - np.float32(xi)) / np.float32(ri[0])) ** 2 + ((Y - np.float32(yi)) / np.float32(ri[1])) ** 2 < 1.0

    ab.cv.paint([xi - 20, yi - 20, -big], [xi + 20, yi + 20, ab.zd + 20], intersect(ivc_fn, ab.cavity_fn), u(90, 160), ORGAN_LABELS["inferior_vena_cava"])

    def aorta_fn(X, Y, Z):
        return (X - np.float32(xa) - np.float32(drift) * Z) ** 2 + (Y - np.float32(ya)) ** 2 < np.float32(ra * ra)

    ab.cv.paint([xa - 40, ya - 20, -big], [xa + 40, ya + 20, big], aorta_fn, u(150, 250), ORGAN_LABELS["aorta"])

