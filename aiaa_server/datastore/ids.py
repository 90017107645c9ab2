"""Image ids, label tags and file names: what may name a file in the datastore folder.

An image id is the image's file name without its extension (`case_001.nii.gz` -> `case_001`), as in MONAI Label.
Ids and tags name files and folders, so only a safe alphabet is accepted: letters, digits, `.`, `_` and `-`
(image ids also spaces and `:,()+@`, as in 3D Slicer's volume names), not starting with a dot (no `..`, no
hidden files, no path separators), bounded in length.
"""

from __future__ import annotations

import enum
import re

from aiaa_server.errors import BadRequest

MAX_ID_LENGTH = 128
MAX_TAG_LENGTH = 64
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Image ids may also hold what 3D Slicer puts in volume names ("3: CT Abdomen (arterial)"): spaces, ':', ',',
# '(', ')', '+', '@'; never a path separator, a control character or a leading dot, nor a trailing space.
_SAFE_IMAGE_ID = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9._ :,()+@-]*[A-Za-z0-9._:,()+@-])?")
IMAGE_ID_RULE = "letters, digits, spaces or ._-:,()+@, not starting with '.' or ending with a space"
TAG_RULE = "letters, digits, '.', '_' or '-', not starting with '.'"

#: Extensions recognised as images and labels, longest first so `.nii.gz` wins over a bare `.gz`.
DEFAULT_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".png", ".jpg")


class LabelTag(str, enum.Enum):
    """MONAI Label's two standard tags: `final` (an annotator's saved label) and `original` (a model's output)."""

    ORIGINAL = "original"
    FINAL = "final"


def _check(value: object, what: str, limit: int, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not pattern.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80] + "...")
        raise BadRequest(f"invalid {what} {shown}: use 1-{limit} {rule}", rule=f"^{pattern.pattern}$", limit=limit)
    return value


def check_image_id(image_id: object) -> str:
    """`image_id` if it can name an image file.

    Args:
        image_id: the candidate id.

    Returns:
        the id, unchanged.

    Raises:
        BadRequest: (400) not 1-128 characters of `[A-Za-z0-9._ :,()+@-]`, starting with a dot or a space,
            or ending with a space.
    """
    return _check(image_id, "image id", MAX_ID_LENGTH, _SAFE_IMAGE_ID, IMAGE_ID_RULE)


def check_tag(tag: object) -> str:
    """`tag` if it can name a label folder (`labels/<tag>/`).

    Args:
        tag: the candidate tag (`final`, `original` or any custom tag).

    Returns:
        the tag as a plain string (an enum member gives its value).

    Raises:
        BadRequest: (400) not 1-64 characters of `[A-Za-z0-9._-]`, or starting with a dot.
    """
    return _check(tag.value if isinstance(tag, LabelTag) else tag, "label tag", MAX_TAG_LENGTH, _SAFE, TAG_RULE)


def split_name(name: str, extensions: tuple[str, ...]) -> tuple[str, str] | None:
    """Split a file name into (id, extension) by the longest known extension (case-insensitive).

    Args:
        name: a bare file name.
        extensions: the known extensions, each with its leading dot.

    Returns:
        `(id, extension)` with the extension spelled as in `name`; None when no known extension ends the name
        or nothing is left before it.
    """
    lower = name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if lower.endswith(ext.lower()) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return None


def check_extension(ext: str, extensions: tuple[str, ...]) -> str:
    """`ext` if it is one of the known extensions (case-insensitive).

    Raises:
        BadRequest: (400) an unknown extension.
    """
    if not isinstance(ext, str) or ext.lower() not in {e.lower() for e in extensions}:
        raise BadRequest(f"unsupported file extension {ext!r}: use one of {', '.join(extensions)}")
    return ext
