"""Partial forces (50 random atoms) vs a full force call, LJ at rho = 0.8, one thread.

Sizes 800, 2,700, 6,400, 21,600, 51,200 atoms (boxes 10, 15, 20, 30, 40 as in the paper; these
counts are not 4 n^3, so each system is a random configuration placed with a 0.9 sigma minimum
distance, which needs no relaxation for timing). For each size it reports the median time of
one ``partial_forces(positions, idx, cells=cells)`` call over many repeats (new random ``idx``
each call, binning excluded), the binning time, the full ``forces`` time, and the speed-up
full / partial. Prints one JSON object as the last stdout line.
"""
from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hpcsur.measure import emit, time_runs  # noqa: E402
from hpcsur.systems.lennard_jones import LennardJones, random_positions  # noqa: E402

SIZES = (800, 2700, 6400, 21600, 51200)
DENSITY = 0.8
K = 50
PARTIAL_REPEATS = 2000
FULL_REPEATS = 5


def configuration(n: int, rng: np.random.Generator):
    """Random positions at rho = 0.8 with a 0.9 sigma minimum distance (no relaxation needed
    for timing: forces are finite and the overlap check passes)."""
    length = (n / DENSITY) ** (1.0 / 3.0)
    box = (length, length, length)
    return random_positions(n, box, rng, min_dist=0.9), box


def bench_size(n: int, rng: np.random.Generator) -> dict:
    pos, box = configuration(n, rng)
    lj = LennardJones(box, n_atoms=n)
    lj.forces(pos)
    cells = lj.bin(pos)
    for _ in range(300):  # warm-up (JIT dispatch, caches, clock) before timing
        lj.partial_forces(pos, rng.choice(n, K, replace=False), cells=cells)
    index_sets = [rng.choice(n, K, replace=False) for _ in range(PARTIAL_REPEATS)]
    it = iter(index_sets)
    partial = time_runs(lambda: lj.partial_forces(pos, next(it), cells=cells), PARTIAL_REPEATS).median
    binning = time_runs(lambda: lj.bin(pos), 20).median
    full = time_runs(lambda: lj.forces(pos), FULL_REPEATS).median
    return {"atoms": n, "partial_us": round(partial * 1e6, 2), "binning_ms": round(binning * 1e3, 3),
            "full_ms": round(full * 1e3, 3), "speedup_full_over_partial": round(full / partial, 1)}


def main() -> None:
    rng = np.random.default_rng(2024)
    rows = [bench_size(n, rng) for n in SIZES]
    partial = np.array([r["partial_us"] for r in rows])
    result = {
        "benchmark": "partial_forces",
        "k": K,
        "density": DENSITY,
        "threads": int(os.environ["NUMBA_NUM_THREADS"]),
        "rows": rows,
        "partial_vs_800": [round(float(p / partial[0]), 3) for p in partial],
        "partial_max_over_min": round(float(partial.max() / partial.min()), 3),
        "speedup_at_51200": rows[-1]["speedup_full_over_partial"],
    }
    emit(result)


if __name__ == "__main__":
    main()
