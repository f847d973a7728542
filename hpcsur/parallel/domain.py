"""Distributed state of one trajectory: the ``Domain`` interface and its serial implementation.

A domain holds one trajectory's microscopic state split over the ranks of a communicator and
offers the four operations the generator needs::

    load(x)               take this rank's part of a global state vector (all ranks pass the same x)
    advance(steps)        integrate, exchanging halos / ghost atoms and migrating as needed
    gather(root)          the global state vector on ``root`` (None elsewhere)
    labels(idx, root)     f at the chosen blocks ``idx`` (each rank computes the ones it owns),
                          assembled in ``idx`` order on ``root``

Determinism: ``load`` always starts from a fresh stepper (neighbour lists rebuilt, forces
recomputed), so a run resumed from a stored frame repeats exactly what an uninterrupted run does
when it reloads at the same frame. The generator reloads at every shard boundary.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Domain(Protocol):
    def load(self, x: np.ndarray) -> None: ...

    def advance(self, steps: int) -> None: ...

    def gather(self, root: int) -> np.ndarray | None: ...

    def labels(self, idx: np.ndarray, root: int) -> np.ndarray | None: ...


def assemble_labels(comm, idx: np.ndarray, owned_pos: np.ndarray, values: np.ndarray, root: int):
    """Gather per-rank label pieces to ``root`` and put them in ``idx`` order.

    ``owned_pos`` are positions within ``idx`` that this rank computed; ``values`` their labels,
    shape ``(len(owned_pos), m)``. Every position must be covered by exactly one rank.
    """
    pieces = comm.gather((np.asarray(owned_pos, np.int64), np.asarray(values, np.float64)), root=root)
    if comm.Get_rank() != root:
        return None
    m = next((v.shape[1] for _, v in pieces if v.size), None)
    if m is None:
        m = values.shape[1] if values.ndim == 2 else 1
    out = np.full((len(idx), m), np.nan)
    seen = np.zeros(len(idx), dtype=np.int64)
    for pos, vals in pieces:
        out[pos] = vals
        seen[pos] += 1
    if not np.all(seen == 1):
        raise RuntimeError("label assembly: some chosen blocks were computed by no rank or by several")
    return out


class SerialDomain:
    """A trajectory on a single rank: the system's own stepper and partial kernels."""

    def __init__(self, system, dt: float, comm=None, integrator: str | None = None):
        self.system, self.dt, self.comm = system, dt, comm
        self.integrator = integrator
        self.x = None
        self._advance = None

    def _stepper(self):
        if self.integrator is None:
            return self.system.stepper(self.dt)
        return self.system.stepper(self.dt, method=self.integrator)

    def load(self, x: np.ndarray) -> None:
        self.x = np.array(x, dtype=np.float64, copy=True)
        self._advance = self._stepper()  # fresh stepper: deterministic restart point

    def advance(self, steps: int) -> None:
        if self.integrator == "rk4" and hasattr(self.system, "integrate"):
            # Allen-Cahn: the fused wavefront over all steps pads once per call instead of once
            # per step (bit-identical to stepping one at a time)
            self.x = self.system.integrate(self.x, self.dt, steps)
            return
        for _ in range(steps):
            self.x = self._advance(self.x)

    def gather(self, root: int = 0) -> np.ndarray:
        return self.x.copy()

    def labels(self, idx: np.ndarray, root: int = 0) -> np.ndarray:
        return self.system.partial_rhs(self.x, idx)
