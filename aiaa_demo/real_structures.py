"""Named structures of the real scans (`aiaa_demo.datasets`) for `aiaa_demo.evaluate_real`.

Every ground truth is a real label map (an atlas, a brain mask, a radiologist's lesion outline, a tissue
segmentation), never a threshold of the image. A structure is the union of the labels of one cached volume whose
names fully match `pattern` (a regular expression): one AAL region (`Amygdala_L`), the nine left cerebellar AAL
lobules (`Cerebelum_.*_L`), or every left AAL region (`.*_L`, the whole hemisphere). The image clicked on is that
volume's own image (Colin27's T1 for the AAL regions and the brain mask).

Why each one was chosen is in `Structure.why` (and in aiaa_demo/README.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from aiaa_demo.datasets import load
from aiaa_server.imaging.masks import foreground_box
from aiaa_server.inference.click_geometry import spacing_of

MAX_VOXELS = 2**24  # a bigger volume is cut to the structure's box + BOUND_MARGIN_MM before it is sent
BOUND_MARGIN_MM = 64.0
AAL = "colin27_aal"


@dataclass(frozen=True)
class Structure:
    """A named structure: the union of the labels of `volume` whose names fully match `pattern`."""

    name: str
    volume: str
    pattern: str
    why: str


STRUCTURES: tuple[Structure, ...] = (
    Structure("Amygdala_L", AAL, "Amygdala_L", "small grey nucleus (1.7 mL), low T1 contrast to its neighbours"),
    Structure("Pallidum_L", AAL, "Pallidum_L", "small nucleus (2.3 mL), brighter than the putamen beside it"),
    Structure("Hippocampus_L", AAL, "Hippocampus_L", "medium (7.5 mL), curved, thin in places"),
    Structure("Putamen_L", AAL, "Putamen_L", "medium deep nucleus (7.9 mL), fairly compact"),
    Structure("Thalamus_L", AAL, "Thalamus_L", "medium deep nucleus (8.7 mL), touches its right twin"),
    Structure("Temporal_Mid_L", AAL, "Temporal_Mid_L", "large cortical gyrus (39 mL): folded, mostly grey matter"),
    Structure("Cerebellum_L", AAL, r"Cerebelum_.*_L",
              "large (the 9 left AAL cerebellar lobules, 87 mL): a cerebellar hemisphere"),
    Structure("Hemisphere_L", AAL, r".*_L", "whole hemisphere (all 54 left AAL regions, 0.73 L, one piece)"),
    Structure("Brain", "colin27_brain", "brain", "whole brain (Colin27 brain mask, 1.7 L), clicked on the T1"),
    Structure("lung1_tumour", "lung1_ct", "tumour", "small lung tumour on CT (1.4 mL, 3 slices of 5 mm)"),
    Structure("lung2_tumour", "lung2_ct", "tumour", "medium lung tumour on CT (48 mL, 11 slices of 5 mm)"),
    Structure("brain1_lesion", "brain1_mr", "lesion", "brain lesion on contrast T1 MR (16 mL, 2 parts)"),
    Structure("brain2_lesion", "brain2_mr", "lesion", "small brain lesion on contrast T1 MR (1.8 mL, 3 slices)"),
    Structure("breast1_lesion", "breast1_mr", "lesion", "very small breast lesion on MR (0.13 mL, 143 voxels)"),
    Structure("MNI152_WM", "mni152_t1", "white_matter", "MNI152 white matter (0.63 L, 99.9 % one piece)"),
)
QUICK = ("Amygdala_L", "Pallidum_L", "breast1_lesion")


class LoadedStructure(NamedTuple):
    """A structure ready to click on: `image` and `affine` (what a client uploads), the boolean `mask` on that
    grid, its `spacing` (mm), `labels` (name -> value) that make it up, and `note` (how the volume was bounded,
    the axis codes)."""

    structure: Structure
    image: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    labels: dict[str, int]
    note: str


def resolve(names: list[str] | None, quick: bool = False) -> list[Structure]:
    """The structures to evaluate: `names` (case-insensitive names of `STRUCTURES`, or any AAL region name such
    as `Caudate_R`), else `QUICK` with `quick`, else all of `STRUCTURES`.

    Raises:
        KeyError: a name that is neither.
    """
    known = {s.name.lower(): s for s in STRUCTURES}
    if not names:
        return [known[n.lower()] for n in QUICK] if quick else list(STRUCTURES)
    chosen = []
    for name in names:
        if name.lower() in known:
            chosen.append(known[name.lower()])
        elif re.fullmatch(r"[A-Za-z]+(_[A-Za-z0-9]+)*", name):
            chosen.append(Structure(name, AAL, re.escape(name), "AAL region named on the command line"))
        else:
            raise KeyError(f"unknown structure {name!r}; known: {', '.join(s.name for s in STRUCTURES)} "
                           "or an AAL region name")
    return chosen


def matching_labels(structure: Structure, names: dict[str, int]) -> dict[str, int]:
    """The labels (name -> value) of the structure's volume whose names fully match its pattern.

    Raises:
        KeyError: no label matches.
    """
    pattern = re.compile(structure.pattern)
    chosen = {name: value for name, value in names.items() if pattern.fullmatch(name)}
    if not chosen:
        raise KeyError(f"{structure.name}: no label of {structure.volume} matches {structure.pattern!r} "
                       f"(labels: {', '.join(sorted(names)[:8])}...)")
    return chosen


def structure_mask(labels: np.ndarray, values: list[int] | tuple[int, ...]) -> np.ndarray:
    """The boolean mask of the voxels whose label is one of `values`."""
    return np.isin(labels, np.asarray(values, dtype=labels.dtype))


def bound_volume(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, max_voxels: int = MAX_VOXELS,
                 margin_mm: float = BOUND_MARGIN_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Keep the volume whole when it has at most `max_voxels` voxels; else cut it to the mask's box plus
    `margin_mm` on each side (the affine's origin moved with it), so no call sends more than a bounded volume.

    Returns:
        (image, affine, mask, note): the note says what was cut ("" when nothing was).
    """
    if image.size <= max_voxels:
        return image, affine, mask, ""
    box = foreground_box(mask)
    assert box is not None, "an empty mask cannot be bounded"
    pad = np.ceil(margin_mm / spacing_of(affine)).astype(int)
    lo = [max(b.start - int(p), 0) for b, p in zip(box, pad)]
    hi = [min(b.stop + int(p), n) for b, p, n in zip(box, pad, image.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    moved = np.array(affine, dtype=np.float64)
    moved[:3, 3] = affine[:3, :3] @ np.asarray(lo, dtype=np.float64) + affine[:3, 3]
    note = f"cut from {list(image.shape)} to {[b - a for a, b in zip(lo, hi)]} at {lo}"
    return image[crop], moved, mask[crop], note


def load_structure(structure: Structure, cache: Path | None = None, max_voxels: int = MAX_VOXELS) -> LoadedStructure:
    """Load the structure's volume from the dataset cache and build its mask (bounded, see `bound_volume`).

    Raises:
        FileNotFoundError: the volume is not in the cache (the message says how to fetch it).
        KeyError: no label of the volume matches; ValueError: the structure is empty.
    """
    image, affine, labels, names = load(structure.volume, cache)
    if labels is None:
        raise KeyError(f"{structure.volume} has no label map")
    chosen = matching_labels(structure, names)
    mask = structure_mask(labels, tuple(chosen.values()))
    if not mask.any():
        raise ValueError(f"{structure.name}: no voxel of {structure.volume} carries {sorted(chosen)}")
    image, affine, mask, note = bound_volume(image, affine, mask, max_voxels)
    axes = "".join(nib.aff2axcodes(affine))
    note = f"axes {axes}" + (f", {note}" if note else "")
    spacing = tuple(float(s) for s in spacing_of(affine))
    return LoadedStructure(structure, image, affine, mask, spacing, chosen, note)  # type: ignore[arg-type]
