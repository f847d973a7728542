"""Progress records, the consolidated manifest, verification and a summary of one store.

Protocol (why a kill -9 at any moment is safe):

1. The owner of shard ``s`` writes the whole frame block of ``s`` into every array. zarr replaces
   each shard file by a temp-file + rename, and we then fsync every shard file.
2. Only after that, it writes ``progress/shard-<s>.json`` (temp file, fsync, ``os.replace``, fsync
   of the folder) holding the frame range and the sha256 and size of each array's shard file.
3. A shard is complete if and only if its record exists. A resumed generator rewrites every shard
   without a record *in full*, so whatever a killed writer left behind (an old file, a
   ``*.partial`` temp file, a mix of new and old arrays) is simply replaced.

Rank 0 calls :func:`consolidate` at the end to gather all records into ``manifest.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpcsur.errors import InputError
from hpcsur.store.schema import DatasetSchema, check_shard_id

PROGRESS_DIR = "progress"
MANIFEST_NAME = "manifest.json"
_RECORD_PREFIX, _RECORD_SUFFIX = "shard-", ".json"


# -- on-disk layout ----------------------------------------------------------------------------

def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The group attributes, read straight from ``zarr.json`` (no zarr needed)."""
    meta = Path(path) / "zarr.json"
    if not Path(path).is_dir():
        raise InputError(f"store {path}: not a dataset ({'a file' if Path(path).exists() else 'no such folder'})")
    try:
        data = json.loads(meta.read_text())
    except FileNotFoundError:
        raise InputError(f"store {path}: not a dataset (no zarr.json)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"store {path}: unreadable zarr.json ({type(exc).__name__})") from None
    attrs = data.get("attributes", {}) if isinstance(data, dict) else None
    if not isinstance(attrs, dict):
        raise InputError(f"store {path}: zarr.json has no attributes table")
    return dict(attrs)


def read_schema(path: str | os.PathLike) -> DatasetSchema:
    attrs = read_attrs(path)
    if "schema" not in attrs:
        raise InputError(f"store {path}: not an hpcsur dataset (no 'schema' attribute)")
    return DatasetSchema.from_dict(attrs["schema"])


@dataclass(frozen=True)
class Progress:
    """How far a store is: the one answer to "is it complete?" (shards with a completion record).

    ``shards_total`` is None while the store does not exist yet (or its generator is still writing
    its skeleton)."""

    path: str
    shards_done: int = 0
    shards_total: int | None = None
    frames_per_shard: int = 0

    @property
    def exists(self) -> bool:
        return self.shards_total is not None

    @property
    def complete(self) -> bool:
        return self.exists and self.shards_done >= self.shards_total

    @property
    def frames_done(self) -> int:
        return self.shards_done * self.frames_per_shard

    @property
    def frames_total(self) -> int | None:
        return None if self.shards_total is None else self.shards_total * self.frames_per_shard

    @property
    def missing(self) -> int:
        return 0 if self.shards_total is None else self.shards_total - self.shards_done


def progress(path: str | os.PathLike) -> Progress:
    """The store's :class:`Progress`, from its attributes and completion records only (cheap; never raises
    for a missing or half-created store)."""
    try:
        schema = read_schema(path)
    except InputError:
        return Progress(str(path))
    return Progress(str(path), len(completed_shards(path)), schema.n_shards, schema.frames_per_shard)


def shard_file(schema: DatasetSchema, name: str, s: int) -> str:
    """Path of array ``name``'s shard ``s`` relative to the store root.

    Only the frame axis is split, so the chunk grid index is ``(s, 0, ..., 0)`` and zarr's default
    "/" key encoding puts it at ``<name>/c/<s>/0/.../0`` (``<name>/c/<s>`` for 1-D arrays).
    """
    ndim = len(schema.arrays()[name].shape)
    return "/".join([name, "c", str(s)] + ["0"] * (ndim - 1))


def record_path(path: str | os.PathLike, s: int) -> Path:
    return Path(path) / PROGRESS_DIR / f"{_RECORD_PREFIX}{s:06d}{_RECORD_SUFFIX}"


# -- durable, atomic small files ---------------------------------------------------------------

def fsync_dir(folder: Path) -> None:
    """Make a rename/creation inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(target: Path, obj: Any) -> None:
    """Write JSON so readers see either the old file or the complete new one, never a torn one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def file_digest(file: Path, fsync: bool = False) -> tuple[str, int] | None:
    """``(sha256 hex, size)`` of ``file``, or ``None`` when it does not exist.

    With ``fsync`` the file's data is forced to disk first: zarr's own write is atomic (rename) but
    not durable, and a completion record must never outlive the data it vouches for.
    """
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if fsync:
            os.fsync(fd)
        h, size = hashlib.sha256(), 0
        with os.fdopen(os.dup(fd), "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
    finally:
        os.close(fd)


# -- per-shard completion records --------------------------------------------------------------

@dataclass(frozen=True)
class FileDigest:
    """One array's shard file as written. ``sha256``/``bytes`` are None when zarr stored no file,
    which it does when every value of the shard equals the fill value."""

    path: str
    sha256: str | None
    bytes: int | None


@dataclass(frozen=True)
class ShardRecord:
    """Proof that shard ``shard`` (frames ``[frame_start, frame_stop)``) is fully on disk."""

    shard: int
    frame_start: int
    frame_stop: int
    files: dict[str, FileDigest]
    rank: int = 0
    host: str = ""
    written_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = {k: asdict(v) for k, v in self.files.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardRecord":
        files = {k: FileDigest(**v) for k, v in d["files"].items()}
        return cls(**{**d, "files": files})


def digest_shard(path: str | os.PathLike, schema: DatasetSchema, s: int,
                 fsync: bool = False) -> dict[str, FileDigest]:
    """Checksums of every array's shard-``s`` file as it is on disk now."""
    out = {}
    for name in schema.arrays():
        rel = shard_file(schema, name, s)
        d = file_digest(Path(path) / rel, fsync=fsync)
        out[name] = FileDigest(rel, *(d if d else (None, None)))
    return out


def record_shard(path: str | os.PathLike, schema: DatasetSchema, s: int, rank: int = 0) -> ShardRecord:
    """Fsync shard ``s``'s files, checksum them and write its completion record atomically.

    Call only after every array's shard ``s`` has been written in full.
    """
    files = digest_shard(path, schema, s, fsync=True)
    for name in schema.arrays():
        fsync_dir((Path(path) / files[name].path).parent)  # the rename zarr did must survive too
    start, stop = schema.shard_frames(s)
    rec = ShardRecord(s, start, stop, files, rank, socket.gethostname(),
                      time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json_atomic(record_path(path, s), rec.to_dict())
    return rec


def read_record(path: str | os.PathLike, s: int) -> ShardRecord | None:
    try:
        return ShardRecord.from_dict(json.loads(record_path(path, s).read_text()))
    except FileNotFoundError:
        return None


def completed_shards(path: str | os.PathLike) -> set[int]:
    """Shard ids with a completion record. Records appear by atomic rename, so a name is enough."""
    folder = Path(path) / PROGRESS_DIR
    if not folder.is_dir():
        return set()
    done = set()
    for p in folder.iterdir():
        n = p.name
        if n.startswith(_RECORD_PREFIX) and n.endswith(_RECORD_SUFFIX):
            core = n[len(_RECORD_PREFIX):-len(_RECORD_SUFFIX)]
            if core.isdigit():
                done.add(int(core))
    return done


def forget_shard(path: str | os.PathLike, s: int) -> None:
    """Remove shard ``s``'s record (before rewriting it), durably, so a crash mid-rewrite
    leaves the shard marked incomplete rather than vouched for by a stale checksum."""
    try:
        record_path(path, s).unlink()
    except FileNotFoundError:
        return
    fsync_dir(record_path(path, s).parent)


def consolidate(path: str | os.PathLike) -> dict[str, Any]:
    """Gather all completion records into ``manifest.json`` (rank 0, after the last shard).

    Returns the manifest's summary (everything but the per-shard records) plus its ``path``.
    """
    schema = read_schema(path)
    done = sorted(completed_shards(path))
    records = {s: read_record(path, s) for s in done}
    bytes_by_array = {name: 0 for name in schema.arrays()}
    for rec in records.values():
        for name, fd in rec.files.items():
            bytes_by_array[name] += fd.bytes or 0
    manifest = {
        "n_shards": schema.n_shards,
        "n_complete": len(done),
        "frames_total": schema.n_frames,
        "frames_complete": len(done) * schema.frames_per_shard,
        "complete": len(done) == schema.n_shards,
        "bytes_by_array": bytes_by_array,
        "bytes_total": sum(bytes_by_array.values()),
        "consolidated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "shards": {str(s): records[s].to_dict() for s in done},
    }
    target = Path(path) / MANIFEST_NAME
    write_json_atomic(target, manifest)
    summary = {k: v for k, v in manifest.items() if k != "shards"}
    return {**summary, "path": str(target)}


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The consolidated manifest, None when there is none; a torn or foreign one is one error line."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"store {path}: {MANIFEST_NAME} is unreadable ({type(exc).__name__}); remove it and run "
                         "`hpcsur store verify` again (the per-shard records are the source of truth)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise InputError(f"store {path}: {MANIFEST_NAME} is not an hpcsur manifest (no shards table)")
    return manifest


# -- verification and summary ------------------------------------------------------------------

@dataclass(frozen=True)
class BadShard:
    """One mismatch: which array and shard, the file, what was expected and what is there."""

    array: str
    shard: int
    file: str
    reason: str  # "missing" | "truncated" | "size changed" | "altered" | "unexpected file" | "record mismatch"
    expected: str
    actual: str

    def __str__(self) -> str:
        return (f"shard {self.shard} array {self.array!r} ({self.file}): {self.reason}; "
                f"expected {self.expected}, found {self.actual}")


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`. ``first_bad`` is the lowest bad shard (arrays in schema order)."""

    n_checked: int
    problems: tuple[BadShard, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> BadShard | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        """One line for the CLI."""
        return str(self)

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.n_checked} complete shards match their checksums"
        return f"{len(self.problems)} problem(s) in {self.n_checked} shards; first: {self.first_bad}"


def compare_digest(name: str, s: int, expected: FileDigest, actual: FileDigest) -> BadShard | None:
    def show(d: FileDigest) -> str:
        return "no file" if d.sha256 is None else f"{d.bytes} B sha256={d.sha256[:12]}"

    if expected.sha256 == actual.sha256 and expected.bytes == actual.bytes:
        return None
    if expected.sha256 is None:
        reason = "unexpected file"
    elif actual.sha256 is None:
        reason = "missing"
    elif actual.bytes < expected.bytes:
        reason = "truncated"
    elif actual.bytes != expected.bytes:
        reason = "size changed"
    else:
        reason = "altered"
    return BadShard(name, s, expected.path, reason, show(expected), show(actual))


def verify(path: str | os.PathLike, shards: Iterable[int] | None = None) -> VerifyReport:
    """Recompute the checksum of every completed shard file and compare with its record.

    Detects missing, truncated and altered files. When ``manifest.json`` exists, also checks that
    each shard it lists still has an identical record (a deleted or rewritten record shows up).
    """
    schema = read_schema(path)
    done = completed_shards(path)
    manifest = read_manifest(path)
    listed = {int(s) for s in manifest["shards"]} if manifest else set()
    todo = sorted(done | listed) if shards is None else sorted(set(shards))
    problems: list[BadShard] = []
    for s in todo:
        check_shard_id(s, schema.n_shards)
        rec = read_record(path, s)
        if manifest and str(s) in manifest["shards"]:
            consolidated = ShardRecord.from_dict(manifest["shards"][str(s)])
            if rec is None or rec.files != consolidated.files:
                problems.append(BadShard("*", s, str(record_path(path, s).relative_to(path)),
                                         "record mismatch", "record as in manifest.json",
                                         "no record" if rec is None else "different checksums"))
                rec = rec or consolidated
        if rec is None:
            continue  # not complete: nothing is promised about it
        now = digest_shard(path, schema, s)
        for name in schema.arrays():
            if name not in rec.files:
                problems.append(BadShard(name, s, now[name].path, "missing", "a record entry", "none"))
                continue
            bad = compare_digest(name, s, rec.files[name], now[name])
            if bad:
                problems.append(bad)
    return VerifyReport(len(todo), tuple(problems))


def dir_bytes(path: str | os.PathLike) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass  # vanished while walking (a concurrent writer's temp file)
    return total


def info(path: str | os.PathLike) -> dict[str, Any]:
    """A summary for humans and the CLI: sizes, completeness, bytes on disk, key attributes."""
    attrs = read_attrs(path)
    schema = read_schema(path)
    done = completed_shards(path)
    summary_keys = ("system", "p", "k", "seed", "dt", "save_every", "steps", "T", "F",
                    "frames_per_shard", "hpcsur_version", "spec_hash", "created")
    return {
        "path": str(path),
        "shards_total": schema.n_shards,
        "shards_complete": len(done),
        "frames_total": schema.n_frames,
        "frames_complete": len(done) * schema.frames_per_shard,
        "completeness": len(done) / schema.n_shards,
        "bytes_on_disk": dir_bytes(path),
        "arrays": {n: {"shape": list(a.shape), "dtype": a.dtype} for n, a in schema.arrays().items()},
        "consolidated": read_manifest(path) is not None,
        "attrs": {k: attrs[k] for k in summary_keys if k in attrs},
    }
