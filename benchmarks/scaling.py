"""Strong scaling 1 -> 2 MPI ranks of the decomposed steppers, plus store write throughput.

Run ``python benchmarks/scaling.py`` (``--cases lj`` for one case): the script relaunches itself in
worker mode under the venv's ``mpiexec -n 1`` and ``mpiexec -n 2`` and merges what rank 0 of each
run reports. Every process is single-threaded (``NUMBA_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``),
the serial references included, so 2 ranks use exactly twice the cores of 1.

Cases (ParticleDomain / FieldDomain are built directly because ``make_domain`` returns a
SerialDomain for a group of size 1):

* ``lj``: Lennard-Jones, 32,000 atoms (fcc 20^3 cells, rho 0.8442, r_c 2.5, skin 0.3, dt 0.005,
  T 1.44, after 50 warm-up steps), ``ParticleDomain.advance`` on rank grid [1,1,1] vs [2,1,1], with
  Newton's third law across ranks (reverse communication, the default) and without. Reference:
  the serial fast path (``SerialDomain`` -> ``VelocityVerlet``). All of it runs in the 2-rank
  launch: the serial stepper and [1,1,1] on rank 0 alone while rank 1 sleeps, [2,1,1] on both,
  alternating, so that load drifts on a shared host hit all three alike; every timed run starts
  from the same state, so all of them do the same list rebuilds. Reported: ``s_per_step_serial``,
  ``s_per_step_1``, ``s_per_step_2``, ``efficiency = t1 / (2 t2)``, ``efficiency_vs_serial =
  t_serial / (2 t2)``, and the parts of a step for the scaling model in storage/README.md (force
  kernel, forward / reverse ghost communication, the per-step Allreduce, a rebuild; ghost and
  pair counts).
* ``allen_cahn``: 1024^2 RK4 with ``FieldDomain`` (the deep-halo fused wavefront) on [1,1] vs
  [2,1], in the 2-rank launch with the LJ protocol (serial stepper and [1,1] on rank 0 alone,
  alternating with [2,1]). Reference: the serial fused wavefront (``SerialDomain`` ->
  ``AllenCahn.integrate``). Also the halo exchange time per step.
* ``store``: MB/s of ``ShardWriter.write`` (zarr + blosc zstd + fsync + sha256 record) for shards of
  an LJ-sized frame (N = 192,000 float64), 1 rank and 2 ranks writing disjoint shards at once.

Per case: seconds/step at 1 and 2 ranks (min over repeats; rank time = max over ranks),
``efficiency = t1 / (2 t2)`` and ``efficiency_vs_serial = t_serial / (2 t2)``, and ``paired``: the
median (and range) of the same ratio over the repeats, each from runs adjacent in time (the min
estimator needs a moment with both cores free for the 2-rank run, the paired one does not); also a small-message
MPI round-trip latency and the 1-minute load average before and after. The same ratios are also
given from per-rank CPU time (``cpu``); with ``--yield-waits`` waiting ranks yield their core
(``MPIR_CVAR_ENABLE_HEAVY_YIELD=1``), so on a loaded host CPU time counts work rather than waiting
for a descheduled partner. By default MPI waits busy-poll, as HPC jobs run.

Timings on a shared machine are noisy: the min over repeats is reported; compare runs only with
the load average beside them.
Prints ONE JSON object as the last stdout line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcsur.measure import emit, load

ROOT = Path(__file__).resolve().parents[1]

LJ_CELLS, LJ_RHO, LJ_RC, LJ_DT, LJ_T, LJ_WARM = 20, 0.8442, 2.5, 0.005, 1.44, 50
AC_N = 1024


def _best(fn, repeats, comm=None):
    """Min over repeats of the slowest rank's wall time of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if comm is not None:
            dt = comm.allreduce(dt, op=_max())
        best = min(best, dt)
    return best


def _max():
    from mpi4py import MPI
    return MPI.MAX


# ---------------------------------------------------------------------------- cases
def lj_start():
    """The LJ system and a common start state: the fcc lattice at T = 1.44, moved on by
    ``LJ_WARM`` serial steps so that the timed runs start from a liquid-like state. Every rank
    computes it (deterministic), so 1- and 2-rank runs time the same trajectory."""
    from hpcsur.systems.lennard_jones import LennardJones, fcc_lattice, maxwell_boltzmann

    pos, box = fcc_lattice(LJ_CELLS, LJ_RHO)
    n = len(pos)
    system = LennardJones(box, n_atoms=n, rcut=LJ_RC)
    x = system.join(pos, maxwell_boltzmann(n, LJ_T, 1.0, np.random.default_rng(1)))
    step = system.stepper(LJ_DT)
    for _ in range(LJ_WARM):
        x = step(x)
    return system, x


def _solo(comm, fn):
    """Run ``fn`` on rank 0 alone; the other ranks sleep (no spinning core) until it is done.
    Returns ``fn()`` on rank 0, None elsewhere."""
    out = fn() if comm.Get_rank() == 0 else None
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.001)
    return out


def _timed_advance(comm, dom, start, steps):
    """``(wall, cpu)`` seconds of ``dom.advance(steps)`` after ``dom.load(start)`` (not timed):
    wall time of the slowest rank, and the largest per-rank process CPU time."""
    dom.load(start)
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    dom.advance(steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return comm.allreduce(wall, op=_max()), comm.allreduce(cpu, op=_max())


def _interleaved(comm, one, two, start, steps, repeats):
    """Alternate the 1-rank runs (rank 0 alone) and the 2-rank runs ``repeats`` times. Returns the
    best s/step (wall, and CPU) per run and the per-repeat wall times (for paired ratios)."""
    from mpi4py import MPI

    self_comm = MPI.COMM_SELF
    series = {name: [] for name in (*one, *two)}
    cpus = {name: [] for name in (*one, *two)}
    for _ in range(repeats):
        for name, dom in one.items():
            wall, cpu = comm.bcast(_solo(comm, lambda: _timed_advance(self_comm, dom, start, steps)), root=0)
            series[name].append(wall / steps)
            cpus[name].append(cpu / steps)
        for name, dom in two.items():
            wall, cpu = _timed_advance(comm, dom, start, steps)
            series[name].append(wall / steps)
            cpus[name].append(cpu / steps)
    return {k: min(v) for k, v in series.items()}, {k: min(v) for k, v in cpus.items()}, series


def paired_efficiency(t1: list, t2: list) -> dict:
    """Efficiency t1 / (2 t2) from the runs of each repeat (adjacent in time): median and spread."""
    ratios = sorted(a / (2 * b) for a, b in zip(t1, t2))
    return {"median": float(np.median(ratios)), "min": ratios[0], "max": ratios[-1], "repeats": len(ratios)}


def lj_case(comm, steps, repeats):
    """1 -> 2 rank LJ strong scaling, measured in one 2-rank launch: the serial stepper and the
    [1,1,1] domain run on rank 0 alone (rank 1 sleeps), the [2,1,1] domain on both ranks; the
    three alternate ``repeats`` times, so that load drifts on a shared host hit all of them alike,
    and each timed run starts from the same state (hence does the same list rebuilds)."""
    from mpi4py import MPI

    from hpcsur.parallel.domain import SerialDomain
    from hpcsur.parallel.particles import ParticleDomain
    from hpcsur.systems import lj_kernels as K

    system, start = lj_start()
    size = comm.Get_size()
    grid = (size, 1, 1)
    one = {"serial": SerialDomain(system, LJ_DT), "domain_1": ParticleDomain(system, LJ_DT, MPI.COMM_SELF, (1, 1, 1))}
    two = {"domain_2": ParticleDomain(system, LJ_DT, comm, grid, newton=True),
           "domain_2_newton_off": ParticleDomain(system, LJ_DT, comm, grid, newton=False)}
    self_comm = MPI.COMM_SELF
    for dom in one.values():  # warm-up (JIT, caches)
        _solo(comm, lambda: _timed_advance(self_comm, dom, start, 2))
    for dom in two.values():
        _timed_advance(comm, dom, start, 2)
    best, best_cpu, series = _interleaved(comm, one, two, start, steps, repeats)

    # the parts of a step, for the scaling model (newton on, after `steps` steps from `start`)
    def parts(dom, c):
        dom.load(start)
        builds0 = dom.n_builds
        dom.advance(steps)
        nl = dom.nlist
        kernel = lambda: K.half_list_forces(dom.pos, nl.nbr_start, nl.nbr_mid, nl.nbr, nl.image, dom.shifts, dom.rc2,
                                            dom.eps, dom.sigma2, dom.u_shift, 1.0, dom.f_local)
        n_own = len(dom.ids)
        got = {"rebuilds_per_step": (dom.n_builds - builds0) / steps,
               "force_kernel_s": _best(kernel, repeats + 2, c),
               "forward_comm_s": _best(dom._forward, repeats + 2, c),
               "reverse_comm_s": _best(dom._reverse, repeats + 2, c),
               "allreduce_s": _best(lambda: dom._anywhere(False), repeats + 2, c),
               "rebuild_s": _best(lambda: dom._rebuild(migrate=True), repeats, c)}
        counts = c.gather({"owned": n_own, "ghosts": len(dom.pos) - n_own, "pairs": len(dom.nlist.nbr)}, root=0)
        return got, counts

    parts_1 = _solo(comm, lambda: parts(one["domain_1"], self_comm))
    parts_2, counts_2 = parts(two["domain_2"], comm)
    if comm.Get_rank() != 0:
        return None
    parts_1, counts_1 = parts_1
    return {"atoms": system.n_atoms, "steps": steps, "grid_2": list(grid),
            "s_per_step_serial": best["serial"], "s_per_step_1": best["domain_1"], "s_per_step_2": best["domain_2"],
            "s_per_step_2_newton_off": best["domain_2_newton_off"],
            "cpu_s_per_step": {"serial": best_cpu["serial"], "1": best_cpu["domain_1"], "2": best_cpu["domain_2"],
                               "2_newton_off": best_cpu["domain_2_newton_off"]},
            "parts_1": parts_1, "parts_2": parts_2,
            "owned_per_rank_2": [c["owned"] for c in counts_2], "ghosts_per_rank_2": [c["ghosts"] for c in counts_2],
            "pairs_1": counts_1[0]["pairs"], "pairs_per_rank_2": [c["pairs"] for c in counts_2],
            "series": series}


def ac_case(comm, steps, repeats):
    """1 -> 2 rank Allen-Cahn strong scaling in one 2-rank launch, the protocol of the LJ case: the
    serial stepper and the [1,1] domain on rank 0 alone, the [2,1] domain on both, alternating."""
    from mpi4py import MPI

    from hpcsur.parallel.domain import SerialDomain
    from hpcsur.parallel.fields import FieldDomain, exchanges_per_step
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams, reference_epsilon

    system = AllenCahn(AllenCahnParams(n=AC_N, epsilon=reference_epsilon(AC_N)))
    dt = 0.1 / (AC_N * AC_N)
    x0 = system.torus(0.35, 0.15)
    size, self_comm = comm.Get_size(), MPI.COMM_SELF
    one = {"serial": SerialDomain(system, dt, integrator="rk4"),
           "domain_1": FieldDomain(system, dt, self_comm, (1, 1), "rk4")}
    two = {"domain_2": FieldDomain(system, dt, comm, (size, 1), "rk4")}
    for dom in one.values():
        _solo(comm, lambda: _timed_advance(self_comm, dom, x0, 2))
    for dom in two.values():
        _timed_advance(comm, dom, x0, 2)
    best, best_cpu, series = _interleaved(comm, one, two, x0, steps, repeats)
    dom2 = two["domain_2"]
    exchange = _best(lambda: dom2.halo.exchange(dom2.pad), repeats + 2, comm)
    rate = exchanges_per_step(True, "rk4", (AC_N, AC_N), (size, 1))
    if comm.Get_rank() != 0:
        return None
    return {"points": AC_N * AC_N, "steps": steps, "grid_2": [size, 1], "halo_depth": dom2.depth,
            "s_per_step_serial": best["serial"], "s_per_step_1": best["domain_1"], "s_per_step_2": best["domain_2"],
            "cpu_s_per_step": {k: best_cpu[k] for k in best_cpu},
            "exchange_s_2": exchange, "exchanges_per_step": rate, "local_shape_rank0": list(dom2.local_shape),
            "series": series}


def latency(comm, repeats=200):
    """Half round trip of a small message (one float64 row-end) between ranks 0 and 1."""
    if comm.Get_size() < 2:
        return None
    r = comm.Get_rank()
    buf = np.zeros(8)
    other = 1 - r if r < 2 else None
    comm.Barrier()
    t0 = time.perf_counter()
    if other is not None:
        for _ in range(repeats):
            if r == 0:
                comm.Send(buf, dest=1); comm.Recv(buf, source=1)
            else:
                comm.Recv(buf, source=0); comm.Send(buf, dest=0)
    return (time.perf_counter() - t0) / repeats / 2


def store_case(comm, shards_per_rank, repeats):
    from hpcsur.store import ShardWriter, create_dataset, make_schema, synthetic_shard

    rank, size = comm.Get_rank(), comm.Get_size()
    n_state = 3 * 2 * 4 * LJ_CELLS ** 3          # LJ 32k atoms: positions + velocities
    frames = 8                                      # 8 x 1.5 MB = 12 MB raw per shard (x array)
    n_shards = shards_per_rank * size
    schema = make_schema(n_shards, frames, n_state, k=320, m=6, n_obs=4,
                         target_shard_bytes=frames * n_state * 8)
    assert schema.frames_per_shard == frames, schema
    base = ROOT / "storage"
    tmp = None
    if rank == 0:
        tmp = tempfile.mkdtemp(prefix=".bench-scaling-", dir=base)
    tmp = comm.bcast(tmp, root=0)
    best = float("inf")
    nbytes = 0
    try:
        for rep in range(repeats):
            path = os.path.join(tmp, f"d{rep}")
            if rank == 0:
                create_dataset(path, schema, {"system": "bench", "params": {}, "layout": {"m": 6, "n": 32000, "fields": []},
                                              "p": 0.01, "seed": 0, "dt": LJ_DT, "save_every": 1, "steps": frames})
            comm.Barrier()
            writer = ShardWriter(path, rank, size)
            mine = list(writer.todo())
            blocks = [synthetic_shard(schema, s) for s in mine]
            nbytes = sum(sum(a.nbytes for a in b.values()) for b in blocks)
            comm.Barrier()
            t0 = time.perf_counter()
            for s, b in zip(mine, blocks):
                writer.write(s, b)
            dt = comm.allreduce(time.perf_counter() - t0, op=_max())
            best = min(best, dt)
            comm.Barrier()
        total = comm.allreduce(nbytes)
        disk = sum(f.stat().st_size for f in Path(tmp, f"d{repeats - 1}").rglob("*") if f.is_file()) if rank == 0 else 0
    finally:
        comm.Barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"ranks": size, "shards": n_shards, "raw_MB": total / 1e6, "on_disk_MB": disk / 1e6,
            "seconds": best, "MB_per_s_raw": total / 1e6 / best}


def worker(args):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    cases = args.cases.split(",")
    res = {"ranks": comm.Get_size(), "latency_s": latency(comm)}
    if "lj" in cases and comm.Get_size() == 2:
        res["lj"] = lj_case(comm, args.lj_steps, args.repeats)
    if "allen_cahn" in cases and comm.Get_size() == 2:
        res["allen_cahn"] = ac_case(comm, args.ac_steps, args.repeats)
    if "store" in cases:
        res["store"] = store_case(comm, args.shards, args.repeats)
    if comm.Get_rank() == 0:
        from numba import config

        res["numba_threads"] = config.NUMBA_NUM_THREADS
        print(json.dumps(res))


# ---------------------------------------------------------------------------- driver
def lj_summary(b):
    """The LJ results of the 2-rank launch: times, efficiencies and the model constants."""
    ts, t1, t2, t2_off = b["s_per_step_serial"], b["s_per_step_1"], b["s_per_step_2"], b["s_per_step_2_newton_off"]
    p1, p2 = b["parts_1"], b["parts_2"]
    n = b["atoms"]
    ghosts = max(b["ghosts_per_rank_2"])
    return {"size": n, "steps": b["steps"], "grid_2": b["grid_2"],
            "s_per_step_serial": ts, "s_per_step_1": t1, "s_per_step_2": t2,
            "efficiency": t1 / (2 * t2), "efficiency_vs_serial": ts / (2 * t2),
            "paired": paired_efficiency(b["series"]["domain_1"], b["series"]["domain_2"]),
            "paired_vs_serial": paired_efficiency(b["series"]["serial"], b["series"]["domain_2"]),
            "decomposed_overhead_1rank": t1 / ts,
            "newton_off": {"s_per_step_2": t2_off, "efficiency": t1 / (2 * t2_off),
                           "efficiency_vs_serial": ts / (2 * t2_off)},
            "cpu": _cpu_summary(b["cpu_s_per_step"]),
            "rebuilds_per_step": p1["rebuilds_per_step"],
            "owned_per_rank_2": b["owned_per_rank_2"], "ghosts_per_rank_2": b["ghosts_per_rank_2"],
            "halo_over_owned_2": ghosts / min(b["owned_per_rank_2"]),
            "pairs_1": b["pairs_1"], "pairs_per_rank_2": b["pairs_per_rank_2"],
            "force_kernel_s_1": p1["force_kernel_s"], "force_kernel_s_2": p2["force_kernel_s"],
            "rebuild_s_1": p1["rebuild_s"], "rebuild_s_2": p2["rebuild_s"],
            "kernel_s_per_atom_step": p1["force_kernel_s"] / n,
            "rebuild_s_per_atom": p1["rebuild_s"] / n,
            "forward_comm_s_2": p2["forward_comm_s"], "reverse_comm_s_2": p2["reverse_comm_s"],
            "comm_s_per_ghost_step_2": (p2["forward_comm_s"] + p2["reverse_comm_s"]) / ghosts,
            "allreduce_s_2": p2["allreduce_s"]}


def _cpu_summary(cpu):
    """The same ratios from per-rank CPU time (max over ranks): on a quiet host equal to the wall-clock
    ones; on a loaded host an estimate for dedicated cores (MPI waits yield the core, see launch)."""
    ts, t1, t2, t2_off = cpu["serial"], cpu["1"], cpu["2"], cpu["2_newton_off"]
    return {"s_per_step_serial": ts, "s_per_step_1": t1, "s_per_step_2": t2, "s_per_step_2_newton_off": t2_off,
            "efficiency": t1 / (2 * t2), "efficiency_vs_serial": ts / (2 * t2),
            "efficiency_newton_off": t1 / (2 * t2_off)}


def ac_summary(b):
    """The Allen-Cahn results of the 2-rank launch."""
    t1, t2, ts = b["s_per_step_1"], b["s_per_step_2"], b["s_per_step_serial"]
    cpu = b["cpu_s_per_step"]
    halo = b["exchange_s_2"] * b["exchanges_per_step"]
    return {"size": b["points"], "steps": b["steps"], "grid_2": b["grid_2"], "halo_depth": b["halo_depth"],
            "s_per_step_serial": ts, "s_per_step_1": t1, "s_per_step_2": t2,
            "efficiency": t1 / (2 * t2), "efficiency_vs_serial": ts / (2 * t2), "decomposed_overhead_1rank": t1 / ts,
            "paired": paired_efficiency(b["series"]["domain_1"], b["series"]["domain_2"]),
            "paired_vs_serial": paired_efficiency(b["series"]["serial"], b["series"]["domain_2"]),
            "cpu": {"efficiency": cpu["domain_1"] / (2 * cpu["domain_2"]),
                    "efficiency_vs_serial": cpu["serial"] / (2 * cpu["domain_2"])},
            "halo_s_per_step_2": halo, "halo_share_2": halo / t2,
            "compute_s_per_point_step": t1 / b["points"]}


def launch(n, args):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(n), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--lj-steps", str(args.lj_steps), "--ac-steps", str(args.ac_steps),
           "--repeats", str(args.repeats), "--shards", str(args.shards), "--cases", args.cases]
    # single-threaded ranks. --yield-waits: a rank waiting in MPI yields its core (sched_yield)
    # instead of spinning, so per-rank CPU time measures work, not waiting, on a shared host (on a
    # quiet host, busy polling -- MPICH's default and what HPC jobs run with -- is faster)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    if args.yield_waits:
        env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mpiexec -n {n} failed with rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lj-steps", type=int, default=30)
    ap.add_argument("--ac-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--shards", type=int, default=3, help="shards written per rank")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mpiexec run")
    ap.add_argument("--cases", default="lj,allen_cahn,store", help="comma-separated subset of lj,allen_cahn,store")
    ap.add_argument("--yield-waits", action="store_true",
                    help="MPI waits yield the core (for CPU-time ratios on a loaded host)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    t_start = time.perf_counter()
    load_before = load()
    r1, r2 = launch(1, args), launch(2, args)
    out = {"benchmark": "scaling_1_to_2_ranks", "host": platform.node(), "cpus": os.cpu_count(),
           "numba_threads": [r1["numba_threads"], r2["numba_threads"]]}
    if "lj" in r2:
        out["lj"] = lj_summary(r2["lj"])
    if "allen_cahn" in r2:
        out["allen_cahn"] = ac_summary(r2["allen_cahn"])
    if "store" in r1:
        out["store"] = {"MB_per_s_1": r1["store"]["MB_per_s_raw"], "MB_per_s_2": r2["store"]["MB_per_s_raw"],
                        "raw_MB_1": r1["store"]["raw_MB"], "raw_MB_2": r2["store"]["raw_MB"],
                        "on_disk_MB_2": r2["store"]["on_disk_MB"], "shard_raw_MB": r1["store"]["raw_MB"] / args.shards}
    out["mpi_latency_s"] = r2["latency_s"]
    out["mpi_waits"] = "yield" if args.yield_waits else "busy-poll"
    out["wall_s"] = time.perf_counter() - t_start
    out["load_avg_1min"] = [load_before, load()]
    emit(out)


if __name__ == "__main__":
    main()
