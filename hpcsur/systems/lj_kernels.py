"""Numba kernels for the truncated Lennard-Jones pair potential (LAMMPS ``lj/cut``).

Pair potential and force, for a pair at separation ``d = r_i - r_j`` with ``r = |d| < r_c``::

    u(r)  = 4 eps [(sigma/r)^12 - (sigma/r)^6] - u_shift          (u_shift = u(r_c) or 0)
    F_ij  = -du/dr * d/r = 24 eps [2 (sigma/r)^12 - (sigma/r)^6] / r^2 * d   (force on i from j)

The virial of a pair is ``d . F_ij = 24 eps [2 (sigma/r)^12 - (sigma/r)^6]``.

Geometry: a cell grid, per axis one of three modes
--------------------------------------------------
* ``PERIODIC``: the axis is periodic with period ``L`` and has >= 3 cells. Coordinates are
  wrapped into ``[0, L)`` to find their cell, ``cell = floor(w / L * n)``; a neighbour cell across
  the boundary determines the periodic image of its atoms (image ``k = -1, 0, +1``).
* ``MIN_IMAGE``: periodic with fewer than 3 cells; the neighbour stencil is deduplicated and the
  image is found per pair by the minimum-image convention ``d -= L rint(d / L)``.
* ``OPEN``: no periodicity (an MPI sub-domain ``[lo, hi)`` plus a shell of ghost atoms of width
  ``cut`` that the caller has already shifted next to it): cells cover ``[lo - cut, hi + cut)``,
  atoms outside are clamped into the border cells, and there is no image.

A serial periodic box is three ``PERIODIC`` (or ``MIN_IMAGE``) axes; an MPI rank of a ``[2, 1, 1]``
grid is ``OPEN`` along x (ghosts cross the x faces only) and periodic along y and z, so no rank
ever holds ghost copies of its own atoms. Cells have side >= the search cutoff, so every partner
lies in the 27 cells around an atom's cell (the *stencil*).

Local atoms: owned, then ghosts
-------------------------------
Atoms are stored with the *owned* atoms first (local indices ``0 .. n_own - 1``), sorted by cell,
then the *ghosts* (``n_own .. n_local - 1``), also sorted by cell. ``own_start[c] : own_start[c+1]``
and ``ghost_start[c] : ghost_start[c+1]`` are the local index ranges of cell ``c`` (flat index
``(cx * ny + cy) * nz + cz``); a serial box has no ghosts (``NO_GHOSTS``). Sorting is a stable
counting sort (:func:`bin_cells`): ``atoms[slot]`` is the atom in a slot, ``slot_of`` its inverse.

The half Verlet list (:func:`build_half_list`) has one row per owned atom ``a``: first the owned
partners ``b > a`` (each owned pair once: Newton's third law), then the ghost partners (all of them,
or with ``newton`` only the ghosts that the caller marked as this rank's to compute, so that each
pair that crosses two ranks is computed by exactly one of them). Each entry stores a periodic image code, so
the hot force loop (:func:`half_list_forces`) does no rounding. The partial kernel
(:func:`partial_forces_cells`) computes forces on chosen owned atoms only, from the cells around
each, in O(number chosen). Everything is float64 (``fastmath=False``) and serial.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_JIT = dict(cache=True, fastmath=False, nogil=True)

OPEN, PERIODIC, MIN_IMAGE = 0, 1, 2
NO_GHOSTS = np.empty(0, np.int64)  # ``ghost_start`` / ids of a box without ghost atoms


# ----------------------------------------------------------------------------- pair physics
@njit(**_JIT)
def wrap(x, length):
    """Map ``x`` into ``[0, length)`` (guarding the rounding case ``x = -tiny -> length``)."""
    w = x - length * np.floor(x / length)
    if w >= length:
        w -= length
    if w < 0.0:
        w = 0.0
    return w


@njit(**_JIT)
def periodic_cell(w, length, n_cell):
    """Cell index along one axis of a wrapped coordinate ``w`` in ``[0, length)``."""
    c = int(w * n_cell / length)
    if c >= n_cell:
        c = n_cell - 1
    if c < 0:  # only for a non-finite coordinate; keeps indexing in bounds
        c = 0
    return c


@njit(**_JIT)
def offset_range(n_cell):
    """Neighbour-cell offsets ``lo..hi`` along one periodic axis, visiting each cell once even
    when there are fewer than 3 cells (2 cells: offsets 0, 1; 1 cell: offset 0)."""
    if n_cell >= 3:
        return -1, 1
    if n_cell == 2:
        return 0, 1
    return 0, 0


@njit(inline="always", **_JIT)
def pair_terms(r2, sigma2, four_eps, twentyfour_eps):
    """``(F/r, u + u_shift, d . F)`` of one pair at squared distance ``r2 < r_c^2``:
    ``F/r = 24 eps s6 (2 s6 - 1) / r^2``, ``u = 4 eps s6 (s6 - 1)``, with ``s6 = (sigma^2 / r^2)^3``."""
    ir2 = 1.0 / r2
    s2 = sigma2 * ir2
    s6 = s2 * s2 * s2
    pair_virial = twentyfour_eps * s6 * (2.0 * s6 - 1.0)
    return pair_virial * ir2, four_eps * s6 * (s6 - 1.0), pair_virial


def energy_shift(rcut, epsilon, sigma, shift):
    """u(r_c) = 4 eps [(sigma/r_c)^12 - (sigma/r_c)^6] when shifting, else 0."""
    if not shift:
        return 0.0
    s6 = (sigma / rcut) ** 6
    return 4.0 * epsilon * s6 * (s6 - 1.0)


# ----------------------------------------------------------------------------- cell grids
class CellGrid(NamedTuple):
    """A cell grid with one mode per axis (see the module docstring).

    ``mode``, ``n_cell`` (3,) int64; ``origin``, ``length`` (3,) float64: the covered interval
    ``[origin, origin + length)`` per axis (``[0, L)`` on periodic axes); ``box`` (3,) the periodic
    box (for images); ``stencil`` (m, 3) int64 neighbour-cell offsets (27, fewer on ``MIN_IMAGE``
    axes, where each cell must be visited once).
    """

    mode: np.ndarray
    origin: np.ndarray
    length: np.ndarray
    n_cell: np.ndarray
    box: np.ndarray
    stencil: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.n_cell))


def make_grid(box, cut, lo=None, hi=None, periodic=(True, True, True)) -> CellGrid:
    """Cells of side >= ``cut``: ``floor(L / cut)`` per periodic axis (``PERIODIC`` with >= 3
    cells, else ``MIN_IMAGE``); on a non-periodic axis (``OPEN``) they cover ``[lo - cut, hi + cut)``,
    room for a ghost shell of width ``cut``. (Half-size cells with a 125-cell stencil, as LAMMPS
    bins, check fewer pairs but measured ~20 % slower here: the per-cell overhead outweighs the
    saved distance checks.)"""
    box = np.asarray(box, dtype=np.float64)
    mode = np.empty(3, np.int64)
    origin = np.zeros(3)
    length = box.copy()
    n_cell = np.empty(3, np.int64)
    ranges = []
    for axis in range(3):
        if periodic[axis]:
            n = max(1, int(np.floor(box[axis] / cut)))
            mode[axis] = PERIODIC if n >= 3 else MIN_IMAGE
            ranges.append(range(-1, 2) if n >= 3 else range(0, n))
        else:
            origin[axis] = float(lo[axis]) - cut
            length[axis] = float(hi[axis]) - float(lo[axis]) + 2.0 * cut
            n = max(1, int(np.floor(length[axis] / cut)))
            mode[axis] = OPEN
            ranges.append(range(-1, 2))
        n_cell[axis] = n
    stencil = np.array([(ox, oy, oz) for ox in ranges[0] for oy in ranges[1] for oz in ranges[2]], dtype=np.int64)
    return CellGrid(mode, origin, length, n_cell, box, stencil)


@njit(**_JIT)
def axis_cell(x, mode, origin, length, n_cell):
    """Cell index along one axis: periodic axes take a wrapped ``x`` (origin 0); open axes clamp."""
    if mode == OPEN:
        c = int(np.floor((x - origin) / (length / n_cell)))
        if c < 0:
            c = 0
        if c >= n_cell:
            c = n_cell - 1
        return c
    return periodic_cell(x, length, n_cell)


@njit(**_JIT)
def neighbour_axis(c, n_cell, mode):
    """A stencil neighbour coordinate ``c`` (in ``-1..n_cell``) mapped into the grid:
    ``(j, k)`` with ``k`` the periodic image crossed (-1, 0, +1), or ``(-1, 0)`` past an open edge."""
    if c < 0:
        if mode == OPEN:
            return -1, 0
        return c + n_cell, -1
    if c >= n_cell:
        if mode == OPEN:
            return -1, 0
        return c - n_cell, 1
    return c, 0


@njit(**_JIT)
def stencil_cell(cx, cy, cz, offset, nx, ny, nz, mode):
    """The cell at stencil ``offset`` from cell (cx, cy, cz): ``(c2, kx, ky, kz)`` with the periodic
    images crossed per axis, or ``c2 = -1`` past an open edge."""
    jx, kx = neighbour_axis(cx + offset[0], nx, mode[0])
    jy, ky = neighbour_axis(cy + offset[1], ny, mode[1])
    jz, kz = neighbour_axis(cz + offset[2], nz, mode[2])
    if jx < 0 or jy < 0 or jz < 0:
        return -1, kx, ky, kz
    return (jx * ny + jy) * nz + jz, kx, ky, kz


@njit(**_JIT)
def counting_sort(cell_of, n_total):
    """Stable counting sort of atoms by cell: returns ``(cell_start, atoms, slot_of)``."""
    n = cell_of.shape[0]
    cell_start = np.zeros(n_total + 1, np.int64)
    for i in range(n):
        cell_start[cell_of[i] + 1] += 1
    for c in range(n_total):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    atoms = np.empty(n, np.int64)
    slot_of = np.empty(n, np.int64)
    for i in range(n):
        c = cell_of[i]
        atoms[fill[c]] = i
        slot_of[i] = fill[c]
        fill[c] += 1
    return cell_start, atoms, slot_of


@njit(**_JIT)
def cells_of(pos, mode, origin, length, n_cell):
    """Flat cell index of every position in the grid ``(mode, origin, length, n_cell)`` (a
    :class:`CellGrid`), and the positions with periodic coordinates wrapped into ``[0, L)``."""
    n = pos.shape[0]
    placed = np.empty((n, 3))
    cell_of = np.empty(n, np.int64)
    for i in range(n):
        c = 0
        for d in range(3):
            x = pos[i, d]
            if mode[d] != OPEN:
                x = wrap(x, length[d])
            placed[i, d] = x
            c = c * n_cell[d] + axis_cell(x, mode[d], origin[d], length[d], n_cell[d])
        cell_of[i] = c
    return cell_of, placed


@njit(**_JIT)
def bin_cells(pos, mode, origin, length, n_cell):
    """Bin positions into the grid ``(mode, origin, length, n_cell)`` (a :class:`CellGrid`).

    Periodic coordinates are wrapped into ``[0, L)``, open ones kept. Returns ``(cell_start, atoms,
    slot_of, spos)`` with ``spos`` those coordinates in slot order (``spos[s] = pos'[atoms[s]]``).
    The sort is stable, so atoms of one cell keep their input order. Cost O(N + cells).
    """
    cell_of, placed = cells_of(pos, mode, origin, length, n_cell)
    cell_start, atoms, slot_of = counting_sort(cell_of, n_cell[0] * n_cell[1] * n_cell[2])
    return cell_start, atoms, slot_of, in_slot_order(placed, atoms)


@njit(**_JIT)
def wrap_positions(pos, box):
    """A copy of ``pos (n, 3)`` with every coordinate wrapped into ``[0, L)`` (:func:`wrap`)."""
    out = np.empty(pos.shape)
    for i in range(pos.shape[0]):
        for d in range(3):
            out[i, d] = wrap(pos[i, d], box[d])
    return out


@njit(**_JIT)
def in_slot_order(pos, atoms):
    """A copy of ``pos`` permuted into slot (cell-sorted) order: ``out[s] = pos[atoms[s]]``."""
    out = np.empty((atoms.shape[0], 3))
    for s in range(atoms.shape[0]):
        a = atoms[s]
        out[s, 0] = pos[a, 0]
        out[s, 1] = pos[a, 1]
        out[s, 2] = pos[a, 2]
    return out


# ----------------------------------------------------------------------------- Verlet list
# A list entry stores the partner b and an image code 0..26 = (kx+1)*9 + (ky+1)*3 + (kz+1): the
# partner's image used for the pair is pos[b] + (kx Lx, ky Ly, kz Lz). The code is fixed while the
# list lives (atoms move < skin/2 each, box >= 2 (r_c + skin)), so the force loop needs no
# rounding. ``image_shifts(box)`` is the (27, 3) table of those shift vectors.
def image_shifts(box):
    """(27, 3) shift vectors (kx Lx, ky Ly, kz Lz) indexed by image code."""
    k = np.array([(kx, ky, kz) for kx in (-1, 0, 1) for ky in (-1, 0, 1) for kz in (-1, 0, 1)], dtype=np.float64)
    return k * np.asarray(box, dtype=np.float64)


@njit(inline="always", **_JIT)
def _collect_pairs(a, b0, b1, pos, kx, ky, kz, mode, box, inv_box, cut2, min_r2, nbr, image, k, bad):
    """Append the atoms ``b`` in ``[b0, b1)`` within ``sqrt(cut2)`` of atom ``a`` to the list at
    entry ``k`` (entries past the capacity are counted, not stored); returns the new ``k``.

    The pair vector is ``pos[a] - pos[b] - (kx, ky, kz) L`` with the cell image on ``PERIODIC``
    axes, ``rint`` on ``MIN_IMAGE`` axes and no image on ``OPEN`` ones. The first pair closer than
    ``sqrt(min_r2)`` is recorded in ``bad`` (an overlap)."""
    capacity = nbr.shape[0]
    mix = mode[0] == MIN_IMAGE
    miy = mode[1] == MIN_IMAGE
    miz = mode[2] == MIN_IMAGE
    lx, ly, lz = box[0], box[1], box[2]
    xa, ya, za = pos[a, 0], pos[a, 1], pos[a, 2]
    for b in range(b0, b1):
        dx = xa - pos[b, 0]
        dy = ya - pos[b, 1]
        dz = za - pos[b, 2]
        ix = np.rint(dx * inv_box[0]) if mix else float(kx)
        iy = np.rint(dy * inv_box[1]) if miy else float(ky)
        iz = np.rint(dz * inv_box[2]) if miz else float(kz)
        dx -= ix * lx
        dy -= iy * ly
        dz -= iz * lz
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < cut2:
            if r2 < min_r2 and bad[0] < 0:
                bad[0] = a
                bad[1] = b
            if k < capacity:
                nbr[k] = b
                image[k] = (int(ix) + 1) * 9 + (int(iy) + 1) * 3 + (int(iz) + 1)
            k += 1
    return k


@njit(**_JIT)
def build_half_list(pos, own_start, ghost_start, ghost_mid, newton, mode, n_cell, box, stencil, cut2, min_r2,
                    capacity):
    """Half Verlet list of the owned atoms: per owned atom ``a`` the owned partners ``b > a`` and the
    ghost partners within ``sqrt(cut2)`` (cut = r_c + skin), in that order.

    ``pos`` are local positions (owned sorted by cell, then ghosts sorted by cell; periodic axes
    wrapped), ``own_start`` / ``ghost_start`` their cell ranges (``ghost_start`` may be
    ``NO_GHOSTS``), ``(mode, n_cell, box, stencil)`` the :class:`CellGrid`. Within cell ``c`` the
    ghosts ``ghost_start[c] : ghost_mid[c]`` are those whose pairs with owned atoms this rank
    computes under Newton's third law across ranks (the partner rank lists the others). With
    ``newton`` only those are listed; otherwise all ghosts (both ranks compute such a pair).
    Returns ``(nbr_start, nbr_mid, nbr, image, n_pairs, bad_a, bad_b)``: the owned partners of
    ``a`` are ``nbr[nbr_start[a]:nbr_mid[a]]``, its ghost partners ``nbr[nbr_mid[a]:nbr_start[a+1]]``,
    with image codes ``image[...]``; ``n_pairs > capacity`` means the list did not fit (call again
    with ``capacity = n_pairs``); ``bad_a, bad_b`` is the first pair closer than ``sqrt(min_r2)``
    (an overlap), or -1, -1. Cells are visited in order, so rows come out in local order.
    """
    n_own = own_start[own_start.shape[0] - 1]
    has_ghosts = ghost_start.shape[0] > 0
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    inv_box = 1.0 / box
    m = stencil.shape[0]
    nbr_start = np.empty(n_own + 1, np.int64)
    nbr_mid = np.empty(n_own, np.int64)
    nbr = np.empty(capacity, np.int32)
    image = np.empty(capacity, np.uint8)
    near = np.empty(m, np.int64)
    near_k = np.empty((m, 3), np.int64)
    near_ghost = np.empty(m, np.int64)  # the entries of ``near`` whose cell holds ghosts to list
    ghost_end = ghost_mid if newton else ghost_start[1:]
    bad = np.full(2, -1, np.int64)
    k = 0
    for cx in range(nx):
        for cy in range(ny):
            for cz in range(nz):
                c = (cx * ny + cy) * nz + cz
                if own_start[c] == own_start[c + 1]:
                    continue
                count = 0
                count_ghost = 0
                for s in range(m):
                    c2, kx, ky, kz = stencil_cell(cx, cy, cz, stencil[s], nx, ny, nz, mode)
                    if c2 < 0:
                        continue
                    near[count] = c2
                    near_k[count, 0] = kx
                    near_k[count, 1] = ky
                    near_k[count, 2] = kz
                    if has_ghosts and ghost_end[c2] > ghost_start[c2]:
                        near_ghost[count_ghost] = count
                        count_ghost += 1
                    count += 1
                for a in range(own_start[c], own_start[c + 1]):
                    nbr_start[a] = k
                    for q in range(count):
                        c2 = near[q]
                        k = _collect_pairs(a, max(own_start[c2], a + 1), own_start[c2 + 1], pos, near_k[q, 0],
                                           near_k[q, 1], near_k[q, 2], mode, box, inv_box, cut2, min_r2, nbr, image,
                                           k, bad)
                    nbr_mid[a] = k
                    for qg in range(count_ghost):
                        q = near_ghost[qg]
                        c2 = near[q]
                        k = _collect_pairs(a, ghost_start[c2], ghost_end[c2], pos, near_k[q, 0], near_k[q, 1],
                                           near_k[q, 2], mode, box, inv_box, cut2, min_r2, nbr, image, k, bad)
    nbr_start[n_own] = k
    return nbr_start, nbr_mid, nbr, image, k, bad[0], bad[1]


class HalfList(NamedTuple):
    """A half Verlet list (see :func:`build_half_list`) and the first overlapping pair (-1, -1 if none)."""

    nbr_start: np.ndarray
    nbr_mid: np.ndarray
    nbr: np.ndarray
    image: np.ndarray
    bad_a: int
    bad_b: int


def half_list(pos, own_start, grid: CellGrid, cut, ghost_start=NO_GHOSTS, ghost_mid=NO_GHOSTS, newton=False,
              min_r2=-1.0, capacity=0) -> HalfList:
    """:func:`build_half_list` with a capacity that grows until the list fits (a first guess of
    ``capacity``, else 16 partners per owned atom)."""
    capacity = max(int(capacity), 16 * int(own_start[-1]), 16)
    while True:
        nbr_start, nbr_mid, nbr, image, n_pairs, bad_a, bad_b = build_half_list(
            pos, own_start, ghost_start, ghost_mid, bool(newton), grid.mode, grid.n_cell, grid.box, grid.stencil,
            float(cut) ** 2, float(min_r2), capacity)
        if n_pairs <= capacity:
            return HalfList(nbr_start, nbr_mid, nbr[:n_pairs], image[:n_pairs], int(bad_a), int(bad_b))
        capacity = int(n_pairs * 1.2) + 16


@njit(inline="always", **_JIT)
def _list_segment(xa, ya, za, k0, k1, pos, nbr, image, shifts, rc2, sigma2, four_eps, twentyfour_eps, f,
                  fxa, fya, fza, energy, virial, n_in):
    """Pairs ``nbr[k0:k1]`` of one atom at ``(xa, ya, za)``: add each pair force to the running
    sums ``(fxa, fya, fza)`` and subtract it from ``f[b]`` (Newton's third law); likewise the
    running energy, virial and count of pairs inside r_c. Returns the updated running values."""
    for k in range(k0, k1):
        b = nbr[k]
        c = image[k]
        dx = xa - pos[b, 0] - shifts[c, 0]
        dy = ya - pos[b, 1] - shifts[c, 1]
        dz = za - pos[b, 2] - shifts[c, 2]
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < rc2:
            fr, u, w = pair_terms(r2, sigma2, four_eps, twentyfour_eps)
            energy += u
            virial += w
            n_in += 1
            fx = fr * dx
            fy = fr * dy
            fz = fr * dz
            fxa += fx
            fya += fy
            fza += fz
            f[b, 0] -= fx
            f[b, 1] -= fy
            f[b, 2] -= fz
    return fxa, fya, fza, energy, virial, n_in


@njit(**_JIT)
def half_list_forces(pos, nbr_start, nbr_mid, nbr, image, shifts, rc2, epsilon, sigma2, u_shift, ghost_weight, f):
    """Forces from a half list (Newton's third law), written into ``f`` (all local atoms, zeroed
    here; rows of ghosts receive the reaction forces of their pairs).

    ``pos`` are the positions in the frame the list was built in (build-time positions plus the
    displacement since); the pair vector is ``pos[a] - pos[b] - shifts[image]``. Returns ``(U, W)``:
    the potential energy and virial ``sum d . F`` of the listed pairs inside r_c, pairs with a
    ghost weighted by ``ghost_weight`` (1/2 when both ranks compute such a pair, 1 when one does).
    Serial on purpose: the scattered ``f[b] -= ...`` writes would race under ``prange``.
    """
    four_eps = 4.0 * epsilon
    twentyfour_eps = 24.0 * epsilon
    f[:, :] = 0.0
    e_own = 0.0
    w_own = 0.0
    n_own = 0
    e_ghost = 0.0
    w_ghost = 0.0
    n_ghost = 0
    for a in range(nbr_start.shape[0] - 1):
        xa, ya, za = pos[a, 0], pos[a, 1], pos[a, 2]
        fxa, fya, fza, e_own, w_own, n_own = _list_segment(
            xa, ya, za, nbr_start[a], nbr_mid[a], pos, nbr, image, shifts, rc2, sigma2, four_eps, twentyfour_eps,
            f, 0.0, 0.0, 0.0, e_own, w_own, n_own)
        fxa, fya, fza, e_ghost, w_ghost, n_ghost = _list_segment(
            xa, ya, za, nbr_mid[a], nbr_start[a + 1], pos, nbr, image, shifts, rc2, sigma2, four_eps,
            twentyfour_eps, f, fxa, fya, fza, e_ghost, w_ghost, n_ghost)
        f[a, 0] += fxa
        f[a, 1] += fya
        f[a, 2] += fza
    energy = (e_own - n_own * u_shift) + ghost_weight * (e_ghost - n_ghost * u_shift)
    return energy, w_own + ghost_weight * w_ghost


# ----------------------------------------------------------------------------- integration
@njit(**_JIT)
def gather_slots(pos, atoms, offset, spos):
    """``spos[s] = pos[atoms[s]] - offset[s]``: positions in slot (cell-sorted) order, moved by
    whole box vectors (``offset``, fixed at list build) into the frame the list was built in."""
    for s in range(atoms.shape[0]):
        a = atoms[s]
        spos[s, 0] = pos[a, 0] - offset[s, 0]
        spos[s, 1] = pos[a, 1] - offset[s, 1]
        spos[s, 2] = pos[a, 2] - offset[s, 2]


@njit(**_JIT)
def frame_offsets(pos, atoms, spos):
    """``offset[s] = pos[atoms[s]] - spos[s]`` (whole box vectors between raw and wrapped)."""
    n = atoms.shape[0]
    offset = np.empty((n, 3))
    for s in range(n):
        a = atoms[s]
        for c in range(3):
            offset[s, c] = pos[a, c] - spos[s, c]
    return offset


@njit(**_JIT)
def kick_drift(r, v, forces, dt, inv_mass, r_out, v_out, ref_pos, half_skin2):
    """First half of velocity Verlet: ``v' = v + dt/2 F/m``, ``r' = r + dt v'`` into ``r_out``,
    ``v_out`` (arrays (n, 3); the same arrays as ``r``, ``v`` to update in place).

    Returns True when some atom has moved farther than ``sqrt(half_skin2)`` from ``ref_pos`` (its
    position when the list was built): rebuild then. Positions are never wrapped.
    """
    half = 0.5 * dt * inv_mass
    exceeded = False
    for a in range(r.shape[0]):
        d2 = 0.0
        for c in range(3):
            vc = v[a, c] + half * forces[a, c]
            rc = r[a, c] + dt * vc
            v_out[a, c] = vc
            r_out[a, c] = rc
            d = rc - ref_pos[a, c]
            d2 += d * d
        if d2 > half_skin2:
            exceeded = True
    return exceeded


@njit(**_JIT)
def forces_and_kick(x_out, atoms, offset, spos, f_slots, nbr_start, nbr_mid, nbr, image, shifts, rc2, epsilon,
                    sigma2, u_shift, forces, dt, inv_mass):
    """Second half of velocity Verlet (serial box), fused: gather positions of ``x_out`` into slot
    order, compute forces from the half list, scatter them to atom order into ``forces`` and kick
    ``v <- v + dt/2 F/m`` in ``x_out``. Returns ``(U, W)``."""
    n = atoms.shape[0]
    n3 = 3 * n
    pos = x_out[:n3].reshape((n, 3))
    gather_slots(pos, atoms, offset, spos)
    energy, virial = half_list_forces(spos, nbr_start, nbr_mid, nbr, image, shifts, rc2, epsilon, sigma2, u_shift,
                                      1.0, f_slots)
    half = 0.5 * dt * inv_mass
    for s in range(n):
        a = atoms[s]
        for c in range(3):
            fc = f_slots[s, c]
            forces[a, c] = fc
            x_out[n3 + 3 * a + c] += half * fc
    return energy, virial


@njit(**_JIT)
def take_rows(src, rows, shift, out):
    """``out[m] = src[rows[m]] + shift`` (packing ghost positions for a neighbour rank)."""
    for m in range(rows.shape[0]):
        r = rows[m]
        out[m, 0] = src[r, 0] + shift[0]
        out[m, 1] = src[r, 1] + shift[1]
        out[m, 2] = src[r, 2] + shift[2]


@njit(**_JIT)
def put_rows(dst, rows, src, add):
    """``dst[rows[m]] = src[m]``, or ``+=`` with ``add`` (unpacking ghost positions / forces)."""
    for m in range(rows.shape[0]):
        r = rows[m]
        if add:
            dst[r, 0] += src[m, 0]
            dst[r, 1] += src[m, 1]
            dst[r, 2] += src[m, 2]
        else:
            dst[r, 0] = src[m, 0]
            dst[r, 1] = src[m, 1]
            dst[r, 2] = src[m, 2]


@njit(**_JIT)
def scatter_slots(f_slots, atoms, out):
    """``out[atoms[s]] = f_slots[s]``: back from slot order to atom order."""
    for s in range(atoms.shape[0]):
        a = atoms[s]
        out[a, 0] = f_slots[s, 0]
        out[a, 1] = f_slots[s, 1]
        out[a, 2] = f_slots[s, 2]


# ----------------------------------------------------------------------------- partial forces
@njit(**_JIT)
def _cell_pair_forces(b0, b1, skip, xa, ya, za, pos, box, inv_box, mix, miy, miz, rc2, sigma2, four_eps,
                      twentyfour_eps):
    """Sum of pair forces on a particle at ``(xa, ya, za)`` from atoms ``b0..b1-1`` except ``skip``.
    ``mix, miy, miz``: apply ``d -= L rint(d / L)`` on that axis (``MIN_IMAGE``); on the other axes
    the caller has already moved the particle into the frame of the cell (its image shift), which
    saves the rounding in the inner loop. Returns ``(fx, fy, fz, min r2)``."""
    fx = 0.0
    fy = 0.0
    fz = 0.0
    close = np.inf
    for b in range(b0, b1):
        if b == skip:
            continue
        dx = xa - pos[b, 0]
        dy = ya - pos[b, 1]
        dz = za - pos[b, 2]
        if mix:
            dx -= box[0] * np.rint(dx * inv_box[0])
        if miy:
            dy -= box[1] * np.rint(dy * inv_box[1])
        if miz:
            dz -= box[2] * np.rint(dz * inv_box[2])
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < rc2:
            if r2 < close:
                close = r2
            fr, _, _ = pair_terms(r2, sigma2, four_eps, twentyfour_eps)
            fx += fr * dx
            fy += fr * dy
            fz += fr * dz
    return fx, fy, fz, close


@njit(**_JIT)
def partial_forces_cells(rows, pos, own_start, ghost_start, mode, n_cell, box, stencil, rc2, epsilon, sigma2):
    """Forces on the owned atoms ``rows`` (local indices) only, from the stencil cells around each
    (full neighbour search over owned and ghost atoms, no Newton's third law). Cost O(len(rows)):
    nothing proportional to N is touched or allocated.

    ``pos``, ``own_start``, ``ghost_start`` and the grid are as in :func:`build_half_list`; the
    cells may be those of an earlier binning (list build) as long as no atom has moved by more than
    (cell side - r_c) / 2 since: a row's cell is where it was binned. Returns ``(F (k, 3),
    close (k,))`` with ``close[m]`` the smallest squared neighbour distance of row ``m``.
    """
    k = rows.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    inv_box = 1.0 / box
    mix = mode[0] == MIN_IMAGE
    miy = mode[1] == MIN_IMAGE
    miz = mode[2] == MIN_IMAGE
    has_ghosts = ghost_start.shape[0] > 0
    four_eps = 4.0 * epsilon
    twentyfour_eps = 24.0 * epsilon
    out = np.empty((k, 3))
    close = np.empty(k)
    for m in range(k):
        a = rows[m]
        c = np.searchsorted(own_start, a, side="right") - 1
        cz = c % nz
        cy = (c // nz) % ny
        cx = c // (nz * ny)
        xa, ya, za = pos[a, 0], pos[a, 1], pos[a, 2]
        fxa = 0.0
        fya = 0.0
        fza = 0.0
        nearest = np.inf
        for s in range(stencil.shape[0]):
            c2, kx, ky, kz = stencil_cell(cx, cy, cz, stencil[s], nx, ny, nz, mode)
            if c2 < 0:
                continue
            sx = kx * box[0] if mode[0] == PERIODIC else 0.0
            sy = ky * box[1] if mode[1] == PERIODIC else 0.0
            sz = kz * box[2] if mode[2] == PERIODIC else 0.0
            fx, fy, fz, near = _cell_pair_forces(own_start[c2], own_start[c2 + 1], a, xa - sx, ya - sy, za - sz, pos,
                                                 box, inv_box, mix, miy, miz, rc2, sigma2, four_eps, twentyfour_eps)
            fxa += fx
            fya += fy
            fza += fz
            nearest = min(nearest, near)
            if has_ghosts:
                fx, fy, fz, near = _cell_pair_forces(ghost_start[c2], ghost_start[c2 + 1], -1, xa - sx, ya - sy,
                                                     za - sz, pos, box, inv_box, mix, miy, miz, rc2, sigma2, four_eps,
                                                     twentyfour_eps)
                fxa += fx
                fya += fy
                fza += fz
                nearest = min(nearest, near)
        out[m, 0] = fxa
        out[m, 1] = fya
        out[m, 2] = fza
        close[m] = nearest
    return out, close


# ----------------------------------------------------------------------------- open (ghost) geometry, one shot
class OpenCells(NamedTuple):
    """A binning of positions on an all-``OPEN`` grid (see :func:`bin_open_box`)."""

    cell_start: np.ndarray
    atoms: np.ndarray
    slot_of: np.ndarray
    spos: np.ndarray
    grid: CellGrid


def open_grid(lo, hi, rcut) -> CellGrid:
    """An all-``OPEN`` grid over ``[lo - rcut, hi + rcut)`` with cells of side >= ``rcut``."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return make_grid(hi - lo + 2.0 * rcut, rcut, lo, hi, periodic=(False, False, False))


def bin_open_box(pos, lo, hi, rcut) -> OpenCells:
    """Bin positions ``pos (n, 3)`` (owned + ghosts) on the open grid of ``[lo, hi)``; pass the
    result as ``cells`` to :func:`partial_forces_open` to reuse it across partial calls."""
    grid = open_grid(lo, hi, rcut)
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    cell_start, atoms, slot_of, spos = bin_cells(pos, grid.mode, grid.origin, grid.length, grid.n_cell)
    return OpenCells(cell_start, atoms, slot_of, spos, grid)


def forces_open(pos, n_owned, lo, hi, rcut, epsilon=1.0, sigma=1.0, shift=False):
    """Ghost-aware lj/cut forces for one sub-box, no periodicity (a one-shot reference of the
    decomposed path: the same list and force kernels on an all-``OPEN`` grid, both ranks computing
    each pair that crosses them).

    Parameters
    ----------
    pos : (n_owned + n_ghost, 3) float64
        Owned atoms first, then ghost atoms, the ghosts already shifted by the periodic box
        vectors so that they sit next to the sub-box ``[lo, hi)`` (within ``rcut`` of it).
    n_owned : int
        Number of owned atoms (forces are computed for ``pos[:n_owned]`` only).
    lo, hi : (3,) floats
        Sub-box corners. The cell grid spans ``[lo - rcut, hi + rcut)``.
    rcut, epsilon, sigma, shift
        lj/cut parameters (``shift`` subtracts u(r_c) from every pair energy).

    Returns
    -------
    F : (n_owned, 3) forces on the owned atoms.
    energy : float, sum over owned i of 1/2 sum_j u(r_ij): owned-owned pairs count fully,
        owned-ghost pairs half (summed over ranks this gives the total potential energy).
    virial : float, the same split of sum r_ij . F_ij.
    min_dist : float, the smallest pair distance of an owned atom (for overlap checks), inf if none.
    """
    n_owned = int(n_owned)
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    grid = open_grid(lo, hi, rcut)
    g = (grid.mode, grid.origin, grid.length, grid.n_cell)
    own_start, own_atoms, _, own_pos = bin_cells(pos[:n_owned], *g)
    ghost_start, _, _, ghost_pos = bin_cells(pos[n_owned:], *g)
    local = np.concatenate([own_pos, ghost_pos])
    ghost_start = ghost_start + n_owned
    hl = half_list(local, own_start, grid, rcut, ghost_start)
    f_local = np.empty_like(local)
    energy, virial = half_list_forces(local, hl.nbr_start, hl.nbr_mid, hl.nbr, hl.image, image_shifts(grid.box),
                                      rcut * rcut, float(epsilon), float(sigma) ** 2,
                                      energy_shift(rcut, epsilon, sigma, shift), 0.5, f_local)
    forces = np.empty((n_owned, 3))
    forces[own_atoms] = f_local[:n_owned]
    _, close = partial_forces_cells(np.arange(n_owned), local, own_start, ghost_start, grid.mode, grid.n_cell,
                                    grid.box, grid.stencil, rcut * rcut, float(epsilon), float(sigma) ** 2)
    min_dist = float(np.sqrt(close.min())) if n_owned else np.inf
    return forces, float(energy), float(virial), min_dist


def partial_forces_open(pos, idx, lo, hi, rcut, epsilon=1.0, sigma=1.0, cells: OpenCells | None = None):
    """Forces on the atoms ``idx`` (indices into ``pos``) from all other atoms of ``pos``, in the
    open geometry of :func:`forces_open`. ``cells = bin_open_box(pos, lo, hi, rcut)`` reuses one
    binning for many calls (the call is then O(len(idx))). Returns ``(F (k, 3), min_dist)``."""
    if cells is None:
        cells = bin_open_box(pos, lo, hi, rcut)
    grid = cells.grid
    rows = cells.slot_of[np.asarray(idx, dtype=np.int64)]
    f, close = partial_forces_cells(rows, cells.spos, cells.cell_start, NO_GHOSTS, grid.mode, grid.n_cell, grid.box,
                                    grid.stencil, rcut * rcut, float(epsilon), float(sigma) ** 2)
    min_dist = float(np.sqrt(close.min())) if len(rows) else np.inf
    return f, min_dist


# ----------------------------------------------------------------------------- initial conditions
@njit(**_JIT)
def insert_candidates(out, n_placed, candidates, box, min_d2, n_cell, head, next_atom):
    """Random sequential addition: append each candidate (in order) to ``out`` unless it lies
    closer than ``sqrt(min_d2)`` (minimum image) to an atom already placed. ``head``/``next_atom``
    form a linked-list cell grid (cells of side >= min distance) updated in place.
    Returns ``(n_placed, n_candidates_used)``."""
    n = out.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    ox0, ox1 = offset_range(nx)
    oy0, oy1 = offset_range(ny)
    oz0, oz1 = offset_range(nz)
    used = 0
    for m in range(candidates.shape[0]):
        if n_placed >= n:
            break
        used += 1
        x, y, z = candidates[m, 0], candidates[m, 1], candidates[m, 2]
        cx = periodic_cell(x, box[0], nx)
        cy = periodic_cell(y, box[1], ny)
        cz = periodic_cell(z, box[2], nz)
        ok = True
        for ox in range(ox0, ox1 + 1):
            for oy in range(oy0, oy1 + 1):
                for oz in range(oz0, oz1 + 1):
                    c = (((cx + ox) % nx) * ny + (cy + oy) % ny) * nz + (cz + oz) % nz
                    j = head[c]
                    while j >= 0 and ok:
                        dx = x - out[j, 0]
                        dy = y - out[j, 1]
                        dz = z - out[j, 2]
                        dx -= box[0] * np.rint(dx / box[0])
                        dy -= box[1] * np.rint(dy / box[1])
                        dz -= box[2] * np.rint(dz / box[2])
                        if dx * dx + dy * dy + dz * dz < min_d2:
                            ok = False
                        j = next_atom[j]
        if ok:
            out[n_placed, 0] = x
            out[n_placed, 1] = y
            out[n_placed, 2] = z
            c = (cx * ny + cy) * nz + cz
            next_atom[n_placed] = head[c]
            head[c] = n_placed
            n_placed += 1
    return n_placed, used
