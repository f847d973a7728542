"""Cartesian rank grids and block decomposition of structured grids, with halo exchange.

The global grid (1-D or 2-D, cell centred) is cut into ``dims`` blocks; rank ``coords`` owns the
index range ``block_range(n, parts, c)`` along each axis. A local field is stored *padded* with a
one-cell halo, shape ``(n_fields, ny+2, nx+2)`` (2-D) or ``(n_fields, nx+2)`` (1-D). The halo is
filled from the neighbour's edge cells by non-blocking sends/receives; on a physical boundary it
is filled by the Neumann mirror (ghost = edge value). Because every grid point then sees exactly
the same neighbour values as in a serial run, the same stencil kernel gives bit-identical results
for any number of ranks.
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
    """Halo exchange for padded blocks of a 1-D or 2-D structured grid.

    The field axes are the trailing ``ndim`` axes of the padded array (leading axes are fields).
    Axis ``a`` of the rank grid cuts array axis ``-ndim + a``... ordered so that rank-grid axis 0
    is the slowest array axis (rows in 2-D).
    """

    def __init__(self, grid: CartGrid, ndim: int):
        self.grid, self.ndim = grid, ndim

    def exchange(self, padded: np.ndarray) -> None:
        """Fill the one-cell halo of ``padded`` in place (neighbours, or the Neumann mirror)."""
        from mpi4py import MPI

        comm = self.grid.comm
        for axis in range(self.ndim):
            arr_axis = padded.ndim - self.ndim + axis
            lower, upper = self.grid.neighbours(axis)
            n = padded.shape[arr_axis]

            def face(i):
                sl = [slice(None)] * padded.ndim
                sl[arr_axis] = i
                return tuple(sl)

            send_lo = np.ascontiguousarray(padded[face(1)])       # my first interior layer
            send_hi = np.ascontiguousarray(padded[face(n - 2)])   # my last interior layer
            recv_lo = np.empty_like(send_lo)
            recv_hi = np.empty_like(send_hi)
            requests = [comm.Irecv(recv_lo, source=lower, tag=2 * axis),
                        comm.Irecv(recv_hi, source=upper, tag=2 * axis + 1),
                        comm.Isend(send_lo, dest=lower, tag=2 * axis + 1),
                        comm.Isend(send_hi, dest=upper, tag=2 * axis)]
            MPI.Request.Waitall(requests)
            # Physical boundary: Neumann mirror (ghost = edge value), as in the serial kernel.
            padded[face(0)] = recv_lo if lower != MPI.PROC_NULL else padded[face(1)]
            padded[face(n - 1)] = recv_hi if upper != MPI.PROC_NULL else padded[face(n - 2)]
