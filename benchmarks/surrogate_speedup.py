"""The surrogate vs the microscopic simulation it replaces, over the same physical time, per system.

Run ``python benchmarks/surrogate_speedup.py`` (``--systems``, ``--batch``, ``--repeats``, ``--export kind=FILE``).

For each paper job (``jobs/predator_prey_paper.toml``, ``jobs/allen_cahn.toml``, ``jobs/lj_800.toml``), one thread:

* **microscopic**: trajectory 0's initial state advanced over one trajectory's time (``[simulation] steps`` of
  ``dt``) by the generate stage's own domain (``make_domain`` on one rank: the same kernels and integrator,
  without labels or storage);
* **surrogate**: encode the initial state(s), then the latent RK4 rollout over the same time, for a batch of 1 and of
  ``--batch`` initial states (one batched rollout), at these steps: ``evaluation_dt`` (frame interval / ``[evaluate]
  substeps``, float64: what the results are scored with), ``frame_dt`` (one step per frame) in float64 and in
  float32 (with its deviation from float64), and, for trained weights only, ``coarsest_step`` (the largest 2^k x the
  evaluation's step within ``--rtol`` of the evaluation-step rollout of the initial state,
  :meth:`Surrogate.coarsest_step`), in float64 and float32. Each row carries its deviation from the evaluation-step
  float64 rollout of the initial state (random weights have no accuracy to keep: read those as cost only).

``lennard_jones_51200`` (``--systems``) adds the paper's largest system: its microscopic step costs 64x LJ-800's
while the surrogate's latent cost does not grow with N.

The surrogate has the spec's architecture (autoencoder and latent model) with the weights of an export when one is
given (``--export allen_cahn=ac.hpcsur``), else freshly initialised ones: a fixed-step rollout costs the same
whatever the weights. Ratios are microscopic seconds per trajectory over surrogate seconds per trajectory, both
measured in this run. Prints ONE JSON object as the last stdout line.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hpcsur.measure import emit

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"predator_prey": "jobs/predator_prey_paper.toml", "allen_cahn": "jobs/allen_cahn.toml",
        "lennard_jones": "jobs/lj_800.toml", "lennard_jones_51200": "jobs/lj_51200_subset.toml"}
DEFAULT_SYSTEMS = ["predator_prey", "allen_cahn", "lennard_jones"]


def microscopic_seconds(spec, system, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of advancing trajectory 0 over one trajectory's time on one rank; and its initial state."""
    from mpi4py import MPI

    from hpcsur.ops.generate import choose_grid
    from hpcsur.ops.systems import initial_state, make_domain

    x0 = initial_state(spec, system, 0)
    domain = make_domain(spec, system, MPI.COMM_SELF, choose_grid(spec, 1))
    domain.load(x0)
    domain.advance(2)                                        # compiles the kernels (numba) outside the timing
    best = float("inf")
    for _ in range(repeats):
        domain.load(x0)
        t0 = time.perf_counter()
        domain.advance(spec.simulation.steps)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(x0, dtype=np.float64)


def surrogate_for(spec, system, export: str | None, precision: str = "float64"):
    """The spec's surrogate: an export's, or the architecture with fresh weights (seeded)."""
    from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder
    from hpcsur.learn.latent import LatentDynamics, LatentShape
    from hpcsur.learn.observables import observable_from_attrs
    from hpcsur.learn.surrogate import Surrogate
    from hpcsur.systems import registry

    if export:
        return Surrogate.load(export, precision=precision)
    torch.manual_seed(0)
    layout = system.layout
    m, n = layout.block_size, layout.n_blocks
    kind = registry.get(spec.kind)
    ae, lat = spec.autoencoder, spec.latent
    attrs = {"system": spec.kind, "params": spec.to_dict()["system"],
             "layout": {"block_size": m, "n_blocks": n, "fields": list(layout.fields)}}
    autoencoder = ClosureAutoencoder(AutoencoderShape(m * n, kind.n_observables, ae.latent_dim, tuple(ae.hidden),
                                                      ae.activation, ae.recipe), observable_from_attrs(attrs))
    latent = LatentDynamics(LatentShape(lat.model, ae.latent_dim, tuple(lat.hidden), lat.activation, lat.forcing))
    frame_dt = spec.simulation.dt * spec.simulation.save_every
    manifest = {"system": spec.kind, "observables": [], "frame_dt": frame_dt, "substeps": spec.evaluate.substeps,
                "autoencoder": {"n_state": m * n}, "latent": {"latent_dim": ae.latent_dim}}
    return Surrogate(autoencoder, latent, manifest, precision=precision)


def step_times(horizon: float, dt: float) -> np.ndarray:
    """Output at every step of dt over [0, horizon] (the last step may end a little short of it)."""
    return dt * np.arange(int(np.floor(horizon / dt + 1e-9)) + 1)


def surrogate_seconds(s, x0: np.ndarray, horizon: float, dt: float, batch: int, repeats: int) -> float:
    """Best wall time of encode + rollout of ``batch`` initial states over ``horizon`` (outputs at each step)."""
    rng = np.random.default_rng(0)
    states = x0 + 1e-6 * rng.standard_normal((batch, x0.size)) * (np.abs(x0).max() or 1.0)
    times = step_times(horizon, dt)
    s.rollout(states, times[:3], dt)                          # warm-up outside the timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.rollout(states, times, dt)
        best = min(best, time.perf_counter() - t0)
    return best


def timed(s, x0, horizon: float, dt: float, micro: float, batch: int, repeats: int) -> dict:
    """Surrogate seconds at batch 1 and ``batch`` and the speedups per trajectory over ``micro``."""
    one = surrogate_seconds(s, x0, horizon, dt, 1, repeats)
    many = surrogate_seconds(s, x0, horizon, dt, batch, repeats)
    return {"dt": dt, "rk4_steps": len(step_times(horizon, dt)) - 1, "precision": s.precision,
            "surrogate_s_batch1": one, f"surrogate_s_batch{batch}": many, "speedup_batch1": micro / one,
            f"speedup_per_trajectory_batch{batch}": micro / (many / batch)}


def main(argv=None) -> dict:
    from hpcsur.learn.surrogate import relative_deviation
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.systems import build_system

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=list(JOBS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-4, help="coarsest_step: deviation allowed (default 1e-4)")
    ap.add_argument("--export", action="append", default=[], help="kind=FILE: time this export instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    exports = dict(item.split("=", 1) for item in args.export)
    out = {}
    for kind in args.systems:
        spec = load_job(ROOT / JOBS[kind])
        sim = spec.simulation
        horizon = sim.steps * sim.dt
        system = build_system(spec)
        micro, x0 = microscopic_seconds(spec, system, args.repeats)
        surrogates = {p: surrogate_for(spec, system, exports.get(kind), p) for p in ("float64", "float32")}
        s = surrogates["float64"]
        reference_times = step_times(horizon, s.dt)
        reference = s.rollout(x0, reference_times)
        steps = {"evaluation_dt": (s.dt, ["float64"]), "frame_dt": (sim.dt * sim.save_every, ["float64", "float32"])}
        row = {"job": JOBS[kind], "export": exports.get(kind), "trained_weights": kind in exports,
               "horizon": horizon, "microscopic_steps": sim.steps, "microscopic_s": micro,
               "n_state": int(x0.size), "latent_dim": s.latent_dim}
        if kind in exports:
            dt, _ = s.coarsest_step(x0, horizon, args.rtol)
            steps["coarsest_step"] = (dt, ["float64", "float32"])
            row["rtol"] = args.rtol
        for label, (dt, precisions) in steps.items():
            stride = int(round(dt / s.dt))
            for precision in precisions:
                z = surrogates[precision].rollout(x0, step_times(horizon, dt), dt)
                n = min(len(z), len(reference[::stride]))
                key = label if precision == "float64" else f"{label}_{precision}"
                row[key] = {**timed(surrogates[precision], x0, horizon, dt, micro, args.batch, args.repeats),
                            "times_evaluation_dt": dt / s.dt,
                            "deviation": relative_deviation(z[:n], reference[::stride][:n])}
        out[kind] = row
        print(kind, {k: v for k, v in row.items() if not isinstance(v, dict)}, flush=True)
    return emit({"benchmark": "surrogate_speedup", "threads": 1, "batch": args.batch, "systems": out,
                 "target": ">= 1000x for LJ-800 and Allen-Cahn"})


if __name__ == "__main__":
    main()
