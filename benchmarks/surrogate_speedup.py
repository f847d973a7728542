"""The surrogate vs the microscopic simulation it replaces, over the same physical time, per system.

Run ``python benchmarks/surrogate_speedup.py`` (``--systems``, ``--batch``, ``--repeats``, ``--export kind=FILE``).

For each paper job (``jobs/predator_prey_paper.toml``, ``jobs/allen_cahn.toml``, ``jobs/lj_800.toml``), one thread:

* **microscopic**: trajectory 0's initial state advanced over one trajectory's time (``[simulation] steps`` of
  ``dt``) by the generate stage's own domain (``make_domain`` on one rank: the same kernels and integrator,
  without labels or storage);
* **surrogate**: encode the initial state(s), then the latent RK4 rollout over the same time, for a batch of 1 and of
  ``--batch`` initial states (one batched rollout), at the evaluation's step (frame interval / ``[evaluate]
  substeps``, what the results are scored with) and at the frame interval (``substeps = 1``; its accuracy is not
  checked here, only its cost).

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
        "lennard_jones": "jobs/lj_800.toml"}


def microscopic_seconds(spec, system, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of advancing trajectory 0 over one trajectory's time on one rank; and its initial state."""
    from mpi4py import MPI

    from hpcsur.ops.generate import choose_grid
    from hpcsur.ops.systems import initial_state, make_domain

    x0 = initial_state(spec, system, 0)
    domain = make_domain(spec, system, MPI.COMM_SELF, choose_grid(spec, 1))
    best = float("inf")
    for _ in range(repeats):
        domain.load(x0)
        t0 = time.perf_counter()
        domain.advance(spec.simulation.steps)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(x0, dtype=np.float64)


def surrogate_for(spec, system, export: str | None):
    """The spec's surrogate: an export's, or the architecture with fresh weights."""
    from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder
    from hpcsur.learn.latent import LatentDynamics, LatentShape
    from hpcsur.learn.observables import observable_from_attrs
    from hpcsur.learn.surrogate import Surrogate
    from hpcsur.systems import registry

    if export:
        return Surrogate.load(export)
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
    return Surrogate(autoencoder, latent, manifest)


def surrogate_seconds(s, x0: np.ndarray, horizon: float, dt: float, batch: int, repeats: int) -> float:
    """Best wall time of encode + rollout of ``batch`` initial states over ``horizon`` (outputs at each step)."""
    rng = np.random.default_rng(0)
    states = x0 + 1e-6 * rng.standard_normal((batch, x0.size)) * (np.abs(x0).max() or 1.0)
    steps = int(round(horizon / dt))
    times = dt * np.arange(steps + 1)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.rollout(states, times, dt)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    from hpcsur.ops.jobspec import load_job

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--export", action="append", default=[], help="kind=FILE: time this export instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    exports = dict(item.split("=", 1) for item in args.export)
    out = {}
    for kind in args.systems:
        spec = load_job(ROOT / JOBS[kind])
        sim = spec.simulation
        horizon = sim.steps * sim.dt
        from hpcsur.ops.systems import build_system

        system = build_system(spec)
        micro, x0 = microscopic_seconds(spec, system, args.repeats)
        s = surrogate_for(spec, system, exports.get(kind))
        frame_dt = sim.dt * sim.save_every
        row = {"job": JOBS[kind], "horizon": horizon, "microscopic_steps": sim.steps, "microscopic_s": micro,
               "n_state": int(x0.size), "latent_dim": s.latent_dim, "trained_weights": kind in exports}
        for label, dt in (("evaluation_dt", frame_dt / spec.evaluate.substeps), ("frame_dt", frame_dt)):
            one = surrogate_seconds(s, x0, horizon, dt, 1, args.repeats)
            many = surrogate_seconds(s, x0, horizon, dt, args.batch, args.repeats)
            row[label] = {"dt": dt, "rk4_steps": int(round(horizon / dt)), "surrogate_s_batch1": one,
                          f"surrogate_s_batch{args.batch}": many, "speedup_batch1": micro / one,
                          f"speedup_per_trajectory_batch{args.batch}": micro / (many / args.batch)}
        out[kind] = row
    return emit({"benchmark": "surrogate_speedup", "threads": 1, "batch": args.batch, "systems": out,
                 "target": ">= 1000x for LJ-800 and Allen-Cahn"})


if __name__ == "__main__":
    main()
