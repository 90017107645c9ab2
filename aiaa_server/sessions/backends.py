"""Where session metadata lives: this process's memory plus `meta.json` files (one server), or Redis (replicas).

A backend stores one JSON record per session id. The session files always live in the workspace
(`<workspace>/sessions/<id>/`); with Redis that workspace must be shared by every replica (e.g. a ReadWriteMany
volume), so any replica can serve any call. Records in Redis carry a TTL equal to the time left until the
session expires and it is renewed on every touch, so Redis itself forgets expired sessions.

A touch may be marked not `durable` (the store decides which; see `aiaa_server.sessions`): the disk backend
then changes only its record in memory and writes `meta.json` later, with the next durable touch of that
session or on `close`. Redis records are the live ones: every touch is written there.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiaa_server.errors import ServiceUnavailable

log = logging.getLogger(__name__)

META_FILE = "meta.json"
REDIS_PREFIX = "aiaa:session:"
REDIS_RETRY_AFTER_S = 5
# Session ids are bearer secrets (whoever knows one reads and deletes the session): 128 random bits, and hex
# so they are safe as folder names and easy to mask in logs.
SESSION_ID_BYTES = 16
SESSION_ID_TEXT = rf"[0-9a-f]{{{2 * SESSION_ID_BYTES}}}"
_SESSION_ID = re.compile(SESSION_ID_TEXT)
_T = TypeVar("_T")


def new_session_id() -> str:
    return secrets.token_hex(SESSION_ID_BYTES)


def is_session_id(value: str) -> bool:
    """True for ids this server hands out; anything else (`..`, paths, old uuid1 ids) is never looked up."""
    return _SESSION_ID.fullmatch(value) is not None


def short_id(session_id: str) -> str:
    """What logs show of a session id: enough to follow one session, too little to use it."""
    return session_id[:8] + "…"


class SessionBackend(Protocol):
    """Session id → JSON record. `shared` is True when other server processes see the same records."""

    shared: bool

    def add(self, session_id: str, record: str, ttl_s: float) -> None: ...

    def load(self, session_id: str) -> str | None: ...

    def refresh(self, session_id: str, record: str, ttl_s: float, durable: bool = True) -> bool:
        """Replace an existing record; False when it is gone (never re-creates a deleted session).
        `durable=False` lets a backend that keeps a durable copy beside the live record write it later."""
        ...

    def remove(self, session_id: str) -> bool:
        """True when this call removed the record (so the caller owns deleting the files)."""
        ...

    def records(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def write_json_atomically(path: Path, payload: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(payload, encoding="utf-8")
    os.replace(tmp, path)


class DiskSessionBackend:
    """One server process: records in memory, persisted as `<root>/<id>/meta.json` so a restart finds them.

    Expiry is checked by the store (TTLs are ignored here). `add` does not write `meta.json`: the store writes
    it into the session's folder before publishing the folder. A refresh that is not `durable` leaves
    `meta.json` behind the record until the session's next durable refresh or `close`."""

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self._records: dict[str, str] = {}
        self._unwritten: set[str] = set()  # sessions whose meta.json is older than their record
        self._guard = threading.Lock()
        # One meta.json writer at a time (taken before _guard): a file never goes back to an older record,
        # and `remove` never returns while a write into the folder the caller is about to delete is running.
        self._writing = threading.Lock()

    def add(self, session_id: str, record: str, ttl_s: float) -> None:
        with self._guard:
            self._records[session_id] = record

    def load(self, session_id: str) -> str | None:
        with self._guard:
            return self._records.get(session_id)

    def refresh(self, session_id: str, record: str, ttl_s: float, durable: bool = True) -> bool:
        with self._guard:
            if session_id not in self._records:
                return False
            self._records[session_id] = record
            self._unwritten.add(session_id)
        if durable:
            # In-memory state is already right if this fails; only a restart would see the older record.
            self._write(session_id)
        return True

    def remove(self, session_id: str) -> bool:
        with self._writing, self._guard:
            self._unwritten.discard(session_id)
            return self._records.pop(session_id, None) is not None

    def records(self) -> dict[str, str]:
        with self._guard:
            return dict(self._records)

    def close(self) -> None:
        """Write every record that is ahead of its meta.json."""
        with self._guard:
            unwritten = sorted(self._unwritten)
        for session_id in unwritten:
            try:
                self._write(session_id)
            except OSError as exc:
                log.warning("session %s: could not persist access time: %s", short_id(session_id), exc)

    def _write(self, session_id: str) -> None:
        """Write the session's current record to its meta.json, unless it is gone or already written."""
        with self._writing:
            with self._guard:
                record = self._records.get(session_id)
                if record is None or session_id not in self._unwritten:
                    return
                self._unwritten.discard(session_id)
            try:
                write_json_atomically(self.root / session_id / META_FILE, record)
            except OSError:
                with self._guard:
                    if session_id in self._records:
                        self._unwritten.add(session_id)
                raise


class RedisSessionBackend:
    """Records in Redis under `aiaa:session:<id>` with a TTL; shared by every replica using the same database."""

    shared = True

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("--session_store redis://… needs the redis package: pip install 'aiaa-server[redis]'") \
                from exc
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self.url = url
        self.prefix = prefix
        self._redis: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                                 socket_connect_timeout=5, health_check_interval=30)
        self._call(self._redis.ping)  # refuse to start against an unreachable or misconfigured Redis

    def add(self, session_id: str, record: str, ttl_s: float) -> None:
        self._call(self._redis.set, self._key(session_id), record, px=_ttl_ms(ttl_s), nx=True)

    def load(self, session_id: str) -> str | None:
        return self._call(self._redis.get, self._key(session_id))

    def refresh(self, session_id: str, record: str, ttl_s: float, durable: bool = True) -> bool:
        """Every refresh is written: the Redis record is the live one, shared by every replica."""
        return bool(self._call(self._redis.set, self._key(session_id), record, px=_ttl_ms(ttl_s), xx=True))

    def remove(self, session_id: str) -> bool:
        return bool(self._call(self._redis.delete, self._key(session_id)))

    def records(self) -> dict[str, str]:
        keys: list[str] = self._call(lambda: list(self._redis.scan_iter(match=self.prefix + "*", count=500)))
        if not keys:
            return {}
        values = self._call(self._redis.mget, keys)
        # A key may expire between SCAN and MGET: its value comes back as None.
        return {key[len(self.prefix):]: value for key, value in zip(keys, values) if value is not None}

    def close(self) -> None:
        self._redis.close()

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def _call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        with self._unavailable_on_error():
            return method(*args, **kwargs)

    @contextmanager
    def _unavailable_on_error(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise ServiceUnavailable(f"session store {_redacted(self.url)} is unavailable: {exc}",
                                     retry_after=REDIS_RETRY_AFTER_S) from exc


def _ttl_ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


def _redacted(url: str) -> str:
    """The URL without a password (redis://:secret@host → redis://***@host)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def session_backend(store: str, root: Path) -> SessionBackend:
    """`disk` or a Redis URL (`redis://host:port/db`, `rediss://…` for TLS, `unix:///path?db=0`)."""
    if store == "disk":
        return DiskSessionBackend(root)
    backend = RedisSessionBackend(store)
    log.info("session metadata in %s (shared by every replica; session files in %s)", _redacted(store), root)
    return backend
