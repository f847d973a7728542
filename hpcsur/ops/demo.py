"""``make demo``: the engine and the data pipeline on small embedded defaults.

1. Lennard-Jones NVE: 500 atoms (fcc, rho = 0.8, T0 = 1, shifted lj/cut), 400 velocity-Verlet steps
   of dt = 0.005; prints T, U, E per atom and the relative energy drift.
2. Allen-Cahn: 64 x 64 torus, RK4 at dt = 0.1 h^2; prints the free energy (it must decrease).
3. Partial forces: 50 atoms of the LJ configuration vs a full force call (same numbers, timing).
4. ``mpiexec -n 2 hpcsur generate jobs/predator_prey.toml``: the paper's Predator-Prey data
   (reduced ensemble) with partial labels p = 1/5, into a sharded zarr store; then
   ``store info`` and ``store verify``.

Writes ``<workdir>/report.json`` and prints its path.
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


def _generate_demo(workdir: Path) -> dict:
    store = workdir / "predator_prey"
    if store.exists():
        shutil.rmtree(store)
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "mpiexec"), "-n", "2", str(bindir / "hpcsur"), "generate",
           str(PROJECT / "jobs" / "predator_prey.toml"), "--output", str(store)]
    print(f"\n[4] {' '.join(['mpiexec -n 2 hpcsur generate jobs/predator_prey.toml --output', str(store)])}")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - t0
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"demo: generate failed (exit {out.returncode})")
    from hpcsur.store import info, verify

    summary = info(str(store))
    report = verify(str(store))
    print(f"    {summary['frames_complete']}/{summary['frames_total']} frames in "
          f"{summary['shards_complete']} shards, {summary['bytes_on_disk'] / 1e6:.2f} MB, {elapsed:.1f} s")
    print(f"    store verify: {report.summary()}")
    return {"store": str(store), "frames": summary["frames_complete"], "shards": summary["shards_complete"],
            "bytes": summary["bytes_on_disk"], "verify_ok": report.ok, "seconds": elapsed}


def run_demo(workdir: str = "runs/demo") -> int:
    work = Path(workdir)
    if not work.is_absolute():
        work = PROJECT / work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("hpcsur demo: the microscopic engine and distributed data generation")
    lj = _lj_demo()
    ac = _allen_cahn_demo()
    partial = _partial_demo(lj.pop("system"), lj.pop("state"))
    gen = _generate_demo(work)
    report = {"lennard_jones": lj, "allen_cahn": ac, "partial_forces": partial, "generate": gen,
              "seconds": time.perf_counter() - t0}
    path = work / "report.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nreport: {path}\nstore:  {gen['store']}  (inspect with: .venv/bin/hpcsur store info {gen['store']})")
    print(f"demo finished in {report['seconds']:.0f} s")
    ok = ac["non_increasing"] and gen["verify_ok"] and partial["max_abs_difference"] < 1e-12
    return 0 if ok else 1
