"""Replicas: session metadata in a real Redis (TTL = expiry), session files in one shared workspace.

Store level: two SessionStores on one folder and one Redis behave like two replicas. End to end: two real
aiaa-server processes share a workspace and a Redis; any of them serves any session call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis  # the test extra installs it

from aiaa_server.errors import ServiceUnavailable
from aiaa_server.sessions import SessionNotFound, SessionStore
from aiaa_server.sessions.backends import REDIS_PREFIX, RedisSessionBackend, session_backend
from tests.api.test_sessions_api import put_session, result_array, segment
from tests.sessions.test_store import Clock, upload_of
from tests.support.mmars import write_threshold_mmar
from tests.support.redis import RedisServer, redis_server_binary, start_redis
from tests.support.server import LiveServer, free_port, start_server
from tests.support.waiting import until

assert redis_server_binary() is not None, "redis-server is not installed: run .ci/deploy-deps.sh"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url(db=1)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


def replica(root: Path, url: str, **kwargs: Any) -> SessionStore:
    kwargs.setdefault("default_expiry", 100)
    return SessionStore(root, backend=session_backend(url, root), **kwargs)


def key_ttl_s(url: str, session_id: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        return client.pttl(REDIS_PREFIX + session_id) / 1000
    finally:
        client.close()


# -- store level ----------------------------------------------------------------------------------------


def test_any_replica_serves_a_session_and_sees_its_deletion(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "sessions"
    a, b = replica(root, redis_url), replica(root, redis_url)
    info = a.create([upload_of(tmp_path)], expiry=60)
    assert 59 < key_ttl_s(redis_url, info.session_id) <= 60  # TTL = expiry

    assert b.get(info.session_id).meta == info.meta
    volume_b = b.volume(info.session_id)  # B decodes the shared file once and caches it
    np.testing.assert_array_equal(volume_b.array, a.volume(info.session_id).array)
    assert b.get(info.session_id).stats.decodes == 1 and b.cache.size_bytes > 0
    assert len(a) == len(b) == 1 and a.total_bytes == b.total_bytes == info.meta.size_bytes

    b.delete(info.session_id)
    assert not (root / info.session_id).exists()
    with pytest.raises(SessionNotFound):
        a.get(info.session_id)
    with pytest.raises(SessionNotFound):
        a.volume(info.session_id)  # A had it cached: the backend is asked first
    with pytest.raises(SessionNotFound):
        b.delete(info.session_id)
    assert a.cache.size_bytes == 0 and b.cache.size_bytes == 0


def test_touch_renews_the_ttl_and_never_resurrects(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "sessions"
    a, b = replica(root, redis_url), replica(root, redis_url)
    info = a.create([upload_of(tmp_path)], expiry=3)
    time.sleep(1.2)  # lets time pass: the real Redis TTL counts down
    assert key_ttl_s(redis_url, info.session_id) < 2
    touched = b.touch(info.session_id)
    assert touched.last_access_ts > info.last_access_ts
    assert key_ttl_s(redis_url, info.session_id) > 2.5
    assert a.get(info.session_id).last_access_ts == touched.last_access_ts  # A reads B's touch

    # A delete between B's read and B's write: the write must not bring the record back.
    a.delete(info.session_id)
    assert not b.backend.refresh(info.session_id, touched.model_dump_json(exclude={"stats"}), 60)
    assert b.backend.load(info.session_id) is None


def test_every_touch_reaches_redis_even_within_a_persist_window(tmp_path: Path, redis_url: str) -> None:
    """The disk backend keeps most touches in memory; Redis is the live record every replica reads."""
    root = tmp_path / "sessions"
    clock = Clock()
    a, b = replica(root, redis_url, clock=clock), replica(root, redis_url, clock=clock)
    info = a.create([upload_of(tmp_path)], expiry=60)  # a persist window of 6 s
    for _ in range(3):
        clock.now += 1
        touched = b.touch(info.session_id)
        assert a.get(info.session_id).last_access_ts == touched.last_access_ts == clock.now


def test_redis_ttl_expires_sessions_and_sweep_removes_their_files(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "sessions"
    a, b = replica(root, redis_url), replica(root, redis_url)
    short = a.create([upload_of(tmp_path)], expiry=1)
    kept = a.create([upload_of(tmp_path)], expiry=60)
    b.volume(short.session_id)
    client = redis.Redis.from_url(redis_url)
    until(lambda: client.exists(REDIS_PREFIX + short.session_id) == 0, timeout=10,  # Redis forgets it by itself
          message="Redis never expired the 1 s session")
    client.close()
    with pytest.raises(SessionNotFound):
        b.get(short.session_id)
    assert (root / short.session_id).is_dir()  # files stay until a sweep

    assert b.sweep() == [short.session_id]
    assert not (root / short.session_id).exists() and (root / kept.session_id).is_dir()
    assert b.cache.bytes_where(lambda key: key[1] == short.session_id) == 0
    assert a.sweep() == []
    assert a.get(kept.session_id).session_id == kept.session_id


def test_sweep_keeps_young_partial_folders_of_other_replicas(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "sessions"
    store = replica(root, redis_url)
    uploading = root / "0-still-uploading.partial"
    uploading.mkdir()
    store.sweep()
    assert uploading.is_dir()


def test_budget_is_shared_between_replicas(tmp_path: Path, redis_url: str) -> None:
    root = tmp_path / "sessions"
    size = SessionStore(tmp_path / "probe").create([upload_of(tmp_path, noise=True)]).meta.size_bytes
    a = replica(root, redis_url, budget_bytes=int(size * 2.5))
    b = replica(root, redis_url, budget_bytes=int(size * 2.5))
    first = a.create([upload_of(tmp_path, noise=True)])
    time.sleep(0.01)  # lets the clock move: distinct access times order the LRU eviction
    second = b.create([upload_of(tmp_path, noise=True)])
    time.sleep(0.01)  # lets the clock move: distinct access times order the LRU eviction
    third = a.create([upload_of(tmp_path, noise=True)])  # over budget: the least recently used goes
    assert sorted(a.backend.records()) == sorted([second.session_id, third.session_id])
    assert not (root / first.session_id).exists()


def test_unreachable_redis(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="session store"):
        RedisSessionBackend(f"redis://127.0.0.1:{free_port()}/0")
    doomed = start_redis(tmp_path / "redis")
    try:
        store = replica(tmp_path / "sessions", doomed.url())
    finally:
        doomed.stop()
    with pytest.raises(ServiceUnavailable) as caught:
        store.get("0" * 32)  # a well-formed id: malformed ones are refused before the store is asked
    assert caught.value.status == 503 and caught.value.retry_after


def test_password_is_not_logged(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        RedisSessionBackend(f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert "s3cret" not in caught.value.message and "***@127.0.0.1" in caught.value.message


# -- two real server processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[list[LiveServer]]:
    models = tmp_path_factory.mktemp("replica-mmars")
    write_threshold_mmar(models / "test_threshold")
    workspace = tmp_path_factory.mktemp("shared") / "workspace"
    args = ["--models", str(models), "--no-bundled_models", "--session_store", redis_server.url(db=2),
            "--session_sweep_seconds", "0.5", "--session_expiry", "600"]
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(start_server(workspace, args))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_servers_share_sessions(replicas: list[LiveServer], tmp_path: Path) -> None:
    first, second = replicas
    upload = upload_of(tmp_path)
    created = put_session(first, [("image", "cube.nii.gz", upload.path)], expiry="0")
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]

    with second.client() as client:
        got = client.get(f"/session/{session_id}", params={"update_ts": "true"})
        assert got.status_code == 200 and got.json()["expiry"] == 600
    mask, _, _ = result_array(segment(second, "test_threshold", session_id=session_id))
    direct, _, _ = result_array(segment(first, "test_threshold", file=upload_of(tmp_path).path))
    np.testing.assert_array_equal(mask, direct)

    with second.client() as client:
        assert client.delete(f"/session/{session_id}").status_code == 200
    with first.client() as client:
        assert client.get(f"/session/{session_id}").status_code == 404
        assert client.delete(f"/session/{session_id}").status_code == 404
    expired = segment(first, "test_threshold", session_id=session_id)
    assert expired.status_code == 440 and expired.json()["detail"] == "Session Expired"
    assert not (first.workspace / "sessions" / session_id).exists()


def test_two_servers_expire_through_redis_ttl(replicas: list[LiveServer], tmp_path: Path) -> None:
    first, second = replicas
    upload = upload_of(tmp_path)
    session_id = put_session(first, [("image", "cube.nii.gz", upload.path)], expiry="2").json()["session_id"]
    assert segment(second, "test_threshold", session_id=session_id).status_code == 200  # renews: 2 s again
    folder = first.workspace / "sessions" / session_id
    assert folder.is_dir()
    with second.client() as client:  # a plain GET does not renew: the Redis TTL runs out
        until(lambda: client.get(f"/session/{session_id}").status_code == 404, timeout=15,
              message="the session never expired")
    assert segment(first, "test_threshold", session_id=session_id).status_code == 440
    # a sweeper (0.5 s) removes the orphaned files
    until(lambda: not folder.exists(), timeout=10, message="no sweeper removed the expired session's files")
