"""Scaling studies, the plan: input parsing and the points (one stage at one rank count) of a study (pure)."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Optional, Sequence

from hpcsur.errors import InputError
from hpcsur.ops import stage_table
from hpcsur.ops.jobspec import JobSpec, parse_job
from hpcsur.parallel.grid import default_dims
from hpcsur.systems import registry

log = logging.getLogger("hpcsur.scale")

STAGES = ("generate", "train-ae")
MODES = ("strong", "weak")
WEAK_DIMS = ("auto", "ensemble", "domain")
DEFAULT_EXTRAPOLATE = (8, 64, 512)
UNITS = {"generate": "frames", "train-ae": "samples"}


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
    """``--stages`` of ``hpcsur scale``: the one grammar (:func:`hpcsur.ops.stage_table.parse_stages`) over
    the stages a study can time."""
    return stage_table.parse_stages(text, STAGES)


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
    ndim = registry.get(spec.kind).spatial_dims
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
    kind = registry.get(spec.kind)
    if kind.weak_scale is None:
        raise InputError(f"{spec.source}: {spec.kind} runs whole trajectories per rank, so weak scaling can only "
                         "grow the ensemble; use --weak-dim ensemble")
    ndim = kind.spatial_dims
    root = _exact_root(factor, ndim)
    if root is None:
        need = {1: "a whole number", 2: "a perfect square", 3: "a perfect cube"}[ndim]
        raise InputError(f"{spec.source}: weak scaling over the domain of {spec.kind} ({ndim}-D) needs P / P_min = "
                         f"{factor} to be {need}; choose other --ranks or --weak-dim ensemble")
    grid = [g * root for g in (spec.parallel.grid or (1,) * ndim)]
    overrides = {f"system.{name}": value for name, value in kind.weak_scale(spec.system, root).items()}
    return {**overrides, "parallel.grid": grid}


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


