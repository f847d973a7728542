"""Strong scaling 1 -> 2 MPI ranks of the decomposed steppers, plus store write throughput.

Run ``python benchmarks/scaling.py``: the script relaunches itself in worker mode under the venv's
``mpiexec -n 1`` and ``mpiexec -n 2`` and merges what rank 0 of each run reports.

Cases (the SAME decomposed code path on 1 and 2 ranks; ParticleDomain / FieldDomain are built
directly because ``make_domain`` returns a SerialDomain for a group of size 1):

* ``lj``: Lennard-Jones, 32,000 atoms (fcc 20^3 cells, rho 0.8442, r_c 2.5, dt 0.005, T 1.44),
  ``ParticleDomain.advance`` on rank grid [1,1,1] vs [2,1,1]. Reference: the serial fast path
  (``SerialDomain`` -> ``VelocityVerlet`` with Verlet lists).
* ``allen_cahn``: 1024^2 RK4 with ``FieldDomain`` on [1,1] vs [2,1]. Reference: the serial
  wavefront stepper (``SerialDomain`` -> ``AllenCahn.stepper``).
* ``store``: MB/s of ``ShardWriter.write`` (zarr + blosc zstd + fsync + sha256 record) for shards of
  an LJ-sized frame (N = 192,000 float64), 1 rank and 2 ranks writing disjoint shards at once.

Per case: seconds/step at 1 and 2 ranks (min over repeats; rank time = max over ranks),
``efficiency = t1 / (2 t2)`` and ``efficiency_vs_serial = t_serial / (2 t2)``. Also split out
(for the scaling model in storage/README.md): compute time per atom / grid point and the
communication time per step, and a small-message MPI round-trip latency.

Timings on a shared 2-core machine are noisy; the min over repeats is reported.
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

ROOT = Path(__file__).resolve().parents[1]

LJ_CELLS, LJ_RHO, LJ_RC, LJ_DT, LJ_T = 20, 0.8442, 2.5, 0.005, 1.44
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
def lj_case(comm, steps, repeats, serial):
    from hpcsur.parallel.domain import SerialDomain
    from hpcsur.parallel.particles import ParticleDomain
    from hpcsur.systems import lj_kernels as K
    from hpcsur.systems.lennard_jones import LennardJones, fcc_lattice, maxwell_boltzmann

    pos, box = fcc_lattice(LJ_CELLS, LJ_RHO)
    n = len(pos)
    system = LennardJones(box, n_atoms=n, rcut=LJ_RC)
    vel = maxwell_boltzmann(n, LJ_T, 1.0, np.random.default_rng(1))
    x0 = system.join(pos, vel)
    size = comm.Get_size()
    dom = ParticleDomain(system, LJ_DT, comm, (size, 1, 1))
    dom.load(x0)
    dom.advance(2)  # warm-up (JIT)
    t = _best(lambda: dom.advance(steps), repeats, comm) / steps
    # compute-only part: the force kernel on this rank's owned + ghost atoms
    args = (dom.local, len(dom.ids), dom.lo, dom.hi, dom.rcut, dom.eps, dom.sigma, dom.shift)
    t_force = _best(lambda: K.forces_open(*args), repeats, comm)
    t_ghosts = _best(lambda: dom._ghosts(dom._wrapped(dom.x)), repeats, comm)
    out = {"atoms": n, "steps": steps, "ranks": size, "s_per_step": t,
           "force_kernel_s": t_force, "ghost_build_s": t_ghosts,
           "owned_atoms_rank0": int(len(dom.ids)), "ghost_atoms_rank0": int(len(dom.local) - len(dom.ids))}
    if serial:
        sd = SerialDomain(system, LJ_DT)
        sd.load(x0)
        sd.advance(2)
        out["serial_s_per_step"] = _best(lambda: sd.advance(steps), repeats) / steps
    return out


def ac_case(comm, steps, repeats, serial):
    from hpcsur.parallel.domain import SerialDomain
    from hpcsur.parallel.fields import FieldDomain
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams, reference_epsilon

    system = AllenCahn(AllenCahnParams(n=AC_N, epsilon=reference_epsilon(AC_N)))
    dt = 0.1 / (AC_N * AC_N)
    x0 = system.torus(0.35, 0.15)
    size = comm.Get_size()
    dom = FieldDomain(system, dt, comm, (size, 1), "rk4")
    dom.load(x0)
    dom.advance(1)
    t = _best(lambda: dom.advance(steps), repeats, comm) / steps

    def halos():
        for _ in range(4):
            dom.halo.exchange(dom.pad)
    t_halo = _best(halos, repeats, comm)
    out = {"points": AC_N * AC_N, "steps": steps, "ranks": size, "s_per_step": t,
           "halo_4x_s": t_halo, "local_shape_rank0": list(dom.local_shape)}
    if serial:
        sd = SerialDomain(system, dt, integrator="rk4")
        sd.load(x0)
        sd.advance(1)
        out["serial_s_per_step"] = _best(lambda: sd.advance(steps), repeats) / steps
    return out


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
    serial = comm.Get_size() == 1
    res = {"ranks": comm.Get_size(),
           "lj": lj_case(comm, args.lj_steps, args.repeats, serial),
           "allen_cahn": ac_case(comm, args.ac_steps, args.repeats, serial),
           "store": store_case(comm, args.shards, args.repeats),
           "latency_s": latency(comm)}
    if comm.Get_rank() == 0:
        print(json.dumps(res))


# ---------------------------------------------------------------------------- driver
def launch(n, args):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(n), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--lj-steps", str(args.lj_steps), "--ac-steps", str(args.ac_steps),
           "--repeats", str(args.repeats), "--shards", str(args.shards)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mpiexec -n {n} failed with rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lj-steps", type=int, default=20)
    ap.add_argument("--ac-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=3, help="shards written per rank")
    ap.add_argument("--timeout", type=int, default=150, help="seconds per mpiexec run")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    t_start = time.perf_counter()
    r1, r2 = launch(1, args), launch(2, args)
    out = {"benchmark": "scaling_1_to_2_ranks", "host": platform.node(), "cpus": os.cpu_count()}
    for case in ("lj", "allen_cahn"):
        a, b = r1[case], r2[case]
        t1, t2, ts = a["s_per_step"], b["s_per_step"], a["serial_s_per_step"]
        unit = a.get("atoms", a.get("points"))
        out[case] = {"size": unit, "steps": a["steps"],
                     "s_per_step_1": t1, "s_per_step_2": t2, "s_per_step_serial": ts,
                     "efficiency": t1 / (2 * t2), "efficiency_vs_serial": ts / (2 * t2),
                     "decomposed_overhead_1rank": t1 / ts}
        if case == "lj":
            out[case].update(force_kernel_s_1=a["force_kernel_s"], force_kernel_s_2=b["force_kernel_s"],
                             ghost_build_s_1=a["ghost_build_s"], ghost_build_s_2=b["ghost_build_s"],
                             owned_rank0_2=b["owned_atoms_rank0"], ghosts_rank0_1=a["ghost_atoms_rank0"],
                             ghosts_rank0_2=b["ghost_atoms_rank0"],
                             compute_s_per_atom_step=a["force_kernel_s"] / unit)
        else:
            out[case].update(halo_s_per_step_1=a["halo_4x_s"], halo_s_per_step_2=b["halo_4x_s"],
                             compute_s_per_point_step=(t1 - a["halo_4x_s"]) / unit,
                             serial_s_per_point_step=ts / unit)
    out["store"] = {"MB_per_s_1": r1["store"]["MB_per_s_raw"], "MB_per_s_2": r2["store"]["MB_per_s_raw"],
                    "raw_MB_1": r1["store"]["raw_MB"], "raw_MB_2": r2["store"]["raw_MB"],
                    "on_disk_MB_2": r2["store"]["on_disk_MB"], "shard_raw_MB": r1["store"]["raw_MB"] / args.shards}
    out["mpi_latency_s"] = r2["latency_s"]
    out["wall_s"] = time.perf_counter() - t_start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
