"""The generate stage: simulate trajectories across MPI ranks, label chosen blocks, write shards.

Work split
----------
The world communicator is cut into ``G = size / prod(grid)`` groups of ``prod(grid)`` ranks. Group
``g`` simulates trajectories ``t = g, g + G, ...``; inside a group the trajectory's domain is
decomposed over the rank grid (halo exchange / ghost atoms). Shard ``j`` of trajectory ``t`` is
written by group rank ``j % prod(grid)`` of the group that owns ``t`` -- exactly one writer per
shard, as the store requires.

Determinism and resume
----------------------
Initial conditions and index sets come from counter-based streams keyed by (seed, trajectory,
frame), so they do not depend on the rank count. At every shard boundary the domain is reloaded
from the global state of the previous frame (fresh neighbour lists and forces). A resumed run
restarts each trajectory at its first incomplete shard from the stored last frame of the shard
before it, which is exactly what the uninterrupted run did at that boundary: the finished store
is bit-identical, with no frame lost or duplicated (shards are rewritten whole, and a shard's
completion record exists only after its data is on disk).

In situ (``[insitu]``, :mod:`hpcsur.ops.insitu`) the writer encodes each shard with a frozen autoencoder and
stores the encoding instead of the states; with no state to restart from, a resumed trajectory is recomputed from
its initial state (its finished shards are not rewritten), as with ``[labels] precision = "float32"``.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import numpy as np

from hpcsur import __version__
from hpcsur.errors import InputError
from hpcsur.log import Progress
from hpcsur.ops.jobspec import JobSpec, count_full_labels, dump_job, full_label_frames, full_label_phases
from hpcsur.ops.systems import build_system, initial_state, make_domain, domain_shape, min_cells_per_rank
from hpcsur.parallel.grid import check_grid
from hpcsur.parallel.sampling import index_set, n_chosen
from hpcsur import store as zstore
from hpcsur.systems import registry

log = logging.getLogger("hpcsur.generate")


@dataclass(frozen=True)
class Plan:
    """How the work is split: rank grid, groups, shards."""

    grid: tuple[int, ...]
    n_groups: int
    frames_per_traj: int
    frames_per_shard: int
    k: int

    @property
    def group_size(self) -> int:
        return int(np.prod(self.grid))

    @property
    def shards_per_traj(self) -> int:
        return self.frames_per_traj // self.frames_per_shard

    def shard_id(self, traj: int, block: int) -> int:
        return traj * self.shards_per_traj + block


def real_bytes(spec: JobSpec) -> int:
    """Bytes of one stored state or force value (``[labels] precision``)."""
    return 4 if spec.labels.precision == "float32" else 8


def choose_grid(spec: JobSpec, size: int) -> tuple[int, ...]:
    """The rank grid: the spec's, or all ranks on the ensemble (one rank per trajectory) when there
    are at least as many trajectories as ranks, else a balanced Cartesian grid."""
    ndim = registry.get(spec.kind).spatial_dims
    if spec.parallel.grid is not None:
        grid = tuple(spec.parallel.grid)
        if size % int(np.prod(grid)):
            raise InputError(f"{spec.source}: [parallel] grid = {list(grid)} uses {int(np.prod(grid))} ranks "
                             f"per trajectory, which does not divide the {size} ranks of this job")
        return grid
    if spec.simulation.trajectories >= size:
        return (1,) * ndim
    from hpcsur.parallel.grid import default_dims

    return default_dims(size, ndim)


def make_plan(spec: JobSpec, system, size: int) -> Plan:
    grid = choose_grid(spec, size)
    check_grid(grid, domain_shape(spec, system), min_cells_per_rank(spec, system),
               what=f"{spec.source}: [parallel] grid")
    frames = spec.simulation.frames_per_trajectory
    layout = system.layout
    k = n_chosen(spec.labels.p, layout.n_blocks)
    bytes_per_frame = (real_bytes(spec) * layout.size * (2 if spec.labels.full else 1)
                       + spec.labels.draws * k * (real_bytes(spec) * layout.block_size + 8))
    if spec.store.frames_per_shard is not None:
        fps = spec.store.frames_per_shard
        if frames % fps:
            raise InputError(f"{spec.source}: [store] frames_per_shard = {fps} does not divide the "
                             f"{frames} frames per trajectory; allowed: a divisor of {frames}")
    else:
        fps = zstore.choose_frames_per_shard(frames, bytes_per_frame, int(spec.store.target_shard_mb * 2**20))
    return Plan(grid=grid, n_groups=size // int(np.prod(grid)), frames_per_traj=frames,
                frames_per_shard=fps, k=k)


def dataset_attrs(spec: JobSpec, system, plan: Plan) -> dict:
    layout = system.layout
    return {
        "hpcsur_version": __version__, "job": spec.name, "data_hash": spec.data_hash(),
        "resolved_spec": dump_job(spec), "system": spec.kind, "params": spec.to_dict()["system"],
        "layout": {"block_size": layout.block_size, "n_blocks": layout.n_blocks, "fields": list(layout.fields)},
        "observables": list(system.observable_names), "p": spec.labels.p, "k": plan.k, "draws": spec.labels.draws,
        "seed": spec.simulation.seed, "dt": spec.simulation.dt, "save_every": spec.simulation.save_every,
        "steps": spec.simulation.steps, "integrator": spec.integrator,
        "n_traj": spec.simulation.trajectories, "frames_per_traj": plan.frames_per_traj,
        "full_labels": spec.labels.full, "full_every": spec.labels.full_every,
        "full_phases": None if (phases := full_label_phases(spec)) is None else phases.tolist(),
        "full_label_frames": count_full_labels(spec), "positions_unwrapped": registry.get(spec.kind).positions_unwrapped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
    }


def _rank0_check(comm, fn):
    """Run ``fn`` on rank 0; if it raises InputError, every rank raises the same one-line error."""
    message, result = None, None
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except InputError as err:
            message = str(err)
    message = comm.bcast(message, root=0)
    if message is not None:
        raise InputError(message)
    return result


def prepare_store(spec: JobSpec, system, plan: Plan, comm, resume: bool, encoder=None):
    """Rank 0 takes the lock and creates (or re-opens, on resume) the store; all ranks then agree. With an
    in-situ ``encoder`` the store is its encoded schema and attributes."""
    path = spec.store.path
    schema = zstore.DatasetSchema(
        n_traj=spec.simulation.trajectories, frames_per_traj=plan.frames_per_traj,
        n_state=system.layout.size, k=plan.k, m=system.layout.block_size,
        n_obs=len(system.observable_names), full_labels=spec.labels.full,
        frames_per_shard=plan.frames_per_shard,
        chunk_frames=zstore.choose_chunk_frames(plan.frames_per_shard, real_bytes(spec) * system.layout.size),
        draws=spec.labels.draws, precision=spec.labels.precision)
    if encoder is not None:
        schema = encoder.schema(schema)

    def create_or_open():
        lock = zstore.acquire_lock(path)
        try:
            if zstore.exists(path):
                if not resume:
                    raise InputError(f"{path}: store already exists; pass --resume to continue it, "
                                     "or choose another --output")
                attrs = zstore.open_dataset(path).attrs
                if attrs.get("data_hash") != spec.data_hash():
                    raise InputError(f"{path}: store was generated from a different job spec (data hash "
                                     f"{attrs.get('data_hash')} != {spec.data_hash()}); choose another --output")
                if encoder is not None and attrs.get("autoencoder") != encoder.digest:
                    raise InputError(f"{path}: was encoded in situ with another autoencoder ({attrs.get('autoencoder')}"
                                     f", now {encoder.digest}); remove it to generate it again")
                return lock, zstore.open_dataset(path).schema
            attrs = dataset_attrs(spec, system, plan)
            zstore.create_dataset(path, schema, encoder.attrs(attrs) if encoder is not None else attrs)
            return lock, schema
        except BaseException:
            lock.release()
            raise

    out = _rank0_check(comm, create_or_open)
    lock, stored_schema = out if out is not None else (None, None)
    stored_schema = comm.bcast(stored_schema, root=0)
    if stored_schema.frames_per_shard != plan.frames_per_shard:
        plan = Plan(plan.grid, plan.n_groups, plan.frames_per_traj, stored_schema.frames_per_shard, plan.k)
    return lock, plan


def preflight(spec: JobSpec, size: int, resume: bool, force: bool):
    """The store path must be usable, and (unless ``force``) the job must fit disk and memory;
    returns the estimate."""
    from hpcsur.ops.preflight import check_fits, check_path, estimate

    check_path(spec)
    if force:
        return estimate(spec, size)
    existing = zstore.info(spec.store.path)["bytes_on_disk"] if resume and zstore.exists(spec.store.path) else 0
    return check_fits(spec, size, existing)


def generate(spec: JobSpec, comm, resume: bool = False, show_progress: bool = True, stop_after_shards=None,
             force: bool = False) -> dict:
    """Run the generate stage on communicator ``comm`` (all ranks call this). Returns a summary."""
    size, rank = comm.Get_size(), comm.Get_rank()
    estimate = _rank0_check(comm, lambda: preflight(spec, size, resume, force))
    system = build_system(spec)
    plan = _rank0_check(comm, lambda: make_plan(spec, system, size))
    plan = comm.bcast(plan, root=0)
    encoder = None
    if spec.insitu is not None:
        from hpcsur.ops.insitu import InSituEncoder

        encoder = _rank0_check(comm, lambda: InSituEncoder.for_job(spec, system.layout))   # one line if unusable
        if rank != 0:
            encoder = InSituEncoder.for_job(spec, system.layout)
    lock, plan = prepare_store(spec, system, plan, comm, resume, encoder)
    comm.Barrier()
    path = spec.store.path
    done = zstore.completed_shards(path) if resume else set()
    group_id, group_rank = divmod(rank, plan.group_size)
    group = comm.Split(color=group_id, key=group_rank)
    domain = make_domain(spec, system, group, plan.grid)
    sim = spec.simulation
    my_trajs = range(group_id, sim.trajectories, plan.n_groups)
    total_frames = sim.trajectories * plan.frames_per_traj
    progress = Progress(total_frames, unit="frames", rates={"labels": plan.k * spec.labels.draws},
                        label=f"generate {spec.name}",
                        enabled=show_progress and rank == 0)
    progress.resumed(len(done) * plan.frames_per_shard)
    log.info("%s: %d trajectories x %d frames, |I| = %d of %d blocks, rank grid %s x %d groups, "
             "%d frames per shard%s", spec.name, sim.trajectories, plan.frames_per_traj, plan.k,
             system.layout.n_blocks, "x".join(map(str, plan.grid)), plan.n_groups, plan.frames_per_shard,
             f", resuming ({len(done)} shards already complete)" if done else "")
    if rank == 0:
        log.info("pre-flight estimate: %s", "; ".join(estimate.lines()))
    written = 0
    t_start = time.perf_counter()
    # this rank's shards: block j of each of its group's trajectories falls to group rank j % group_size
    mine = [plan.shard_id(traj, j) for traj in my_trajs for j in range(plan.shards_per_traj)
            if j % plan.group_size == group.Get_rank()]
    shard_writer = zstore.ShardWriter(path, rank, size, owned=mine)
    for traj in my_trajs:
        blocks = [j for j in range(plan.shards_per_traj) if plan.shard_id(traj, j) not in done]
        if not blocks:
            continue
        first = blocks[0]
        if spec.labels.precision == "float32" or encoder is not None:
            # the stored last frame is rounded (or, in situ, not stored): a resumed trajectory recomputes from its
            # initial state (writing only the missing shards), so its data are bit-identical to an uninterrupted run
            first = 0
        if first == 0:
            x_start = initial_state(spec, system, traj)
        else:  # resume: the stored last frame of the shard before the first incomplete one
            x_start = zstore.open_dataset(path).frames(traj, first * plan.frames_per_shard - 1,
                                                      first * plan.frames_per_shard)["x"][0]
        for j in range(first, plan.shards_per_traj):
            writer = j % plan.group_size
            domain.load(x_start)
            block = _simulate_shard(spec, system, domain, plan, traj, j, writer, group)
            sid = plan.shard_id(traj, j)
            if group.Get_rank() == writer:
                if sid not in done:
                    shard_writer.write(sid, encoder.encode(block) if encoder is not None else block)
                    written += 1
                x_last = block["x"][-1]
            else:
                x_last = None
            x_start = group.bcast(x_last, root=writer)
            progress.update(plan.frames_per_shard * plan.n_groups if sid not in done else 0)
            if stop_after_shards is not None and written >= stop_after_shards:
                # test hook: die mid-run. Abort, not SystemExit: one rank exiting alone would leave
                # the others blocked in the next collective forever.
                comm.Abort(99)
    progress.close()
    comm.Barrier()
    elapsed = time.perf_counter() - t_start
    summary = None
    if rank == 0:
        summary = zstore.consolidate(path)
        summary["elapsed_s"] = elapsed
        lock.release()
    group.Free()
    return comm.bcast(summary, root=0)


def _simulate_shard(spec, system, domain, plan: Plan, traj: int, j: int, writer: int, group):
    """Frames [j S, (j+1) S) of trajectory ``traj``; the block of arrays on ``writer``, else None."""
    sim = spec.simulation
    S = plan.frames_per_shard
    me = group.Get_rank()
    keep = me == writer
    xs, idxs, labels, fulls = [], [], [], []
    all_blocks = np.arange(system.layout.n_blocks, dtype=np.int64)
    budget = full_label_frames(spec)
    for f in range(j * S, (j + 1) * S):
        if f > 0:  # frame 0 is the initial state; frame f is save_every steps after frame f - 1
            domain.advance(sim.save_every)
        idx = np.stack([index_set(sim.seed, traj, f, system.layout.n_blocks, plan.k, draw)
                        for draw in range(spec.labels.draws)])
        labs = [domain.labels(i, root=writer) for i in idx]   # collective: every rank of the group calls it
        wants_full = spec.labels.full and (budget is None or budget[traj, f])
        full = domain.labels(all_blocks, root=writer) if wants_full else None   # collective, same on every rank
        x = domain.gather(root=writer)
        if keep:
            xs.append(x)
            idxs.append(idx)
            labels.append(np.stack(labs))
            if spec.labels.full:
                fulls.append(_flatten(system, full) if full is not None else np.full(system.layout.size, np.nan))
    if not keep:
        return None
    frames = np.arange(j * S, (j + 1) * S)
    x = np.stack(xs)
    block = {
        "x": x, "t": frames * sim.save_every * sim.dt, "step": frames * sim.save_every,
        "traj": np.full(S, traj, dtype=np.int32), "idx": np.stack(idxs), "f_partial": np.stack(labels),
        "phi": np.stack([system.observable(xi) for xi in x]),
    }
    if spec.labels.full:
        block["f_full"] = np.stack(fulls)
    return block


def _flatten(system, per_block: np.ndarray) -> np.ndarray:
    """Blocks-by-m labels of all blocks -> the flat vector f(x) in state order."""
    out = np.empty(system.layout.size)
    out[system.layout.coordinates(np.arange(system.layout.n_blocks))] = per_block
    return out
