"""Rank-invariant random streams: every random draw is a pure function of (seed, trajectory, frame).

A counter-based generator (Philox-4x64) is keyed by the job seed and started at a counter made of
the trajectory, the frame, a purpose tag and a draw number (independent index sets of one frame). Whatever the number of ranks, workers or restarts,
the same (seed, trajectory, frame, purpose) gives the same numbers, so index sets and initial
conditions never depend on how the work was split.
"""
from __future__ import annotations

import numpy as np

# Purpose tags keep independent uses of the same (trajectory, frame) apart.
PURPOSE_INDEX_SET = 1
PURPOSE_INITIAL = 2
PURPOSE_VELOCITIES = 3


def stream(seed: int, trajectory: int, frame: int = 0, purpose: int = 0, draw: int = 0) -> np.random.Generator:
    """A generator whose output depends only on its five arguments."""
    bit_gen = np.random.Philox(key=np.uint64(seed), counter=np.array(
        [np.uint64(trajectory), np.uint64(frame), np.uint64(purpose), np.uint64(draw)], dtype=np.uint64))
    return np.random.Generator(bit_gen)


def n_chosen(p: float, n_blocks: int) -> int:
    """|I| = round(p n), at least 1: the number of blocks whose forces are computed."""
    return max(1, min(n_blocks, int(round(p * n_blocks))))


def index_set(seed: int, trajectory: int, frame: int, n_blocks: int, k: int, draw: int = 0) -> np.ndarray:
    """I: ``k`` distinct block indices out of ``n_blocks``, sorted, keyed by (seed, trajectory, frame,
    draw); different draws of one frame are independent.

    Drawn without replacement (the reference code's PDE runs drew with replacement; the paper's
    estimator assumes exactly p n distinct blocks). Floyd's algorithm needs O(k) memory and time,
    so drawing 50 atoms out of millions does not cost O(n).
    """
    if not 1 <= k <= n_blocks:
        raise ValueError(f"k must be in [1, {n_blocks}], got {k}")
    rng = stream(seed, trajectory, frame, PURPOSE_INDEX_SET, draw)
    if 2 * k > n_blocks:  # dense: a partial shuffle is cheaper and just as rank-invariant
        return np.sort(rng.permutation(n_blocks)[:k]).astype(np.int64)
    chosen: set[int] = set()
    # Floyd: for j in n-k .. n-1, draw t in [0, j]; take t unless taken, else take j.
    draws = rng.integers(0, np.arange(n_blocks - k, n_blocks) + 1)
    for j, t in zip(range(n_blocks - k, n_blocks), draws):
        chosen.add(int(j) if int(t) in chosen else int(t))
    return np.array(sorted(chosen), dtype=np.int64)


def uniforms(seed: int, trajectory: int, count: int, purpose: int = PURPOSE_INITIAL) -> np.ndarray:
    """``count`` uniform variates in [0, 1) for a trajectory's initial condition."""
    return stream(seed, trajectory, 0, purpose).random(count)
