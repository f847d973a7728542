"""Block decomposition of the grid systems (Allen-Cahn 2-D, Predator-Prey 1-D) over a rank grid.

Each rank owns a rectangular block of the grid (:func:`hpcsur.parallel.grid.block_range`) and keeps
it padded with a one-cell halo: ``(n_fields, n0 + 2[, n1 + 2])``. Before every evaluation of the
vector field the halo is exchanged with the neighbours (non-blocking) and mirrored on physical
boundaries; then the *same* stencil kernels as the serial systems run on the padded block. Every
grid point therefore evaluates the same expression on the same operands as in a serial run, and
trajectories are bit-identical for any rank grid.

Time stepping mirrors the serial steppers exactly:

* Allen-Cahn RK4: four fused sweeps per step (``ac_rk4_stage_from_padded`` x 3, then
  ``ac_rk4_final_from_padded``), a halo exchange after each -- the decomposable schedule of the
  serial wavefront kernel, bit-identical to it;
* everything else: :mod:`hpcsur.systems.integrators` (Euler, RK4) on the local state vector, with
  the vector field evaluated by halo exchange + padded kernel. Those integrators are elementwise,
  so the split does not change a single bit.
"""
from __future__ import annotations

import numpy as np

from hpcsur.parallel.domain import assemble_labels
from hpcsur.parallel.grid import CartGrid, GridHalo, block_range
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import AllenCahn
from hpcsur.systems.integrators import INTEGRATORS


class FieldDomain:
    """One grid-system trajectory decomposed over ``grid`` (see the module docstring)."""

    def __init__(self, system, dt: float, comm, grid, integrator: str):
        self.system, self.dt, self.method = system, float(dt), integrator
        self.is_2d = isinstance(system, AllenCahn)
        n = system.params.n
        self.shape = (n, n) if self.is_2d else (n,)
        self.n_fields = 1 if self.is_2d else 2
        self.cart = CartGrid.create(comm, grid)
        self.halo = GridHalo(self.cart, len(self.shape))
        coords = self.cart.coords
        self.ranges = [block_range(n_axis, parts, c) for n_axis, parts, c in zip(self.shape, grid, coords)]
        self.local_shape = tuple(b - a for a, b in self.ranges)
        self.pad = np.zeros((self.n_fields,) + tuple(s + 2 for s in self.local_shape))
        self.interior = (slice(None),) + tuple(slice(1, -1) for _ in self.shape)
        if self.is_2d:
            self.kargs = (system.inv_h2, system.inv_eps2)
            self._scratch = [np.zeros_like(self.pad[0]) for _ in range(4)]
        else:
            self.kargs = system._kernel_args

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
        if self.is_2d:
            stencils.ac_rhs_from_padded(self.pad[0], out[0], *self.kargs)
        else:
            stencils.pp_rhs_from_padded(self.pad[0], self.pad[1], out[0], out[1], *self.kargs)
        return out.reshape(-1)

    def advance(self, steps: int) -> None:
        if self.is_2d and self.method == "rk4":
            self._advance_ac_rk4(steps)
            return
        step = INTEGRATORS[self.method]
        xloc = self.pad[self.interior].reshape(-1).copy()
        for _ in range(steps):
            xloc = step(self._local_rhs, xloc, self.dt)
        self.pad[self.interior] = xloc.reshape((self.n_fields,) + self.local_shape)
        self.halo.exchange(self.pad)

    def _advance_ac_rk4(self, steps: int) -> None:
        """RK4 as four fused sweeps with a halo exchange after each (bit-identical to serial)."""
        dt = self.dt
        half_dt = 0.5 * dt
        y1, y2, y3, nxt = self._scratch
        state = self.pad[0]
        cur = state
        inv_h2, inv_eps2 = self.kargs
        exchange = self.halo.exchange
        for _ in range(steps):
            stencils.ac_rk4_stage_from_padded(cur, cur, y1, half_dt, inv_h2, inv_eps2)
            exchange(y1[None])
            stencils.ac_rk4_stage_from_padded(y1, cur, y2, half_dt, inv_h2, inv_eps2)
            exchange(y2[None])
            stencils.ac_rk4_stage_from_padded(y2, cur, y3, dt, inv_h2, inv_eps2)
            exchange(y3[None])
            stencils.ac_rk4_final_from_padded(cur, y1, y2, y3, nxt, dt, inv_h2, inv_eps2)
            exchange(nxt[None])
            cur, nxt = nxt, cur  # ping-pong, no copy
        if cur is not state:
            state[...] = cur

    # ------------------------------------------------------------------ labels
    def labels(self, idx: np.ndarray, root: int):
        """f at the chosen grid points this rank owns, assembled in ``idx`` order on ``root``."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.is_2d:
            n1 = self.shape[1]
            rows, cols = idx // n1, idx % n1
            (r0, r1), (c0, c1) = self.ranges
            mine = np.flatnonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))
            out = np.empty(mine.size)
            stencils.ac_partial_from_padded(self.pad[0], rows[mine] - r0, cols[mine] - c0, out, *self.kargs)
            values = out.reshape(-1, 1)
        else:
            (i0, i1), = self.ranges
            mine = np.flatnonzero((idx >= i0) & (idx < i1))
            values = np.empty((mine.size, 2))
            stencils.pp_partial_from_padded(self.pad[0], self.pad[1], idx[mine] - i0, values, *self.kargs)
        return assemble_labels(self.cart.comm, idx, mine, values, root)
