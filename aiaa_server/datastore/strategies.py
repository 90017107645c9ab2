"""Active learning: hand the next unlabelled image to an annotator, locked to them for a while.

Strategies (MONAI Label's names):

* `first`: the first image, in sorted id order, with no `final` label and no live lock;
* `random`: a uniformly random such image, drawn from the datastore's `rng` (seed it for repeatable picks);
* `uncertainty`: the such image with the highest score in the caller's `scores` (the serving model's uncertainty,
  computed elsewhere); images without a (finite) score come after every scored one, each group by id.

A hand-out locks the image to the client until `expires` (`lock_seconds`, at most `max_lock_seconds`), so two
annotators asking at once get different images; saving a `final` label or `release_image` frees it, and an
expired lock counts as free. One client holds at most `max_locks_per_client` locks: a further hand-out frees its
oldest. Locks live in each image's metadata, so they survive a restart.

A mixin of `LocalDatastore` (`local.py`), which provides the folder scanning, metadata, clock and lock it uses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from aiaa_server.datastore.ids import LabelTag, check_image_id
from aiaa_server.datastore.models import ImageInfo, LockInfo
from aiaa_server.errors import BadRequest, Conflict

if TYPE_CHECKING:
    from aiaa_server.datastore.local import LocalDatastore

log = logging.getLogger(__name__)

STRATEGIES = ("first", "random", "uncertainty")


class ActiveLearning:
    """Active-learning operations of `LocalDatastore`."""

    def _active_lock(self: LocalDatastore, meta: dict[str, Any]) -> LockInfo | None:
        """The image's lock if it has one that has not expired."""
        raw = meta.get("lock")
        if not isinstance(raw, dict):
            return None
        try:
            lock = LockInfo.model_validate(raw)
        except ValidationError:
            return None
        return lock if lock.expires > self.clock() else None

    def next_sample(
        self: LocalDatastore, strategy: str = "random", client_id: str | None = None, *,
        lock_seconds: float | None = None, scores: Mapping[str, float] | None = None,
    ) -> ImageInfo | None:
        """Pick the next image to annotate and lock it to `client_id`.

        Args:
            strategy: `first`, `random` or `uncertainty`.
            client_id: the annotator asking (None: an anonymous client, whose locks count like any other).
            lock_seconds: how long the lock lasts; None: `limits.lock_seconds`; cut to `limits.max_lock_seconds`.
            scores: image id -> score, higher first, for `uncertainty` (None: no image is scored); the others
                ignore it.

        Returns:
            the chosen image's info, its new lock included; None when every image has a `final` label or is locked.

        Raises:
            BadRequest: (400) an unknown strategy, a bad client id or a lock time that is not positive.
        """
        if strategy not in STRATEGIES:
            raise BadRequest(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        client = self._check_client(client_id) or ""
        seconds = self.limits.lock_seconds if lock_seconds is None else float(lock_seconds)
        if not seconds > 0:
            raise BadRequest("lock_seconds must be positive")
        seconds = min(seconds, self.limits.max_lock_seconds)
        with self._guard():
            images = self._scan_images()
            done = self._scan_folder(self.root / "labels" / LabelTag.FINAL.value)
            candidates = sorted(image_id for image_id in images if image_id not in done)
            metas = {image_id: self._read_meta(image_id) for image_id in candidates}
            locks = {image_id: self._active_lock(meta) for image_id, meta in metas.items()}
            free = [image_id for image_id in candidates if locks[image_id] is None]
            if not free:
                return None
            chosen = self._pick(strategy, free, scores or {})
            held = sorted((lock.ts, image_id) for image_id, lock in locks.items()
                          if lock is not None and lock.client_id == client)
            for _ts, image_id in held[: max(len(held) - self.limits.max_locks_per_client + 1, 0)]:
                metas[image_id]["lock"] = None
                self._write_meta(image_id, metas[image_id])
            now = self.clock()
            meta = metas[chosen]
            meta["lock"] = LockInfo(client_id=client, strategy=strategy, ts=now, expires=now + seconds).model_dump()
            meta["strategy"][strategy] = {"ts": now, "client_id": client_id}
            self._write_meta(chosen, meta)
            log.info("datastore: %s handed %s to client %r for %.0f s", strategy, chosen, client, seconds)
            return self._image_info(chosen, images[chosen], meta)

    def _pick(self: LocalDatastore, strategy: str, free: list[str], scores: Mapping[str, float]) -> str:
        """One of the `free` ids (sorted, not empty) by `strategy`."""
        if strategy == "first":
            return free[0]
        if strategy == "random":
            return self.rng.choice(free)
        return min(free, key=lambda image_id: _score_rank(scores.get(image_id), image_id))

    def release_image(self: LocalDatastore, image_id: str, client_id: str | None = None, *,
                      force: bool = False) -> bool:
        """Free an image's lock (an annotator skips it or gives up).

        Args:
            image_id: the locked image.
            client_id: the client releasing it; it must hold the lock unless `force`.
            force: release whoever holds it (an admin).

        Returns:
            True when a live lock was released, False when the image was not locked.

        Raises:
            BadRequest: (400) an unsafe id.
            NotFound: (404) no such image.
            Conflict: (409) another client holds the lock and `force` is False.
        """
        check_image_id(image_id)
        client = self._check_client(client_id) or ""
        with self._guard():
            self._image_name(image_id)
            meta = self._read_meta(image_id)
            lock = self._active_lock(meta)
            if lock is None:
                return False
            if lock.client_id != client and not force:
                raise Conflict(f"image {image_id!r} is locked by another client", image=image_id)
            meta["lock"] = None
            self._write_meta(image_id, meta)
            return True

    def locks(self: LocalDatastore) -> dict[str, LockInfo]:
        """The live locks, by image id."""
        with self._guard():
            found = {image_id: self._active_lock(self._read_meta(image_id)) for image_id in self._scan_images()}
            return {image_id: lock for image_id, lock in sorted(found.items()) if lock is not None}


def _score_rank(score: object, image_id: str) -> tuple[int, float, str]:
    """Sort key of `uncertainty`: scored images first, highest score first, then by id; then the unscored by id."""
    if isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score):
        return (0, -float(score), image_id)
    return (1, 0.0, image_id)
