"""Uploaded models in the workspace: archive extraction, validation, atomic install and removal.

Layout: `<workspace>/models/<name>/` is an installed MMAR; `<workspace>/models/.staging/` holds everything
transient (uploads in progress, models moved aside during a replace, models being deleted). Nothing under
`.staging` is ever served: a scan only looks one level down for `config/config_aiaa.json`.

Install = build the MMAR in `.staging/up-*`, validate it there, fsync it, then rename it into place. A replace
first renames the old folder to `.staging/aside-*/<name>`; `recover()` (run at startup, before the scan) puts
such a folder back if the crash happened before the new one arrived, and deletes every other leftover.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import (
    AIAAError,
    ArchiveTooLarge,
    BadRequest,
    Conflict,
    InvalidArchive,
    InvalidModel,
    InvalidModelName,
    NotFound,
)
from aiaa_server.inference.params import loads_bounded
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.mmar.loader import (
    CONFIG_PATH,
    NETWORKLESS_TYPES,
    LoadedModel,
    find_model_file,
    is_mmar,
    load_mmar,
    parse_config,
)
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.safety import check_untrusted_mmar
from aiaa_server.mmar.sandbox import SandboxLimits, validate_isolated

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING_DIR = ".staging"
MODEL_TS = Path("models") / "model.ts"
ARCHIVE_JUNK = {"__MACOSX", ".DS_Store"}
MAX_CONFIG_BYTES = 16 * 2**20
MAX_DRY_RUN_VOXELS = 256**3
COPY_CHUNK = 2**20
DEFAULT_SANDBOX = SandboxLimits()


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
        )
    return name


# ---------------------------------------------------------------------------------------------- fsync


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (bottom-up) so a rename of `root` publishes durable data."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


# ------------------------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 10000
    max_bytes: int = 8192 * 2**20


ArchiveKind = Literal["zip", "tar"]


def sniff_archive(path: Path) -> ArchiveKind | None:
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"  # compressed; tarfile finds out whether a tar is inside
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def member_path(raw: str) -> PurePosixPath | None:
    """The safe relative path of an archive entry, None for the root entry; refuses anything escaping."""
    if "\x00" in raw:
        raise InvalidArchive(f"archive entry {raw!r} has a NUL byte in its name", entry=raw)
    name = raw.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidArchive(f"archive entry {raw!r} has an absolute path", entry=raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"archive entry {raw!r} points outside the archive ('..')", entry=raw)
    return PurePosixPath(*parts) if parts else None


class _Extractor:
    """Writes entries below `dest`, counting files and bytes against the limits."""

    def __init__(self, dest: Path, limits: ArchiveLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.entries = 0
        self.total = 0
        dest.mkdir(parents=True, exist_ok=True)
        self._root = dest.resolve()

    def _count_entry(self, raw: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ArchiveTooLarge(
                f"archive has more than {self.limits.max_files} entries (see --max_archive_files)", entry=raw
            )

    def _target(self, rel: PurePosixPath, raw: str) -> Path:
        target = self.dest.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(self._root):
            raise InvalidArchive(f"archive entry {raw!r} points outside the archive", entry=raw)
        return target

    def add_dir(self, raw: str) -> None:
        self._count_entry(raw)
        rel = member_path(raw)
        if rel is None:
            return
        try:
            self._target(rel, raw).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArchive(f"archive entry {raw!r} cannot be created: {exc.strerror}", entry=raw) from exc

    def add_file(self, raw: str, declared_size: int, source: IO[bytes]) -> None:
        self._count_entry(raw)
        rel = member_path(raw)
        if rel is None:
            raise InvalidArchive(f"archive entry {raw!r} has no file name", entry=raw)
        self._check_total(self.total + max(declared_size, 0), raw)
        target = self._target(rel, raw)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError as exc:
            raise InvalidArchive(f"archive entry {raw!r} appears twice", entry=raw) from exc
        except OSError as exc:
            raise InvalidArchive(f"archive entry {raw!r} cannot be created: {exc.strerror}", entry=raw) from exc
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                self._check_total(self.total + len(chunk), raw)  # declared sizes can lie
                self.total += len(chunk)
                out.write(chunk)

    def _check_total(self, total: int, raw: str) -> None:
        if total > self.limits.max_bytes:
            raise ArchiveTooLarge(
                f"archive expands to more than {self.limits.max_bytes // 2**20} MiB (see --max_archive_mb)",
                entry=raw,
            )


def _zip_entry_count(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile parses every entry."""
    try:
        with open(path, "rb") as f:
            record = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    return int(record[4]) if record else None


def _extract_zip(path: Path, extractor: _Extractor) -> None:
    count = _zip_entry_count(path)
    if count is not None and count > extractor.limits.max_files:
        raise ArchiveTooLarge(f"archive has {count} entries, more than {extractor.limits.max_files} "
                              "(see --max_archive_files)")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidArchive(f"archive entry {info.filename!r} is a symbolic link", entry=info.filename)
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # 0: no type recorded
                raise InvalidArchive(f"archive entry {info.filename!r} is not a regular file", entry=info.filename)
            if info.flag_bits & 0x1:
                raise InvalidArchive(f"archive entry {info.filename!r} is encrypted", entry=info.filename)
            if info.is_dir():
                extractor.add_dir(info.filename)
                continue
            with archive.open(info) as source:
                extractor.add_file(info.filename, info.file_size, source)


def _extract_tar(path: Path, extractor: _Extractor) -> None:
    with tarfile.open(path, mode="r:*") as archive:
        for member in archive:
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise InvalidArchive(
                    f"archive entry {member.name!r} is a {kind} link (to {member.linkname!r})", entry=member.name
                )
            if member.isdir():
                extractor.add_dir(member.name)
            elif member.isreg():
                source = archive.extractfile(member)
                assert source is not None
                with source:
                    extractor.add_file(member.name, member.size, source)
            else:
                raise InvalidArchive(f"archive entry {member.name!r} is not a regular file", entry=member.name)
            archive.members.clear()  # tarfile keeps every header otherwise; the count limit bounds the loop


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> None:
    kind = sniff_archive(path)
    if kind is None:
        raise InvalidArchive("data is not a zip or tar(.gz) archive of an MMAR")
    extractor = _Extractor(dest, limits)
    try:
        if kind == "zip":
            _extract_zip(path, extractor)
        else:
            _extract_tar(path, extractor)
    except AIAAError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, OSError,
            NotImplementedError, RuntimeError, ValueError) as exc:
        raise InvalidArchive(f"cannot read the {kind} archive: {exc}") from exc


def locate_mmar_root(extracted: Path) -> Path:
    """The MMAR inside an extracted archive: at the root, or inside one single top folder."""
    for junk in ARCHIVE_JUNK:
        target = extracted / junk
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if is_mmar(extracted):
        return extracted
    children = list(extracted.iterdir())
    if len(children) == 1 and children[0].is_dir() and is_mmar(children[0]):
        return children[0]
    raise InvalidArchive(
        f"the archive holds no MMAR: {CONFIG_PATH.as_posix()} must be at its root (or inside one top folder)"
    )


def _looks_like_mmar_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.replace("\\", "/").endswith(CONFIG_PATH.as_posix()) for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


# ------------------------------------------------------------------------------------- assembling


def read_uploaded_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidModel(f"config_aiaa.json is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        raw = loads_bounded(path.read_bytes().decode("utf-8"), what="config_aiaa.json", error=InvalidModel)
    except UnicodeDecodeError as exc:
        raise InvalidModel(f"config is not valid JSON: {exc}") from exc
    parse_config(raw)
    return raw


def assemble_mmar(staging: Path, config_part: Path | None, data_part: Path | None, limits: ArchiveLimits) -> Path:
    """Turn the uploaded parts into an MMAR folder inside `staging` (forms a, b and c of the protocol)."""
    if config_part is None and data_part is None:
        raise BadRequest("nothing uploaded: send multipart `config` (config_aiaa.json) and/or `data` "
                         "(model.ts, or a zipped MMAR)")
    if config_part is None:
        assert data_part is not None
        if _looks_like_torchscript(data_part):
            raise BadRequest("data is a TorchScript model, not a zipped MMAR: send its config_aiaa.json as "
                             "`config` too")
        extracted = staging / "extract"
        extract_archive(data_part, extracted, limits)
        data_part.unlink()
        return locate_mmar_root(extracted)
    read_uploaded_config(config_part)
    mmar = staging / "mmar"
    (mmar / CONFIG_PATH.parent).mkdir(parents=True)
    os.replace(config_part, mmar / CONFIG_PATH)
    if data_part is not None:
        _check_network_file(data_part)
        (mmar / MODEL_TS.parent).mkdir(parents=True)
        os.replace(data_part, mmar / MODEL_TS)
    return mmar


def _check_network_file(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        raise InvalidModel("data is a pickled checkpoint, not TorchScript: export the network with "
                           "torch.jit.script/trace and torch.jit.save (pickles are never loaded)")
    if head[:4] != b"PK\x03\x04":
        raise InvalidModel("data is not a TorchScript model (torch.jit.save writes a zip archive)")
    if _looks_like_mmar_zip(path):
        raise BadRequest("data is a zipped MMAR: upload it alone as `data`, without `config`")


# ------------------------------------------------------------------------------------- validation


def _dims_known(dims: list[int]) -> bool:
    return bool(dims) and all(d > 0 for d in dims)


def dry_run_shapes(config: AIAAConfig) -> tuple[tuple[int, ...], tuple[int, ...] | None] | None:
    """(input shape, expected output shape or None) the config declares, or None where it declares none."""
    for backend in (config.inference.TRITON, config.inference.AIAA):
        tmc = backend.triton_model_config if backend is not None else None
        if tmc is None or not tmc.input or not _dims_known(tmc.input[0].dims):
            continue
        batch = (1,) if tmc.max_batch_size > 0 else ()
        out = tuple(batch + tuple(tmc.output[0].dims)) if tmc.output and _dims_known(tmc.output[0].dims) else None
        return tuple(batch + tuple(tmc.input[0].dims)), out
    roi = config.inference.args.roi
    if config.type is ModelType.SEGMENTATION and roi and len(roi) == config.spatial_dims and _dims_known(roi):
        return (1, 1, *roi), None
    return None


def dry_run(model: LoadedModel) -> None:
    """Run the network once on zeros of the declared input shape; refuse models that fail or mis-shape."""
    engine = model.pipeline.engine
    shapes = dry_run_shapes(model.config)
    if engine is None or shapes is None:
        return
    shape, expected = shapes
    voxels = 1
    for d in shape:
        voxels *= d
    if voxels > MAX_DRY_RUN_VOXELS:
        log.info("model %s: dry run skipped (input %s too large)", model.name, list(shape))
        return
    try:
        output = engine(torch.zeros(shape, dtype=torch.float32, device=engine.device))
    except Exception as exc:
        raise InvalidModel(f"dry run failed: the network does not accept an input of shape {list(shape)}: {exc}",
                           input_shape=list(shape)) from exc
    if not isinstance(output, torch.Tensor):
        raise InvalidModel(f"dry run failed: the network returned {type(output).__name__}, not a tensor")
    got = tuple(output.shape)
    if expected is not None and got != expected:
        raise InvalidModel(f"dry run failed: output shape {list(got)} differs from the declared {list(expected)}",
                           input_shape=list(shape), output_shape=list(got))
    if expected is None and config_is_dense(model.config) and got[2:] != shape[2:]:
        raise InvalidModel(
            f"dry run failed: input {list(shape)} gave output {list(got)}; a segmentation network must keep "
            "the spatial size", input_shape=list(shape), output_shape=list(got),
        )


def config_is_dense(config: AIAAConfig) -> bool:
    return config.type in (ModelType.SEGMENTATION, ModelType.ANNOTATION, ModelType.DEEPGROW)


def validate_mmar(mmar: Path, name: str, allow_code: bool, default_device: str) -> LoadedModel:
    """Full check of a staged MMAR: schema, allowed code, TorchScript load, dry run. Returns the trial load."""
    if not is_mmar(mmar):
        raise InvalidModel(f"no {CONFIG_PATH.as_posix()} in the upload")
    config = parse_config(read_uploaded_config(mmar / CONFIG_PATH))
    if not allow_code:
        check_untrusted_mmar(mmar, config)
    if config.type not in NETWORKLESS_TYPES and find_model_file(mmar) is None:
        raise InvalidModel(f"a {config.type.value} model needs its TorchScript network: send `data` "
                           "(models/model.ts)")
    # A private pool: nothing is shared yet.
    model = load_mmar(mmar, TorchScriptPool(), default_device, name=name, trusted=allow_code)
    dry_run(model)
    return model


# ------------------------------------------------------------------------------------------- store


class ModelStore:
    """The on-disk folder of uploaded models (no registry knowledge)."""

    def __init__(self, root: Path, limits: ArchiveLimits | None = None) -> None:
        self.root = root
        self.limits = limits or ArchiveLimits()
        self.staging_root = root / STAGING_DIR

    def path(self, name: str) -> Path:
        return self.root / check_model_name(name)

    def has(self, name: str) -> bool:
        return is_mmar(self.path(name)) or self.path(name).is_dir()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and MODEL_NAME.match(p.name))

    def _ensure(self) -> None:
        self.staging_root.mkdir(parents=True, exist_ok=True)

    def recover(self) -> list[str]:
        """Undo what an interrupted install left: restore models moved aside, drop everything else."""
        self._ensure()
        restored: list[str] = []
        for entry in sorted(self.staging_root.iterdir()):
            if entry.is_dir() and entry.name.startswith("aside-"):
                for old in entry.iterdir():
                    if MODEL_NAME.match(old.name) and not (self.root / old.name).exists():
                        os.rename(old, self.root / old.name)
                        restored.append(old.name)
                        log.warning("model %s restored: its replacement was interrupted", old.name)
            log.info("removing leftover %s from an interrupted upload", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        fsync_dir(self.root)
        return restored

    def new_staging(self) -> Path:
        """A private folder for one upload; pass it to discard_staging when done."""
        self._ensure()
        return Path(tempfile.mkdtemp(prefix="up-", dir=self.staging_root))

    def discard_staging(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        folder = self.new_staging()
        try:
            yield folder
        finally:
            self.discard_staging(folder)

    def _move_aside(self, name: str, prefix: str) -> Path | None:
        target = self.path(name)
        if not target.exists():
            return None
        holder = Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging_root))
        fsync_dir(self.staging_root)
        aside = holder / name
        os.rename(target, aside)
        return aside

    def swap_in(self, name: str, mmar: Path) -> Path | None:
        """Atomically publish `mmar` as `name`; returns where the previous version was moved (or None)."""
        fsync_tree(mmar)
        aside = self._move_aside(name, "aside-")
        os.rename(mmar, self.path(name))
        fsync_dir(self.root)
        if aside is not None:
            fsync_dir(aside.parent)
        return aside

    def drop_aside(self, aside: Path | None) -> None:
        if aside is not None:
            shutil.rmtree(aside.parent, ignore_errors=True)

    def roll_back(self, name: str, aside: Path | None) -> None:
        """Undo swap_in: the new version goes, the previous one (if any) comes back."""
        doomed = self._move_aside(name, "trash-")
        if aside is not None:
            os.rename(aside, self.path(name))
            shutil.rmtree(aside.parent, ignore_errors=True)
        fsync_dir(self.root)
        if doomed is not None:
            shutil.rmtree(doomed.parent, ignore_errors=True)

    def delete(self, name: str) -> None:
        # "trash-" folders are never restored by recover(): a crash after this rename still deletes.
        doomed = self._move_aside(name, "trash-")
        if doomed is None:
            raise NotFound(f"model {name!r} not found")
        fsync_dir(self.root)
        shutil.rmtree(doomed.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------ orchestration


@dataclass(frozen=True)
class InstallResult:
    model: LoadedModel
    replaced: bool


@dataclass(frozen=True)
class DeleteResult:
    name: str
    now_serving: Path | None  # the read-only MMAR of that name served again, if any


class ModelAdmin:
    """Upload/replace/delete models: the store on disk plus the registry that serves them."""

    def __init__(
        self,
        store: ModelStore,
        registry: ModelRegistry,
        fallback_dirs: list[Path],
        allow_code: bool = False,
        default_device: str = "cpu",
        sandbox: SandboxLimits | None = DEFAULT_SANDBOX,
    ) -> None:
        """`sandbox`: limits of the child process that validates uploads (None: validate in this process)."""
        self.store = store
        self.registry = registry
        self.fallback_dirs = fallback_dirs
        self.allow_code = allow_code
        self.default_device = default_device
        self.sandbox = sandbox
        self._commit = threading.Lock()

    def install(self, name: str, staging: Path, config_part: Path | None, data_part: Path | None) -> InstallResult:
        """Validate the uploaded parts and make them the served `name` (blocking: call from a thread)."""
        check_model_name(name)
        mmar = assemble_mmar(staging, config_part, data_part, self.store.limits)
        if self.sandbox is not None:
            verdict = validate_isolated(mmar, name, self.allow_code, self.default_device, self.sandbox)
            log.info("model %s validated in a sandbox (network namespace: %s)", name,
                     "yes" if verdict.get("network_namespace") else "no; audit hook only")
        else:
            validate_mmar(mmar, name, self.allow_code, self.default_device)
        with self._commit:
            replaced = self.registry.find(name) is not None
            aside = self.store.swap_in(name, mmar)
            target = self.store.path(name)
            self._evict(target)
            try:
                model = load_mmar(target, self.registry.pool, self.default_device, name=name,
                                  trusted=self.allow_code)
            except AIAAError:
                self.store.roll_back(name, aside)
                raise
            self.registry.put(model)
            self.store.drop_aside(aside)
        log.info("model %s %s from upload (%s)", name, "replaced" if replaced else "installed",
                 model.config.type.value)
        return InstallResult(model=model, replaced=replaced)

    def delete(self, name: str) -> DeleteResult:
        check_model_name(name)
        with self._commit:
            if not self.store.has(name):
                if self.registry.find(name) is not None:
                    raise Conflict(
                        f"model {name!r} is served from a read-only model folder, not uploaded: remove it from "
                        "that folder (or start without it); uploads of the same name override it",
                        model=name,
                    )
                raise NotFound(f"model {name!r} not found", model=name)
            self.store.delete(name)
            self.registry.discard(name)
            self._evict(self.store.path(name))
            fallback = self._fallback(name)
            if fallback is not None:
                self.registry.load(fallback, name=name)
        log.info("model %s deleted%s", name, f"; serving {fallback} again" if fallback else "")
        return DeleteResult(name=name, now_serving=fallback)

    def stored_config(self, name: str) -> dict[str, Any]:
        """The model's config_aiaa.json as stored, plus server-added keys (`path`, `format`, `source`...)."""
        check_model_name(name)
        model = self.registry.find(name)
        folder = model.path if model is not None else (self.store.path(name) if self.store.has(name) else None)
        if folder is None or not is_mmar(folder):
            raise NotFound(f"model {name!r} not found", model=name)
        try:
            raw = json.loads((folder / CONFIG_PATH).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidModel(f"stored config of {name!r} cannot be read: {exc}") from exc
        model_file = find_model_file(folder)
        uploaded = folder.resolve().parent == self.store.root.resolve()
        extra = {
            "name": name,
            "path": str(model_file or folder),
            "mmar_path": str(folder),
            "format": "torchscript" if model_file is not None else "pipeline",
            "source": "uploaded" if uploaded else "folder",
            "loaded": model is not None,
        }
        if model is None:
            extra["error"] = self.registry.load_errors.get(name, "not loaded")
        return {**raw, **extra}

    def _fallback(self, name: str) -> Path | None:
        for folder in reversed(self.fallback_dirs):  # later folders win, as in the startup scan
            candidate = folder / name
            if is_mmar(candidate):
                return candidate
        return None

    def _evict(self, folder: Path) -> None:
        model_file = find_model_file(folder)
        for candidate in {folder / MODEL_TS, *([model_file] if model_file else [])}:
            self.registry.pool.evict(candidate)


__all__ = [
    "ArchiveLimits",
    "DeleteResult",
    "InstallResult",
    "ModelAdmin",
    "ModelStore",
    "check_model_name",
    "dry_run",
    "extract_archive",
    "validate_mmar",
]
