"""Numba kernels for the truncated Lennard-Jones pair potential (LAMMPS ``lj/cut``).

Pair potential and force, for a pair at separation ``d = r_i - r_j`` with ``r = |d| < r_c``::

    u(r)  = 4 eps [(sigma/r)^12 - (sigma/r)^6] - u_shift          (u_shift = u(r_c) or 0)
    F_ij  = -du/dr * d/r = 24 eps [2 (sigma/r)^12 - (sigma/r)^6] / r^2 * d   (force on i from j)

The virial of a pair is ``d . F_ij = 24 eps [2 (sigma/r)^12 - (sigma/r)^6]``.

Two geometries:

* **periodic** (orthorhombic box ``[0, L)``, minimum image ``d -= L * rint(d / L)``). Positions
  may lie anywhere (the state keeps them unwrapped); they are wrapped only to find their cell,
  ``cell = floor(x / L * n_cell) mod n_cell``.
* **open** (MPI sub-domain ``[lo, hi)`` plus a shell of ghost atoms that the caller has already
  shifted next to the sub-box): no minimum image, a non-periodic cell grid spanning
  ``[lo - r_c, hi + r_c]``; atoms outside it are clamped into the border cells.

Cell lists are built by a counting sort: ``cell_start[c] : cell_start[c + 1]`` are the *slots* of
cell ``c``; ``atoms[slot]`` is the atom in a slot, ``slot_of[atom]`` its inverse, and
``spos[slot]`` the (wrapped) position stored in slot order so that a cell's atoms are contiguous
in memory. The Verlet list is a half list (pairs b > a only, Newton's third law) stored as CSR
arrays plus a per-pair periodic image code, so the hot force loop does no rounding. Everything is
float64 (``fastmath=False``); all kernels are serial except :func:`open_forces_kernel`
(``parallel=True``, one writer per owned atom, so race-free; it honours ``NUMBA_NUM_THREADS``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = dict(cache=True, fastmath=False, nogil=True)


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


# ----------------------------------------------------------------------------- binning
@njit(**_JIT)
def _counting_sort(cell_of, n_total):
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
def bin_periodic(pos, box, n_cell):
    """Bin positions (anywhere in space) into a periodic ``n_cell`` grid over ``[0, box)``.

    Returns ``(cell_start, atoms, slot_of, spos)`` with ``spos`` the wrapped positions in slot
    order. Cell ``(cx, cy, cz)`` has flat index ``(cx * ny + cy) * nz + cz``. Cost O(N + cells).
    """
    n = pos.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    wrapped = np.empty((n, 3))
    cell_of = np.empty(n, np.int64)
    for i in range(n):
        wx = wrap(pos[i, 0], box[0])
        wy = wrap(pos[i, 1], box[1])
        wz = wrap(pos[i, 2], box[2])
        wrapped[i, 0] = wx
        wrapped[i, 1] = wy
        wrapped[i, 2] = wz
        cx = periodic_cell(wx, box[0], nx)
        cy = periodic_cell(wy, box[1], ny)
        cz = periodic_cell(wz, box[2], nz)
        cell_of[i] = (cx * ny + cy) * nz + cz
    cell_start, atoms, slot_of = _counting_sort(cell_of, nx * ny * nz)
    return cell_start, atoms, slot_of, _in_slot_order(wrapped, atoms)


@njit(**_JIT)
def _in_slot_order(pos, atoms):
    """A copy of ``pos`` permuted into slot (cell-sorted) order: ``out[s] = pos[atoms[s]]``."""
    out = np.empty((atoms.shape[0], 3))
    for s in range(atoms.shape[0]):
        a = atoms[s]
        out[s, 0] = pos[a, 0]
        out[s, 1] = pos[a, 1]
        out[s, 2] = pos[a, 2]
    return out


@njit(**_JIT)
def open_cell(x, origin, cell_len, n_cell):
    """Cell index along one axis of a non-periodic grid; outside points clamp to border cells."""
    c = int(np.floor((x - origin) / cell_len))
    if c < 0:
        c = 0
    if c >= n_cell:
        c = n_cell - 1
    return c


@njit(**_JIT)
def bin_open(pos, origin, cell_len, n_cell):
    """Bin positions into a non-periodic grid starting at ``origin`` with cells ``cell_len``.

    Returns ``(cell_start, atoms, slot_of, spos)`` (``spos``: raw positions in slot order).
    """
    n = pos.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    cell_of = np.empty(n, np.int64)
    for i in range(n):
        cx = open_cell(pos[i, 0], origin[0], cell_len[0], nx)
        cy = open_cell(pos[i, 1], origin[1], cell_len[1], ny)
        cz = open_cell(pos[i, 2], origin[2], cell_len[2], nz)
        cell_of[i] = (cx * ny + cy) * nz + cz
    cell_start, atoms, slot_of = _counting_sort(cell_of, nx * ny * nz)
    return cell_start, atoms, slot_of, _in_slot_order(pos, atoms)


# ----------------------------------------------------------------------------- Verlet list
# A list entry stores the partner slot b and an image code 0..26 = (kx+1)*9 + (ky+1)*3 + (kz+1):
# the partner's image used for the pair is spos[b] + (kx Lx, ky Ly, kz Lz). The code is fixed
# while the list lives (atoms move < skin/2 each, box >= 2 (r_c + skin)), so the force loop
# needs no rounding. ``image_shifts(box)`` is the (27, 3) table of those shift vectors.
def image_shifts(box):
    """(27, 3) shift vectors (kx Lx, ky Ly, kz Lz) indexed by image code."""
    k = np.array([(kx, ky, kz) for kx in (-1, 0, 1) for ky in (-1, 0, 1) for kz in (-1, 0, 1)], dtype=np.float64)
    return k * np.asarray(box, dtype=np.float64)


@njit(**_JIT)
def _image_index(c, n_cell):
    """Wrap neighbour-cell coordinate ``c`` in ``-1..n_cell``: ``(wrapped, k)`` with k the image."""
    if c < 0:
        return c + n_cell, -1
    if c >= n_cell:
        return c - n_cell, 1
    return c, 0


def list_grid(box, list_cut):
    """Cell grid and stencil for building a Verlet list with cutoff ``list_cut``: cells of side
    >= list_cut and the 27 neighbour cells (deduplicated when an axis has fewer than 3 cells).

    (Half-size cells with a 125-cell stencil, as LAMMPS bins, check fewer pairs but measured
    ~20 % slower here: the per-cell overhead outweighs the saved distance checks.)
    Returns ``(n_cell (3,), stencil (m, 3) int64 cell offsets, min_image)``; ``min_image`` is
    True when a neighbour cell no longer determines the periodic image (deduplicated stencil).
    """
    box = np.asarray(box, dtype=np.float64)
    n_cell = np.maximum(1, np.floor(box / list_cut)).astype(np.int64)
    ranges = [range(-1, 2) if n >= 3 else range(0, int(n)) for n in n_cell]
    stencil = np.array([(ox, oy, oz) for ox in ranges[0] for oy in ranges[1] for oz in ranges[2]], dtype=np.int64)
    return n_cell, stencil, bool(np.any(n_cell < 3))


@njit(**_JIT)
def build_half_list(spos, cell_start, box, n_cell, stencil, min_image, list_cut2, min_r2, capacity):
    """Half Verlet list over slots: for each slot ``a`` the slots ``b > a`` within ``list_cut``.

    ``spos`` are wrapped positions in slot order from :func:`bin_periodic` on the grid of
    :func:`list_grid` (``n_cell``, ``stencil``, ``min_image``). Returns ``(nbr_start, nbr, image,
    n_pairs, bad_a, bad_b)``: partners ``nbr[nbr_start[a]:nbr_start[a+1]]`` with image codes
    ``image[...]`` (see above); ``n_pairs > capacity`` means the list did not fit (call again with
    ``capacity = n_pairs``). ``bad_a, bad_b`` is the first slot pair closer than ``sqrt(min_r2)``
    (an overlap), or -1, -1. Only ``b > a`` is stored, so every pair appears once (Newton's third
    law in the force loop).
    """
    n = spos.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    lx, ly, lz = box[0], box[1], box[2]
    ilx, ily, ilz = 1.0 / lx, 1.0 / ly, 1.0 / lz
    nbr_start = np.empty(n + 1, np.int64)
    nbr = np.empty(capacity, np.int32)
    image = np.empty(capacity, np.uint8)
    k = 0
    bad_a = -1
    bad_b = -1
    for a in range(n):
        nbr_start[a] = k
        xa, ya, za = spos[a, 0], spos[a, 1], spos[a, 2]
        cx = periodic_cell(xa, lx, nx)
        cy = periodic_cell(ya, ly, ny)
        cz = periodic_cell(za, lz, nz)
        for m in range(stencil.shape[0]):
            jx, kx = _image_index(cx + stencil[m, 0], nx)
            jy, ky = _image_index(cy + stencil[m, 1], ny)
            jz, kz = _image_index(cz + stencil[m, 2], nz)
            c = (jx * ny + jy) * nz + jz
            b0 = cell_start[c]
            if b0 <= a:
                b0 = a + 1
            for b in range(b0, cell_start[c + 1]):
                dx = xa - spos[b, 0]
                dy = ya - spos[b, 1]
                dz = za - spos[b, 2]
                if min_image:
                    ix = np.rint(dx * ilx)
                    iy = np.rint(dy * ily)
                    iz = np.rint(dz * ilz)
                else:
                    ix = float(kx)
                    iy = float(ky)
                    iz = float(kz)
                dx -= ix * lx
                dy -= iy * ly
                dz -= iz * lz
                r2 = dx * dx + dy * dy + dz * dz
                if r2 < list_cut2:
                    if r2 < min_r2 and bad_a < 0:
                        bad_a = a
                        bad_b = b
                    if k < capacity:
                        nbr[k] = b
                        image[k] = (int(ix) + 1) * 9 + (int(iy) + 1) * 3 + (int(iz) + 1)
                    k += 1
    nbr_start[n] = k
    return nbr_start, nbr, image, k, bad_a, bad_b


@njit(**_JIT)
def half_list_forces(spos, nbr_start, nbr, image, shifts, rc2, epsilon, sigma2, u_shift, f):
    """Forces from a half list (Newton's third law), written into ``f`` (slot order, zeroed here).

    ``spos`` are positions in slot order in the frame the list was built in (build-time wrapped
    positions plus the displacement since); the pair vector is ``spos[a] - spos[b] - shifts[image]``.
    Returns ``(U, W)``: potential energy sum_{i<j} u(r_ij) and virial sum_{i<j} d_ij . F_ij.
    Serial on purpose: the scattered ``f[b] -= ...`` writes would race under ``prange``.
    """
    n = spos.shape[0]
    four_eps = 4.0 * epsilon
    twentyfour_eps = 24.0 * epsilon
    f[:, :] = 0.0
    energy = 0.0
    virial = 0.0
    n_in = 0
    for a in range(n):
        xa, ya, za = spos[a, 0], spos[a, 1], spos[a, 2]
        fxa = 0.0
        fya = 0.0
        fza = 0.0
        for k in range(nbr_start[a], nbr_start[a + 1]):
            b = nbr[k]
            c = image[k]
            dx = xa - spos[b, 0] - shifts[c, 0]
            dy = ya - spos[b, 1] - shifts[c, 1]
            dz = za - spos[b, 2] - shifts[c, 2]
            r2 = dx * dx + dy * dy + dz * dz
            if r2 < rc2:
                ir2 = 1.0 / r2
                s2 = sigma2 * ir2
                s6 = s2 * s2 * s2
                pair_virial = twentyfour_eps * s6 * (2.0 * s6 - 1.0)
                fr = pair_virial * ir2
                energy += four_eps * s6 * (s6 - 1.0)
                virial += pair_virial
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
        f[a, 0] += fxa
        f[a, 1] += fya
        f[a, 2] += fza
    return energy - n_in * u_shift, virial


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
def kick_drift(x, forces, dt, inv_mass, x_out, ref_pos, half_skin2):
    """First half of velocity Verlet: ``v' = v + dt/2 F/m``, ``r' = r + dt v'`` into ``x_out``.

    ``x = [r (3n), v (3n)]`` flat. Returns True when some atom has moved farther than
    ``sqrt(half_skin2)`` from ``ref_pos`` (its position when the list was built): rebuild then.
    Positions are never wrapped.
    """
    n3 = forces.size
    ff = forces.reshape(n3)
    rf = ref_pos.reshape(n3)
    half = 0.5 * dt * inv_mass
    exceeded = False
    for a in range(n3 // 3):
        d2 = 0.0
        for c in range(3):
            i = 3 * a + c
            v = x[n3 + i] + half * ff[i]
            r = x[i] + dt * v
            x_out[n3 + i] = v
            x_out[i] = r
            d = r - rf[i]
            d2 += d * d
        if d2 > half_skin2:
            exceeded = True
    return exceeded


@njit(**_JIT)
def forces_and_kick(x_out, atoms, offset, spos, f_slots, nbr_start, nbr, image, shifts, rc2, epsilon, sigma2,
                    u_shift, forces, dt, inv_mass):
    """Second half of velocity Verlet, fused: gather positions of ``x_out`` into slot order,
    compute forces from the half list, scatter them to atom order into ``forces`` and kick
    ``v <- v + dt/2 F/m`` in ``x_out``. Returns ``(U, W)``."""
    n = atoms.shape[0]
    n3 = 3 * n
    pos = x_out[:n3].reshape((n, 3))
    gather_slots(pos, atoms, offset, spos)
    energy, virial = half_list_forces(spos, nbr_start, nbr, image, shifts, rc2, epsilon, sigma2, u_shift, f_slots)
    half = 0.5 * dt * inv_mass
    for s in range(n):
        a = atoms[s]
        for c in range(3):
            fc = f_slots[s, c]
            forces[a, c] = fc
            x_out[n3 + 3 * a + c] += half * fc
    return energy, virial


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
def neighbour_cell(c, n_cell, length):
    """Wrap a neighbour-cell coordinate ``c`` (in ``-1..n_cell``) into the grid and return
    ``(wrapped, image_shift)``: atoms of that cell, seen from the central cell, sit at their
    stored (wrapped) position + ``image_shift`` (valid when ``n_cell >= 3``)."""
    if c < 0:
        return c + n_cell, -length
    if c >= n_cell:
        return c - n_cell, length
    return c, 0.0


@njit(**_JIT)
def _cell_pair_forces(b0, b1, skip, xa, ya, za, spos, box, ilx, ily, ilz, min_image, rc2, epsilon, sigma2):
    """Sum of pair forces on a particle at ``(xa, ya, za)`` from slots ``b0..b1-1`` except
    ``skip``. ``min_image``: apply d -= L rint(d / L) per pair (needed only with < 3 cells);
    otherwise the caller has already moved the particle into the frame of the cell (per-cell
    image shift), which saves the rounding in the inner loop. Returns ``(fx, fy, fz, min r2)``."""
    fx = 0.0
    fy = 0.0
    fz = 0.0
    close = np.inf
    twentyfour_eps = 24.0 * epsilon
    for b in range(b0, b1):
        if b == skip:
            continue
        dx = xa - spos[b, 0]
        dy = ya - spos[b, 1]
        dz = za - spos[b, 2]
        if min_image:
            dx -= box[0] * np.rint(dx * ilx)
            dy -= box[1] * np.rint(dy * ily)
            dz -= box[2] * np.rint(dz * ilz)
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < rc2:
            if r2 < close:
                close = r2
            ir2 = 1.0 / r2
            s2 = sigma2 * ir2
            s6 = s2 * s2 * s2
            fr = twentyfour_eps * s6 * (2.0 * s6 - 1.0) * ir2
            fx += fr * dx
            fy += fr * dy
            fz += fr * dz
    return fx, fy, fz, close


@njit(**_JIT)
def partial_forces_periodic(idx, cell_start, slot_of, spos, box, n_cell, rc2, epsilon, sigma2):
    """Forces on the atoms ``idx`` only, from the 27 cells around each (full neighbour search,
    no Newton's third law). Cost O(len(idx)): nothing proportional to N is touched or allocated.

    Arguments come from :func:`bin_periodic` with cells of side >= r_c. Returns
    ``(F (k, 3), close (k,))`` with ``close[m]`` the smallest squared neighbour distance of
    atom ``idx[m]`` (for the overlap check).
    """
    k = idx.shape[0]
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    lx, ly, lz = box[0], box[1], box[2]
    ilx, ily, ilz = 1.0 / lx, 1.0 / ly, 1.0 / lz
    # with >= 3 cells per axis each neighbour cell has one image shift; otherwise the stencil
    # is deduplicated and the image must be found per pair
    min_image = nx < 3 or ny < 3 or nz < 3
    ox0, ox1 = offset_range(nx)
    oy0, oy1 = offset_range(ny)
    oz0, oz1 = offset_range(nz)
    out = np.empty((k, 3))
    close = np.empty(k)
    for m in range(k):
        s = slot_of[idx[m]]
        xa, ya, za = spos[s, 0], spos[s, 1], spos[s, 2]
        cx = periodic_cell(xa, lx, nx)
        cy = periodic_cell(ya, ly, ny)
        cz = periodic_cell(za, lz, nz)
        fxa = 0.0
        fya = 0.0
        fza = 0.0
        nearest = np.inf
        for ox in range(ox0, ox1 + 1):
            jx, sx = neighbour_cell(cx + ox, nx, lx)
            for oy in range(oy0, oy1 + 1):
                jy, sy = neighbour_cell(cy + oy, ny, ly)
                for oz in range(oz0, oz1 + 1):
                    jz, sz = neighbour_cell(cz + oz, nz, lz)
                    c = (jx * ny + jy) * nz + jz
                    if min_image:
                        sx = sy = sz = 0.0
                    fx, fy, fz, near = _cell_pair_forces(cell_start[c], cell_start[c + 1], s, xa - sx, ya - sy,
                                                         za - sz, spos, box, ilx, ily, ilz, min_image, rc2,
                                                         epsilon, sigma2)
                    fxa += fx
                    fya += fy
                    fza += fz
                    if near < nearest:
                        nearest = near
        out[m, 0] = fxa
        out[m, 1] = fya
        out[m, 2] = fza
        close[m] = nearest
    return out, close


# ----------------------------------------------------------------------------- open (ghost) geometry
@njit(**_JIT)
def _open_atom_force(s, cell_start, spos, n_cell, origin, cell_len, rc2, epsilon, sigma2, u_shift):
    """Force on the atom in slot ``s`` from all other atoms within r_c (no minimum image), plus
    half of its pair energies and pair virials. Returns ``(fx, fy, fz, u_half, w_half, close)``,
    ``close`` being the nearest squared distance seen."""
    nx, ny, nz = n_cell[0], n_cell[1], n_cell[2]
    xa, ya, za = spos[s, 0], spos[s, 1], spos[s, 2]
    cx = open_cell(xa, origin[0], cell_len[0], nx)
    cy = open_cell(ya, origin[1], cell_len[1], ny)
    cz = open_cell(za, origin[2], cell_len[2], nz)
    fxa = 0.0
    fya = 0.0
    fza = 0.0
    u = 0.0
    w = 0.0
    close = np.inf
    for jx in range(max(cx - 1, 0), min(cx + 2, nx)):
        for jy in range(max(cy - 1, 0), min(cy + 2, ny)):
            for jz in range(max(cz - 1, 0), min(cz + 2, nz)):
                c = (jx * ny + jy) * nz + jz
                for b in range(cell_start[c], cell_start[c + 1]):
                    if b == s:
                        continue
                    dx = xa - spos[b, 0]
                    dy = ya - spos[b, 1]
                    dz = za - spos[b, 2]
                    r2 = dx * dx + dy * dy + dz * dz
                    if r2 < rc2:
                        if r2 < close:
                            close = r2
                        ir2 = 1.0 / r2
                        s2 = sigma2 * ir2
                        s6 = s2 * s2 * s2
                        pair_virial = 24.0 * epsilon * s6 * (2.0 * s6 - 1.0)
                        fr = pair_virial * ir2
                        fxa += fr * dx
                        fya += fr * dy
                        fza += fr * dz
                        u += 4.0 * epsilon * s6 * (s6 - 1.0) - u_shift
                        w += pair_virial
    return fxa, fya, fza, 0.5 * u, 0.5 * w, close


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def open_forces_kernel(n_owned, cell_start, slot_of, spos, n_cell, origin, cell_len, rc2, epsilon,
                       sigma2, u_shift):
    """Forces on owned atoms ``0..n_owned-1`` (full neighbour search over owned + ghost atoms).

    Returns ``(F (n_owned, 3), u_atom (n_owned,), w_atom (n_owned,), close (n_owned,))`` with
    ``u_atom[i] = 1/2 sum_j u(r_ij)`` (so owned-owned pairs count once in total and owned-ghost
    pairs half, the other half belonging to the rank that owns the ghost), the same for the
    virial, and ``close[i]`` the smallest squared distance to a neighbour. Per-atom arrays keep
    the energy sum independent of the thread count (it is summed serially by the caller).
    """
    f = np.empty((n_owned, 3))
    u_atom = np.empty(n_owned)
    w_atom = np.empty(n_owned)
    close = np.empty(n_owned)
    for i in prange(n_owned):
        fx, fy, fz, u, w, c = _open_atom_force(slot_of[i], cell_start, spos, n_cell, origin, cell_len,
                                               rc2, epsilon, sigma2, u_shift)
        f[i, 0] = fx
        f[i, 1] = fy
        f[i, 2] = fz
        u_atom[i] = u
        w_atom[i] = w
        close[i] = c
    return f, u_atom, w_atom, close


@njit(**_JIT)
def open_partial_kernel(idx, cell_start, slot_of, spos, n_cell, origin, cell_len, rc2, epsilon, sigma2):
    """Forces on the chosen owned atoms ``idx`` only (open geometry). O(len(idx)).
    Returns ``(F (k, 3), close (k,))``."""
    k = idx.shape[0]
    out = np.empty((k, 3))
    close = np.empty(k)
    for m in range(k):
        fx, fy, fz, u, w, c = _open_atom_force(slot_of[idx[m]], cell_start, spos, n_cell, origin,
                                               cell_len, rc2, epsilon, sigma2, 0.0)
        out[m, 0] = fx
        out[m, 1] = fy
        out[m, 2] = fz
        close[m] = c
    return out, close


# ----------------------------------------------------------------------------- public ghost API
def open_grid(lo, hi, rcut):
    """Cell grid for a sub-box ``[lo, hi)`` padded by ``rcut`` on every side (room for ghosts):
    returns ``(origin, cell_len, n_cell)`` with ``cell_len >= rcut`` along every axis."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    origin = lo - rcut
    extent = (hi - lo) + 2.0 * rcut
    n_cell = np.maximum(1, np.floor(extent / rcut)).astype(np.int64)
    return origin, extent / n_cell, n_cell


def bin_open_box(pos, lo, hi, rcut):
    """Bin owned + ghost positions ``pos (n, 3)`` on the padded grid of ``[lo, hi)``.

    Returns ``(cell_start, atoms, slot_of, spos, n_cell, origin, cell_len)``; pass it as
    ``cells`` to :func:`partial_forces_open` to reuse it across partial calls.
    """
    origin, cell_len, n_cell = open_grid(lo, hi, rcut)
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    cell_start, atoms, slot_of, spos = bin_open(pos, origin, cell_len, n_cell)
    return cell_start, atoms, slot_of, spos, n_cell, origin, cell_len


def energy_shift(rcut, epsilon, sigma, shift):
    """u(r_c) = 4 eps [(sigma/r_c)^12 - (sigma/r_c)^6] when shifting, else 0."""
    if not shift:
        return 0.0
    s6 = (sigma / rcut) ** 6
    return 4.0 * epsilon * s6 * (s6 - 1.0)


def forces_open(pos, n_owned, lo, hi, rcut, epsilon=1.0, sigma=1.0, shift=False):
    """Ghost-aware lj/cut forces for MPI domain decomposition (no periodicity, no minimum image).

    Parameters
    ----------
    pos : (n_owned + n_ghost, 3) float64
        Owned atoms first, then ghost atoms, the ghosts already shifted by the periodic box
        vectors so that they sit next to the sub-box ``[lo, hi)`` (within ``rcut`` of it).
    n_owned : int
        Number of owned atoms (forces are computed for ``pos[:n_owned]`` only).
    lo, hi : (3,) floats
        Sub-box corners. The cell grid spans ``[lo - rcut, hi + rcut]``.
    rcut, epsilon, sigma, shift
        lj/cut parameters (``shift`` subtracts u(r_c) from every pair energy).

    Returns
    -------
    F : (n_owned, 3) forces on the owned atoms.
    energy : float, sum over owned i of 1/2 sum_j u(r_ij): owned-owned pairs count fully,
        owned-ghost pairs half (summed over ranks this gives the total potential energy).
    virial : float, the same split of sum r_ij . F_ij.
    min_dist : float, the smallest pair distance seen (for overlap checks), inf if none.
    """
    cell_start, atoms, slot_of, spos, n_cell, origin, cell_len = bin_open_box(pos, lo, hi, rcut)
    u_shift = energy_shift(rcut, epsilon, sigma, shift)
    f, u_atom, w_atom, close = open_forces_kernel(int(n_owned), cell_start, slot_of, spos, n_cell, origin,
                                                  cell_len, rcut * rcut, float(epsilon), float(sigma) ** 2,
                                                  u_shift)
    min_dist = float(np.sqrt(close.min())) if n_owned else np.inf
    return f, float(u_atom.sum()), float(w_atom.sum()), min_dist


def partial_forces_open(pos, idx, lo, hi, rcut, epsilon=1.0, sigma=1.0, cells=None):
    """Forces on the owned atoms ``idx`` (indices into ``pos``) in the open ghost geometry.

    Same conventions as :func:`forces_open`. ``cells`` is the result of
    ``bin_open_box(pos, lo, hi, rcut)``; pass it to reuse one binning for many calls (the call is
    then O(len(idx))). Returns ``(F (k, 3), min_dist)``.
    """
    if cells is None:
        cells = bin_open_box(pos, lo, hi, rcut)
    cell_start, atoms, slot_of, spos, n_cell, origin, cell_len = cells
    idx = np.asarray(idx, dtype=np.int64)
    f, close = open_partial_kernel(idx, cell_start, slot_of, spos, n_cell, origin, cell_len, rcut * rcut,
                                   float(epsilon), float(sigma) ** 2)
    min_dist = float(np.sqrt(close.min())) if idx.size else np.inf
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
