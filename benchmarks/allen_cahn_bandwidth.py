"""Allen-Cahn RK4 throughput vs a memory-bandwidth bound measured in the same run.

Bound (the primary one, ``bound_point_updates_per_s``). Counted as state + stages: an RK4 step
done as stage sweeps over the grid makes 4 sweeps, each of which must at least read one field and
write one field of N float64 — the traffic of a copy. So it moves at least
4 x (8 B read + 8 B write) = 64 B per grid point and step, and

    bound [point-updates/s] = copy bandwidth [B/s] / 64 B.

Copy bandwidth is measured single-threaded (like the RK4 kernels) with a numba copy loop and with
``np.copyto``; the best of the two is used. Which cache level the copy hits matters: stage sweeps
cycle through 5 padded grids (x, y1, y2, y3, x'), 42 MB at 1024², more than a 32 MB L3, so the
primary bound copies that working set (src + dst = 5 grids). A copy of one grid-sized array
(16 MB src + dst, L3-resident here) is reported too.

What is timed. ``achieved``: the serial fast path, which fuses the four stages into one row
wavefront (ring buffers for y1..y3), so only x is read and x' written per step (16 B/point) —
it beats the stage-sweep count above and is compute-bound (7 stencil evaluations per point and
step, k1..k4 recomputed in the final row pass). ``absolute_bound`` = L3 copy bandwidth / 16 B is
the bound for that traffic. ``stagewise``: the 4-sweep schedule a domain-decomposed run follows
(13 fields, 104 B/point per step, DRAM-bound; ceiling 64/104 = 62 % of the primary bound).

Prints one JSON object as the last stdout line.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np
from numba import njit

from hpcsur.measure import emit, time_runs
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams, reference_epsilon

MIN_BYTES_PER_POINT = 4 * (8 + 8)       # 4 sweeps x (one read + one write of a float64)
STAGEWISE_BYTES_PER_POINT = 13 * 8      # our stage-wise sweeps: read 9 + write 4 fields per step
ABS_MIN_BYTES_PER_POINT = 8 + 8         # any scheme: read x, write x' (the wavefront's traffic)


@njit(cache=True)
def _copy(src, dst):
    for i in range(src.shape[0]):
        dst[i] = src[i]


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least-disturbed run on a shared machine)."""
    return time_runs(fn, repeats).best


def copy_bandwidth(n_elems: int, repeats: int) -> dict:
    """Copy bandwidth in bytes/s (read + write counted) for arrays of ``n_elems`` float64."""
    src = np.random.default_rng(0).random(n_elems)
    dst = np.empty_like(src)
    _copy(src, dst)
    np.copyto(dst, src)
    t_numba = best_time(lambda: _copy(src, dst), repeats)
    t_numpy = best_time(lambda: np.copyto(dst, src), repeats)
    bytes_moved = 16.0 * n_elems
    return {"numba_copy_GBps": bytes_moved / t_numba / 1e9, "np_copyto_GBps": bytes_moved / t_numpy / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="grid is n x n")
    ap.add_argument("--steps", type=int, default=10, help="RK4 steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    n = args.n
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=reference_epsilon(n)))
    dt = 0.1 / (n * n)
    x0 = ac.torus(0.35, 0.12)

    # Steady-state kernel throughput: preallocated padded buffers, as in a long production run.
    xpad = stencils.pad_with_neumann_halo(x0.reshape(n, n))
    out = np.zeros_like(xpad)
    rings = [np.zeros((stencils.RING, n + 2)) for _ in range(3)]
    stencils.ac_rk4_steps_serial(xpad, out, *rings, 1, dt, ac.inv_h2, ac.inv_eps2)   # compile, warm
    t_step = best_time(lambda: stencils.ac_rk4_steps_serial(xpad, out, *rings, args.steps, dt,
                                                            ac.inv_h2, ac.inv_eps2),
                       args.repeats) / args.steps
    # The stage-wise schedule (4 full sweeps; what a domain-decomposed run does) for comparison.
    bufs = [np.zeros_like(xpad) for _ in range(4)]
    stencils.ac_rk4_steps_stagewise(xpad, *bufs, 1, dt, ac.inv_h2, ac.inv_eps2)
    t_stagewise = best_time(lambda: stencils.ac_rk4_steps_stagewise(xpad, *bufs, args.steps, dt,
                                                                    ac.inv_h2, ac.inv_eps2),
                            args.repeats) / args.steps
    # Whole public call (pad, scratch allocation, unpad included) for comparison.
    t_integrate = best_time(lambda: ac.integrate(x0, dt, args.steps), 2) / args.steps

    points = n * n
    achieved = points / t_step
    working_set = copy_bandwidth(5 * points // 2, args.repeats * 2)   # same bytes as the 5 RK4 grids
    same_size = copy_bandwidth(points, args.repeats * 4)               # one grid: L3-resident here
    bound = max(working_set.values()) * 1e9 / MIN_BYTES_PER_POINT
    bound_same_size = max(same_size.values()) * 1e9 / MIN_BYTES_PER_POINT

    result = {
        "benchmark": "allen_cahn_rk4_bandwidth",
        "grid": f"{n}x{n}",
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "rk4_step_s": t_step,
        "integrate_call_step_s": t_integrate,
        "stagewise_rk4_step_s": t_stagewise,
        "stagewise_point_updates_per_s": points / t_stagewise,
        "stagewise_over_bound": points / t_stagewise / bound,
        "achieved_point_updates_per_s": achieved,
        "copy_bandwidth_working_set_GBps": working_set,
        "copy_bandwidth_same_size_GBps": same_size,
        "min_bytes_per_point_step": MIN_BYTES_PER_POINT,
        "bound_point_updates_per_s": bound,
        "achieved_over_bound": achieved / bound,
        "bound_same_size_copy_point_updates_per_s": bound_same_size,
        "achieved_over_bound_same_size_copy": achieved / bound_same_size,
        "absolute_bound_point_updates_per_s": max(same_size.values()) * 1e9 / ABS_MIN_BYTES_PER_POINT,
        "achieved_over_absolute_bound": achieved / (max(same_size.values()) * 1e9 / ABS_MIN_BYTES_PER_POINT),
        "stagewise_effective_GBps": points / t_stagewise * STAGEWISE_BYTES_PER_POINT / 1e9,
    }
    emit(result)


if __name__ == "__main__":
    main()
