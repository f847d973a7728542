"""The dataset layout as pure data: array shapes, dtypes, shard geometry and who writes what.

Nothing here touches the disk. A dataset holds ``T`` trajectories of ``F`` frames each, stored
trajectory-major, so global frame ``g = traj * F + j``. Every array's first axis is the global
frame axis and is the only sharded axis: shard ``s`` covers frames ``[s*S, (s+1)*S)`` in *every*
array, where ``S = frames_per_shard``. ``S`` divides ``F``, so a shard never straddles two
trajectories, and shard ``s`` is written by exactly one rank, :func:`shard_owner` ``(s, size)``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np

from hpcsur.errors import InputError

MiB = 1024 * 1024
#: Default target size of one shard file before compression (one file per shard per array).
DEFAULT_TARGET_SHARD_BYTES = 64 * MiB
#: Inner chunks (the unit a reader decompresses) should be at least this large where possible.
DEFAULT_MIN_CHUNK_BYTES = 1 * MiB

FLOAT_FILL = float("nan")
INT_FILL = -1
#: What a dataset's frames hold (see :func:`array_specs`).
CONTENTS = ("trajectories", "encoded")
#: The stored precision of a trajectory dataset's states and forces (``x``, ``f_partial``, ``f_full``); the
#: physics always runs in float64, and times, steps and observables are stored in float64 either way.
PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class ArraySpec:
    """One array of a dataset: its name, full shape, dtype and the value of never-written frames."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill_value: float | int

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape of one frame (everything after the frame axis)."""
        return self.shape[1:]

    @property
    def bytes_per_frame(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.frame_shape, dtype=np.int64)))


@dataclass(frozen=True)
class DatasetSchema:
    """Sizes that fix every array's shape and the shard geometry of one dataset.

    ``n_state`` is N (length of the flattened microscopic state), ``k`` the number of chosen
    blocks per frame, ``m`` the block size (so f_I is (k, m)), ``n_obs`` the length of the
    observable phi*. ``full_labels`` adds the (frames, N) ``f_full`` array.

    ``draws`` is the number of independent index sets I per frame (``[labels] draws``): the
    partial labels and everything derived from them carry a draw axis of that length right after
    the frame axis, so several latent models can each train on their own draw.

    ``content`` says what a frame holds: ``"trajectories"`` (the generator's microscopic frames)
    or ``"encoded"`` (what the latent losses need per frame, with ``latent_dim`` = d; see
    :func:`array_specs`). Both share the frame axis and shard geometry, so shard ``s`` of an
    encoded dataset holds exactly the frames of shard ``s`` of its source. ``index_sets`` (encoded only) adds
    the frames' index sets ``idx``: an in-situ encoding has no trajectory store that would hold them.
    """

    n_traj: int
    frames_per_traj: int
    n_state: int
    k: int
    m: int
    n_obs: int
    full_labels: bool
    frames_per_shard: int
    chunk_frames: int
    content: str = "trajectories"
    latent_dim: int = 0
    draws: int = 1
    encoder_stats: bool = False
    precision: str = "float64"
    index_sets: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"schema.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.content not in CONTENTS:
            raise InputError(f"schema.content: {self.content!r} is not one of {', '.join(CONTENTS)}")
        if self.content == "encoded" and (isinstance(self.latent_dim, bool) or not isinstance(
                self.latent_dim, (int, np.integer)) or self.latent_dim < 1):
            raise InputError(f"schema.latent_dim: an encoded dataset needs latent_dim >= 1, got {self.latent_dim!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("content", "latent_dim", "precision"):
                continue
            if f.name in ("full_labels", "encoder_stats", "index_sets"):
                if not isinstance(value, (bool, np.bool_)):
                    raise InputError(f"schema.{f.name}: expected a bool, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"schema.{f.name}: expected an integer, got {value!r}")
            if value < 1:
                raise InputError(f"schema.{f.name}: must be >= 1, got {value}")
        if self.frames_per_traj % self.frames_per_shard:
            raise InputError(
                f"schema.frames_per_shard: {self.frames_per_shard} must divide frames_per_traj="
                f"{self.frames_per_traj} (a shard may not cross a trajectory boundary)")
        if self.frames_per_shard % self.chunk_frames:
            raise InputError(
                f"schema.chunk_frames: {self.chunk_frames} must divide frames_per_shard="
                f"{self.frames_per_shard}")

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        """Total number of frames, T * F."""
        return self.n_traj * self.frames_per_traj

    @property
    def n_shards(self) -> int:
        return self.n_frames // self.frames_per_shard

    @property
    def shards_per_traj(self) -> int:
        return self.frames_per_traj // self.frames_per_shard

    def arrays(self) -> dict[str, ArraySpec]:
        """Every array of the dataset, in a fixed order (the order verify reports problems in)."""
        return array_specs(self)

    def draw_arrays(self) -> tuple[str, ...]:
        """The arrays with a draw axis (axis 1): the partial labels and what is derived from them."""
        if self.content == "encoded":
            return ENCODED_DRAW_ARRAYS + (("idx",) if self.index_sets else ())
        return DRAW_ARRAYS

    @property
    def bytes_per_frame(self) -> int:
        """Uncompressed bytes of one frame summed over all arrays."""
        return sum(a.bytes_per_frame for a in self.arrays().values())

    def shard_frames(self, s: int) -> tuple[int, int]:
        """Global frame range ``[start, stop)`` of shard ``s``."""
        check_shard_id(s, self.n_shards)
        return shard_frame_range(s, self.frames_per_shard)

    def shard_traj(self, s: int) -> int:
        """The single trajectory that shard ``s`` belongs to."""
        return self.shard_frames(s)[0] // self.frames_per_traj

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            return bool(v) if isinstance(v, (bool, np.bool_)) else v if isinstance(v, str) else int(v)
        out = {k: plain(v) for k, v in asdict(self).items()}
        if not out["index_sets"]:        # added later: absent at its default, so older stores keep their hash
            del out["index_sets"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSchema":
        names = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = sorted(names - set(d) - optional)
        if missing:
            raise InputError(f"schema: missing field {missing[0]!r}")
        return cls(**{k: d[k] for k in names if k in d})

    def encoded(self, latent_dim: int, index_sets: bool = False) -> "DatasetSchema":
        """The schema of this dataset's encoding: same frames and shards, per-frame latent data (``index_sets``:
        with the frames' index sets, for an encoding made in situ)."""
        return replace(self, content="encoded", latent_dim=latent_dim, encoder_stats=True, index_sets=index_sets)


DRAW_ARRAYS = ("idx", "f_partial")
ENCODED_DRAW_ARRAYS = ("lxp_R", "lxp_y", "lxp_r2", "jf_est")


def array_specs(schema: DatasetSchema) -> dict[str, ArraySpec]:
    """The arrays of a dataset with their full shapes.

    Trajectories: ``x, t, step, traj, idx, f_partial, phi`` (+ ``f_full`` when ``full_labels``);
    ``idx`` is (D, k) and ``f_partial`` (D, k, m) per frame for D = ``draws``.

    Encoded (d = ``latent_dim``; the partial-label arrays ``lxp_*`` and ``jf_est`` per draw; see
    :mod:`hpcsur.learn.encode` for the derivation): ``t, traj``,
    the latent state ``z`` (d), and for each loss a least-squares triple ``(R, y, r2)`` with
    ``||f_I - (J+)_I g||^2 = ||y - R g||^2 + r2`` for every g: ``lxp_R`` (d, d), ``lxp_y`` (d),
    ``lxp_r2`` from the partial labels, plus ``jf_est`` (d) = (n/k) J_I f_I, an unbiased estimate of
    J f, and with ``encoder_stats`` (every new encoding) the encoder's ``kappa`` = cond(J J^T) and
    ``coherence`` = (N/d) max_c leverage_c. With
    ``full_labels`` also ``jf`` (d) = J f for L_z and ``lx_R, lx_y, lx_r2`` for L_x.
    """
    n, D = schema.n_frames, schema.draws
    if schema.content == "encoded":
        d = schema.latent_dim
        names = [("t", ()), ("traj", ()), ("z", (d,)), ("lxp_R", (D, d, d)), ("lxp_y", (D, d)), ("lxp_r2", (D,)),
                 ("jf_est", (D, d))] + ([("kappa", ()), ("coherence", ())] if schema.encoder_stats else [])
        if schema.full_labels:
            names += [("jf", (d,)), ("lx_R", (d, d)), ("lx_y", (d,)), ("lx_r2", ())]
        if schema.index_sets:
            names += [("idx", (D, schema.k))]
        kinds = {"traj": ("int32", INT_FILL), "idx": ("int64", INT_FILL)}
        return {name: ArraySpec(name, (n, *shape), *kinds.get(name, ("float64", FLOAT_FILL))) for name, shape in names}
    real = schema.precision   # the stored states and forces; times and observables stay float64
    specs = [
        ArraySpec("x", (n, schema.n_state), real, FLOAT_FILL),
        ArraySpec("t", (n,), "float64", FLOAT_FILL),
        ArraySpec("step", (n,), "int64", INT_FILL),
        ArraySpec("traj", (n,), "int32", INT_FILL),
        ArraySpec("idx", (n, D, schema.k), "int64", INT_FILL),
        ArraySpec("f_partial", (n, D, schema.k, schema.m), real, FLOAT_FILL),
        ArraySpec("phi", (n, schema.n_obs), "float64", FLOAT_FILL),
    ]
    if schema.full_labels:
        specs.append(ArraySpec("f_full", (n, schema.n_state), real, FLOAT_FILL))
    return {a.name: a for a in specs}


# -- shard geometry (pure functions) ------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def choose_frames_per_shard(frames_per_traj: int, bytes_per_frame: int,
                            target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES) -> int:
    """The largest divisor of F whose shard (``S * bytes_per_frame``) fits ``target_shard_bytes``.

    A divisor of F keeps every shard inside one trajectory. If even one frame exceeds the
    target, a shard holds one frame (shards can't be smaller than a frame).
    """
    _positive("frames_per_traj", frames_per_traj)
    _positive("bytes_per_frame", bytes_per_frame)
    _positive("target_shard_bytes", target_shard_bytes)
    fitting = [d for d in _divisors(frames_per_traj) if d * bytes_per_frame <= target_shard_bytes]
    return max(fitting) if fitting else 1


def choose_chunk_frames(frames_per_shard: int, bytes_per_frame: int,
                        min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES) -> int:
    """The smallest divisor of S whose inner chunk holds at least ``min_chunk_bytes``.

    Small inner chunks make random frame access cheap, but below ~1 MB the per-chunk codec and
    index overhead dominates. When the whole shard is smaller than that, the chunk is the shard.
    """
    _positive("frames_per_shard", frames_per_shard)
    _positive("bytes_per_frame", bytes_per_frame)
    _positive("min_chunk_bytes", min_chunk_bytes)
    for d in _divisors(frames_per_shard):
        if d * bytes_per_frame >= min_chunk_bytes:
            return d
    return frames_per_shard


def make_schema(n_traj: int, frames_per_traj: int, n_state: int, k: int, m: int, n_obs: int,
                full_labels: bool = False, *,
                target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
                min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES, draws: int = 1) -> DatasetSchema:
    """A schema with shard and chunk sizes chosen from the per-frame size of the largest array.

    Sizing uses the largest array (normally ``x`` or ``f_full``) because it dominates the bytes and
    every array shares the same frame split.
    """
    probe = DatasetSchema(n_traj, frames_per_traj, n_state, k, m, n_obs, full_labels, 1, 1, draws=draws)
    bpf = max(a.bytes_per_frame for a in probe.arrays().values())
    s = choose_frames_per_shard(frames_per_traj, bpf, target_shard_bytes)
    c = choose_chunk_frames(s, bpf, min_chunk_bytes)
    return DatasetSchema(n_traj, frames_per_traj, n_state, k, m, n_obs, full_labels, s, c, draws=draws)


def shard_owner(s: int, size: int) -> int:
    """The one rank allowed to write shard ``s`` among ``size`` ranks (round robin).

    zarr writes a shard as a read-modify-write of the whole shard file, so two writers of one
    shard lose data; a fixed owner per shard rules that out.
    """
    _positive("size", size)
    if s < 0:
        raise InputError(f"shard: must be >= 0, got {s}")
    return s % size


def owned_shards(n_shards: int, rank: int, size: int) -> list[int]:
    """The shards rank ``rank`` writes, ascending."""
    _check_rank(rank, size)
    return list(range(rank, n_shards, size))


def shard_frame_range(s: int, frames_per_shard: int) -> tuple[int, int]:
    """Global frames ``[s*S, (s+1)*S)`` covered by shard ``s`` in every array."""
    return s * frames_per_shard, (s + 1) * frames_per_shard


def check_shard_id(s: int, n_shards: int) -> None:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < n_shards:
        raise InputError(f"shard: expected an integer in [0, {n_shards}), got {s!r}")


def spec_hash(schema: DatasetSchema, attrs: Mapping[str, Any]) -> str:
    """A short stable hash of the schema and the user attributes (what a resume must match)."""
    blob = json.dumps({"schema": schema.to_dict(), "attrs": attrs}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected an integer >= 1, got {value!r}")


def _check_rank(rank: int, size: int) -> None:
    _positive("size", size)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < size:
        raise InputError(f"rank: expected an integer in [0, {size}), got {rank!r}")
