"""A fixed training/validation split by image id, stable as images are added."""

from __future__ import annotations

import hashlib

from aiaa_server.errors import BadRequest


def _rank_key(image_id: str) -> tuple[str, str]:
    # The id itself breaks (astronomically unlikely) hash ties, so the order never depends on the input order.
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest(), image_id


def validation_split(ids: list[str], fraction: float, minimum: int = 1) -> tuple[list[str], list[str]]:
    """Split image ids into training and validation sets by the sha256 of each id.

    Ids are ranked by their hash; the first `max(minimum, round(fraction * n))` are validation, capped at
    `n - 1` so at least one id is left to train on. An id's rank does not depend on the other ids, so adding an
    image moves at most the one id at the validation set's boundary (and none when the validation size stays).

    Args:
        ids: the image ids (duplicates count once).
        fraction: the share of ids held out for validation, in [0, 1].
        minimum: validation ids at least (still capped at `n - 1`).

    Returns:
        `(train, val)`: disjoint lists of ids, each in hash-rank order.

    Raises:
        BadRequest: fewer than 2 distinct ids, a fraction outside [0, 1], or a negative minimum.
    """
    if not 0.0 <= fraction <= 1.0:
        raise BadRequest(f"validation fraction must be in [0, 1], not {fraction}")
    if minimum < 0:
        raise BadRequest(f"minimum validation size must be 0 or more, not {minimum}")
    ranked = sorted(set(ids), key=_rank_key)
    if len(ranked) < 2:
        raise BadRequest(f"training needs at least 2 labeled images (one to train on, one to validate on); "
                         f"{len(ranked)} found", images=len(ranked))
    size = min(max(minimum, round(fraction * len(ranked))), len(ranked) - 1)
    return ranked[size:], ranked[:size]
