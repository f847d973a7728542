"""Cartesian rank grids and block decomposition of structured grids, with halo exchange.

The global grid (1-D or 2-D, cell centred) is cut into ``dims`` blocks; rank ``coords`` owns the
index range ``block_range(n, parts, c)`` along each axis. A local field is stored *padded* with a
halo of ``d`` cells (``d = 1`` for one stencil sweep, ``d = 4`` for a fused RK4 step), shape
``(n_fields, ny + 2d, nx + 2d)`` (2-D) or ``(n_fields, nx + 2d)`` (1-D). The halo is filled from
the neighbours' edge cells by non-blocking sends/receives (corners included); on a physical
boundary it is filled by the Neumann mirror (ghost = edge value). Because every grid point then
sees exactly the same neighbour values as in a serial run, the same stencil expressions give
bit-identical results for any number of ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcsur.errors import InputError


def block_range(n: int, parts: int, coord: int) -> tuple[int, int]:
    """Half-open range [start, stop) of block ``coord`` when ``n`` cells are cut into ``parts``.

    The first ``n % parts`` blocks get one extra cell, so sizes differ by at most one.
    """
    base, extra = divmod(n, parts)
    start = coord * base + min(coord, extra)
    return start, start + base + (1 if coord < extra else 0)


def check_grid(dims, shape, min_cells: int = 1, what: str = "[parallel] grid") -> None:
    """Reject a rank grid that does not fit the domain (fewer than ``min_cells`` per block)."""
    for axis, (parts, n) in enumerate(zip(dims, shape)):
        if n // parts < min_cells:
            raise InputError(f"{what} = {list(dims)} does not fit the domain: axis {axis} has {n} cells "
                             f"for {parts} ranks; allowed: at most {max(n // min_cells, 1)} ranks on that axis")


@dataclass
class CartGrid:
    """A Cartesian communicator over ``dims`` (non-periodic unless asked) and this rank's place."""

    comm: object
    dims: tuple[int, ...]
    periodic: tuple[bool, ...]

    @classmethod
    def create(cls, comm, dims, periodic=None):
        from mpi4py import MPI

        dims = tuple(int(d) for d in dims)
        if int(np.prod(dims)) != comm.Get_size():
            raise InputError(f"[parallel] grid = {list(dims)} needs {int(np.prod(dims))} ranks, "
                             f"but the job runs on {comm.Get_size()}")
        periodic = tuple(periodic) if periodic is not None else (False,) * len(dims)
        cart = comm.Create_cart(dims=list(dims), periods=list(periodic), reorder=False)
        del MPI
        return cls(cart, dims, periodic)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def coords(self) -> tuple[int, ...]:
        return tuple(self.comm.Get_coords(self.rank))

    def neighbours(self, axis: int) -> tuple[int, int]:
        """(lower, upper) neighbour ranks along ``axis``; MPI.PROC_NULL at a physical boundary."""
        return self.comm.Shift(axis, 1)


def default_dims(size: int, ndim: int) -> tuple[int, ...]:
    """A balanced rank grid (MPI_Dims_create)."""
    from mpi4py import MPI

    return tuple(MPI.Compute_dims(size, [0] * ndim))


class GridHalo:
    """Exchange of a ``depth``-cell halo for padded blocks of a 1-D or 2-D structured grid.

    The field axes are the trailing ``ndim`` axes of the padded array (leading axes are fields);
    rank-grid axis ``a`` cuts array axis ``padded.ndim - ndim + a``, so rank-grid axis 0 is the
    slowest field axis (rows in 2-D). Each array axis has ``depth`` halo layers on both ends.

    Algorithm (one call): axis by axis, in order, post non-blocking receives of the two halo slabs
    (``depth`` layers each) and non-blocking sends of the two edge slabs of owned layers
    ``[depth, 2 depth)`` and ``[n - 2 depth, n - depth)``, wait, unpack. A slab spans the *whole*
    padded extent of the other axes, so the second axis forwards the corner cells the first axis
    has just received: after the call the corners hold the diagonal neighbour's values, which a
    deep-halo stencil schedule needs. On a physical boundary (no neighbour) every halo layer is
    the Neumann mirror ghost = edge value, i.e. replication padding; that side is filled after the
    axis's receives have completed, so its corners are right too. Send and receive buffers are
    preallocated per array shape; owned blocks must be at least ``depth`` cells along each axis.
    """

    def __init__(self, grid: CartGrid, ndim: int, depth: int = 1):
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise InputError(f"halo depth: must be an integer >= 1, got {depth!r}")
        self.grid, self.ndim, self.depth = grid, ndim, int(depth)
        self._buffers: dict = {}

    def _slabs(self, shape, arr_axis):
        """Index tuples of the slabs along ``arr_axis``: the halos (recv_lo, recv_hi), the owned
        edge slabs sent to the neighbours (send_lo, send_hi) and the single owned edge layers that a
        physical side replicates (edge_lo, edge_hi)."""
        d, n = self.depth, shape[arr_axis]
        if n - 2 * d < d:
            raise InputError(f"halo depth {d}: the owned block has {n - 2 * d} cells along array axis "
                             f"{arr_axis}; it needs at least {d}")

        def slab(a, b):
            sl = [slice(None)] * len(shape)
            sl[arr_axis] = slice(a, b)
            return tuple(sl)

        return {"recv_lo": slab(0, d), "send_lo": slab(d, 2 * d), "edge_lo": slab(d, d + 1),
                "recv_hi": slab(n - d, n), "send_hi": slab(n - 2 * d, n - d), "edge_hi": slab(n - d - 1, n - d)}

    def _plan(self, shape):
        """Per axis: neighbours, slab indices and four preallocated buffers (cached per shape)."""
        plan = self._buffers.get(shape)
        if plan is None:
            plan = []
            for axis in range(self.ndim):
                arr_axis = len(shape) - self.ndim + axis
                slabs = self._slabs(shape, arr_axis)
                slab_shape = list(shape)
                slab_shape[arr_axis] = self.depth
                bufs = [np.empty(slab_shape) for _ in range(4)]
                plan.append((self.grid.neighbours(axis), slabs, bufs))
            self._buffers[shape] = plan
        return plan

    def exchange(self, padded: np.ndarray) -> None:
        """Fill the halo of ``padded`` in place (neighbours' edge slabs, or the Neumann mirror)."""
        from mpi4py import MPI

        comm = self.grid.comm
        for axis, ((lower, upper), sl, bufs) in enumerate(self._plan(padded.shape)):
            b_send_lo, b_send_hi, b_recv_lo, b_recv_hi = bufs
            requests = []
            if lower != MPI.PROC_NULL:
                np.copyto(b_send_lo, padded[sl["send_lo"]])
                requests += [comm.Irecv(b_recv_lo, source=lower, tag=2 * axis),
                             comm.Isend(b_send_lo, dest=lower, tag=2 * axis + 1)]
            if upper != MPI.PROC_NULL:
                np.copyto(b_send_hi, padded[sl["send_hi"]])
                requests += [comm.Irecv(b_recv_hi, source=upper, tag=2 * axis + 1),
                             comm.Isend(b_send_hi, dest=upper, tag=2 * axis)]
            MPI.Request.Waitall(requests)
            # Physical side: every halo layer = the edge layer (broadcast), i.e. replication.
            padded[sl["recv_lo"]] = b_recv_lo if lower != MPI.PROC_NULL else padded[sl["edge_lo"]]
            padded[sl["recv_hi"]] = b_recv_hi if upper != MPI.PROC_NULL else padded[sl["edge_hi"]]
