from __future__ import annotations

import pytest

from aiaa_server.datastore.ids import DEFAULT_EXTENSIONS, check_image_id, check_tag, split_name
from aiaa_server.errors import BadRequest


@pytest.mark.parametrize("bad", [
    "../x", "..", ".", "a/b", "a\\b", "/etc/passwd", "/abs", ".hidden", "", "x" * 129, " a", "a ", "a\n", "a\tb",
    "ü", "a;b", None, 3,
])
def test_unsafe_ids_are_refused_naming_the_rule(bad: object) -> None:
    with pytest.raises(BadRequest) as caught:
        check_image_id(bad)
    assert "letters, digits" in caught.value.message and "not starting with '.'" in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize("good", ["case_001", "a", "A-b.c_d", "x" * 128, "0.5mm", "3: CT Abdomen (arterial)",
                                  "1.2.840.113619.2.55.3"])
def test_safe_ids_pass(good: str) -> None:
    assert check_image_id(good) == good


def test_tags_follow_the_same_rule_and_are_shorter() -> None:
    assert check_tag("final") == "final"
    for bad in ("../final", ".final", "x" * 65, "my tag"):
        with pytest.raises(BadRequest):
            check_tag(bad)


def test_the_longest_extension_decides() -> None:
    assert split_name("case.nii.gz", DEFAULT_EXTENSIONS) == ("case", ".nii.gz")
    assert split_name("case.v2.NII", DEFAULT_EXTENSIONS) == ("case.v2", ".NII")
    assert split_name("case.seg.nrrd", DEFAULT_EXTENSIONS) == ("case", ".seg.nrrd")
    assert split_name("notes.txt", DEFAULT_EXTENSIONS) is None
    assert split_name(".nii.gz", DEFAULT_EXTENSIONS) is None
