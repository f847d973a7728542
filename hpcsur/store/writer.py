"""Create a dataset and write whole shards into it, one writer per shard.

Usage from an MPI generator (rank 0 creates, everyone writes only the shards it owns)::

    if rank == 0:
        lock = acquire_lock(path)                      # keep alive until the end
        create_dataset(path, schema, attrs, resume=True)
    comm.Barrier()                                     # the arrays exist before anyone opens them
    writer = ShardWriter(path, rank, size)
    for s in writer.todo():                            # owned shards without a completion record
        writer.write(s, simulate_shard(s))             # dict name -> (S, ...) array
    comm.Barrier()
    if rank == 0:
        consolidate(path); lock.release()

The core takes ``rank``/``size`` integers and never imports mpi4py.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

import hpcsur
from hpcsur.errors import InputError
from hpcsur.store.lock import LOCK_NAME
from hpcsur.store.manifest import (PROGRESS_DIR, completed_shards, forget_shard, read_attrs,
                                   read_schema, record_shard, shard_file)
from hpcsur.store.schema import DatasetSchema, check_shard_id, owned_shards, shard_owner, spec_hash

#: Attributes every dataset must carry (the generator knows them all).
REQUIRED_ATTRS = ("system", "params", "layout", "p", "seed", "dt", "save_every", "steps")
#: Attributes derived from the schema: the caller may pass them, but they must agree.
DERIVED_ATTRS = ("T", "F", "k", "frames_per_shard")
#: Attributes only the store writes; a caller may not pass them.
RESERVED_ATTRS = ("schema", "spec_hash")
#: Attributes the store stamps; a caller's value is replaced, and they never enter the spec hash.
STAMPED_ATTRS = ("hpcsur_version", "created")

# Every shard file must exist after a write, even one whose data equals the fill value, so that
# checksums can tell "deleted" from "never stored" in the common case.
_WRITE_CONFIG = {"write_empty_chunks": True}


def _codec() -> BloscCodec:
    # zstd + byte shuffle: shuffle groups the exponent bytes of float64 (and the high zero bytes of
    # small int64s), which is what makes simulation data compress at all.
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _json_ready(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attrs as plain JSON types (numpy scalars/arrays converted), or InputError naming the key."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise InputError(f"attrs: keys must be strings, got {key!r}")
        try:
            out[key] = json.loads(json.dumps(value, default=default))
        except (TypeError, ValueError) as exc:
            raise InputError(f"attrs.{key}: not JSON-serialisable ({exc})") from None
    return out


def dataset_attrs(schema: DatasetSchema, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The full group attributes: the user's, the schema-derived ones and the store's own."""
    user = _json_ready(attrs)
    for key in REQUIRED_ATTRS:
        if key not in user:
            raise InputError(f"attrs.{key}: required (needed: {', '.join(REQUIRED_ATTRS)})")
    for key in RESERVED_ATTRS:
        if key in user:
            raise InputError(f"attrs.{key}: reserved, written by the store")
    derived = {"T": schema.n_traj, "F": schema.frames_per_traj, "k": schema.k,
               "frames_per_shard": schema.frames_per_shard}
    for key, value in derived.items():
        if key in user and user[key] != value:
            raise InputError(f"attrs.{key}: {user[key]!r} disagrees with the schema ({value})")
    core = {k: v for k, v in user.items() if k not in derived and k not in STAMPED_ATTRS}
    return {**core, **derived, "schema": schema.to_dict(), "hpcsur_version": hpcsur.__version__,
            "spec_hash": spec_hash(schema, core), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def is_dataset(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a dataset (its group metadata exists)."""
    return (Path(path) / "zarr.json").is_file()


exists = is_dataset


def _clear(root: Path) -> None:
    """Remove everything in ``root`` except the lock file (its flock may be held by our caller)."""
    for child in root.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def create_dataset(path: str | os.PathLike, schema: DatasetSchema, attrs: Mapping[str, Any],
                   overwrite: bool = False, resume: bool = False) -> bool:
    """Create the group and all arrays at full shape (rank 0 only; others open after a barrier).

    An existing dataset is refused unless ``overwrite`` (delete and recreate) or ``resume`` (keep
    it if its spec hash matches this schema + attrs, else refuse naming the mismatch).
    Returns True if a new dataset was created, False if an existing one is resumed.
    """
    if not isinstance(schema, DatasetSchema):
        raise InputError(f"schema: expected a DatasetSchema, got {type(schema).__name__}")
    root = Path(path)
    full = dataset_attrs(schema, attrs)
    if root.exists() and not root.is_dir():
        raise InputError(f"store {root}: exists and is not a folder")
    if is_dataset(root) and not overwrite:
        if not resume:
            raise InputError(f"store {root}: a dataset already exists (pass overwrite=True to replace "
                             "it, or resume=True to continue it)")
        old = read_attrs(root)
        if old.get("spec_hash") != full["spec_hash"]:
            raise InputError(f"store {root}: cannot resume, {_first_difference(old, full)}")
        return False
    if root.is_dir():
        others = [c.name for c in root.iterdir() if c.name != LOCK_NAME]
        if others and not (overwrite and is_dataset(root)):
            raise InputError(f"store {root}: folder is not empty and holds no dataset "
                             f"(found {sorted(others)[0]!r})")
        _clear(root)
    root.mkdir(parents=True, exist_ok=True)

    # Not mode="w": that empties the folder, including a lock file our caller may hold.
    group = zarr.create_group(str(root), zarr_format=3, overwrite=False, attributes=full)
    S, C = schema.frames_per_shard, schema.chunk_frames
    for spec in schema.arrays().values():
        rest = spec.frame_shape
        group.create_array(
            spec.name, shape=spec.shape, dtype=spec.dtype, fill_value=spec.fill_value,
            shards=(S, *rest), chunks=(C, *rest), compressors=_codec(),
            chunk_key_encoding={"name": "default", "separator": "/"})
    (root / PROGRESS_DIR).mkdir(exist_ok=True)
    return True


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    if old.get("schema") != new["schema"]:
        for k, v in new["schema"].items():
            if old.get("schema", {}).get(k) != v:
                return f"schema.{k} is {old.get('schema', {}).get(k)!r} on disk, {v!r} requested"
    for k in sorted(set(old) | set(new)):
        if k in RESERVED_ATTRS or k in STAMPED_ATTRS:
            continue
        if old.get(k) != new.get(k):
            return f"attrs.{k} is {old.get(k)!r} on disk, {new.get(k)!r} requested"
    return "spec hash differs"


class ShardWriter:
    """Writes whole shards of one dataset for rank ``rank`` of ``size``; refuses shards it doesn't own.

    Ownership is the round robin ``s % size == rank`` unless ``owned`` names this rank's shards
    explicitly (a generator whose ranks own whole trajectories); either way every shard has one writer.
    Opening the group and its arrays once and reusing them saves re-reading metadata for every shard.
    """

    def __init__(self, path: str | os.PathLike, rank: int = 0, size: int = 1, owned: Iterable[int] | None = None):
        self.path = Path(path)
        self.schema = read_schema(self.path)
        owned_shards(self.schema.n_shards, rank, size)  # validates rank/size
        self.rank, self.size = rank, size
        if owned is not None:
            owned = sorted(set(int(s) for s in owned))
            for s in owned:
                check_shard_id(s, self.schema.n_shards)
        self._owned = owned
        group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self._arrays = {name: group[name].with_config(_WRITE_CONFIG) for name in self.schema.arrays()}

    def owned(self) -> list[int]:
        """All shards this rank writes."""
        if self._owned is not None:
            return list(self._owned)
        return owned_shards(self.schema.n_shards, self.rank, self.size)

    def owns(self, s: int) -> bool:
        return s in self._owned if self._owned is not None else shard_owner(s, self.size) == self.rank

    def todo(self) -> list[int]:
        """Owned shards without a completion record: what a (re)started generator must write."""
        done = completed_shards(self.path)
        return [s for s in self.owned() if s not in done]

    def check_block(self, s: int, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate one shard's frame block and return it in the stored dtypes."""
        specs = self.schema.arrays()
        missing = [n for n in specs if n not in arrays]
        extra = [n for n in arrays if n not in specs]
        if missing:
            raise InputError(f"shard {s}: array {missing[0]!r} missing (need {', '.join(specs)})")
        if extra:
            raise InputError(f"shard {s}: unknown array {extra[0]!r} (dataset has {', '.join(specs)})")
        S = self.schema.frames_per_shard
        out = {}
        for name, spec in specs.items():
            a = np.asarray(arrays[name])
            want = (S, *spec.frame_shape)
            if a.shape != want:
                raise InputError(f"shard {s}: array {name!r} has shape {a.shape}, expected {want}")
            if np.dtype(spec.dtype).kind in "iu" and a.dtype.kind not in "iu":
                raise InputError(f"shard {s}: array {name!r} has dtype {a.dtype}, expected integers")
            if a.dtype.kind not in "biuf":
                raise InputError(f"shard {s}: array {name!r} has dtype {a.dtype}, expected numbers")
            out[name] = np.ascontiguousarray(a, dtype=spec.dtype)
        # traj is implied by the layout; a mismatch means frames were assembled in the wrong order.
        traj = self.schema.shard_traj(s)
        if not np.all(out["traj"] == traj):
            raise InputError(f"shard {s}: array 'traj' must be {traj} for every frame of this shard")
        return out

    def write(self, s: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write shard ``s`` of every array in full, then record its completion atomically.

        Rewriting a complete shard first drops its record, so a crash during the rewrite leaves the
        shard incomplete (to be rewritten again) instead of vouched for by old checksums.
        """
        check_shard_id(s, self.schema.n_shards)
        if not self.owns(s):
            owner = "another rank" if self._owned is not None else f"rank {shard_owner(s, self.size)}"
            raise InputError(f"shard {s}: owned by {owner}, not rank {self.rank} (one writer per shard)")
        block = self.check_block(s, arrays)
        forget_shard(self.path, s)
        self._remove_old_files(s)
        start, stop = self.schema.shard_frames(s)
        for name, data in block.items():
            self._arrays[name][start:stop] = data
        record_shard(self.path, self.schema, s, rank=self.rank)

    def _remove_old_files(self, s: int) -> None:
        """Delete whatever an earlier (maybe killed) write of shard ``s`` left on disk.

        zarr writes even a whole shard as read-modify-write: it parses the existing shard file's
        index first, so a torn file from a killed writer makes the rewrite fail (checksum error),
        and stale inner chunks could survive. Starting from no file avoids both. The same goes for
        zarr's ``<key>.<uuid>.partial`` temp files, which a kill leaves behind.
        """
        for name in self.schema.arrays():
            f = self.path / shard_file(self.schema, name, s)
            f.unlink(missing_ok=True)
            if f.parent.is_dir():
                for p in f.parent.glob(f"{f.name}.*.partial"):
                    p.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike, s: int, arrays: Mapping[str, np.ndarray],
                rank: int = 0, size: int = 1) -> None:
    """One-off convenience: open a :class:`ShardWriter` and write shard ``s``."""
    ShardWriter(path, rank, size).write(s, arrays)


def synthetic_shard(schema: DatasetSchema, s: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid, deterministic frame block for shard ``s`` (for tests and storage benchmarks).

    Values depend only on (seed, s), so a rewrite reproduces the same bytes.
    """
    check_shard_id(s, schema.n_shards)
    rng = np.random.default_rng([seed, s])
    S = schema.frames_per_shard
    start, _stop = schema.shard_frames(s)
    g = np.arange(start, start + S)
    block = {
        "x": rng.standard_normal((S, schema.n_state)),
        "t": (g % schema.frames_per_traj) * 0.01,
        "step": g % schema.frames_per_traj,
        "traj": np.full(S, schema.shard_traj(s), dtype=np.int32),
        "idx": np.sort(np.stack([rng.choice(max(schema.k, 2 * schema.k), schema.k, replace=False)
                                 for _ in range(S * schema.draws)]), axis=1).reshape(S, schema.draws, schema.k),
        "f_partial": rng.standard_normal((S, schema.draws, schema.k, schema.m)),
        "phi": rng.standard_normal((S, schema.n_obs)),
    }
    if schema.full_labels:
        block["f_full"] = rng.standard_normal((S, schema.n_state))
    return block
