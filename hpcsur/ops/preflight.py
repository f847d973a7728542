"""Pre-flight: what a job will need -- disk, memory per rank, time -- before anything is written.

Sizes are exact (the store schema's bytes per frame, uncompressed: float64 physics data hardly
compresses). Memory per rank is the simulated domain's share (state, integrator stages, neighbour
lists) plus the writer's shard block and one gathered frame. Time uses per-step costs measured
on the project's 2-vCPU VM (``benchmarks/results``; one core per rank, perfect scaling assumed),
so it is an order of magnitude, not a promise. ``generate`` refuses, in one line, a job whose
store does not fit the free disk or whose ranks do not fit the memory, unless ``--force``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec, count_full_labels, state_layout
from hpcsur.parallel.sampling import n_chosen
from hpcsur.systems import registry

# Each kind's per-step cost (fixed seconds per step, seconds per block-step, serial) and working
# memory per block come from its registry entry (SystemKind.step_cost, .work_bytes_per_block), measured
# here: LJ kernel 4.9e-7 s/atom-step + rebuilds 1.8e-6 s/atom x 0.13 per step (scaling_2026-12-01.json);
# Allen-Cahn RK4 6.4e-9 s/point-step (same file); Predator-Prey ~4e-5 s per Euler step of 50 cells
# (the paper-scale generate: 480,000 frames x 10 steps in 135 s on 2 ranks). A full-force label costs about one
# step. In-situ encoding (factored Jacobian) costs about ENCODE_COST s per coordinate and first-layer unit a frame:
# LJ-51200 at hidden [64] encodes in 0.14 s a frame (307,200 x 64 x 7.1e-9 s).
GiB = 2 ** 30
ENCODE_COST = 7.1e-9


@dataclass(frozen=True)
class Estimate:
    frames: int
    bytes_per_frame: int
    store_bytes: int
    encoded_bytes: int
    memory_per_rank: int
    generate_seconds: float        # simulation, full labels and (in situ) encoding together
    ranks: int
    encode_seconds: float = 0.0    # the in-situ encoding's share of generate_seconds

    def lines(self) -> list[str]:
        encoding = f" (+ encoding {human(self.encoded_bytes)})" if self.encoded_bytes else ""
        return [f"store: {self.frames:,} frames x {self.bytes_per_frame:,} B = {human(self.store_bytes)}{encoding} "
                "before compression, the most it can take",
                f"memory: {human(self.memory_per_rank)} per rank",
                f"generate: about {duration(self.generate_seconds)} on {self.ranks} rank(s)"
                + (f", of which in-situ encoding {duration(self.encode_seconds)}" if self.encode_seconds else "")
                + " (rates measured on a 2-vCPU VM)"]


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def estimate(spec: JobSpec, ranks: int = 1) -> Estimate:
    """The job's sizes and generation time on ``ranks`` ranks (pure arithmetic, nothing allocated)."""
    kind = registry.get(spec.kind)
    m, n = state_layout(spec)
    N = m * n
    k = n_chosen(spec.labels.p, n)
    frames = spec.simulation.trajectories * spec.simulation.frames_per_trajectory
    real = 4 if spec.labels.precision == "float32" else 8
    full_share = count_full_labels(spec) / frames    # [labels] full_every: unlabelled f_full rows compress away
    per_frame = int(real * N * (1 + full_share) + spec.labels.draws * k * (real * m + 8) + 8 * (4 + 8))
    d = spec.autoencoder.latent_dim if spec.autoencoder else 0
    encoded = 8 * (d + spec.labels.draws * (d * d + 2 * d + 1) + 4
                   + ((d * d + 3 * d + 1) if spec.labels.full else 0)) if d else 0
    traj_frame = per_frame                  # what generate holds per frame of a shard before it writes
    if spec.insitu is not None:             # the store is the encoding (with the index sets); no states
        per_frame, encoded = encoded + 8 * spec.labels.draws * k, 0
    per_traj = max(1, ranks // max(1, spec.simulation.trajectories))       # ranks sharing one trajectory
    fps = spec.store.frames_per_shard or max(1, min(spec.simulation.frames_per_trajectory,
                                                    int(spec.store.target_shard_mb * 2 ** 20 // traj_frame)))
    memory = n * kind.work_bytes_per_block // per_traj + 8 * N + fps * traj_frame
    fixed, per_block = kind.step_cost
    steps = spec.simulation.trajectories * spec.simulation.steps + count_full_labels(spec)
    encoding = frames * N * spec.autoencoder.hidden[0] * ENCODE_COST if spec.insitu is not None else 0.0
    share = max(1, ranks)
    seconds = (steps * (fixed + per_block * n) + encoding) / share
    return Estimate(frames, per_frame, frames * per_frame, frames * encoded, memory, seconds, ranks, encoding / share)


def free_disk(path: str) -> int:
    """Free bytes on the filesystem that will hold ``path`` (its nearest existing ancestor)."""
    p = Path(path).expanduser().absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_ranks(default: int) -> int:
    """Ranks on this node, from the launcher's environment (MPICH, Open MPI, Slurm)."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return default


def check_path(spec: JobSpec) -> None:
    """The store path must be a folder we can create and write (one line otherwise)."""
    p = Path(spec.store.path).expanduser().absolute()
    for forbidden in ("/dev", "/proc", "/sys"):
        if p == Path(forbidden) or Path(forbidden) in p.parents:
            raise InputError(f"{spec.source}: [store] path = {spec.store.path!r} is under {forbidden}; "
                             "choose a folder on a filesystem for data")
    if p.exists() and not p.is_dir():
        raise InputError(f"{spec.source}: [store] path = {spec.store.path!r} is an existing file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{spec.source}: [store] path = {spec.store.path!r} cannot be created: {probe} is not a "
                         "writable folder")


def check_fits(spec: JobSpec, ranks: int, existing_bytes: int = 0) -> Estimate:
    """Refuse (one line) a job whose store does not fit the free disk or whose ranks do not fit
    this node's memory; returns the estimate."""
    est = estimate(spec, ranks)
    need = est.store_bytes - existing_bytes
    free = free_disk(spec.store.path)
    if need > free:
        raise InputError(f"{spec.source}: the store needs {human(need)} and {human(free)} are free at "
                         f"{spec.store.path!r} ({est.frames:,} frames x {est.bytes_per_frame:,} B); fewer "
                         "[simulation] trajectories or frames, or --force")
    local = local_ranks(min(ranks, os.cpu_count() or 1))
    memory = available_memory()
    if est.memory_per_rank * local > memory:
        raise InputError(f"{spec.source}: each rank needs about {human(est.memory_per_rank)} ({local} on this node) "
                         f"and {human(memory)} are available; a smaller system, more ranks per trajectory "
                         "([parallel] grid) on more nodes, or --force")
    return est
