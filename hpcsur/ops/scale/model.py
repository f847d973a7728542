"""Scaling studies, the model: counted work of a point and the fitted cost model T = sum c_i n_i (pure).

See :mod:`hpcsur.ops.scale` for the model's terms and priors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec
from hpcsur.ops.scale.plan import Point, ScalePlan, generation_point, training_frames
from hpcsur.systems import registry

# priors of the model (see the package docstring)
PRIOR_LATENCY = 5e-6          # s per message (cluster network)
PRIOR_VALUE_GRID = 5e-9       # s per float64 halo value, grid systems
PRIOR_VALUE_LJ = 1.7e-8       # s per float64 ghost value, Lennard-Jones (0.1 us per ghost-step / 6)
PRIOR_BYTE = 1e-10            # s per allreduced byte (10 GB/s)


# ============================================================================ model (pure)
@dataclass(frozen=True)
class Term:
    """One constant of the model: its name, the group it is fitted with, its prior and unit."""

    name: str
    group: str      # "compute" | "comm" | "serial"
    prior: float
    unit: str


def generation_terms(kind: str) -> tuple[Term, ...]:
    value = PRIOR_VALUE_LJ if registry.get(kind).decomposition == "particles" else PRIOR_VALUE_GRID
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
    kind = registry.get(spec.kind)
    shape = kind.domain_shape(spec.system)
    if kind.decomposition == "grid":
        owned = math.prod(math.ceil(n / d) for n, d in zip(shape, grid))
    else:  # particles: an even share of the atoms; ensemble: the whole state (g = 1)
        owned = math.ceil(layout.n_blocks / g)
    counts = {"compute": float(trajs * steps * owned), "halo": 0.0, "messages": 0.0, "serial": 1.0}
    if g == 1:
        return counts
    if kind.decomposition == "particles":
        s = spec.system
        ghosts = lj_ghosts(s.n_atoms, s.density, s.rcut + s.skin, grid)
        cut_axes = sum(1 for d in grid if d > 1)
        per_step_values, per_step_messages = 6.0 * ghosts, 4.0 * cut_axes + _log2(g)
        per_frame_values, per_frame_messages = 0.0, 0.0
    else:
        from hpcsur.parallel.fields import exchanges_per_step, halo_depth

        is_2d = len(shape) == 2
        depth = halo_depth(is_2d, spec.integrator, shape, grid)
        n_fields = layout.block_size
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


