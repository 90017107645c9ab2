"""Label names → the SNOMED CT codes of a DICOM SEG segment."""

from __future__ import annotations

import pytest

from aiaa_server.imaging.dicom_seg_codes import GENERIC, segment_codes


@pytest.mark.parametrize(("name", "category", "kind", "modifier"), [
    ("spleen", "91723000", "78961009", None),
    ("Liver", "91723000", "10200004", None),
    ("kidney_left", "91723000", "64033007", "7771000"),
    ("Right Lung", "91723000", "39607008", "24028007"),
    ("rightKidney", "91723000", "64033007", "24028007"),
    ("pancreas", "91723000", "15776009", None),
    ("kidneys", "91723000", "64033007", None),
    ("heart", "91723000", "80891009", None),
    ("brain", "91723000", "12738006", None),
    ("inferior_vena_cava", "91723000", "64131007", None),
    ("liver tumor", "49755003", "108369006", None),  # the abnormality, not the organ it is in
    ("lesion_left", "49755003", "52988006", None),  # no side modifier on an abnormality
])
def test_known_names_get_their_codes(name: str, category: str, kind: str, modifier: str | None) -> None:
    codes = segment_codes(name)
    assert (codes.category.value, codes.type.value) == (category, kind)
    assert codes.category.scheme_designator == codes.type.scheme_designator == "SCT"
    assert (codes.modifier.value if codes.modifier else None) == modifier


@pytest.mark.parametrize("name", ["label 7", "background", "", "ribbon", "delivery"])
def test_other_names_are_generic_tissue(name: str) -> None:
    assert segment_codes(name) == GENERIC
    assert GENERIC.type.value == GENERIC.category.value == "85756007"
