"""Block decomposition of the grid systems (Allen-Cahn 2-D, Predator-Prey 1-D) over a rank grid.

Each rank owns a rectangular block of the grid (:func:`hpcsur.parallel.grid.block_range`) and keeps
it padded with a halo ``d`` cells deep: ``pad`` has shape ``(n_fields, n0 + 2d[, n1 + 2d])``. The
halo is exchanged with the neighbours (non-blocking) and mirrored on physical boundaries by
:class:`hpcsur.parallel.grid.GridHalo`. Every grid point evaluates the same expression on the same
operands as in a serial run, so trajectories are bit-identical for any rank grid.

Time stepping mirrors the serial steppers exactly:

* Allen-Cahn RK4 (``d = 4k``): one halo exchange per k steps; each step is the fused row
  wavefront on the padded block (:func:`hpcsur.systems.stencils.ac_rk4_step_block`). Stage s of
  step j (0..k-1) is computed on the block widened by ``4(k-1-j) + 4 - s`` cells towards each
  neighbour (those cells are recomputed redundantly, bit-identical to their owner's values) and
  mirrored at physical edges after every stage, as the serial wavefront does. Per step a rank
  moves its block once through memory (read x, write x') instead of 4 stage sweeps (13 fields of
  traffic per point); per k steps it exchanges 4k halo layers per neighbour in one message each
  instead of 4k one-layer messages. k = ``steps_per_exchange`` (default
  :data:`STEPS_PER_EXCHANGE`), lowered so that every block is at least 4k cells thick (a
  neighbour must supply the whole halo).
* everything else (``d = 1``): :mod:`hpcsur.systems.integrators` (Euler, RK4) on the local state
  vector, with the vector field evaluated by halo exchange + padded kernel. Those integrators are
  elementwise, so the split does not change a single bit. Allen-Cahn RK4 falls back to this when
  a block is thinner than 4 cells along some axis.
"""
from __future__ import annotations

import numpy as np

from hpcsur.errors import InputError
from hpcsur.parallel.domain import assemble_labels
from hpcsur.parallel.grid import CartGrid, GridHalo, block_range
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import AllenCahn
from hpcsur.systems.integrators import INTEGRATORS


# Allen-Cahn RK4 steps chained per halo exchange. Chaining k steps saves k-1 of every k exchanges
# (latency, synchronisation with the neighbours) and costs 2(k-1) + 6/7 redundant rows per step
# and neighbour side; see the Allen-Cahn paragraph of storage/README.md for the measurements.
STEPS_PER_EXCHANGE = 4


def fused_steps(is_2d: bool, method: str, shape, grid, steps_per_exchange: int) -> int:
    """Allen-Cahn RK4 steps chained on one halo exchange: the largest ``k <= steps_per_exchange``
    whose ``4k``-deep halo one neighbour can supply (the thinnest block, ``n // p`` cells, holds at
    least ``4k``); 0 when the fused path does not apply (not Allen-Cahn RK4, or a block thinner
    than 4 cells). A pure function of the global problem, so all ranks agree."""
    if not (is_2d and method == "rk4"):
        return 0
    thinnest = min(n // p for n, p in zip(shape, grid))
    return min(steps_per_exchange, thinnest // stencils.RK4_HALO)


def halo_depth(is_2d: bool, method: str, shape, grid, steps_per_exchange: int = STEPS_PER_EXCHANGE) -> int:
    """Halo cells per side: ``4k`` on the fused Allen-Cahn RK4 path (``k = fused_steps(...)``),
    else 1."""
    k = fused_steps(is_2d, method, shape, grid, steps_per_exchange)
    return stencils.RK4_HALO * k if k else 1


def exchanges_per_step(is_2d: bool, method: str, shape, grid,
                       steps_per_exchange: int = STEPS_PER_EXCHANGE) -> float:
    """Halo exchanges per time step of :meth:`FieldDomain.advance` (each of ``halo_depth`` layers):
    ``1/k`` on the fused Allen-Cahn RK4 path, 4 for RK4 with a one-cell halo (one per stage),
    1 for Euler. On the fused path ``advance(S)`` makes ``ceil(S / k)``, the last one ending the
    call; on the others ``S`` times the rate plus one at the end."""
    k = fused_steps(is_2d, method, shape, grid, steps_per_exchange)
    if k:
        return 1.0 / k
    return 4.0 if method == "rk4" else 1.0


class FieldDomain:
    """One grid-system trajectory decomposed over ``grid`` (see the module docstring)."""

    def __init__(self, system, dt: float, comm, grid, integrator: str, *,
                 steps_per_exchange: int = STEPS_PER_EXCHANGE):
        if isinstance(steps_per_exchange, bool) or not isinstance(steps_per_exchange, (int, np.integer)) \
                or steps_per_exchange < 1:
            raise InputError(f"steps_per_exchange: must be an integer >= 1, got {steps_per_exchange!r}")
        self.system, self.dt, self.method = system, float(dt), integrator
        self.is_2d = isinstance(system, AllenCahn)
        n = system.params.n
        self.shape = (n, n) if self.is_2d else (n,)
        self.n_fields = 1 if self.is_2d else 2
        self.cart = CartGrid.create(comm, grid)
        self.chain = fused_steps(self.is_2d, integrator, self.shape, self.cart.dims, int(steps_per_exchange))
        self.depth = halo_depth(self.is_2d, integrator, self.shape, self.cart.dims, int(steps_per_exchange))
        self.halo = GridHalo(self.cart, len(self.shape), self.depth)
        coords = self.cart.coords
        self.ranges = [block_range(n_axis, parts, c) for n_axis, parts, c in zip(self.shape, self.cart.dims, coords)]
        self.local_shape = tuple(b - a for a, b in self.ranges)
        d = self.depth
        self.pad = np.zeros((self.n_fields,) + tuple(s + 2 * d for s in self.local_shape))
        self.interior = (slice(None),) + tuple(slice(d, -d) for _ in self.shape)
        # The one-cell-halo view the single-sweep kernels (rhs, labels) read.
        self._unit = (slice(None),) + tuple(slice(d - 1, s + d + 1) for s in self.local_shape)
        # Physical sides (low0, high0[, low1, high1]): blocks touching the grid edge.
        self.physical = tuple(flag for (a, b), n_axis in zip(self.ranges, self.shape)
                              for flag in (a == 0, b == n_axis))
        if self.is_2d:
            self.kargs = (system.inv_h2, system.inv_eps2)
        else:
            self.kargs = system._kernel_args
        if self.chain:
            self._next = np.zeros_like(self.pad)
            self._rings = [np.zeros((stencils.RING, self.pad.shape[2])) for _ in range(3)]

    # ------------------------------------------------------------------ state in and out
    def _global_fields(self, x: np.ndarray) -> np.ndarray:
        """Global state vector -> array (n_fields, *shape)."""
        return x.reshape((self.n_fields,) + self.shape)

    def _owned(self):
        return tuple(slice(a, b) for a, b in self.ranges)

    def load(self, x: np.ndarray) -> None:
        self.pad[self.interior] = self._global_fields(np.asarray(x, dtype=np.float64))[(slice(None),) + self._owned()]
        self.halo.exchange(self.pad)

    def gather(self, root: int):
        pieces = self.cart.comm.gather((self.ranges, self.pad[self.interior].copy()), root=root)
        if self.cart.comm.Get_rank() != root:
            return None
        full = np.empty((self.n_fields,) + self.shape)
        for ranges, block in pieces:
            full[(slice(None),) + tuple(slice(a, b) for a, b in ranges)] = block
        return full.reshape(-1)

    # ------------------------------------------------------------------ dynamics
    def _local_rhs(self, xloc: np.ndarray) -> np.ndarray:
        """f on this rank's block of the local state vector ``xloc`` (halo exchanged first)."""
        self.pad[self.interior] = xloc.reshape((self.n_fields,) + self.local_shape)
        self.halo.exchange(self.pad)
        out = np.empty((self.n_fields,) + self.local_shape)
        unit = self.pad[self._unit]
        if self.is_2d:
            stencils.ac_rhs_from_padded(unit[0], out[0], *self.kargs)
        else:
            stencils.pp_rhs_from_padded(unit[0], unit[1], out[0], out[1], *self.kargs)
        return out.reshape(-1)

    def advance(self, steps: int) -> None:
        if self.chain:
            self._advance_ac_rk4(steps)
            return
        step = INTEGRATORS[self.method]
        xloc = self.pad[self.interior].reshape(-1).copy()
        for _ in range(steps):
            xloc = step(self._local_rhs, xloc, self.dt)
        self.pad[self.interior] = xloc.reshape((self.n_fields,) + self.local_shape)
        self.halo.exchange(self.pad)

    def _advance_ac_rk4(self, steps: int) -> None:
        """RK4 steps in runs of up to ``chain`` fused block wavefronts, one deep-halo exchange
        after each run (module docstring). Step j of a run of m writes x' ``4(m-1-j)`` cells into
        the halo, which is what step j+1 reads. ``pad`` and ``_next`` are ping-ponged; on return
        ``pad`` holds the state with its halo filled."""
        done = 0
        while done < steps:
            run = min(self.chain, steps - done)
            for j in range(run):
                stencils.ac_rk4_step_block(self.pad[0], self._next[0], *self._rings, self.depth,
                                           stencils.RK4_HALO * (run - 1 - j), *self.physical,
                                           self.dt, *self.kargs)
                self.pad, self._next = self._next, self.pad
            self.halo.exchange(self.pad)
            done += run

    # ------------------------------------------------------------------ labels
    def labels(self, idx: np.ndarray, root: int):
        """f at the chosen grid points this rank owns, assembled in ``idx`` order on ``root``."""
        idx = np.asarray(idx, dtype=np.int64)
        unit = self.pad[self._unit]
        if self.is_2d:
            n1 = self.shape[1]
            rows, cols = idx // n1, idx % n1
            (r0, r1), (c0, c1) = self.ranges
            mine = np.flatnonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))
            out = np.empty(mine.size)
            stencils.ac_partial_from_padded(unit[0], rows[mine] - r0, cols[mine] - c0, out, *self.kargs)
            values = out.reshape(-1, 1)
        else:
            (i0, i1), = self.ranges
            mine = np.flatnonzero((idx >= i0) & (idx < i1))
            values = np.empty((mine.size, 2))
            stencils.pp_partial_from_padded(unit[0], unit[1], idx[mine] - i0, values, *self.kargs)
        return assemble_labels(self.cart.comm, idx, mine, values, root)
