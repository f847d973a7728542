"""Read a dataset: by trajectory, by global frame range, or shard by shard for streaming training.

**Verified reads.** Before a complete shard's file of an array is read for the first time by a
:class:`Dataset`, its sha256 and size are compared with the shard's completion record: a flipped
byte, a truncated or deleted chunk file stops the reader with one line (:class:`DataError`)
naming the store, shard and array, instead of training on altered values or on fill values. The
cost is one hash per shard file per opened dataset (reads then hit the page cache).

Frames of shards without a completion record read as the fill value (NaN / -1); use
:meth:`Dataset.complete_mask` to tell them apart (stages refuse incomplete stores beforehand).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr

from hpcsur.errors import DataError, InputError
from hpcsur.store.manifest import FileDigest, compare_digest, completed_shards, file_digest, read_attrs, read_record, shard_file
from hpcsur.store.schema import DatasetSchema, _check_rank, check_shard_id


def shard_order(shards: Sequence[int], epoch: int, seed: int) -> list[int]:
    """A permutation of ``shards`` that depends only on (seed, epoch) and the set of shards.

    Sorting first makes the result independent of the order the ids were listed in, so every
    rank computes the same permutation without communicating.
    """
    ids = np.array(sorted(set(int(s) for s in shards)), dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(epoch)])
    return ids[rng.permutation(len(ids))].tolist()


def rank_shards(shards: Sequence[int], rank: int, size: int, epoch: int, seed: int,
                drop_last: bool = False) -> list[int]:
    """Rank ``rank``'s share of the permuted shards: every ``size``-th one, starting at ``rank``.

    Ranks get disjoint sets that together cover all shards. With ``drop_last`` the tail is cut so
    every rank gets the same count (needed when ranks step in lockstep, e.g. DDP allreduce).
    """
    _check_rank(rank, size)
    order = shard_order(shards, epoch, seed)
    if drop_last:
        order = order[: len(order) - len(order) % size]
    return order[rank::size]


class Dataset:
    """A read-only view of one store. Cheap to create; arrays are opened lazily by zarr."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path, self.verify = Path(path), verify
        self._verified: set[tuple[int, str]] = set()
        self.attrs: dict[str, Any] = read_attrs(self.path)
        if "schema" not in self.attrs:
            raise InputError(f"store {self.path}: not an hpcsur dataset (no 'schema' attribute)")
        self.schema = DatasetSchema.from_dict(self.attrs["schema"])
        group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        self._arrays = {}
        for name, spec in self.schema.arrays().items():
            try:
                self._arrays[name] = group[name]
            except KeyError:
                raise InputError(f"store {self.path}: array {name!r} of its schema is missing (damaged, or written "
                                 "by another hpcsur version)") from None
            if tuple(self._arrays[name].shape) != spec.shape:
                raise InputError(f"store {self.path}: array {name!r} has shape {tuple(self._arrays[name].shape)}, its "
                                 f"schema says {spec.shape} (written by another hpcsur version?)")

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_traj(self) -> int:
        return self.schema.n_traj

    @property
    def frames_per_traj(self) -> int:
        return self.schema.frames_per_traj

    @property
    def n_frames(self) -> int:
        return self.schema.n_frames

    @property
    def array_names(self) -> list[str]:
        return list(self.schema.arrays())

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, T={self.n_traj}, F={self.frames_per_traj}, "
                f"shards={len(self.completed_shards())}/{self.schema.n_shards})")

    # -- random access -------------------------------------------------------------------------
    def _names(self, arrays: Sequence[str] | None) -> list[str]:
        if arrays is None:
            return self.array_names
        for name in arrays:
            if name not in self._arrays:
                raise InputError(f"arrays: unknown array {name!r} (dataset has {', '.join(self._arrays)})")
        return list(arrays)

    def global_frames(self, start: int, stop: int, arrays: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Frames ``[start, stop)`` of the trajectory-major frame axis, for each requested array."""
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= self.n_frames):
            raise InputError(f"frames: need 0 <= start <= stop <= {self.n_frames}, got [{start}, {stop})")
        names = self._names(arrays)
        if self.verify and stop > start:
            S = self.schema.frames_per_shard
            for s in range(start // S, (stop - 1) // S + 1):
                self._check_shard(s, names)
        return {name: self._arrays[name][start:stop] for name in names}

    def _check_shard(self, s: int, names: Sequence[str]) -> None:
        """Compare shard ``s``'s files of ``names`` with its completion record (once per file)."""
        todo = [n for n in names if (s, n) not in self._verified]
        if not todo:
            return
        record = read_record(self.path, s)
        if record is None:
            return  # not complete: nothing is promised about it (reads give fill values)
        for name in todo:
            rel = shard_file(self.schema, name, s)
            digest = file_digest(self.path / rel)
            expected = record.files.get(name)
            bad = (compare_digest(name, s, expected, FileDigest(rel, *(digest or (None, None))))
                   if expected is not None else f"shard {s} array {name!r}: no checksum in its completion record")
            if bad:
                raise DataError(f"store {self.path}: {bad} -- the store is damaged; `hpcsur store verify "
                                f"{self.path}` lists every problem (regenerate the shard with --resume after "
                                "removing its progress record)")
            self._verified.add((s, name))

    def frames(self, traj: int, start: int = 0, stop: int | None = None,
               arrays: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Frames ``[start, stop)`` (local frame numbers) of trajectory ``traj``."""
        F = self.frames_per_traj
        if isinstance(traj, bool) or not isinstance(traj, (int, np.integer)) or not 0 <= traj < self.n_traj:
            raise InputError(f"traj: expected an integer in [0, {self.n_traj}), got {traj!r}")
        stop = F if stop is None else stop
        if not 0 <= start <= stop <= F:
            raise InputError(f"frames: need 0 <= start <= stop <= {F} within a trajectory, got [{start}, {stop})")
        return self.global_frames(traj * F + start, traj * F + stop, arrays)

    def shard(self, s: int, arrays: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of shard ``s`` (reads exactly one file per array)."""
        check_shard_id(s, self.schema.n_shards)
        return self.global_frames(*self.schema.shard_frames(s), arrays)

    # -- completeness --------------------------------------------------------------------------
    def completed_shards(self) -> set[int]:
        return completed_shards(self.path)

    def complete_mask(self) -> np.ndarray:
        """Boolean per global frame: True where the frame's shard has a completion record."""
        per_shard = np.zeros(self.schema.n_shards, dtype=bool)
        per_shard[sorted(self.completed_shards())] = True
        return np.repeat(per_shard, self.schema.frames_per_shard)

    # -- streaming -----------------------------------------------------------------------------
    def iter_shards(self, rank: int, size: int, epoch: int, seed: int,
                    arrays: Sequence[str] | None = None,
                    drop_last: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(shard_id, arrays)`` for this rank's share of the completed shards.

        The shards are permuted by (seed, epoch) identically on every rank and dealt round robin,
        so ranks read disjoint shards and a new epoch reshuffles. Only completed shards are used.
        """
        names = self._names(arrays)
        for s in rank_shards(sorted(self.completed_shards()), rank, size, epoch, seed, drop_last):
            yield s, self.shard(s, names)


def open_dataset(path: str | os.PathLike, verify: bool = True) -> Dataset:
    """Open a dataset for reading (InputError if ``path`` holds none); reads are verified against
    the shards' checksums unless ``verify=False``."""
    if not (Path(path) / "zarr.json").is_file():
        raise InputError(f"store {path}: not a dataset (no zarr.json)")
    return Dataset(path, verify)
