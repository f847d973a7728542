"""Streaming training data from a sharded store, with a bounded memory footprint.

**Selections.** Stored frames are trajectory-major (global frame g = traj * F + j) and the split is
by trajectory (the last ``test`` trajectories test, the ``validation`` before them select models,
the rest train), so every selection is one contiguous range of global frames ``[g0, g1)``:
"the first K training configurations" is ``[0, K)`` as in the reference.

**Epochs.** For epoch e the shards that intersect the selection are permuted by (seed, e) --
identically on every worker, without communication -- and dealt round robin, so the workers read
disjoint shards (:func:`hpcsur.store.rank_shards`). Every worker takes the same number of steps,
``steps_per_epoch = min_r floor(frames_r / B)``, a pure function of the plan, so collective
gradient averaging never waits on a worker that ran out of data.

**Shuffling.** Frames pass through a shuffle buffer of at most ``capacity`` frames: once full, a
batch is B frames drawn uniformly from it (a generator keyed by (seed, epoch, rank)), and the next
shard refills it. The order of batches is therefore a pure function of (seed, epoch, rank, size),
whatever the number of reader processes, and a run resumed at step s of an epoch replays the same
stream and skips the first s batches.

**Draws.** Arrays with a draw axis (several index sets per frame, ``[labels] draws``) are read
as the one draw the stream was built for (``draw``), so a latent model sees one index set per
frame and holds nothing of the others.

**Memory.** ``memory_mb`` bounds what a worker holds: the shuffle buffer plus the shards in flight
(``prefetch`` + 1). When the whole selection fits in half the budget it is read once and kept
(many epochs over small encoded data should not re-read the store); otherwise shards stream from
disk every epoch, read ahead by a thread or by ``loader_workers`` DataLoader processes started with
*spawn* (zarr v3 under fork can deadlock), each opening the store itself.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from hpcsur.errors import DataError, InputError
from hpcsur.store import open_dataset, rank_shards

log = logging.getLogger(__name__)

MiB = 2 ** 20


# ----------------------------------------------------------------------------- selections
def observable_cuts(phi: np.ndarray, floor: float) -> tuple[int, ...]:
    """Per trajectory, how many leading frames stay in use under ``[split] observable_floor``: frames up to (not
    including) the first whose |phi| / max_j |phi_j| over its trajectory is <= ``floor``. ``phi`` is (T, F), the
    first observable. For a quantity that only decays (the Allen-Cahn free energy: a gradient flow) this is exactly
    "keep the frames whose normalised value exceeds the floor", and it keeps every trajectory a prefix in time."""
    mag = np.abs(np.asarray(phi, dtype=np.float64))
    scale = mag.max(axis=1, keepdims=True)
    below = mag <= floor * np.where(scale > 0, scale, 1.0)
    return tuple(int(c) for c in np.where(below.any(axis=1), below.argmax(axis=1), mag.shape[1]))


def store_cuts(dataset, floor: float | None) -> tuple[int, ...] | None:
    """:func:`observable_cuts` of a trajectory store's ``phi`` (None without a floor)."""
    if floor is None:
        return None
    phi = dataset.global_frames(0, dataset.n_frames, ["phi"])["phi"][:, 0]
    return observable_cuts(phi.reshape(dataset.n_traj, dataset.frames_per_traj), floor)


@dataclass(frozen=True)
class Split:
    """Trajectory ranges of the train / validation / test sets of a store, and with ``cuts`` (frames in use per
    trajectory, :func:`observable_cuts`) which leading frames of each trajectory are used. A selection with stride
    r > 1 (the frames with all forces under ``[labels] full_every = r``) takes trajectory t's frames o_t, o_t + r,
    ... with o_t = ``phases[t]`` (the store's ``full_phases``; 0 when there are none)."""

    n_traj: int
    frames_per_traj: int
    validation: int
    test: int
    cuts: tuple[int, ...] | None = None
    phases: tuple[int, ...] | None = None

    @property
    def train_trajectories(self) -> int:
        return self.n_traj - self.validation - self.test

    def frames(self, which: str) -> tuple[int, int]:
        """Global frame range ``[g0, g1)`` of ``which`` in {"train", "validation", "test"}."""
        F, t = self.frames_per_traj, self.train_trajectories
        ranges = {"train": (0, t), "validation": (t, t + self.validation), "test": (t + self.validation, self.n_traj)}
        a, b = ranges[which]
        return a * F, b * F

    def trajectories(self, which: str) -> range:
        g0, g1 = self.frames(which)
        return range(g0 // self.frames_per_traj, g1 // self.frames_per_traj)

    def kept(self, which: str, stride: int = 1) -> int:
        """Frames in use in ``which`` (with ``stride`` r: only trajectory frames o_t, o_t + r, ...)."""
        return sum(self._selected(t, stride) for t in self.trajectories(which))

    def _in_use(self, traj: int) -> int:
        return self.frames_per_traj if self.cuts is None else self.cuts[traj]

    def phase(self, traj: int, stride: int) -> int:
        """o_t: the first selected frame of trajectory ``traj`` under ``stride``."""
        return phase_of(self.phases, traj, stride)

    def _selected(self, traj: int, stride: int) -> int:
        """How many of frames o_t, o_t + r, ... lie among the trajectory's frames in use."""
        return max(0, -(-(self._in_use(traj) - self.phase(traj, stride)) // stride))

    def first_kept(self, which: str, count: int, stride: int = 1) -> tuple[int, int]:
        """The frame range from the start of ``which`` whose frames in use (every ``stride``-th frame of each
        trajectory) number ``count``."""
        remaining = count
        for t in self.trajectories(which):
            here = self._selected(t, stride)
            if 0 < remaining <= here:
                last = self.phase(t, stride) + (remaining - 1) * stride
                return self.frames(which)[0], t * self.frames_per_traj + last + 1
            remaining -= here
        raise InputError(f"{which}: {count} frames asked for, only {self.kept(which, stride)} in use")


def phase_of(phases: Sequence[int] | None, traj: int, stride: int) -> int:
    """The first frame of trajectory ``traj`` a stride-``stride`` selection takes: its phase in the store's
    ``full_phases`` for a stride > 1 (the full-label grid), else 0."""
    return int(phases[traj]) if phases is not None and stride > 1 else 0


def split_of(dataset, validation: int, test: int, cuts: tuple[int, ...] | None = None) -> Split:
    phases = dataset.attrs.get("full_phases")
    split = Split(dataset.schema.n_traj, dataset.schema.frames_per_traj, validation, test,
                  None if cuts is None else tuple(int(c) for c in cuts),
                  None if phases is None else tuple(int(o) for o in phases))
    if split.train_trajectories < 1:
        raise InputError(f"[split] validation + test = {validation + test} leaves no training trajectory of "
                         f"{dataset.schema.n_traj}")
    return split


@dataclass(frozen=True)
class Piece:
    """Frames ``start, start + step, ... < stop`` (offsets inside the shard) of shard ``shard``."""

    shard: int
    start: int
    stop: int
    step: int = 1

    @property
    def frames(self) -> int:
        return len(range(self.start, self.stop, self.step))

    @property
    def rows(self) -> slice:
        """The piece's rows of a shard's arrays."""
        return slice(self.start, self.stop, self.step)


def pieces(frame_range: tuple[int, int], frames_per_shard: int, cuts: Sequence[int] | None = None,
           frames_per_traj: int | None = None, stride: int = 1,
           phases: Sequence[int] | None = None) -> dict[int, Piece]:
    """The shards intersecting ``[g0, g1)`` and which of their frames are selected; with ``cuts`` only each
    trajectory's first ``cuts[t]`` frames (a shard never straddles trajectories, so a piece stays contiguous);
    with ``stride`` r only trajectory frames o_t, o_t + r, ... (``[labels] full_every``: the frames with all
    forces; o_t = ``phases[t]``, the store's ``full_phases``, or 0)."""
    g0, g1 = frame_range
    if not 0 <= g0 < g1:
        raise InputError(f"frame selection [{g0}, {g1}) is empty")
    S = frames_per_shard
    F = frames_per_traj or S
    out = {}
    for s in range(g0 // S, (g1 - 1) // S + 1):
        start, stop = max(g0, s * S) - s * S, min(g1, (s + 1) * S) - s * S
        offset = (s * S) % F                          # the shard's first frame within its trajectory
        if cuts is not None:
            stop = min(stop, cuts[(s * S) // F] - offset)
        phase = phase_of(phases, (s * S) // F, stride)
        start += (phase - offset - start) % stride    # the first selected trajectory frame
        if stop <= start:
            continue
        out[s] = Piece(s, start, stop, stride)
    if not out:
        raise InputError(f"frame selection [{g0}, {g1}) keeps no frame under [split] observable_floor")
    return out


def split_pieces(selection: dict[int, Piece], parts: int) -> dict[int, Piece]:
    """Every piece cut into ``parts`` consecutive pieces of near-equal frame counts, keyed 0, 1, ... (a shard's
    pieces keep its number in ``Piece.shard``): a selection of fewer shards than workers still gives each worker
    its own frames, disjoint, together all of them."""
    out = {}
    for piece in (selection[s] for s in sorted(selection)):
        bounds = [round(i * piece.frames / parts) for i in range(parts + 1)]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                out[len(out)] = Piece(piece.shard, piece.start + a * piece.step,
                                      piece.start + (b - 1) * piece.step + 1, piece.step)
    return out


def smallest_share(selection: dict[int, Piece], size: int) -> int:
    """A lower bound on any worker's frames in any epoch: the ``len // size`` smallest pieces."""
    counts = sorted(p.frames for p in selection.values())
    return sum(counts[:len(counts) // size])


def epoch_pieces(selection: dict[int, Piece], rank: int, size: int, epoch: int, seed: int) -> list[Piece]:
    """This worker's pieces for ``epoch``, in reading order."""
    return [selection[s] for s in rank_shards(sorted(selection), rank, size, epoch, seed)]


def steps_per_epoch(selection: dict[int, Piece], size: int, epoch: int, seed: int, batch: int) -> int:
    """min over workers of floor(frames / batch): the steps every worker takes this epoch."""
    counts = [sum(p.frames for p in epoch_pieces(selection, r, size, epoch, seed)) for r in range(size)]
    return min(counts) // batch


# ----------------------------------------------------------------------------- shuffle buffer
class ShuffleBuffer:
    """At most ``capacity`` frames of several arrays; ``take(B)`` removes B uniformly drawn frames.

    Frames stay where they were written: a logical -> physical slot table is what moves (the
    removed frames' slots go to the free end), so a batch costs one gather and a refill one
    scatter. Float arrays are stored as ``dtype`` (the training precision, converted once).
    """

    def __init__(self, capacity: int, rng: np.random.Generator, dtype=np.float32):
        self.capacity, self.rng, self.n, self.dtype = int(capacity), rng, 0, dtype
        self.slots = np.arange(self.capacity)
        self.data: dict[str, np.ndarray] | None = None

    def free(self) -> int:
        return self.capacity - self.n

    def reset(self, rng: np.random.Generator) -> None:
        """Empty it for a new epoch (the storage is kept: no new allocation, no page faults)."""
        self.rng, self.n = rng, 0
        self.slots = np.arange(self.capacity)

    def put(self, block: dict[str, np.ndarray], start: int, stop: int) -> None:
        """Append frames ``[start, stop)`` of ``block`` (the caller keeps them within ``free()``)."""
        if self.data is None:
            self.data = {k: np.empty((self.capacity, *v.shape[1:]), self.dtype if v.dtype.kind == "f" else v.dtype)
                         for k, v in block.items()}
        count = stop - start
        where = self.slots[self.n:self.n + count]
        for k, v in block.items():
            self.data[k][where] = v[start:stop]
        self.n += count

    def _remove(self, chosen: np.ndarray) -> dict[str, np.ndarray]:
        """Gather the frames at logical positions ``chosen``; the logical tail fills their places."""
        count = chosen.size
        where = self.slots[chosen]
        out = {k: v[where] for k, v in self.data.items()}
        tail_start = self.n - count
        holes = np.sort(chosen[chosen < tail_start])
        kept_tail = np.setdiff1d(np.arange(tail_start, self.n), chosen, assume_unique=True)
        self.slots[holes] = self.slots[kept_tail]
        self.slots[tail_start:self.n] = where
        self.n -= count
        return out

    def take(self, count: int) -> dict[str, np.ndarray]:
        """Remove ``count`` frames chosen uniformly without replacement."""
        return self._remove(self.rng.choice(self.n, size=count, replace=False))

    def take_first(self, count: int) -> dict[str, np.ndarray]:
        """Remove the ``count`` oldest frames (first in, first out)."""
        out = {k: v[self.slots[:count]] for k, v in self.data.items()}
        freed = self.slots[:count].copy()
        self.slots[:self.n - count] = self.slots[count:self.n].copy()
        self.slots[self.n - count:self.n] = freed
        self.n -= count
        return out


# ----------------------------------------------------------------------------- shard sources
def read_shard(dataset, shard: int, names: Sequence[str], draw: int) -> dict[str, np.ndarray]:
    """The arrays ``names`` of one shard, with draw ``draw`` taken from those with a draw axis."""
    arrays = dataset.shard(shard, names)
    for name in dataset.schema.draw_arrays():
        if name in arrays:
            arrays[name] = np.ascontiguousarray(arrays[name][:, draw])
    return arrays


class _ShardReaderDataset(torch.utils.data.IterableDataset):
    """Yields (piece, arrays) for a list of pieces; DataLoader workers split the list i::W and the
    loader interleaves them round robin, which restores the list order exactly."""

    def __init__(self, path: str, names: Sequence[str], piece_list: list[Piece], draw: int = 0):
        super().__init__()
        self.path, self.names, self.piece_list, self.draw = str(path), list(names), piece_list, draw

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.piece_list if info is None else self.piece_list[info.id::info.num_workers]
        dataset = open_dataset(self.path)  # opened inside the worker process
        for piece in mine:
            yield piece.shard, read_shard(dataset, piece.shard, self.names, self.draw)


def _read_pieces_thread(path, names, piece_list, prefetch, draw: int = 0) -> Iterator[tuple[int, dict]]:
    """Read shards in a background thread, at most ``prefetch`` ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def work():
        try:
            dataset = open_dataset(path)
            for piece in piece_list:
                if stop.is_set():
                    return
                q.put((piece.shard, read_shard(dataset, piece.shard, names, draw)))
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)
            return
        q.put(done)

    thread = threading.Thread(target=work, daemon=True, name="hpcsur-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


# ----------------------------------------------------------------------------- the stream
class BatchStream:
    """Mini-batches of selected frames for one worker (see the module docstring).

    ``stream.batches(epoch)`` yields exactly ``stream.steps(epoch)`` dicts of torch tensors;
    ``stream.all_frames()`` every frame of the worker's share once (validation: ``training=False``
    allows a worker to hold no shard at all). The shuffle buffer is allocated once and reused, so
    iterate one epoch at a time.
    """

    def __init__(self, path: str, names: Sequence[str], frame_range: tuple[int, int], batch: int,
                 rank: int = 0, size: int = 1, seed: int = 0, memory_mb: float = 1024.0,
                 shuffle_buffer: int = 8192, prefetch: int = 2, loader_workers: int = 0,
                 dtype: torch.dtype = torch.float32, shuffle: bool = True, training: bool = True, draw: int = 0,
                 cuts: Sequence[int] | None = None, stride: int = 1):
        self.path, self.names, self.draw = str(path), list(names), int(draw)
        self.rank, self.size, self.seed, self.batch = rank, size, seed, int(batch)
        self.dtype, self.shuffle, self.prefetch, self.loader_workers = dtype, shuffle, prefetch, loader_workers
        dataset = open_dataset(self.path)
        schema = dataset.schema
        missing = [n for n in self.names if n not in schema.arrays()]
        if missing:
            raise InputError(f"store {self.path}: has no array {missing[0]!r} (arrays: {', '.join(schema.arrays())})")
        incomplete = set(pieces(frame_range, schema.frames_per_shard)) - dataset.completed_shards()
        if incomplete:
            raise InputError(f"store {self.path}: shard {min(incomplete)} is incomplete; finish the stage that "
                             "writes it (run it again with --resume)")
        if not 0 <= self.draw < schema.draws:
            raise InputError(f"store {self.path}: draw {self.draw} does not exist (the store has {schema.draws} "
                             "index set(s) per frame; [labels] draws)")
        self.selection = pieces(frame_range, schema.frames_per_shard, cuts, schema.frames_per_traj, stride,
                                dataset.attrs.get("full_phases"))
        self.n_frames = sum(p.frames for p in self.selection.values())
        specs = schema.arrays()
        self.bytes_per_frame = sum(specs[n].bytes_per_frame // (schema.draws if n in schema.draw_arrays() else 1)
                                   for n in self.names)
        shard_bytes = self.bytes_per_frame * schema.frames_per_shard
        budget = memory_mb * MiB
        in_flight = (prefetch + 1 + loader_workers) * shard_bytes
        self.cache: dict[int, dict[str, np.ndarray]] | None = None
        cache_bytes = self.n_frames * self.bytes_per_frame
        room = budget - (cache_bytes if 2 * cache_bytes <= budget else in_flight)
        self.capacity = int(min(shuffle_buffer, max(room, 0) // self.bytes_per_frame))
        if self.capacity < self.batch:
            need = (in_flight + self.batch * self.bytes_per_frame) / MiB
            raise InputError(f"[train] memory_mb = {memory_mb:g} is too small for batch {self.batch}: streaming needs "
                             f"at least {need:.1f} MB ({prefetch + 1 + loader_workers} shards of "
                             f"{shard_bytes / MiB:.1f} MB in flight + one batch)")
        self._buffer = ShuffleBuffer(self.capacity, np.random.default_rng(0), torch.empty((), dtype=dtype).numpy().dtype)
        if training:
            self._share_out(size)
        if 2 * cache_bytes <= budget:
            self.cache = {s: read_shard(dataset, s, self.names, self.draw)
                          for s in sorted({p.shard for p in self.selection.values()})}

    # -- plan ----------------------------------------------------------------------------------
    def _share_out(self, size: int) -> None:
        """Give every worker frames and at least one batch an epoch. Fewer shards than workers: each shard's
        frames are cut into ``size`` pieces. Fewer frames per worker than a batch (a small training set, e.g.
        250 frames for 2 x 128): the batch becomes the smallest share, so an epoch is one step on all the frames,
        as a data loader that keeps its last partial batch takes one step on a set smaller than its batch."""
        if len(self.selection) < size:
            self.selection = split_pieces(self.selection, size)
        if self.steps(0) >= 1:          # a selection that trains as it is keeps its batch
            return
        share = smallest_share(self.selection, size)
        if share < 1:
            raise InputError(f"[train] workers = {size}: the {self.n_frames} frame(s) of this selection leave a "
                             "worker without any; use fewer workers or more training frames")
        if share < self.batch:
            log.warning("batch %d per worker is more than the %d frames a worker gets (%d frames, %d workers): "
                        "batch %d, one step an epoch", self.batch, share, self.n_frames, size, share)
            self.batch = share

    def pieces(self, epoch: int) -> list[Piece]:
        return epoch_pieces(self.selection, self.rank, self.size, epoch, self.seed)

    def steps(self, epoch: int) -> int:
        return steps_per_epoch(self.selection, self.size, epoch, self.seed, self.batch)

    @property
    def streaming(self) -> bool:
        return self.cache is None

    # -- reading -------------------------------------------------------------------------------
    def _blocks(self, piece_list: list[Piece]) -> Iterator[tuple[Piece, dict[str, np.ndarray]]]:
        if self.cache is not None:
            source = ((p.shard, self.cache[p.shard]) for p in piece_list)
        elif self.loader_workers > 0:
            loader = torch.utils.data.DataLoader(
                _ShardReaderDataset(self.path, self.names, piece_list, self.draw), batch_size=None,
                num_workers=self.loader_workers, multiprocessing_context="spawn", prefetch_factor=self.prefetch)
            source = ((s, {k: np.asarray(v) for k, v in arrays.items()}) for s, arrays in loader)
        else:
            source = _read_pieces_thread(self.path, self.names, piece_list, self.prefetch, self.draw)
        for piece, (shard, arrays) in zip(piece_list, source):   # every source keeps the list's order
            assert int(shard) == piece.shard
            yield piece, {k: v[piece.rows] for k, v in arrays.items()}   # so a consumer reads [0, piece.frames)

    def _to_torch(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(self.dtype) if v.dtype.kind == "f" else torch.from_numpy(v)
                for k, v in arrays.items()}

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch``; the first ``skip`` are produced but not yielded (resume)."""
        steps = self.steps(epoch)
        if steps == 0:
            return
        buf = self._buffer
        buf.reset(np.random.default_rng([self.seed, epoch, self.rank, 0x5EED]))
        produced = 0
        blocks = self._blocks(self.pieces(epoch))
        try:
            for piece, arrays in blocks:
                offset = 0
                while offset < piece.frames:
                    count = min(buf.free(), piece.frames - offset)
                    buf.put(arrays, offset, offset + count)
                    offset += count
                    while buf.free() == 0 and produced < steps:
                        out = self._draw(buf)
                        produced += 1
                        if produced > skip:
                            yield self._to_torch(out)
                    if produced == steps:
                        return
            while produced < steps:  # drain: the buffer holds at least one more batch
                out = self._draw(buf)
                produced += 1
                if produced > skip:
                    yield self._to_torch(out)
        finally:
            blocks.close()

    def all_frames(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every frame of this worker's share (epoch-0 shards), in order, in batches (the last may be
        smaller): for validation and evaluation, where no frame may be dropped."""
        for piece, arrays in self._blocks(self.pieces(0)):
            for a in range(0, piece.frames, self.batch):
                b = min(a + self.batch, piece.frames)
                yield self._to_torch({k: v[a:b] for k, v in arrays.items()})

    def _draw(self, buf: ShuffleBuffer) -> dict[str, np.ndarray]:
        return buf.take(self.batch) if self.shuffle else buf.take_first(self.batch)


# ----------------------------------------------------------------------------- statistics
def frame_sums(path: str, name: str, frame_range: tuple[int, int], draw: int = 0,
               cuts: Sequence[int] | None = None, stride: int = 1,
               part: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(c, sum (a - c), sum (a - c)^2, count)`` per component of array ``name`` (its draw ``draw`` where it has a
    draw axis) over the selected frames of ``[g0, g1)`` in this part's shards (shards ``rank, rank + size, ...``
    of ``part = (rank, size)``), streamed shard by shard in float64. The shift c is the range's first selected
    frame, the same for every part, so the parts' sums add up (and the variance does not cancel)."""
    dataset = open_dataset(path)
    selected = sorted(pieces(frame_range, dataset.schema.frames_per_shard, cuts, dataset.schema.frames_per_traj,
                             stride, dataset.attrs.get("full_phases")).items())
    if not selected:
        raise DataError(f"{path}: no frames of {name} selected in [{frame_range[0]}, {frame_range[1]})")
    first_shard, first = selected[0]
    shift = read_shard(dataset, first_shard, [name], draw)[name][first.rows][0].astype(np.float64)
    total, total2, count = np.zeros_like(shift), np.zeros_like(shift), 0
    rank, size = part
    for s, piece in selected[rank::size]:
        centred = read_shard(dataset, s, [name], draw)[name][piece.rows].astype(np.float64) - shift
        total += centred.sum(0)
        total2 += (centred * centred).sum(0)
        count += centred.shape[0]
    return shift, total, total2, count


def moments_from_sums(shift: np.ndarray, total: np.ndarray, total2: np.ndarray,
                      count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation (ddof = 1) from :func:`frame_sums`' shifted sums:
    mean = c + S1 / n, var = (S2 - n (S1 / n)^2) / (n - 1)."""
    mean = total / count
    var = (total2 - count * mean * mean) / max(count - 1, 1)
    return shift + mean, np.sqrt(np.maximum(var, 0.0)), count


def frame_moments(path: str, name: str, frame_range: tuple[int, int], draw: int = 0,
                  cuts: Sequence[int] | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-component mean and standard deviation (ddof = 1) of array ``name`` (its draw ``draw``
    where it has a draw axis) over ``[g0, g1)``, streamed shard by shard in float64 (shifted by the
    first frame to avoid cancellation)."""
    return moments_from_sums(*frame_sums(path, name, frame_range, draw, cuts, stride))


def safe_std(std: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """Standard deviations with constant components set to 1 (they carry no scale)."""
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > floor * max(float(np.max(std)), 1.0), std, 1.0)
