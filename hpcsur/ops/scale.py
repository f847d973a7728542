"""``hpcsur scale``: generation and training at several rank counts -> efficiency table, plot, extrapolation.

::

    hpcsur scale JOB.toml --ranks 1,2,4 --mode strong|weak [--stages generate,train-ae]
                 [--weak-dim auto|ensemble|domain] [--epochs 2] [--extrapolate 8,64,512]
                 [--slurm] [--dry-run] [--output DIR] [--force]

Points
------
One *point* is one stage at one rank count P, run as its own process group (``mpiexec -n P``,
exactly the command line of ``hpcsur run`` / ``hpcsur submit``) from its own derived job spec
(``<DIR>/points/<stage>-p<P>/<job>-<stage>-p<P>.toml``, built like :func:`hpcsur.ops.ensemble.member_spec`:
the base spec with a few fields replaced, its own store and run folder). No store is shared
between generation points. Every generation point gets an explicit ``[parallel] grid`` (the
grid ``hpcsur generate`` would choose, see :func:`point_grid`), so what ran is written down.
Point folders of an earlier study in the same DIR are refused (``--force`` removes them first).
A point that fails stops the study: exit 1, one line naming the point and its log.

* ``generate`` at P ranks: grid g (ranks per trajectory), G = P / g ensemble groups.
* ``train-ae`` at W workers (data-parallel, per-worker batch B as in ``[autoencoder] batch``):
  ``--epochs`` epochs (default 2; the first is not timed when there are two or more). All
  training points read one store, generated once at the smallest rank count (the smallest
  generation point's store when ``generate`` is measured too, else a set-up run that is not a
  point), read-only; each point has its own run folder.

Modes
-----
* **strong**: the same problem at every P.
* **weak**: the work grows with P: the point at P does ``P / P_min`` times the work of the
  smallest point.

  - ``generate``, ``--weak-dim ensemble``: trajectories x P / P_min (same grid per trajectory,
    more groups; every group simulates the same number of trajectories).
  - ``generate``, ``--weak-dim domain``: the system grows with the rank grid, so every rank keeps
    the same owned block: Predator-Prey ``n`` x f with the grid's axis x f; Allen-Cahn ``n`` x
    sqrt(f) with both grid axes x sqrt(f) (f must be a perfect square); Lennard-Jones ``n_atoms`` x
    f with every grid axis x cbrt(f) (f a perfect cube; the box side grows by cbrt(f)), f = P /
    P_min. ``auto`` (default) is ``domain`` when the spec has a ``[parallel] grid`` of more than
    one rank, else ``ensemble``.
  - ``train-ae``: training frames per epoch x W / W_max (``[autoencoder] max_train_frames``), so
    every worker sees the same number of samples per epoch and the largest point uses all
    training frames of the store; the validation set stays the same (it is split over workers).

What is measured
----------------
* generate: ``time_s`` = the stage's own ``elapsed_s`` (from its JSON summary: after the store is
  created, until the final barrier; no process start-up, imports or MPI initialisation),
  ``wall_s`` = the whole launch, ``startup_s`` = the difference; ``frames/s`` and ``labels/s``
  (|I| labelled blocks per frame) over ``time_s``.
* train-ae: ``time_s`` = seconds per epoch from ``curve.csv`` (median of the epochs after the
  first, else the first epoch; it includes the validation pass and the checkpoint),
  ``samples/s`` = global training samples per epoch (steps x B x W) / ``time_s``; ``done.json``
  must report W workers.
* speed-up = X(P) / X(P_min) with X the throughput in work units per second (training samples;
  generated frames x sites per frame, so that weak scaling over the domain, where frames stay and
  sites grow, counts its work); efficiency E = (X(P) / P) / (X(P_min) / P_min) (for strong scaling
  that is T(P_min) P_min / (P T(P)), for weak scaling T(P_min) / T(P)). The table's throughput
  column is frames/s (samples/s).
* the 1-minute load average before and after each point (the host may be shared: timings are
  reported, never asserted).

The model
---------
Per stage, the busiest rank's time is a sum of counted work items times per-item constants::

    T(P) = c * W(P) + c_h * H(P) + lambda * M(P) + t0

Generation (counts over the whole stage, for the busiest rank of a group of g ranks that
simulates ceil(T / G) trajectories of S steps and F frames):

* W = ceil(T/G) S a             a = owned sites per rank (grid cells or atoms; compute ~ volume;
                                c also absorbs the per-frame label and store-write work, which
                                divides over the ranks the same way)
* H = ceil(T/G) (S e h + F q)   halo values moved: h per exchange (surface: depth x face x fields,
                                per neighbour), e exchanges per step (1 for Euler and the deep-halo
                                Allen-Cahn RK4, 4 for RK4 with a one-cell halo, +1 per frame);
                                Lennard-Jones: 6 values per ghost atom and step (positions forward,
                                forces back), ghosts = rho [prod_cut (w + 2 r) prod_uncut w - w^3]
                                with sub-box sides w and r = rcut + skin; q = values gathered to the
                                shard writer per frame (state, labels, full labels) x (g - 1) / g
* M = ceil(T/G) (S m + F (g - 1) n_gather)   messages: m per step (2 per cut axis and exchange,
                                LJ 4 per cut axis + ceil(log2 g) for the rebuild-flag allreduce)
* t0                            time that does not shrink with P (set-up, JIT cache loads, the
                                last shard's fsync, waiting for the slowest group)

With g = 1 (ensemble parallelism) H = M = 0: generation is embarrassingly parallel up to
ceil(T / G) and t0.

Training (per epoch, W workers, per-worker batch B, steps s = floor(N / (W B)) for N training
frames, V validation frames, n_p parameter bytes (float32)):

* X = s B + V / (3 W)                     samples per worker (validation is forward only, ~1/3)
* M = s 3 ceil(log2 W) + 4 ceil(log2 W)   messages: per step the gradient allreduce (reduce-scatter +
                                          allgather, 2 log2 W rounds) and the stop-flag allreduce;
                                          per epoch loss, validation, checkpoint, barrier
* B_ = s 2 (W - 1) / W n_p                bytes: the bandwidth term of the allreduce
* T = c_s X + alpha M + beta B_ + t0

Fitting (:func:`fit_model`, pure): non-negative least squares of the measured times on the
counts. Columns with no data (e.g. communication when every point ran with g = 1) keep their
prior; when the points cannot separate all constants (two points and four unknowns, the usual
case on one node), the communication terms are fitted as one scale factor on their priors
(their ratio fixed by the priors), and if that is still too many unknowns, ``t0`` keeps its
prior (0). With two points the fit is exact, so everything that did not scale (on a shared host:
mostly waiting for a descheduled partner) lands in what the fit can move: t0 for ensemble
generation, the communication scale for decomposed generation and training. Every constant is reported with its source: ``fitted``, ``fitted (scale of prior)``
or ``prior``. Priors: lambda = alpha = 5 us per message (a cluster network; storage/README.md's
lambda), c_h = 5 ns per halo value for grid systems and 17 ns for LJ (0.1 us per ghost and step,
6 values), beta = 0.1 ns per byte (10 GB/s), t0 = 0.

Extrapolation (:func:`extrapolate`): the counts at P = 8, 64, 512 ... (same mode: the same problem,
or P / P_min times the work) times the constants, with every communication constant taken as
max(fitted, prior): beyond the measured node a message or a halo value never costs less than on
the network. A point whose problem cannot be split that far (fewer cells than ranks, fewer
trajectories than groups, less than a batch per worker) is reported as not feasible, with why.
Assumptions: a homogeneous system (equal work per owned site), one rank per core with its own
memory bandwidth, the network constants above, no I/O contention (the store scales with the
writers), and the allreduce algorithm above (Horovod's ring has 2 (W - 1) latency rounds instead).

Slurm (``--slurm``)
-------------------
Instead of local subprocesses, one batch job per point, rendered by :mod:`hpcsur.ops.slurm` from
``slurm/stage.sbatch`` (same quoting, same launcher): generation points get ``[slurm] nodes x
ntasks_per_node = P`` (one node while P <= ``ntasks_per_node``), training points ``--ntasks=W``.
The jobs are chained (``afterany``) so that no two points share the nodes, the training points
also wait ``afterok`` for the job that generates their store; every point must fit the cluster
(``sinfo``: total CPUs and CPUs per node). ``hpcsur scale`` waits for them (polling
``scontrol``), reads the stage summaries from the jobs' logs (``<point>/<stage>-<id>.out``; wall
time from the script's start/exit time stamps, 1 s resolution) and ``done.json``, and writes the
same outputs. Ctrl-C cancels the jobs it submitted. ``--dry-run`` prints the scripts and
dependencies and writes and submits nothing (locally it prints the command lines).

Outputs (``--output DIR``, default ``runs/<job>/scale-<mode>``): ``scaling.json`` (everything),
``scaling.csv`` (one row per measured (stage, ranks)), ``scaling.png`` (efficiency vs ranks per
stage, measured and model) and the printed table.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from hpcsur.errors import InputError
from hpcsur.parallel.grid import default_dims
from hpcsur.ops.jobspec import SPATIAL_DIMS, JobSpec, dump_job, parse_job

log = logging.getLogger("hpcsur.scale")

STAGES = ("generate", "train-ae")
STAGE_ALIASES = {"train": "train-ae"}
MODES = ("strong", "weak")
WEAK_DIMS = ("auto", "ensemble", "domain")
DEFAULT_EXTRAPOLATE = (8, 64, 512)
UNITS = {"generate": "frames", "train-ae": "samples"}

# priors of the model (see the module docstring)
PRIOR_LATENCY = 5e-6          # s per message (cluster network)
PRIOR_VALUE_GRID = 5e-9       # s per float64 halo value, grid systems
PRIOR_VALUE_LJ = 1.7e-8       # s per float64 ghost value, Lennard-Jones (0.1 us per ghost-step / 6)
PRIOR_BYTE = 1e-10            # s per allreduced byte (10 GB/s)


# ============================================================================ input (pure)
def parse_counts(text: str, what: str = "--ranks") -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: positive integers, each once (sorted)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not str(text).strip() or any(not p for p in parts):
        raise InputError(f"{what} {text!r}: give comma-separated positive integers, e.g. 1,2,4")
    for p in parts:
        if not re.fullmatch(r"\d+", p) or int(p) < 1:
            raise InputError(f"{what} {text!r}: {p!r} is not a positive integer; give e.g. 1,2,4")
    values = [int(p) for p in parts]
    if len(set(values)) != len(values):
        raise InputError(f"{what} {text!r} names a rank count twice")
    return tuple(sorted(values))


def parse_positive(text: str, what: str) -> int:
    """One positive integer (``--epochs``)."""
    if not re.fullmatch(r"\s*\d+\s*", str(text)) or int(text) < 1:
        raise InputError(f"{what} {text!r} is not a positive integer")
    return int(text)


def parse_mode(text: str) -> str:
    if text not in MODES:
        raise InputError(f"--mode {text!r} is not a scaling mode; choose strong or weak")
    return text


def parse_weak_dim(text: str) -> str:
    if text not in WEAK_DIMS:
        raise InputError(f"--weak-dim {text!r} is not allowed; choose from: {', '.join(WEAK_DIMS)}")
    return text


def parse_stages(text: str) -> tuple[str, ...]:
    """``"generate,train"`` -> ``("generate", "train-ae")``: known, distinct, in pipeline order."""
    names = [STAGE_ALIASES.get(p.strip(), p.strip()) for p in str(text).split(",")]
    if not str(text).strip() or any(not n for n in names):
        raise InputError(f"--stages {text!r}: give a comma-separated list of: {', '.join(STAGES)}")
    for name in names:
        if name not in STAGES:
            raise InputError(f"--stages: unknown stage {name!r}; choose from: {', '.join(STAGES)} "
                             "(train = train-ae)")
    if len(set(names)) != len(names):
        raise InputError(f"--stages {text!r} names a stage twice")
    return tuple(s for s in STAGES if s in names)


def resolve_weak_dim(spec: JobSpec, weak_dim: str) -> str:
    """``auto`` -> ``domain`` when the spec decomposes each trajectory over > 1 rank, else ``ensemble``."""
    if weak_dim != "auto":
        return weak_dim
    grid = spec.parallel.grid
    return "domain" if grid is not None and math.prod(grid) > 1 else "ensemble"


# ============================================================================ points (pure)
@dataclass(frozen=True)
class Point:
    """One stage at one rank count, with the derived spec it runs (see the module docstring)."""

    stage: str              # "generate" | "train-ae"
    ranks: int              # MPI ranks (generate) or data-parallel workers (train-ae)
    name: str               # "<stage>-p<P>"
    spec: JobSpec
    directory: str          # absolute point folder
    work: int               # frames: generated (generate) / training frames per epoch (train-ae)
    grid: tuple[int, ...] = ()
    groups: int = 1
    labels_per_frame: int = 0
    sites: int = 1          # sites (grid cells / atoms) per frame: efficiency counts frames x sites
    measured: bool = True   # False: the set-up run that only creates the training store

    @property
    def spec_path(self) -> str:
        return os.path.join(self.directory, f"{self.spec.name}.toml")

    @property
    def unit(self) -> str:
        return UNITS[self.stage]


@dataclass(frozen=True)
class ScalePlan:
    spec: JobSpec
    mode: str
    weak_dim: str
    ranks: tuple[int, ...]
    stages: tuple[str, ...]
    out_dir: str
    epochs: int
    extrapolate: tuple[int, ...]
    points: tuple[Point, ...]          # in run order; the set-up point (if any) first
    train_store: Optional[str] = None
    backend: Optional[str] = None

    @property
    def measured(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.measured)


def derive_spec(spec: JobSpec, name: str, overrides: Mapping[str, object], store: str, run_dir: str) -> JobSpec:
    """``spec`` with dotted-key ``overrides``, its own store and run folder (validated like any spec)."""
    tables = spec.to_dict()
    for key, value in overrides.items():
        section, _, field_name = key.partition(".")
        tables.setdefault(section, {})[field_name] = value
    tables["store"]["path"] = store
    tables["output"] = {**tables.get("output", {}), "dir": run_dir}
    return parse_job(tables, source=f"{spec.source}[scale {name}]", name=name)


def point_grid(spec: JobSpec, ranks: int) -> tuple[int, ...]:
    """The rank grid of one trajectory, as ``hpcsur generate`` chooses it (:func:`hpcsur.ops.generate.choose_grid`):
    the spec's, else one rank per trajectory when there are at least as many trajectories as ranks,
    else all ranks on one trajectory (balanced grid)."""
    ndim = SPATIAL_DIMS[spec.kind]
    if spec.parallel.grid is not None:
        grid = tuple(spec.parallel.grid)
        if ranks % math.prod(grid):
            raise InputError(f"{spec.source}: [parallel] grid = {list(grid)} uses {math.prod(grid)} ranks per "
                             f"trajectory, which does not divide {ranks} ranks; choose rank counts that are "
                             f"multiples of {math.prod(grid)}")
        return grid
    if spec.simulation.trajectories >= ranks:
        return (1,) * ndim
    return default_dims(ranks, ndim)  # the same rule as `hpcsur generate` (MPI_Dims_create)


def _exact_root(f: Fraction, ndim: int) -> Optional[int]:
    if f.denominator != 1:
        return None
    r = round(f.numerator ** (1.0 / ndim))
    for c in (r - 1, r, r + 1):
        if c >= 1 and c ** ndim == f.numerator:
            return c
    return None


def weak_overrides(spec: JobSpec, weak_dim: str, factor: Fraction) -> dict:
    """Dotted-key overrides that make the generation problem ``factor`` times larger (module docstring)."""
    if factor == 1:
        return {}
    if weak_dim == "ensemble":
        trajectories = spec.simulation.trajectories * factor
        if trajectories.denominator != 1:
            raise InputError(f"{spec.source}: weak scaling over the ensemble needs trajectories x P / P_min to be "
                             f"whole; {spec.simulation.trajectories} x {factor} is not")
        return {"simulation.trajectories": int(trajectories)}
    ndim = SPATIAL_DIMS[spec.kind]
    root = _exact_root(factor, ndim)
    if root is None:
        need = {1: "a whole number", 2: "a perfect square", 3: "a perfect cube"}[ndim]
        raise InputError(f"{spec.source}: weak scaling over the domain of {spec.kind} ({ndim}-D) needs P / P_min = "
                         f"{factor} to be {need}; choose other --ranks or --weak-dim ensemble")
    grid = [g * root for g in (spec.parallel.grid or (1,) * ndim)]
    if spec.kind in ("predator_prey", "allen_cahn"):  # n cells per axis
        return {"system.n": spec.system.n * root, "parallel.grid": grid}
    return {"system.n_atoms": spec.system.n_atoms * root ** 3, "parallel.grid": grid}


def generation_point(spec: JobSpec, mode: str, weak_dim: str, ranks: int, p_min: int, out_dir: str,
                     measured: bool = True, name: Optional[str] = None) -> Point:
    """The generate point at ``ranks`` (checked: the grid fits, no idle group, the plan is valid)."""
    from hpcsur.ops.generate import make_plan
    from hpcsur.ops.systems import build_system

    name = name or f"generate-p{ranks}"
    directory = os.path.join(out_dir, "points", name)
    overrides = weak_overrides(spec, weak_dim, Fraction(ranks, p_min)) if mode == "weak" else {}
    spec_name = f"{spec.name}-{name}"
    scaled = derive_spec(spec, spec_name, overrides, os.path.join(directory, "store"), os.path.join(directory, "run"))
    grid = point_grid(scaled, ranks)
    groups = ranks // math.prod(grid)
    if groups > scaled.simulation.trajectories:
        raise InputError(f"{spec.source}: generate at {ranks} ranks: {groups} groups of {math.prod(grid)} rank(s) "
                         f"but only {scaled.simulation.trajectories} trajectories; {groups - scaled.simulation.trajectories}"
                         " group(s) would idle (use fewer ranks, more trajectories or a [parallel] grid)")
    slurm_nodes, per_node = _slurm_layout(spec, ranks)
    final = derive_spec(scaled, spec_name, {"parallel.grid": list(grid), "slurm.nodes": slurm_nodes,
                                       "slurm.ntasks_per_node": per_node},
                        scaled.store.path, scaled.run_dir)
    plan = make_plan(final, build_system(final), ranks)  # InputError when the grid does not fit the domain
    frames = final.simulation.trajectories * plan.frames_per_traj
    return Point("generate", ranks, name, final, directory, frames, grid=grid, groups=groups,
                 labels_per_frame=plan.k, sites=build_system(final).layout.n_blocks, measured=measured)


def _slurm_layout(spec: JobSpec, ranks: int) -> tuple[int, int]:
    """(nodes, ntasks_per_node) for ``ranks`` tasks: one node while ranks <= [slurm] ntasks_per_node."""
    per_node = spec.slurm.ntasks_per_node
    if ranks <= per_node:
        return 1, ranks
    return -(-ranks // per_node), per_node  # check_fits_cluster refuses a layout that is not exactly ``ranks``


def training_frames(spec: JobSpec) -> tuple[int, int, int]:
    """(g0, N, V): first training frame, training frames (after max_train_frames) and validation frames."""
    from hpcsur.learn.data import Split

    F = spec.simulation.frames_per_trajectory
    split = Split(spec.simulation.trajectories, F, spec.split.validation, spec.split.test)
    g0, g1 = split.frames("train")
    ae = spec.autoencoder
    if ae is not None and ae.max_train_frames is not None:
        g1 = min(g1, g0 + ae.max_train_frames)
    v0, v1 = split.frames("validation")
    return g0, g1 - g0, v1 - v0


def measured_steps(frames: tuple[int, int], frames_per_shard: int, workers: int, batch: int, seed: int,
                   epochs: Sequence[int]) -> list[int]:
    """Steps per epoch the trainer really takes (its shard dealing), for each epoch in ``epochs``."""
    from hpcsur.learn.data import pieces, steps_per_epoch

    selection = pieces(frames, frames_per_shard)
    return [steps_per_epoch(selection, workers, e, seed, batch) for e in epochs]


def training_point(spec: JobSpec, mode: str, workers: int, w_max: int, out_dir: str, store: str,
                   frames_per_shard: int, epochs: int, job_name: str) -> Point:
    """The train-ae point at ``workers`` (checked: every worker gets at least one batch every epoch)."""
    ae = spec.require("autoencoder", "train-ae")
    name = f"train-ae-p{workers}"
    directory = os.path.join(out_dir, "points", name)
    g0, n_train, _ = training_frames(spec)
    frames = n_train if mode == "strong" else n_train * workers // w_max
    if frames < ae.batch * workers:
        raise InputError(f"{spec.source}: train-ae at {workers} workers: {frames} training frames per epoch leave a "
                         f"worker without one batch of {ae.batch}; use fewer workers, a smaller batch or more "
                         "trajectories")
    overrides = {"autoencoder.epochs": epochs, "train.workers": workers}
    if mode == "weak":
        overrides["autoencoder.max_train_frames"] = frames
    final = derive_spec(spec, f"{job_name}-{name}", overrides, store, os.path.join(directory, "run"))
    from hpcsur.learn.data import pieces

    selection = pieces((g0, g0 + frames), frames_per_shard)
    steps = measured_steps((g0, g0 + frames), frames_per_shard, workers, ae.batch, ae.seed, range(epochs))
    if len(selection) < workers or min(steps) < 1:
        raise InputError(f"{spec.source}: train-ae at {workers} workers: the {len(selection)} shard(s) of {frames} "
                         f"training frames leave a worker without a batch of {ae.batch}; use fewer workers, a smaller "
                         "batch, or smaller [store] frames_per_shard")
    return Point("train-ae", workers, name, final, directory, frames)


def plan_scale(spec: JobSpec, ranks: Sequence[int], mode: str, stages: Sequence[str], out_dir: str,
               weak_dim: str = "auto", epochs: int = 2, extrapolate: Sequence[int] = DEFAULT_EXTRAPOLATE,
               backend: Optional[str] = None) -> ScalePlan:
    """Every point, checked before anything runs (pure: nothing is read, written or launched)."""
    if epochs < 1:
        raise InputError(f"--epochs {epochs} is out of range; allowed: epochs >= 1")
    ranks = tuple(sorted(ranks))
    weak_dim = resolve_weak_dim(spec, weak_dim)
    out_dir = os.path.abspath(out_dir)
    p_min = ranks[0]
    points: list[Point] = []
    gen = [generation_point(spec, mode, weak_dim, p, p_min, out_dir) for p in ranks] if "generate" in stages else []
    points += gen
    store = None
    if "train-ae" in stages:
        spec.require("autoencoder", "train-ae")
        if gen:
            base = gen[0]  # P_min: the base problem in both modes (factor 1)
        else:  # a set-up run at the smallest rank count creates the store (not a point)
            base = generation_point(spec, "strong", weak_dim, p_min, p_min, out_dir, measured=False,
                                    name="train-store")
            points.insert(0, base)
        store = base.spec.store.path
        from hpcsur.ops.generate import make_plan
        from hpcsur.ops.systems import build_system

        fps = make_plan(base.spec, build_system(base.spec), base.ranks).frames_per_shard
        # the training points read the base store: their spec is the base problem (strong) at any W
        train_spec = base.spec
        points += [training_point(train_spec, mode, w, ranks[-1], out_dir, store, fps, epochs, spec.name)
                   for w in ranks]
    return ScalePlan(spec, mode, weak_dim, ranks, tuple(stages), out_dir, epochs, tuple(extrapolate),
                     tuple(points), store, backend)


# ============================================================================ model (pure)
@dataclass(frozen=True)
class Term:
    """One constant of the model: its name, the group it is fitted with, its prior and unit."""

    name: str
    group: str      # "compute" | "comm" | "serial"
    prior: float
    unit: str


def generation_terms(kind: str) -> tuple[Term, ...]:
    value = PRIOR_VALUE_LJ if kind == "lennard_jones" else PRIOR_VALUE_GRID
    return (Term("c", "compute", float("nan"), "s per owned site-step"),
            Term("lambda", "comm", PRIOR_LATENCY, "s per message"),
            Term("c_h", "comm", value, "s per halo value"),
            Term("t0", "serial", 0.0, "s per run"))


TRAINING_TERMS = (Term("c_s", "compute", float("nan"), "s per sample"),
                  Term("alpha", "comm", PRIOR_LATENCY, "s per message"),
                  Term("beta", "comm", PRIOR_BYTE, "s per byte"),
                  Term("t0", "serial", 0.0, "s per epoch"))
COUNT_OF = {"c": "compute", "lambda": "messages", "c_h": "halo", "t0": "serial",
            "c_s": "compute", "alpha": "messages", "beta": "bytes"}
GROUP_ORDER = ("compute", "comm", "serial")


def _log2(n: int) -> int:
    return int(math.ceil(math.log2(n))) if n > 1 else 0


def grid_exchange(shape: Sequence[int], grid: Sequence[int], depth: int, n_fields: int) -> tuple[float, float]:
    """(values, messages) one halo exchange costs the busiest rank of a non-periodic block grid:
    per cut axis min(2, dims - 1) neighbours, each a slab ``depth`` deep spanning the padded
    extent of the other axes, for every field."""
    local = [math.ceil(n / g) for n, g in zip(shape, grid)]
    values = messages = 0.0
    for axis, g in enumerate(grid):
        if g == 1:
            continue
        neighbours = min(2, g - 1)
        face = math.prod(local[b] + 2 * depth for b in range(len(grid)) if b != axis)
        values += neighbours * depth * face * n_fields
        messages += neighbours
    return values, messages


def lj_ghosts(n_atoms: int, density: float, cut: float, grid: Sequence[int]) -> float:
    """Ghost atoms of a sub-box: rho [prod_cut (w + 2 cut) prod_uncut w - prod w] (only cut axes have ghosts)."""
    side = (n_atoms / density) ** (1.0 / 3.0)
    widths = [side / g for g in grid]
    shell = math.prod(w + 2 * cut if g > 1 else w for w, g in zip(widths, grid))
    return density * (shell - math.prod(widths))


def generation_counts(spec: JobSpec, grid: Sequence[int], ranks: int) -> dict[str, float]:
    """The counted work of the busiest rank for the whole generate stage (module docstring)."""
    from hpcsur.ops.systems import build_system
    from hpcsur.parallel.sampling import n_chosen

    system = build_system(spec)
    layout = system.layout
    g = math.prod(grid)
    groups = ranks // g
    sim = spec.simulation
    trajs = math.ceil(sim.trajectories / groups)
    steps, frames = sim.steps, sim.frames_per_trajectory
    k = n_chosen(spec.labels.p, layout.n_blocks)
    if spec.kind == "lennard_jones":
        owned = math.ceil(layout.n_blocks / g)
    else:
        shape = (spec.system.n, spec.system.n) if spec.kind == "allen_cahn" else (spec.system.n,)
        owned = math.prod(math.ceil(n / d) for n, d in zip(shape, grid))
    counts = {"compute": float(trajs * steps * owned), "halo": 0.0, "messages": 0.0, "serial": 1.0}
    if g == 1:
        return counts
    if spec.kind == "lennard_jones":
        s = spec.system
        ghosts = lj_ghosts(s.n_atoms, s.density, s.rcut + s.skin, grid)
        cut_axes = sum(1 for d in grid if d > 1)
        per_step_values, per_step_messages = 6.0 * ghosts, 4.0 * cut_axes + _log2(g)
        per_frame_values, per_frame_messages = 0.0, 0.0
    else:
        from hpcsur.parallel.fields import exchanges_per_step, halo_depth

        is_2d = spec.kind == "allen_cahn"
        depth = halo_depth(is_2d, spec.integrator, shape, grid)
        n_fields = 1 if is_2d else 2
        values, messages = grid_exchange(shape, grid, depth, n_fields)
        exchanges = exchanges_per_step(is_2d, spec.integrator, shape, grid)
        per_step_values, per_step_messages = exchanges * values, exchanges * messages
        per_frame_values, per_frame_messages = values, messages  # the exchange that ends advance()
    gathers = 3 if spec.labels.full else 2
    gathered = (layout.size * (2 if spec.labels.full else 1) + k * layout.block_size) * (g - 1) / g
    counts["halo"] = trajs * (steps * per_step_values + frames * (per_frame_values + gathered))
    counts["messages"] = trajs * (steps * per_step_messages + frames * (per_frame_messages + gathers * (g - 1)))
    return counts


def mlp_parameters(widths: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def autoencoder_parameter_bytes(spec: JobSpec) -> int:
    """float32 bytes of the closure autoencoder's parameters (what every step allreduces)."""
    from hpcsur.ops.systems import build_system

    ae = spec.require("autoencoder", "train-ae")
    system = build_system(spec)
    n_state, n_obs = system.layout.size, len(system.observable_names)
    hidden = list(ae.hidden)
    encoder = mlp_parameters([n_state] + hidden + [ae.latent_dim - n_obs])
    decoder = mlp_parameters([ae.latent_dim] + hidden[::-1] + [n_state])
    return 4 * (encoder + decoder)


def training_counts(workers: int, steps: float, batch: int, val_frames: int, param_bytes: int) -> dict[str, float]:
    """The counted work of one worker for one epoch (module docstring)."""
    L = _log2(workers)
    return {"compute": steps * batch + val_frames / (3.0 * workers),
            "messages": steps * 3 * L + 4 * L,
            "bytes": steps * 2.0 * (workers - 1) / workers * param_bytes,
            "serial": 1.0, "steps": float(steps)}


@dataclass(frozen=True)
class ModelFit:
    """Fitted constants, where each came from, and the fit's relative RMS residual."""

    constants: dict[str, float]
    sources: dict[str, str]
    residual: float
    terms: tuple[Term, ...]

    def predict(self, counts: Mapping[str, float], constants: Optional[Mapping[str, float]] = None) -> float:
        constants = self.constants if constants is None else constants
        return float(sum(constants[t.name] * counts.get(COUNT_OF[t.name], 0.0) for t in self.terms))

    def extrapolation_constants(self) -> dict[str, float]:
        """Communication constants never below their (network) prior beyond the measured node."""
        return {t.name: (max(self.constants[t.name], t.prior) if t.group == "comm" else self.constants[t.name])
                for t in self.terms}

    def to_dict(self) -> dict:
        return {"constants": self.constants, "sources": self.sources, "residual_rel_rms": self.residual,
                "units": {t.name: t.unit for t in self.terms},
                "priors": {t.name: (None if math.isnan(t.prior) else t.prior) for t in self.terms},
                "extrapolation_constants": self.extrapolation_constants()}


def _nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(A / scale, y)
    return x / scale


def _full_rank(A: np.ndarray) -> bool:
    if A.shape[1] == 0:
        return True
    if A.shape[1] > A.shape[0]:
        return False
    scale = np.linalg.norm(A, axis=0)
    if np.any(scale == 0):
        return False
    return np.linalg.matrix_rank(A / scale, tol=1e-9) == A.shape[1]


def fit_model(counts: Sequence[Mapping[str, float]], times: Sequence[float], terms: Sequence[Term]) -> ModelFit:
    """Fit ``T = sum_t const_t * count_t`` to measured ``times`` (module docstring: NNLS, priors, fallbacks).

    ``counts[i]`` maps count names (``compute``, ``halo``, ``messages``, ``bytes``, ``serial``) to
    point i's counted work. Pure.
    """
    terms = tuple(terms)
    y_all = np.asarray(times, dtype=float)
    if len(y_all) != len(counts) or len(y_all) == 0:
        raise InputError("model fit: need one time per point and at least one point")
    X = {t.name: np.array([float(c.get(COUNT_OF[t.name], 0.0)) for c in counts]) for t in terms}
    constants, sources = {}, {}
    live = []
    for t in terms:
        if not np.any(X[t.name]):
            if math.isnan(t.prior):
                raise InputError(f"model fit: no point has any {COUNT_OF[t.name]} work; cannot fit {t.name}")
            constants[t.name], sources[t.name] = t.prior, "prior (no data)"
        else:
            live.append(t)
    groups = [[t for t in live if t.group == g] for g in GROUP_ORDER]
    groups = [g for g in groups if g]

    def columns(group: list[Term], combine: bool):
        if combine and len(group) > 1:
            return [(tuple(group), sum(t.prior * X[t.name] for t in group))]
        return [((t,), X[t.name]) for t in group]

    designs = [(groups, False), (groups, True)]
    for drop in range(1, len(groups)):
        designs.append((groups[:len(groups) - drop], True))
    for kept, combine in designs:
        cols = [col for g in kept for col in columns(g, combine)]
        A = np.column_stack([c for _, c in cols]) if cols else np.zeros((len(y_all), 0))
        if not _full_rank(A):
            continue
        fixed = [t for g in groups if g not in kept for t in g]
        y = y_all - sum((t.prior * X[t.name] for t in fixed), np.zeros_like(y_all))
        coef = _nnls(A, y) if cols else np.zeros(0)
        for (members, _), value in zip(cols, coef):
            if len(members) == 1:
                constants[members[0].name], sources[members[0].name] = float(value), "fitted"
            else:
                for t in members:
                    constants[t.name], sources[t.name] = float(value * t.prior), "fitted (scale of prior)"
        for t in fixed:
            if math.isnan(t.prior):
                continue
            constants[t.name], sources[t.name] = t.prior, "prior"
        break
    else:  # cannot happen while the compute column is non-zero (one column is always full rank)
        raise InputError("model fit: the points do not determine the compute constant")
    fit = ModelFit({t.name: constants[t.name] for t in terms}, {t.name: sources[t.name] for t in terms}, 0.0, terms)
    pred = np.array([fit.predict(c) for c in counts])
    residual = float(np.sqrt(np.mean(((pred - y_all) / np.where(y_all == 0, 1.0, y_all)) ** 2)))
    return dataclasses.replace(fit, residual=residual)


def efficiency(work: float, time_s: float, ranks: int, work0: float, time0: float, ranks0: int) -> tuple[float, float]:
    """(speed-up, efficiency) of a point against the reference point: X = work / time, E = (X/P) / (X0/P0)."""
    x, x0 = work / time_s, work0 / time0
    return x / x0, (x / ranks) / (x0 / ranks0)


# ============================================================================ table (pure)
CSV_FIELDS = ("stage", "mode", "ranks", "grid", "groups", "work", "unit", "sites", "time_s", "wall_s", "startup_s",
              "throughput", "labels_per_s", "speedup", "efficiency", "model_time_s", "model_efficiency",
              "load_before", "load_after", "backend")


def build_rows(points: Sequence[Point], results: Mapping[str, dict], mode: str,
               fits: Mapping[str, ModelFit], counts: Mapping[str, dict]) -> list[dict]:
    """One row per measured (stage, ranks): times, throughput, speed-up, efficiency, the model's."""
    rows = []
    for stage in STAGES:
        mine = [p for p in points if p.stage == stage and p.measured]
        if not mine:
            continue
        ref = results[mine[0].name]
        ref_pred = fits[stage].predict(counts[mine[0].name]) if stage in fits else None
        ref_units = ref["work_done"] * mine[0].sites
        for p in mine:
            r = results[p.name]
            units = r["work_done"] * p.sites  # weak scaling over the domain: frames stay, sites grow
            speedup, eff = efficiency(units, r["time_s"], p.ranks, ref_units, ref["time_s"], mine[0].ranks)
            model_time = model_eff = None
            if stage in fits:
                model_time = fits[stage].predict(counts[p.name])
                model_eff = efficiency(units, model_time, p.ranks, ref_units, ref_pred,
                                       mine[0].ranks)[1] if model_time > 0 and ref_pred > 0 else None
            rows.append({
                "stage": stage, "mode": mode, "ranks": p.ranks,
                "grid": "x".join(map(str, p.grid)) if p.grid else "", "groups": p.groups if p.grid else "",
                "work": r["work_done"], "unit": p.unit, "sites": p.sites, "time_s": r["time_s"], "wall_s": r["wall_s"],
                "startup_s": r.get("startup_s"), "throughput": r["work_done"] / r["time_s"],
                "labels_per_s": r.get("labels_per_s"), "speedup": speedup, "efficiency": eff,
                "model_time_s": model_time, "model_efficiency": model_eff,
                "load_before": r["load_before"], "load_after": r["load_after"], "backend": r.get("backend", ""),
            })
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def format_table(rows: Sequence[Mapping], extrapolation: Sequence[Mapping] = ()) -> str:
    """The measured rows and the model's extrapolation as aligned text tables."""
    head = ("stage", "P", "grid", "groups", "work", "time_s", "startup_s", "throughput/s", "labels/s",
            "speed-up", "eff", "model_eff", "load")
    table = [head]
    for r in rows:
        work = int(r["work"]) if float(r["work"]).is_integer() else round(r["work"], 1)
        table.append((r["stage"], str(r["ranks"]), r["grid"] or "-", _fmt(r["groups"]), f"{work} {r['unit']}",
                      _fmt(r["time_s"]), _fmt(r["startup_s"]), _fmt(r["throughput"]), _fmt(r["labels_per_s"]),
                      _fmt(r["speedup"]), _fmt(r["efficiency"]), _fmt(r["model_efficiency"]),
                      f"{r['load_before']:.1f}/{r['load_after']:.1f}"))
    lines = _align(table)
    if extrapolation:
        lines += ["", "model extrapolation (communication constants >= network priors):"]
        lines += _align([("stage", "P", "grid", "predicted time_s", "eff", "note")] + [
            (e["stage"], str(e["ranks"]), e.get("grid") or "-", _fmt(e["time_s"]), _fmt(e["efficiency"]),
             e.get("note", "")) for e in extrapolation])
    return "\n".join(lines)


def format_model(fits: Mapping[str, "ModelFit"]) -> str:
    """The fitted constants, one stage per line, each with its unit and source."""
    lines = ["model constants (busiest rank):"]
    for stage, fit in fits.items():
        parts = [f"{t.name} = {fit.constants[t.name]:.3g} {t.unit} ({fit.sources[t.name]})" for t in fit.terms]
        lines.append(f"  {stage}: " + "; ".join(parts) + f"; fit residual {100 * fit.residual:.0f} %")
    return "\n".join(lines)


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


# ============================================================================ counts of a plan
def point_counts(point: Point, steps: Optional[float] = None, param_bytes: int = 0) -> dict[str, float]:
    """The model's counts of a point (training: ``steps`` per epoch really taken)."""
    if point.stage == "generate":
        return generation_counts(point.spec, point.grid, point.ranks)
    ae = point.spec.autoencoder
    _, _, val = training_frames(point.spec)
    if steps is None:
        steps = point.work // (point.ranks * ae.batch)
    return training_counts(point.ranks, steps, ae.batch, val, param_bytes)


def extrapolate(plan: ScalePlan, fits: Mapping[str, ModelFit], ref_points: Mapping[str, Point],
                param_bytes: int, ranks: Sequence[int]) -> list[dict]:
    """Predicted time and efficiency at ``ranks`` (same mode) from the fitted model, stage by stage."""
    out = []
    for stage, fit in fits.items():
        consts = fit.extrapolation_constants()
        ref = ref_points[stage]
        ref_counts = point_counts(ref, param_bytes=param_bytes)
        ref_time = fit.predict(ref_counts, consts)
        ref_work = _work_done(ref, ref_counts)
        for P in ranks:
            row = {"stage": stage, "ranks": P, "time_s": None, "efficiency": None, "grid": "", "note": ""}
            try:
                if stage == "generate":
                    point = generation_point(plan.spec, plan.mode, plan.weak_dim, P, plan.ranks[0], plan.out_dir)
                    row["grid"] = "x".join(map(str, point.grid))
                else:
                    point = _hypothetical_training_point(plan, ref, P)
                counts = point_counts(point, param_bytes=param_bytes)
                work = _work_done(point, counts)
                if work <= 0:
                    raise InputError(f"less than one batch per worker at {P} workers")
                t = fit.predict(counts, consts)
                row["time_s"] = t
                row["efficiency"] = efficiency(work, t, P, ref_work, ref_time, ref.ranks)[1]
                row["work"] = work
            except InputError as err:
                row["note"] = "not feasible: " + _short(str(err))
            out.append(row)
    return out


def _short(message: str) -> str:
    return message.split("]: ", 1)[-1] if "]: " in message else message


def _hypothetical_training_point(plan: ScalePlan, ref: Point, workers: int) -> Point:
    """A training point at ``workers`` for the model only (ideal shard dealing; weak: frames grow with W)."""
    ae = ref.spec.autoencoder
    frames = ref.work if plan.mode == "strong" else ref.work * workers // ref.ranks
    if frames // (workers * ae.batch) < 1:
        raise InputError(f"{frames} training frames leave a worker without a batch of {ae.batch}")
    return dataclasses.replace(ref, ranks=workers, work=frames, name=f"train-ae-p{workers}")


def _work_done(point: Point, counts: Mapping[str, float]) -> float:
    """Site-frames generated, or training samples processed per epoch (steps x B x W)."""
    if point.stage == "generate":
        return float(point.work * point.sites)
    return float(counts["steps"] * point.spec.autoencoder.batch * point.ranks)


# ============================================================================ running points (side effects)
class PointFailed(Exception):
    """A point's stage exited non-zero (or its outputs are missing)."""


def _subprocess_env() -> dict:
    from hpcsur.log import loopback_env

    env = loopback_env(os.environ)   # the local runner: every rank on this machine
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")  # one core per rank: P ranks use P cores
    return env


def launch_command(point: Point, backend: Optional[str] = None) -> list[str]:
    """The point's command line: ``hpcsur run``'s (:func:`hpcsur.ops.pipeline.stage_command`), no progress line."""
    from hpcsur.ops.pipeline import stage_command

    return stage_command(point.spec_path, point.stage, point.ranks, point.ranks, backend) + ["--no-progress"]


def write_point(point: Point) -> None:
    Path(point.directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(point.spec_path + ".tmp")
    tmp.write_text(dump_job(point.spec))
    tmp.replace(point.spec_path)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_local(point: Point, backend: Optional[str] = None) -> dict:
    """Run one point as a subprocess; returns what :func:`collect` reads, plus wall time and load."""
    write_point(point)
    cmd = launch_command(point, backend)
    out, err = Path(point.directory) / "stdout.log", Path(point.directory) / "stderr.log"
    log.info("%s: %s", point.name, " ".join(Path(c).name if i < 3 and "/" in c else c for i, c in enumerate(cmd)))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        code = subprocess.call(cmd, stdout=fo, stderr=fe, env=_subprocess_env())
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    if code != 0:
        raise PointFailed(f"point {point.name} failed (exit {code}): {_tail(err)} (log: {err})")
    return collect(point, out.read_text(errors="replace"), err.read_text(errors="replace"), wall, load0, load1)


def _summary_line(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "elapsed_s" in data:
                return data
    raise PointFailed("no JSON summary with elapsed_s in the stage's output")


def _ranks_seen(stderr: str) -> Optional[int]:
    m = re.search(r"\[r0/(\d+)\]", stderr)
    return int(m.group(1)) if m else None


def collect(point: Point, stdout: str, stderr: str, wall: float, load0: float, load1: float) -> dict:
    """The measurements of a finished point (generate: its JSON summary; train-ae: done.json + curve.csv)."""
    seen = _ranks_seen(stderr)
    if seen is not None and seen != point.ranks:
        raise PointFailed(f"point {point.name} ran on {seen} rank(s), expected {point.ranks}")
    result = {"wall_s": wall, "load_before": load0, "load_after": load1}
    if point.stage == "generate":
        try:
            summary = _summary_line(stdout)
        except PointFailed as exc:
            raise PointFailed(f"point {point.name}: {exc}") from None
        frames = int(summary["frames_total"])
        if frames != point.work or not summary.get("complete", False):
            raise PointFailed(f"point {point.name}: store has {frames} frames (complete={summary.get('complete')}), "
                              f"expected {point.work}")
        elapsed = float(summary["elapsed_s"])
        result.update(time_s=elapsed, startup_s=max(wall - elapsed, 0.0), work_done=frames,
                      frames_per_s=frames / elapsed, labels_per_s=frames * point.labels_per_frame / elapsed,
                      summary={k: v for k, v in summary.items() if k not in ("bytes_by_array",)})
        return result
    run = Path(point.spec.run_dir) / "autoencoder"
    try:
        done = json.loads((run / "done.json").read_text())
        with open(run / "curve.csv") as fh:
            curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, ValueError) as exc:
        raise PointFailed(f"point {point.name}: no done.json / curve.csv in {run} ({exc})") from None
    if int(done["workers"]) != point.ranks:
        raise PointFailed(f"point {point.name} trained with {done['workers']} worker(s), expected {point.ranks}")
    cumulative = [row["seconds"] for row in curve]
    durations = [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]
    timed = list(range(1, len(durations))) if len(durations) >= 2 else [0]
    s_epoch = statistics.median(durations[e] for e in timed)
    ae = point.spec.autoencoder
    g0, n_train, _ = training_frames(point.spec)
    from hpcsur import store as zstore

    fps = zstore.open_dataset(point.spec.store.path).schema.frames_per_shard
    steps = measured_steps((g0, g0 + n_train), fps, point.ranks, ae.batch, ae.seed, timed)
    mean_steps = sum(steps) / len(steps)
    samples = mean_steps * ae.batch * point.ranks
    result.update(time_s=s_epoch, startup_s=max(wall - float(done["seconds"]), 0.0), work_done=samples,
                  steps_per_epoch=mean_steps, epochs=len(durations), epochs_timed=len(timed),
                  seconds_total=float(done["seconds"]), backend=done.get("backend", ""),
                  samples_per_s=samples / s_epoch, s_per_epoch=s_epoch)
    return result


# ---------------------------------------------------------------------------- Slurm
def cluster_cpus() -> tuple[int, int]:
    """(total CPUs, most CPUs on one node) of the Slurm cluster, from ``sinfo``."""
    if shutil.which("sinfo") is None:
        raise InputError("--slurm: sinfo not found; run on a Slurm login node (or start the local test cluster: "
                         "slurm/local/start.sh)")
    try:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise InputError("--slurm: sinfo did not answer in 30 s (is slurmctld up?)") from None
    nodes = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            nodes[parts[0]] = int(parts[1])
    if res.returncode != 0 or not nodes:
        raise InputError(f"--slurm: sinfo found no nodes ({' '.join(res.stderr.split()) or 'no output'})")
    return sum(nodes.values()), max(nodes.values())


def check_fits_cluster(points: Sequence[Point], total: int, per_node: int) -> None:
    """Every point's tasks must fit the cluster (else its job would pend forever); one error line."""
    for p in points:
        if p.stage == "generate":
            sl = p.spec.slurm
            if sl.nodes * sl.ntasks_per_node != p.ranks:
                raise InputError(f"--slurm: {p.ranks} ranks do not fill whole nodes of [slurm] ntasks_per_node = "
                                 f"{sl.ntasks_per_node}; choose multiples of {sl.ntasks_per_node}")
            tasks, node_tasks = p.ranks * sl.cpus_per_task, sl.ntasks_per_node * sl.cpus_per_task
        else:
            tasks = node_tasks = p.ranks * p.spec.train.threads
        if tasks > total or node_tasks > per_node:
            raise InputError(f"--slurm: point {p.name} needs {tasks} CPUs ({node_tasks} on one node); the cluster has "
                             f"{total} ({per_node} per node); leave out rank counts above {min(total, per_node)}")


def render_point(point: Point, workdir: str) -> str:
    from hpcsur.ops import slurm

    return slurm.render_script(point.spec, slurm.STAGES[point.stage], template=slurm.load_template(), workdir=workdir,
                               log_dir=point.directory, hpcsur=slurm.default_hpcsur(),
                               mpiexec=slurm.default_mpiexec(point.spec), job_path=point.spec_path)


def point_dependency(points: Sequence[Point], ids: Sequence[str], i: int) -> Optional[str]:
    """``--dependency`` of point ``i`` (``ids`` of the points before it): after the previous point
    (``afterany``, so no two points share the nodes) and, for a training point, ``afterok`` on the
    job that generates its store (a failed store job cancels the training points)."""
    p = points[i]
    parts = [f"afterany:{ids[i - 1]}"] if i else []
    if p.stage == "train-ae":
        store = next((j for j, q in enumerate(points[:i])
                      if q.stage == "generate" and q.spec.store.path == p.spec.store.path), None)
        if store is not None:
            if store == i - 1:
                parts = []
            parts.append(f"afterok:{ids[store]}")
    return ",".join(parts) or None


def _sbatch(script: str, dependency: Optional[str]) -> str:
    cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else []) + [script]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise InputError("sbatch did not answer in 60 s (is slurmctld up?)") from None
    job_id = res.stdout.strip().split(";")[0]
    if res.returncode != 0 or not job_id.isdigit():
        raise InputError(f"sbatch refused {script}: {' '.join(res.stderr.split()) or f'exit {res.returncode}'}")
    return job_id


def _scancel(ids: Sequence[str]) -> None:
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


_START = re.compile(r"^hpcsur: job \S+ stage \S+, run \d+, on \S+, (\S+)$", re.M)
_END = re.compile(r"^hpcsur: stage \S+ exited with status (\d+), (\S+)$", re.M)


def slurm_wall(log_text: str) -> Optional[float]:
    """Seconds between the batch script's last start stamp and its exit stamp (1 s resolution)."""
    from datetime import datetime

    starts, ends = _START.findall(log_text), _END.findall(log_text)
    if not starts or not ends:
        return None
    return (datetime.fromisoformat(ends[-1][1]) - datetime.fromisoformat(starts[-1])).total_seconds()


def run_slurm(points: Sequence[Point], workdir: str, poll: float = 2.0) -> dict[str, dict]:
    """Submit one batch job per point (chained), wait for all of them, collect each point's results."""
    from hpcsur.ops import slurm

    ids: list[str] = []
    scripts = []
    for p in points:
        write_point(p)
        script = os.path.join(p.directory, f"{p.stage}.sbatch")
        Path(script).write_text(render_point(p, workdir))
        scripts.append(script)
    try:
        for i, p in enumerate(points):
            dep = point_dependency(points, ids, i)
            ids.append(_sbatch(scripts[i], dep))
            log.info("%s: submitted job %s%s", p.name, ids[-1], f" (after {dep})" if dep else "")
        ended: dict[str, tuple[str, str]] = {}
        load_at = {}  # job id -> load average when first seen running, and when seen ended
        while len(ended) < len(ids):
            states = slurm.job_states([j for j in ids if j not in ended])
            for job_id, recs in states.items():
                state = recs[0].get("JobState", "UNKNOWN")
                if state == "RUNNING":
                    load_at.setdefault(job_id, [os.getloadavg()[0]])
                elif state not in slurm.ACTIVE:
                    ended[job_id] = (state, recs[0].get("ExitCode", ""))
                    load_at.setdefault(job_id, [os.getloadavg()[0]]).append(os.getloadavg()[0])
                    log.info("job %s: %s", job_id, state)
            if len(ended) < len(ids):
                time.sleep(poll)
    except (KeyboardInterrupt, InputError):
        _scancel([j for j in ids])
        raise
    results = {}
    for p, job_id in zip(points, ids):
        state, code = ended[job_id]
        load0, load1 = load_at[job_id][0], load_at[job_id][-1]
        out = Path(p.directory) / f"{p.stage}-{job_id}.out"
        err = Path(p.directory) / f"{p.stage}-{job_id}.err"
        if state != "COMPLETED":
            raise PointFailed(f"point {p.name}: Slurm job {job_id} ended {state} (exit {code}): {_tail(err)} "
                              f"(log: {out})")
        text = out.read_text(errors="replace") if out.exists() else ""
        wall = slurm_wall(text)
        results[p.name] = collect(p, text, err.read_text(errors="replace") if err.exists() else "",
                                  wall if wall is not None else float("nan"), load0, load1)
        results[p.name]["job_id"] = job_id
    return results


# ============================================================================ outputs (side effects)
def plot(path: Path, rows: Sequence[Mapping], extrapolation: Sequence[Mapping], mode: str) -> None:
    """Efficiency vs ranks per stage: measured (markers), the model at the measured and extrapolated ranks (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, stage in enumerate(STAGES):
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        color = f"C{i}"
        ax.plot([r["ranks"] for r in mine], [r["efficiency"] for r in mine], "o", color=color,
                label=f"{stage} measured")
        model = [(r["ranks"], r["model_efficiency"]) for r in mine if r["model_efficiency"] is not None]
        model += [(e["ranks"], e["efficiency"]) for e in extrapolation
                  if e["stage"] == stage and e["efficiency"] is not None]
        model.sort()
        if model:
            ax.plot([m[0] for m in model], [m[1] for m in model], "--", color=color, label=f"{stage} model")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks / workers P")
    ax.set_ylabel("efficiency")
    ax.set_ylim(bottom=0)
    ax.set_title(f"hpcsur scale ({mode} scaling)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir: Path, report: dict, rows: Sequence[Mapping]) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "scaling.json", "csv": out_dir / "scaling.csv", "png": out_dir / "scaling.png"}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    plot(files["png"], rows, report["extrapolation"], report["mode"])
    report["files"] = {k: str(v) for k, v in files.items()}
    tmp = files["json"].with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default))
    tmp.replace(files["json"])
    return report["files"]


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


# ============================================================================ the command
def prepare_output(plan: ScalePlan, force: bool) -> None:
    """Refuse to reuse point folders of an earlier study (a store must never serve two points),
    unless ``force``: then they are removed first."""
    existing = [p.directory for p in plan.points if os.path.exists(p.directory)]
    if existing and not force:
        raise InputError(f"{plan.out_dir}: point folder {existing[0]} exists from an earlier run; choose another "
                         "--output, or pass --force to remove the old points")
    for path in existing:
        shutil.rmtree(path)


def dry_run_text(plan: ScalePlan, use_slurm: bool, workdir: str) -> str:
    lines = []
    for i, p in enumerate(plan.points):
        role = "" if p.measured else "  (set-up: the training store, not a point)"
        if use_slurm:
            dep = point_dependency(plan.points, [f"<job {q.name}>" for q in plan.points], i)
            lines.append(f"# ==== {p.directory}/{p.stage}.sbatch{role}"
                         + (f"  (sbatch --dependency={dep})" if dep else ""))
            lines.append(render_point(p, workdir))
        else:
            lines.append(f"{p.name}: {shlex.join(launch_command(p, plan.backend))}{role}")
    return "\n".join(lines)


def run_scale(plan: ScalePlan, use_slurm: bool = False, force: bool = False, workdir: Optional[str] = None) -> dict:
    """Run (or submit) every point, fit the model, extrapolate, write the outputs; returns the report."""
    workdir = workdir or os.getcwd()
    if use_slurm:
        total, per_node = cluster_cpus()
        check_fits_cluster(plan.points, total, per_node)
    prepare_output(plan, force)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, dict] = {}
    if use_slurm:
        results = run_slurm(plan.points, workdir)
    else:
        cpus = os.cpu_count() or 1
        for p in plan.points:
            if p.ranks > cpus:
                log.warning("%s: %d ranks on %d cores: oversubscribed, the timing measures the host", p.name, p.ranks,
                            cpus)
            results[p.name] = run_local(p, plan.backend)
            r = results[p.name]
            log.info("%s: %.3g s (%s), wall %.3g s, load %.1f -> %.1f", p.name, r["time_s"],
                     "stage" if p.stage == "generate" else "per epoch", r["wall_s"], r["load_before"], r["load_after"])
    measured = plan.measured
    param_bytes = autoencoder_parameter_bytes(plan.spec) if "train-ae" in plan.stages else 0
    counts, fits, refs = {}, {}, {}
    for stage in plan.stages:
        mine = [p for p in measured if p.stage == stage]
        for p in mine:
            steps = results[p.name].get("steps_per_epoch")
            counts[p.name] = point_counts(p, steps=steps, param_bytes=param_bytes)
        terms = generation_terms(plan.spec.kind) if stage == "generate" else TRAINING_TERMS
        fits[stage] = fit_model([counts[p.name] for p in mine], [results[p.name]["time_s"] for p in mine], terms)
        refs[stage] = mine[0]
    rows = build_rows(measured, results, plan.mode, fits, counts)
    extra = [P for P in plan.extrapolate if P > plan.ranks[-1]]
    extrapolation = extrapolate(plan, fits, refs, param_bytes, extra)
    report = {
        "job": plan.spec.name, "source": plan.spec.source, "mode": plan.mode,
        "weak_dim": plan.weak_dim if plan.mode == "weak" else None, "ranks": list(plan.ranks),
        "stages": list(plan.stages), "launcher": "slurm" if use_slurm else "local", "epochs": plan.epochs,
        "host": {"name": socket.gethostname(), "cpus": os.cpu_count(), "load_start": list(load_start),
                 "load_end": list(os.getloadavg())},
        "elapsed_s": time.perf_counter() - t_start, "train_store": plan.train_store,
        "param_bytes": param_bytes or None,
        "points": [{"name": p.name, "stage": p.stage, "ranks": p.ranks, "measured": p.measured,
                    "directory": p.directory, "spec": p.spec_path, "store": p.spec.store.path,
                    "frames": p.work, "grid": list(p.grid), "groups": p.groups,
                    **{k: v for k, v in results.get(p.name, {}).items() if k != "summary"}}
                   for p in plan.points],
        "rows": rows,
        "model": {stage: {**fit.to_dict(), "equation": MODEL_EQUATIONS[stage]} for stage, fit in fits.items()},
        "extrapolation": extrapolation,
    }
    write_outputs(Path(plan.out_dir), report, rows)
    report["table"] = format_table(rows, extrapolation) + "\n\n" + format_model(fits)
    return report


MODEL_EQUATIONS = {
    "generate": "T(P) = c*W + c_h*H + lambda*M + t0; W = ceil(T/G) S a (owned site-steps), "
                "H = halo + gathered values, M = messages (busiest rank)",
    "train-ae": "T_epoch(W) = c_s*(s B + V/(3W)) + alpha*(3 s + 4) ceil(log2 W) + beta*s 2 (W-1)/W n_p + t0, "
                "s = steps per epoch",
}
