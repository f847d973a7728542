"""``make demo``: the engine and the data pipeline on small embedded defaults.

1. Lennard-Jones NVE: 500 atoms (fcc, rho = 0.8, T0 = 1, shifted lj/cut), 400 velocity-Verlet steps
   of dt = 0.005; prints T, U, E per atom and the relative energy drift.
2. Allen-Cahn: 64 x 64 torus, RK4 at dt = 0.1 h^2; prints the free energy (it must decrease).
3. Partial forces: 50 atoms of the LJ configuration vs a full force call (same numbers, timing).
4. ``hpcsur run jobs/predator_prey.toml --ranks 2``: the paper's Predator-Prey experiment at a
   reduced scale -- data on 2 MPI ranks with partial labels p = 1/5, the closure autoencoder,
   encoding, latent OnsagerNets trained with L_z and L_x,p at equal equivalent data (3 seeds,
   2 data-parallel workers), RK4 rollouts -- then the table of both errors and the paths of the
   report and plots. Finished stages of an earlier demo are reused (``--fresh`` starts over).

Writes ``<run_dir>/demo.json`` next to the pipeline's ``report.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]


def _lj_demo() -> dict:
    from hpcsur.systems.lennard_jones import LennardJones, fcc_lattice, maxwell_boltzmann

    positions, box = fcc_lattice(5, 0.8)
    n = len(positions)
    lj = LennardJones(box, n_atoms=n, shift=True)
    x = lj.join(positions, maxwell_boltzmann(n, 1.0, 1.0, np.random.default_rng(1)))
    step = lj.stepper(0.005)
    print(f"\n[1] Lennard-Jones NVE: {n} atoms, box {box[0]:.3f}^3, dt = 0.005")
    print(f"    {'step':>6} {'T':>9} {'U/n':>10} {'E/n':>11}")
    e0 = lj.total_energy(x) / n
    rows = []
    for k in range(0, 401):
        if k % 100 == 0:
            pos, vel = lj.split(x)
            row = (k, lj.temperature(vel), lj.potential_energy(pos) / n, lj.total_energy(x) / n)
            rows.append(row)
            print(f"    {row[0]:>6} {row[1]:>9.5f} {row[2]:>10.5f} {row[3]:>11.6f}")
        if k < 400:
            x = step(x)
    drift = abs(rows[-1][3] - e0) / abs(e0)
    print(f"    relative energy drift over 400 steps: {drift:.2e}")
    return {"atoms": n, "rows": rows, "relative_energy_drift": drift, "state": x, "system": lj}


def _partial_demo(lj, x) -> dict:
    pos, _ = lj.split(x)
    idx = np.sort(np.random.default_rng(2).choice(lj.n_atoms, 50, replace=False))
    cells = lj.bin(pos)
    lj.partial_forces(pos, idx, cells=cells)  # compile
    t0 = time.perf_counter()
    part = lj.partial_forces(pos, idx, cells=cells)
    t_part = time.perf_counter() - t0
    t0 = time.perf_counter()
    full, _ = lj.forces(pos)
    t_full = time.perf_counter() - t0
    err = float(np.abs(part - full[idx]).max())
    print(f"\n[3] partial forces: 50 of {lj.n_atoms} atoms, max |F_partial - F_full[I]| = {err:.1e}, "
          f"{t_part * 1e6:.0f} us vs full {t_full * 1e3:.2f} ms")
    return {"k": 50, "max_abs_difference": err, "partial_s": t_part, "full_s": t_full}


def _allen_cahn_demo() -> dict:
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams

    ac = AllenCahn(AllenCahnParams(n=64, epsilon=0.012007 * 200 / 64))
    x = ac.torus(0.35, 0.12)
    dt = 0.1 / 64 ** 2
    print(f"\n[2] Allen-Cahn: 64 x 64 torus, RK4 dt = {dt:.2e}")
    energies = []
    for k in range(0, 5):
        energies.append(ac.free_energy(x))
        print(f"    t = {k * 100 * dt:.5f}  free energy = {energies[-1]:.6f}")
        x = ac.integrate(x, dt, 100)
    decreasing = all(b <= a for a, b in zip(energies, energies[1:]))
    print(f"    free energy non-increasing: {decreasing}")
    return {"free_energy": energies, "non_increasing": decreasing}


def _pipeline_demo(job: Path, fresh: bool) -> dict:
    """``hpcsur run JOB --ranks 2``: generate (2 MPI ranks) -> train-ae -> encode -> train-latent -> evaluate."""
    from hpcsur.ops.jobspec import load_job
    from hpcsur.store import verify

    spec = load_job(job)
    if fresh:
        for path in (Path(spec.store.path), Path(spec.run_dir)):
            if path.exists():
                shutil.rmtree(path)
    elif Path(spec.run_dir).exists():
        print(f"    (finished stages of an earlier demo are reused; `make demo FRESH=1` starts over)")
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "hpcsur"), "run", str(job), "--ranks", "2"]
    print(f"\n[4] hpcsur run {job.relative_to(PROJECT) if job.is_relative_to(PROJECT) else job} --ranks 2")
    t0 = time.perf_counter()
    code = subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"demo: hpcsur run failed (exit {code})")
    check = verify(spec.store.path)
    report = json.loads((Path(spec.run_dir) / "report.json").read_text())
    print(f"\n    store verify: {check.summary()}")
    rows = {(r["loss"], r["equivalent_data"]): r for r in report["rows"]}
    for size in spec.latent.sizes:
        lz, lxp = rows.get(("lz", size)), rows.get(("lxp", size))
        if lz and lxp and lz["e_abs"]["mean"] and lxp["e_abs"]["mean"]:
            ratio = lxp["e_abs"]["mean"] / lz["e_abs"]["mean"]
            print(f"    L_x,p / L_z error (code metric) at equal force cost ({size} full-force equivalents): "
                  f"{ratio:.2f} (mean over {len(lz['e_abs']['values'])} seeds; the paper's Table 1: "
                  "1.34e-3 / 3.19e-3 = 0.42)")
    return {"job": str(job), "store": spec.store.path, "run_dir": spec.run_dir, "verify_ok": check.ok,
            "report": str(Path(spec.run_dir) / "report.json"), "plots": report["plots"], "rows": report["rows"],
            "seconds": elapsed}


def _surrogate_demo(job: Path, pipe: dict) -> dict:
    """``hpcsur export`` the trained L_x,p model, then ``hpcsur predict`` the first test trajectory from its initial
    state with nothing but the export file (the same observables as the evaluation's rollout)."""
    from hpcsur.ops.jobspec import load_job

    spec = load_job(job)
    export = Path(pipe["run_dir"]) / "export" / f"{spec.name}.hpcsur"
    bindir = Path(sys.executable).parent
    first_test = spec.simulation.trajectories - spec.split.test
    t_end = spec.simulation.steps * spec.simulation.dt
    prediction = export.with_name("prediction.npz")
    print(f"\n[5] hpcsur export {job.name} --output {export}\n    hpcsur predict ... --initial "
          f"{spec.store.path}:{first_test} --time {t_end:g}")
    for cmd in ([str(bindir / "hpcsur"), "export", str(job), "--output", str(export)],
                [str(bindir / "hpcsur"), "predict", str(export), "--initial", f"{spec.store.path}:{first_test}",
                 "--time", f"{t_end:g}", "--output", str(prediction), "--plot", str(export.with_name("prediction.png"))]):
        if subprocess.call(cmd) != 0:
            raise SystemExit(f"demo: {' '.join(cmd[1:3])} failed")
    return {"export": str(export), "prediction": str(prediction), "plot": str(export.with_name("prediction.png"))}


def run_demo(job: str = "jobs/predator_prey.toml", fresh: bool = False) -> int:
    job_path = Path(job)
    if not job_path.is_absolute() and not job_path.exists():
        job_path = PROJECT / job_path
    t0 = time.perf_counter()
    print("hpcsur demo: the microscopic engine, then the whole pipeline on", job_path.name)
    lj = _lj_demo()
    ac = _allen_cahn_demo()
    partial = _partial_demo(lj.pop("system"), lj.pop("state"))
    pipe = _pipeline_demo(job_path, fresh)
    surrogate = _surrogate_demo(job_path, pipe)
    summary = {"lj_nve": lj, "allen_cahn_relaxation": ac, "partial_forces": partial, "pipeline": pipe,
               "surrogate": surrogate,
               "seconds": time.perf_counter() - t0}
    path = Path(pipe["run_dir"]) / "demo.json"
    path.write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nreport: {pipe['report']}")
    for name, png in pipe["plots"].items():
        print(f"plot:   {png}  ({name})")
    print(f"store:  {pipe['store']}  (inspect: .venv/bin/hpcsur store info {pipe['store']})")
    print(f"model:  {surrogate['export']}  (use: .venv/bin/hpcsur predict {surrogate['export']} --initial ... "
          "or hpcsur.Surrogate.load)")
    print(f"prediction: {surrogate['prediction']}, plot {surrogate['plot']}")
    print(f"demo finished in {summary['seconds']:.0f} s")
    ok = ac["non_increasing"] and pipe["verify_ok"] and partial["max_abs_difference"] < 1e-12
    return 0 if ok else 1
