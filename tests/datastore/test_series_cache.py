"""The bounded cache of fetched series: complete-or-absent entries, one build per series, LRU eviction."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aiaa_server.datastore.series_cache import DICOM_DIR, SeriesCache


def builder(uid: str, size: int = 1000, calls: list[str] | None = None):
    def build(folder: Path) -> int:
        if calls is not None:
            calls.append(uid)
        (folder / DICOM_DIR / "000000.dcm").write_bytes(b"d" * size)
        (folder / f"{uid}.nii.gz").write_bytes(b"v" * size)
        return 1
    return build


def test_a_filled_entry_is_complete(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 1 << 20)
    entry = cache.fill("1.2", builder("1.2"))
    assert entry.image == cache.image_path("1.2") and entry.image.read_bytes() == b"v" * 1000
    assert [p.name for p in entry.files()] == ["000000.dcm"]
    assert entry.instances == 1 and entry.checksum.startswith("SHA256:") and entry.size >= 2000
    assert cache.get("1.2") == entry
    assert [uid for _used, uid, _size in cache.entries()] == ["1.2"]


def test_a_failing_build_leaves_nothing(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 1 << 20)

    def broken(folder: Path) -> int:
        (folder / DICOM_DIR / "000000.dcm").write_bytes(b"half")
        raise OSError("network down")

    with pytest.raises(OSError, match="network down"):
        cache.fill("1.2", broken)
    assert cache.get("1.2") is None and list(cache.folder.iterdir()) == []


def test_concurrent_fills_build_once(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 1 << 20)
    calls: list[str] = []
    gate = threading.Event()
    build = builder("1.2", calls=calls)

    def slow(folder: Path) -> int:
        gate.wait(10)
        return build(folder)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.fill, "1.2", slow) for _ in range(4)]
        gate.set()
        entries = [f.result() for f in futures]
    assert calls == ["1.2"] and len({e.image for e in entries}) == 1


def test_the_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 5000)  # room for two entries of ~2 KB
    for n, uid in enumerate(["1.1", "1.2"]):
        cache.fill(uid, builder(uid))
        os.utime(cache.folder / uid / "entry.json", (1000 + n, 1000 + n))
    cache.get("1.1")  # used: now the most recent
    cache.fill("1.3", builder("1.3"))
    assert sorted(uid for _used, uid, _size in cache.entries()) == ["1.1", "1.3"]
    assert cache.total_bytes() <= 5000


def test_an_entry_larger_than_the_bound_stays_alone(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 10)
    cache.fill("1.1", builder("1.1"))
    cache.fill("1.2", builder("1.2"))
    assert [uid for _used, uid, _size in cache.entries()] == ["1.2"]


def test_leftovers_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    folder = tmp_path / "c"
    for name in (f".tmp-{dead}-abc", f".trash-{dead}-1-1.2", f".tmp-{os.getpid()}-live", "1.5"):
        (folder / name).mkdir(parents=True)
    SeriesCache(folder, 1 << 20)
    assert sorted(p.name for p in folder.iterdir()) == [f".tmp-{os.getpid()}-live", "1.5"]


def test_an_incomplete_folder_under_the_final_name_is_replaced(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", 1 << 20)
    (cache.folder / "1.2" / DICOM_DIR).mkdir(parents=True)  # no entry.json: not an entry
    assert cache.get("1.2") is None
    assert cache.fill("1.2", builder("1.2")).image.is_file()
