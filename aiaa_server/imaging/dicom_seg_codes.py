"""Coded terms (SNOMED CT, as DICOM CID 7150/7151 use them) for a segment from its label name.

A DICOM SEG describes every segment by a property category and type; viewers (3D Slicer, OHIF) show and colour
segments by them. A model's label names ("spleen", "kidney_left", "Tumor") map to the usual codes; a name not
recognised gets the generic Tissue / Tissue of 3D Slicer and dcmqi, the name kept as the segment label. The
codes come from pydicom's tables (`pydicom.sr.codedict.codes`), not typed in here.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


class SegmentCodes(NamedTuple):
    """The coded description of one segment.

    Attributes:
        category: the segmented property category (CID 7150).
        type: the segmented property type (CID 7151).
        modifier: a laterality modifier of the type (SNOMED CT Left / Right), or None.
    """

    category: Code
    type: Code
    modifier: Code | None = None


ANATOMY = codes.cid7150.AnatomicalStructure
ABNORMAL = codes.cid7150.MorphologicallyAbnormalStructure
TISSUE = codes.cid7150.Tissue
GENERIC = SegmentCodes(TISSUE, codes.SCT.Tissue)

# the words of a label name -> its property type; more specific names first (several words must all be there)
_TYPES: tuple[tuple[tuple[str, ...], Code, Code], ...] = (
    (("adrenal",), ANATOMY, codes.SCT.AdrenalGland),
    (("vena", "cava"), ANATOMY, codes.SCT.InferiorVenaCava),
    (("ivc",), ANATOMY, codes.SCT.InferiorVenaCava),
    (("portal",), ANATOMY, codes.SCT.PortalVein),
    (("small", "intestine"), ANATOMY, codes.SCT.SmallIntestine),
    (("small", "bowel"), ANATOMY, codes.SCT.SmallIntestine),
    (("spleen",), ANATOMY, codes.SCT.Spleen),
    (("liver",), ANATOMY, codes.SCT.Liver),
    (("kidney",), ANATOMY, codes.SCT.Kidney),
    (("pancreas",), ANATOMY, codes.SCT.Pancreas),
    (("lung",), ANATOMY, codes.SCT.Lung),
    (("heart",), ANATOMY, codes.SCT.Heart),
    (("brain",), ANATOMY, codes.SCT.Brain),
    (("hippocampus",), ANATOMY, codes.SCT.Hippocampus),
    (("stomach",), ANATOMY, codes.SCT.Stomach),
    (("gallbladder",), ANATOMY, codes.SCT.Gallbladder),
    (("aorta",), ANATOMY, codes.SCT.Aorta),
    (("esophagus",), ANATOMY, codes.SCT.Esophagus),
    (("oesophagus",), ANATOMY, codes.SCT.Esophagus),
    (("duodenum",), ANATOMY, codes.SCT.Duodenum),
    (("colon",), ANATOMY, codes.SCT.Colon),
    (("bladder",), ANATOMY, codes.SCT.Bladder),
    (("prostate",), ANATOMY, codes.SCT.Prostate),
    (("trachea",), ANATOMY, codes.SCT.Trachea),
    (("vertebra",), ANATOMY, codes.SCT.Vertebra),
    (("rib",), ANATOMY, codes.SCT.Rib),
    (("femur",), ANATOMY, codes.SCT.Femur),
    (("bone",), TISSUE, codes.SCT.Bone),
    (("tumor",), ABNORMAL, codes.SCT.Neoplasm),
    (("tumour",), ABNORMAL, codes.SCT.Neoplasm),
    (("neoplasm",), ABNORMAL, codes.SCT.Neoplasm),
    (("cancer",), ABNORMAL, codes.SCT.Neoplasm),
    (("lesion",), ABNORMAL, codes.SCT.Lesion),
    (("mass",), ABNORMAL, codes.SCT.Mass),
    (("nodule",), ABNORMAL, codes.SCT.Nodule),
    (("cyst",), ABNORMAL, codes.SCT.Cyst),
    (("edema",), ABNORMAL, codes.SCT.Edema),
    (("oedema",), ABNORMAL, codes.SCT.Edema),
    (("necrosis",), ABNORMAL, codes.SCT.Necrosis),
)
_SIDES = {"left": codes.SCT.Left, "l": codes.SCT.Left, "right": codes.SCT.Right, "r": codes.SCT.Right}


def _words(name: str) -> list[str]:
    """`kidney_left`, `Left Kidney`, `leftKidney` -> their lower-case words, plurals also singular (`lungs`)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]
    return words + [w[:-1] for w in words if len(w) > 3 and w.endswith("s")]


def segment_codes(name: str) -> SegmentCodes:
    """The category, type and laterality of a segment named `name`.

    Args:
        name: the model's label name, any case and separator (`spleen`, `kidney_left`, `Liver Tumor`).

    Returns:
        The codes of the table entries whose words are all in the name: an abnormality (tumor, lesion...) before
        an organ, so `liver tumor` is a neoplasm; a Left/Right modifier for an organ named with its side;
        GENERIC when no entry matches.
    """
    words = _words(name)
    found = [(c, t) for needed, c, t in _TYPES if all(w in words for w in needed)]
    if not found:
        return GENERIC
    abnormal = [(c, t) for c, t in found if c == ABNORMAL]
    category, kind = abnormal[0] if abnormal else found[0]
    side = next((_SIDES[w] for w in words if w in _SIDES), None)
    return SegmentCodes(category, kind, side if category == ANATOMY else None)


__all__ = ["GENERIC", "SegmentCodes", "segment_codes"]
