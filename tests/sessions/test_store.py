"""SessionStore: creation, expiry, sweep, byte budget, restart reload, and the decode/pre-process cache."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aiaa_server.errors import InvalidImage, PayloadTooLarge
from aiaa_server.sessions import PERSIST_FRACTION, SessionNotFound, SessionStore
from aiaa_server.sessions import backends as session_backends
from aiaa_server.sessions.backends import META_FILE
from aiaa_server.sessions.models import SessionInfo
from tests.support.volumes import cube_volume, lps_affine, save_nifti


@dataclass
class Upload:
    path: Path
    filename: str


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def upload_of(tmp_path: Path, name: str = "cube.nii.gz", noise: bool = False) -> Upload:
    """A fresh upload file (the store moves it into the session folder)."""
    image, _ = cube_volume(shape=(40, 30, 20), box=(slice(10, 20), slice(5, 15), slice(4, 12)))
    if noise:  # incompressible, so file sizes are predictable
        image = np.random.default_rng(len(list(tmp_path.iterdir()))).integers(-1000, 1000, image.shape).astype(np.int16)
    folder = tmp_path / f"upload{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    return Upload(save_nifti(folder / name, image, lps_affine((1.0, 1.0, 2.0))), f"C:\\data\\{name}")


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def store(tmp_path: Path, clock: Clock) -> SessionStore:
    return SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)


def test_create_stores_image_and_meta(store: SessionStore, tmp_path: Path) -> None:
    info = store.create([upload_of(tmp_path)], expiry=0)
    folder = store.root / info.session_id
    assert (folder / "image.nii.gz").is_file()
    saved = json.loads((folder / "meta.json").read_text())
    assert saved["session_id"] == info.session_id and "stats" not in saved
    assert info.name == "cube.nii.gz" and info.image == "image.nii.gz"
    assert info.meta.shape == [40, 30, 20] and info.meta.spacing == [1.0, 1.0, 2.0]
    assert info.expiry == 100  # 0 → server default
    assert info.stats is not None and info.stats.decodes == 1  # validated on upload, cached


@pytest.mark.parametrize(("requested", "effective"), [(None, 100), (0, 100), (-5, 100), (30, 30), (5000, 100)])
def test_effective_expiry(store: SessionStore, requested: int | None, effective: int) -> None:
    assert store.effective_expiry(requested) == effective


def test_get_touch_delete(store: SessionStore, tmp_path: Path, clock: Clock) -> None:
    info = store.create([upload_of(tmp_path)])
    clock.now += 50
    assert store.get(info.session_id).last_access_ts == info.last_access_ts
    assert store.get(info.session_id, touch=True).last_access_ts == clock.now
    deleted = store.delete(info.session_id)
    assert deleted.session_id == info.session_id
    assert not (store.root / info.session_id).exists()
    with pytest.raises(SessionNotFound):
        store.get(info.session_id)
    with pytest.raises(SessionNotFound):
        store.delete(info.session_id)


def test_expiry_and_sweep(store: SessionStore, tmp_path: Path, clock: Clock) -> None:
    short = store.create([upload_of(tmp_path)], expiry=10)
    long = store.create([upload_of(tmp_path)])
    clock.now += 11
    assert store.sweep() == [short.session_id]
    assert not (store.root / short.session_id).exists()
    store.get(long.session_id)
    clock.now += 200
    with pytest.raises(SessionNotFound):
        store.get(long.session_id)  # expired sessions are gone even before the sweeper runs


def test_budget_evicts_least_recently_accessed(tmp_path: Path, clock: Clock) -> None:
    probe = SessionStore(tmp_path / "probe", clock=clock)
    size = probe.create([upload_of(tmp_path, "a.nii", noise=True)]).meta.size_bytes
    store = SessionStore(tmp_path / "sessions", budget_bytes=int(size * 2.5), clock=clock)
    first = store.create([upload_of(tmp_path, "a.nii", noise=True)])
    clock.now += 1
    second = store.create([upload_of(tmp_path, "b.nii", noise=True)])
    clock.now += 1
    store.touch(first.session_id)  # now `second` is the least recently used
    clock.now += 1
    third = store.create([upload_of(tmp_path, "c.nii", noise=True)])
    assert {store.get(s.session_id).session_id for s in (first, third)} == {first.session_id, third.session_id}
    with pytest.raises(SessionNotFound):
        store.get(second.session_id)
    assert not (store.root / second.session_id).exists()
    assert store.total_bytes <= store.budget_bytes


def test_image_larger_than_budget_is_refused(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", budget_bytes=1000, clock=clock)
    with pytest.raises(PayloadTooLarge):
        store.create([upload_of(tmp_path, "a.nii", noise=True)])
    assert list(store.root.iterdir()) == []


def test_reload_after_restart(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    alive = store.create([upload_of(tmp_path)])
    dead = store.create([upload_of(tmp_path)], expiry=5)
    (store.root / "0000-broken").mkdir()
    (store.root / "1111.partial").mkdir()
    clock.now += 10
    again = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    assert again.get(alive.session_id).meta == alive.meta
    with pytest.raises(SessionNotFound):
        again.get(dead.session_id)
    assert sorted(p.name for p in again.root.iterdir()) == [alive.session_id]
    assert again.volume(alive.session_id).spatial_shape == (40, 30, 20)
    assert again.get(alive.session_id).stats.decodes == 1


def meta_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The records the disk backend writes to meta.json from now on (creation writes it elsewhere)."""
    written: list[str] = []
    write = session_backends.write_json_atomically

    def counting(path: Path, payload: str) -> None:
        written.append(payload)
        write(path, payload)

    monkeypatch.setattr(session_backends, "write_json_atomically", counting)
    return written


def saved_info(store: SessionStore, session_id: str) -> SessionInfo:
    return SessionInfo.model_validate_json((store.root / session_id / META_FILE).read_text())


def test_touches_within_a_window_stay_in_memory(
    store: SessionStore, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = store.create([upload_of(tmp_path)])  # expiry 100 s: a window of 10 s
    meta = store.root / info.session_id / META_FILE
    before, stamp = meta.read_bytes(), meta.stat().st_mtime_ns
    written = meta_writes(monkeypatch)
    for _ in range(6):
        clock.now += 1.5
        assert store.touch(info.session_id).last_access_ts == clock.now
    assert store.get(info.session_id).expires_at() == clock.now + 100  # the live expiry is renewed
    assert written == [] and meta.read_bytes() == before and meta.stat().st_mtime_ns == stamp
    clock.now += 1.5  # 10.5 s after creation: the first touch of the next window is written
    store.touch(info.session_id)
    assert len(written) == 1 and saved_info(store, info.session_id).last_access_ts == clock.now


def test_meta_json_lags_the_live_expiry_by_less_than_a_window(store: SessionStore, tmp_path: Path,
                                                               clock: Clock) -> None:
    info = store.create([upload_of(tmp_path)])
    window = PERSIST_FRACTION * info.expiry
    for _ in range(60):
        clock.now += 0.7
        live = store.touch(info.session_id).expires_at()
        assert live - window < saved_info(store, info.session_id).expires_at() <= live


def test_restart_after_a_crash_sees_a_touched_session_alive(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    info = store.create([upload_of(tmp_path)])
    for _ in range(11):
        clock.now += 2.5
        live = store.touch(info.session_id).expires_at()
    clock.now += 90  # 117.5 s after creation, 90 s after the last touch; the store was never closed
    again = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    reloaded = again.get(info.session_id).expires_at()
    assert live - PERSIST_FRACTION * 100 < reloaded < live  # the touch at 20 s was written, the later ones not


def test_close_writes_the_access_times_kept_in_memory(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    info = store.create([upload_of(tmp_path)])
    gone = store.create([upload_of(tmp_path)])
    clock.now += 5
    touched = store.touch(info.session_id)
    store.touch(gone.session_id)
    store.delete(gone.session_id)
    store.close()
    assert saved_info(store, info.session_id).last_access_ts == touched.last_access_ts
    assert not (store.root / gone.session_id).exists()  # a deleted session is not written back
    clock.now += 98  # past the creation-time expiry, within the touched one
    again = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    assert again.get(info.session_id).last_access_ts == touched.last_access_ts


def test_volume_is_decoded_once_even_concurrently(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", clock=clock)
    info = store.create([upload_of(tmp_path)])
    store.cache.discard(lambda key: True)  # forget the upload-time decode
    volumes = []
    threads = [threading.Thread(target=lambda: volumes.append(store.volume(info.session_id))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(v) for v in volumes}) == 1
    assert store.get(info.session_id).stats.decodes == 2  # upload + one re-decode


def test_preprocessed_is_cached_per_model_object(store: SessionStore, tmp_path: Path) -> None:
    info = store.create([upload_of(tmp_path)])

    class Pipeline:
        pass

    first, second = Pipeline(), Pipeline()
    calls: list[str] = []

    def compute(tag: str):
        return lambda: calls.append(tag) or {"image": np.zeros(4)}

    a = store.preprocessed(info.session_id, "m", first, compute("first"))
    b = store.preprocessed(info.session_id, "m", first, compute("first"))
    assert a is b and calls == ["first"]
    store.preprocessed(info.session_id, "m", second, compute("second"))  # a reloaded model: new entry
    assert calls == ["first", "second"]
    assert store.get(info.session_id).stats.preprocess_runs == {"m": 2}
    store.delete(info.session_id)
    assert store.cache.size_bytes == 0


def test_refuses_undecodable_png_and_empty_uploads(store: SessionStore, tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    with pytest.raises(InvalidImage):
        store.create([Upload(png, "x.png")])
    with pytest.raises(InvalidImage):
        store.create([])
    assert list(store.root.iterdir()) == []


def test_dicom_series_session(store: SessionStore, tmp_path: Path) -> None:
    from tests.imaging.test_dicom import hu_volume, write_series

    hu = hu_volume((12, 10, 6))
    paths, affine = write_series(tmp_path / "dcm", hu)
    info = store.create([Upload(p, f"image_{i}.dcm") for i, p in enumerate(paths)], save_as=".nii")
    assert info.image == "image.nii" and info.meta.shape == [12, 10, 6]
    np.testing.assert_allclose(info.meta.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(store.volume(info.session_id).array, hu)
    shutil.rmtree(tmp_path / "dcm")


def test_reload_enforces_a_lowered_budget(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", clock=clock)
    old = store.create([upload_of(tmp_path, "a.nii", noise=True)])
    clock.now += 1
    new = store.create([upload_of(tmp_path, "b.nii", noise=True)])
    again = SessionStore(tmp_path / "sessions", budget_bytes=int(new.meta.size_bytes * 1.5), clock=clock)
    again.get(new.session_id)
    with pytest.raises(SessionNotFound):
        again.get(old.session_id)
    assert not (again.root / old.session_id).exists()


# ------------------------------------------------------------------------------------ ids (security)


def test_session_ids_are_long_random_hex(store: SessionStore, tmp_path: Path) -> None:
    ids = {store.create([upload_of(tmp_path)]).session_id for _ in range(3)}
    assert len(ids) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", session_id) for session_id in ids)
    assert len({session_id[:8] for session_id in ids}) == 3  # no shared time/MAC prefix as with uuid1


@pytest.mark.parametrize("bad_id", ["..", "../victim", "", "x" * 32, "A" * 32, str(uuid.uuid1()), "0" * 31,
                                    "0" * 32 + "/..", "0" * 32 + "\n"])
def test_malformed_ids_are_never_looked_up(store: SessionStore, tmp_path: Path, bad_id: str) -> None:
    real = store.create([upload_of(tmp_path)])
    victim = store.root.parent / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not a session")
    # Even a record stored under such a key (a shared Redis anyone could write) must not lead to a path.
    record = (store.root / real.session_id / META_FILE).read_text()
    store.backend.add(bad_id, record.replace(real.session_id, bad_id), 100)
    for call in (store.get, store.touch, store.delete, store.volume):
        with pytest.raises(SessionNotFound):
            call(bad_id)
    assert (victim / "keep.txt").is_file()
    assert store.get(real.session_id).session_id == real.session_id


def test_reload_drops_folders_with_old_style_ids(tmp_path: Path, clock: Clock) -> None:
    store = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    kept = store.create([upload_of(tmp_path)])
    legacy_id = str(uuid.uuid1())  # what earlier versions handed out: guessable, never served again
    legacy = store.create([upload_of(tmp_path)])
    meta = json.loads((store.root / legacy.session_id / META_FILE).read_text())
    (store.root / legacy.session_id).rename(store.root / legacy_id)
    (store.root / legacy_id / META_FILE).write_text(json.dumps({**meta, "session_id": legacy_id}))
    again = SessionStore(tmp_path / "sessions", default_expiry=100, clock=clock)
    assert [p.name for p in again.root.iterdir()] == [kept.session_id]
    assert len(again) == 1


def test_session_log_lines_carry_a_short_prefix_only(
    store: SessionStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aiaa_server.sessions"):
        info = store.create([upload_of(tmp_path)])
        store.cache.discard(lambda key: True)
        store.volume(info.session_id)
        store.delete(info.session_id)
    assert f"session {info.session_id[:8]}… created" in caplog.text
    assert f"session {info.session_id[:8]}… deleted" in caplog.text
    assert info.session_id not in caplog.text
