"""Numba stencil kernels shared by the Allen-Cahn (2-D) and Predator-Prey (1-D) systems.

Design: every kernel works on a *padded local block* — the block's own values plus a one-cell halo
on each side (four cells for the fused decomposed RK4 step, :func:`ac_rk4_step_block`). The halo
holds either the neighbouring block's edge values (domain decomposition) or the Neumann mirror
``ghost = edge value`` (a physical boundary; the replication padding of the reference code). The
serial systems fill the halo with :func:`fill_neumann_halo` and call the very same kernels, so a
decomposed run whose halos are exchanged between sweeps reproduces the serial result bit for bit:
every grid point evaluates the same expression, in the same order, on the same operands. No
kernel contains a reduction whose order depends on the block shape, except the energy row sums,
which are per-row (see :func:`ac_energy_row_sums_from_padded`).

Conventions
-----------
* 2-D padded block ``vpad``: shape ``(n0 + 2, n1 + 2)``; the interior ``vpad[1:-1, 1:-1]`` is the
  local block, row-major (axis 0 = rows, axis 1 = columns); halo corners are never read.
* 1-D padded block ``upad``: shape ``(n + 2,)``; interior ``upad[1:-1]``.
* *Interior-local indices*: ``(row, col)`` or ``i`` count from 0 at the first interior cell, i.e.
  they address ``vpad[row + 1, col + 1]`` / ``upad[i + 1]``.
* ``sides`` of a 2-D block: ``(low0, high0, low1, high1)`` = (first row, last row, first column,
  last column); of a 1-D block: ``(low, high)``. ``True`` marks a physical boundary.

All arrays are float64 (indices int64); kernels never allocate O(N) memory.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numba import njit

from hpcsur.errors import InputError

# --------------------------------------------------------------------------------------------
# Halo filling (Neumann mirror: ghost = edge value, i.e. replication padding)
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def fill_neumann_halo_2d(vpad, low0, high0, low1, high1):
    """Copy edge values into the halo on the physical sides of a 2-D padded block.

    Rows are filled first (over interior columns), then columns over *all* rows, so the corners
    equal the replication-padded value whenever the neighbour halo rows were filled beforehand.
    """
    n0 = vpad.shape[0] - 2
    n1 = vpad.shape[1] - 2
    if low0:
        for j in range(1, n1 + 1):
            vpad[0, j] = vpad[1, j]
    if high0:
        for j in range(1, n1 + 1):
            vpad[n0 + 1, j] = vpad[n0, j]
    if low1:
        for i in range(n0 + 2):
            vpad[i, 0] = vpad[i, 1]
    if high1:
        for i in range(n0 + 2):
            vpad[i, n1 + 1] = vpad[i, n1]


@njit(cache=True)
def fill_neumann_halo_1d(upad, low, high):
    """Copy edge values into the halo on the physical sides of a 1-D padded block."""
    n = upad.shape[0] - 2
    if low:
        upad[0] = upad[1]
    if high:
        upad[n + 1] = upad[n]


def fill_neumann_halo(vpad: np.ndarray, sides: Sequence[bool] | None = None) -> np.ndarray:
    """Fill the Neumann mirror halo of a padded block in place (and return it).

    ``vpad`` is 2-D ``(n0+2, n1+2)`` with ``sides = (low0, high0, low1, high1)`` or 1-D ``(n+2,)``
    with ``sides = (low, high)``; ``True`` = physical boundary (mirror), ``False`` = the halo belongs
    to a neighbouring block and is left untouched. ``None`` means every side is physical (serial).
    """
    if vpad.ndim == 2:
        s = (True,) * 4 if sides is None else tuple(bool(b) for b in sides)
        if len(s) != 4:
            raise InputError(f"sides: a 2-D block needs 4 flags (low0, high0, low1, high1), got {len(s)}")
        fill_neumann_halo_2d(vpad, *s)
    elif vpad.ndim == 1:
        s = (True,) * 2 if sides is None else tuple(bool(b) for b in sides)
        if len(s) != 2:
            raise InputError(f"sides: a 1-D block needs 2 flags (low, high), got {len(s)}")
        fill_neumann_halo_1d(vpad, *s)
    else:
        raise InputError(f"vpad: expected a 1-D or 2-D padded block, got {vpad.ndim} dimensions")
    return vpad


def pad_with_neumann_halo(v: np.ndarray) -> np.ndarray:
    """A new padded copy of a full (serial) 1-D or 2-D field with the Neumann halo filled."""
    vpad = np.empty(tuple(s + 2 for s in v.shape), dtype=np.float64)
    if v.ndim == 2:
        vpad[1:-1, 1:-1] = v
    else:
        vpad[1:-1] = v
    return fill_neumann_halo(vpad)


# --------------------------------------------------------------------------------------------
# Allen-Cahn:  f(v) = Δ_h v + (v - v³)/ε²,  Δ_h v = (v_N + v_S + v_W + v_E - 4 v) / h²
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def ac_point(c, north, south, west, east, inv_h2, inv_eps2):
    """Allen-Cahn right-hand side at one point from its 5-point neighbourhood.

    ``((N + S) + (W + E) - 4c) / h² + (c - c³) / ε²`` — the one fixed evaluation order every
    kernel uses (which is what makes serial, partial and decomposed results bit-identical).
    """
    laplacian = (((north + south) + (west + east)) - 4.0 * c) * inv_h2
    return laplacian + (c - c * c * c) * inv_eps2


@njit(cache=True)
def ac_rhs_from_padded(vpad, out, inv_h2, inv_eps2):
    """Allen-Cahn RHS on the interior of a padded 2-D block: ``out[i, j] = f(vpad)[i+1, j+1]``.

    ``vpad``: ``(n0+2, n1+2)`` with a filled halo; ``out``: ``(n0, n1)``, written in place.
    """
    n0, n1 = out.shape
    for i in range(n0):
        _ac_row_into(vpad[i], vpad[i + 1], vpad[i + 2], out[i], inv_h2, inv_eps2)


@njit(cache=True)
def _ac_row_into(north, centre, south, out, inv_h2, inv_eps2):
    """``out[j] = f`` at interior column j+1 of a padded row; ``out`` has the interior length.

    Shifted views (west = centre[j], point = centre[j+1], east = centre[j+2]) rather than
    ``centre[j - 1]``: an index that might be negative makes numba emit wraparound checks that
    stop LLVM vectorising the loop (2.3x slower in an isolated row micro-benchmark; inside the
    full kernels the gain was within noise). The arithmetic is the same.
    """
    n1 = out.shape[0]
    west = centre[:n1]
    point = centre[1:n1 + 1]
    east = centre[2:n1 + 2]
    up = north[1:n1 + 1]
    down = south[1:n1 + 1]
    for j in range(n1):
        out[j] = ac_point(point[j], up[j], down[j], west[j], east[j], inv_h2, inv_eps2)


@njit(cache=True)
def ac_partial_from_padded(vpad, rows, cols, out, inv_h2, inv_eps2):
    """Allen-Cahn RHS at chosen points of a padded 2-D block (cost O(k)).

    ``rows``, ``cols``: interior-local indices (length k); ``out``: length k, written in place.
    """
    for q in range(rows.shape[0]):
        i = rows[q] + 1
        j = cols[q] + 1
        out[q] = ac_point(vpad[i, j], vpad[i - 1, j], vpad[i + 1, j], vpad[i, j - 1],
                          vpad[i, j + 1], inv_h2, inv_eps2)


@njit(cache=True)
def ac_partial_neumann(v, n0, n1, flat_idx, out, inv_h2, inv_eps2):
    """Allen-Cahn RHS at flat grid indices of an *unpadded* full field (serial, cost O(k)).

    ``v``: flat row-major ``(n0*n1,)``; the Neumann mirror is applied by clamping neighbour
    indices to the grid (clamped neighbour = edge value = the replication ghost), so no padded
    copy is made. ``out``: length k, written in place.
    """
    for q in range(flat_idx.shape[0]):
        p = flat_idx[q]
        i = p // n1
        j = p - i * n1
        north = v[p - n1] if i > 0 else v[p]
        south = v[p + n1] if i < n0 - 1 else v[p]
        west = v[p - 1] if j > 0 else v[p]
        east = v[p + 1] if j < n1 - 1 else v[p]
        out[q] = ac_point(v[p], north, south, west, east, inv_h2, inv_eps2)


@njit(cache=True)
def ac_energy_point(c, north, south, west, east, inv_4eps2, inv_2h):
    """Free-energy density at one point: ``(c²-1)²/(4ε²) + ½(((S-N)/(2h))² + ((E-W)/(2h))²)``."""
    w = c * c - 1.0
    gx = (south - north) * inv_2h
    gy = (east - west) * inv_2h
    return w * w * inv_4eps2 + 0.5 * (gx * gx + gy * gy)


@njit(cache=True)
def ac_energy_row_sums_from_padded(vpad, out, inv_4eps2, inv_2h):
    """Per-row sums of the free-energy density over the interior of a padded 2-D block.

    ``out``: length n0, ``out[i] = Σ_j e(i, j)`` summed left to right. Summing the row sums of the
    whole grid in row order gives the serial energy sum, so a decomposition into row slabs (full
    rows per rank) that gathers row sums in order reproduces it exactly; column splits do not.
    """
    n0 = vpad.shape[0] - 2
    n1 = vpad.shape[1] - 2
    for i in range(1, n0 + 1):
        s = 0.0
        for j in range(1, n1 + 1):
            s += ac_energy_point(vpad[i, j], vpad[i - 1, j], vpad[i + 1, j], vpad[i, j - 1],
                                 vpad[i, j + 1], inv_4eps2, inv_2h)
        out[i - 1] = s


@njit(cache=True)
def ordered_sum(values):
    """Sum left to right (a fixed order, unlike numpy's pairwise summation)."""
    s = 0.0
    for k in range(values.shape[0]):
        s += values[k]
    return s


# ---- fused RK4 sweeps on padded blocks (bit-compatible with integrators.rk4_step) ----------
#
# integrators.rk4_step evaluates
#     y1 = x + (dt/2) k1,  y2 = x + (dt/2) k2,  y3 = x + dt k3,
#     x' = x + dt * ((((k1 + 2 k2) + 2 k3) + k4) / 6)
# with k1 = f(x), k2 = f(y1), k3 = f(y2), k4 = f(y3). A stage sweep writes only its stage state y;
# the final sweep *recomputes* k1..k4 from x, y1, y2, y3 instead of storing k's or a running sum:
# recomputation costs flops, storing costs memory traffic, and this kernel is bandwidth-bound.
# Traffic per point and step: reads 1+2+2+4 = 9 fields, writes 4 fields (13 x 8 bytes). These
# stage kernels are the reference schedule (one halo exchange per stage would decompose them); the
# row wavefront below, serial or on a deep-halo block, is faster.


@njit(cache=True)
def ac_rk4_stage_from_padded(src_pad, xpad, dst_pad, coef, inv_h2, inv_eps2):
    """One RK4 stage sweep: ``dst = x + coef * f(src)`` on the interior (halo of dst untouched).

    Stage 1: ``src = x``, ``coef = dt/2``; stage 2: ``src = y1``, ``coef = dt/2``;
    stage 3: ``src = y2``, ``coef = dt``. ``coef`` must be the Python float ``0.5 * dt`` / ``dt``.
    """
    n0 = xpad.shape[0] - 2
    for i in range(1, n0 + 1):
        _ac_stage_row(src_pad[i - 1], src_pad[i], src_pad[i + 1], xpad[i], dst_pad[i], coef,
                      inv_h2, inv_eps2)


@njit(cache=True)
def ac_rk4_final_from_padded(xpad, y1pad, y2pad, y3pad, dst_pad, dt, inv_h2, inv_eps2):
    """Final RK4 sweep: ``dst = x + dt * ((((k1 + 2 k2) + 2 k3) + k4) / 6)`` on the interior.

    k1..k4 are recomputed from the padded x, y1, y2, y3 (all with filled halos). ``dst_pad`` must
    not alias ``xpad`` (x's neighbours are still read). Halo of dst untouched.
    """
    n0 = xpad.shape[0] - 2
    for i in range(1, n0 + 1):
        _ac_final_row(xpad[i - 1], xpad[i], xpad[i + 1], y1pad[i - 1], y1pad[i], y1pad[i + 1],
                      y2pad[i - 1], y2pad[i], y2pad[i + 1], y3pad[i - 1], y3pad[i], y3pad[i + 1],
                      dst_pad[i], dt, inv_h2, inv_eps2)


@njit(cache=True)
def ac_rk4_steps_stagewise(xpad, y1, y2, y3, out, steps, dt, inv_h2, inv_eps2):
    """``steps`` serial RK4 steps as four full-grid sweeps per step (the decomposable schedule).

    A decomposition of this schedule needs a halo exchange after each sweep; the fast paths are
    :func:`ac_rk4_steps_serial` and, per block, :func:`ac_rk4_step_block`. ``xpad`` (input, halo
    filled) and ``out`` are ping-ponged; returns the padded array holding the final state.
    ``y1..y3``: scratch, padded.
    """
    half_dt = 0.5 * dt
    cur = xpad
    nxt = out
    for _ in range(steps):
        ac_rk4_stage_from_padded(cur, cur, y1, half_dt, inv_h2, inv_eps2)
        fill_neumann_halo_2d(y1, True, True, True, True)
        ac_rk4_stage_from_padded(y1, cur, y2, half_dt, inv_h2, inv_eps2)
        fill_neumann_halo_2d(y2, True, True, True, True)
        ac_rk4_stage_from_padded(y2, cur, y3, dt, inv_h2, inv_eps2)
        fill_neumann_halo_2d(y3, True, True, True, True)
        ac_rk4_final_from_padded(cur, y1, y2, y3, nxt, dt, inv_h2, inv_eps2)
        fill_neumann_halo_2d(nxt, True, True, True, True)
        cur, nxt = nxt, cur
    return cur


# ---- serial fast path: the four stages fused into one row wavefront ---------------------------
#
# Stage s+1 at row r needs stage s only at rows r-1..r+1, so one pass over the rows can run all
# four stages with a lag of one row each: at step t it computes y1 row t, y2 row t-1, y3 row t-2
# and x' row t-3. y1..y3 then live in small ring buffers (RING rows each, L2-resident) and the
# only grid-sized traffic is reading x and writing x' — 2 fields per step instead of 13. Every
# point still evaluates ac_point on the same operands, so the result is bit-identical to the
# stage-wise sweeps (and to integrators.rk4_step). Physical boundary rows are mirrored by clamping
# the row index; boundary columns by the halo columns of each ring row.

RING = 8            # >= 5 rows needed (y1 row t is written while row t-4 is still read)
RING_MASK = RING - 1


@njit(cache=True)
def _ac_stage_row(north, centre, south, xrow, dst, coef, inv_h2, inv_eps2):
    """``dst = xrow + coef * f(centre row)`` on the interior of one padded row (halo untouched).

    Shifted views instead of ``[j - 1]`` indexing keep the loop vectorisable (see _ac_row_into).
    """
    n1 = dst.shape[0] - 2
    west = centre[:n1]
    point = centre[1:n1 + 1]
    east = centre[2:n1 + 2]
    up = north[1:n1 + 1]
    down = south[1:n1 + 1]
    x_in = xrow[1:n1 + 1]
    d = dst[1:n1 + 1]
    for j in range(n1):
        k = ac_point(point[j], up[j], down[j], west[j], east[j], inv_h2, inv_eps2)
        d[j] = x_in[j] + coef * k


@njit(cache=True)
def _ac_final_row(xn, xc, xs, an, ac, as_, bn, bc, bs, cn, cc, cs, dst, dt, inv_h2, inv_eps2):
    """One padded row of ``x' = x + dt*((((k1 + 2k2) + 2k3) + k4)/6)`` from rows of x, y1, y2, y3
    (``*n``/``*c``/``*s`` = row above / this row / row below). Halo of dst untouched."""
    n1 = dst.shape[0] - 2
    lo, hi = 1, n1 + 1          # interior slice of a padded row; west/east are shifted by -1/+1
    x_w, x_p, x_e, x_u, x_d = xc[:n1], xc[lo:hi], xc[2:n1 + 2], xn[lo:hi], xs[lo:hi]
    a_w, a_p, a_e, a_u, a_d = ac[:n1], ac[lo:hi], ac[2:n1 + 2], an[lo:hi], as_[lo:hi]
    b_w, b_p, b_e, b_u, b_d = bc[:n1], bc[lo:hi], bc[2:n1 + 2], bn[lo:hi], bs[lo:hi]
    c_w, c_p, c_e, c_u, c_d = cc[:n1], cc[lo:hi], cc[2:n1 + 2], cn[lo:hi], cs[lo:hi]
    d = dst[lo:hi]
    for j in range(n1):
        k1 = ac_point(x_p[j], x_u[j], x_d[j], x_w[j], x_e[j], inv_h2, inv_eps2)
        k2 = ac_point(a_p[j], a_u[j], a_d[j], a_w[j], a_e[j], inv_h2, inv_eps2)
        k3 = ac_point(b_p[j], b_u[j], b_d[j], b_w[j], b_e[j], inv_h2, inv_eps2)
        k4 = ac_point(c_p[j], c_u[j], c_d[j], c_w[j], c_e[j], inv_h2, inv_eps2)
        slope = (((k1 + 2.0 * k2) + 2.0 * k3) + k4) / 6.0
        d[j] = x_p[j] + dt * slope


@njit(cache=True)
def _mirror_row_ends(row):
    """Neumann mirror of one padded row's halo columns (ghost = edge value)."""
    n1 = row.shape[0] - 2
    row[0] = row[1]
    row[n1 + 1] = row[n1]


@njit(cache=True)
def ac_rk4_step_wavefront(xpad, out, ring1, ring2, ring3, dt, inv_h2, inv_eps2):
    """One serial RK4 step on a full padded field (Neumann halo filled), fused by row wavefront.

    ``out``: padded, must not alias ``xpad``; its halo is filled on return. ``ring1..3``:
    ``(RING, n1 + 2)`` scratch rows for y1, y2, y3.
    """
    n0 = xpad.shape[0] - 2
    half_dt = 0.5 * dt
    for t in range(1, n0 + 4):
        r = t                                   # y1 row r from x rows r-1..r+1 (x has ghost rows)
        if r <= n0:
            _ac_stage_row(xpad[r - 1], xpad[r], xpad[r + 1], xpad[r], ring1[r & RING_MASK],
                          half_dt, inv_h2, inv_eps2)
            _mirror_row_ends(ring1[r & RING_MASK])
        r = t - 1                               # y2 row r from y1 rows r-1..r+1 (clamped = mirror)
        if 1 <= r <= n0:
            up = max(r - 1, 1) & RING_MASK
            dn = min(r + 1, n0) & RING_MASK
            _ac_stage_row(ring1[up], ring1[r & RING_MASK], ring1[dn], xpad[r], ring2[r & RING_MASK],
                          half_dt, inv_h2, inv_eps2)
            _mirror_row_ends(ring2[r & RING_MASK])
        r = t - 2                               # y3 row r from y2 rows r-1..r+1
        if 1 <= r <= n0:
            up = max(r - 1, 1) & RING_MASK
            dn = min(r + 1, n0) & RING_MASK
            _ac_stage_row(ring2[up], ring2[r & RING_MASK], ring2[dn], xpad[r], ring3[r & RING_MASK],
                          dt, inv_h2, inv_eps2)
            _mirror_row_ends(ring3[r & RING_MASK])
        r = t - 3                               # x' row r from x, y1, y2, y3 rows r-1..r+1
        if 1 <= r <= n0:
            up = max(r - 1, 1) & RING_MASK
            c = r & RING_MASK
            dn = min(r + 1, n0) & RING_MASK
            _ac_final_row(xpad[r - 1], xpad[r], xpad[r + 1], ring1[up], ring1[c], ring1[dn],
                          ring2[up], ring2[c], ring2[dn], ring3[up], ring3[c], ring3[dn],
                          out[r], dt, inv_h2, inv_eps2)
            _mirror_row_ends(out[r])
    n1 = out.shape[1] - 2
    for j in range(n1 + 2):                     # ghost rows (corners included) = edge rows
        out[0, j] = out[1, j]
        out[n0 + 1, j] = out[n0, j]


@njit(cache=True)
def ac_rk4_steps_serial(xpad, out, ring1, ring2, ring3, steps, dt, inv_h2, inv_eps2):
    """``steps`` serial RK4 steps with :func:`ac_rk4_step_wavefront`; ``xpad`` and ``out`` are
    ping-ponged and the padded array holding the final state is returned."""
    cur = xpad
    nxt = out
    for _ in range(steps):
        ac_rk4_step_wavefront(cur, nxt, ring1, ring2, ring3, dt, inv_h2, inv_eps2)
        cur, nxt = nxt, cur
    return cur


# ---- domain-decomposed fast path: the same wavefront on a block with a deep halo --------------
#
# A decomposed RK4 step needs stage s (y1, y2, y3, then x' as "stage 4") on the owned block
# widened by 4 - s cells towards every neighbour: x' on the block needs y1..y3 one cell out, y3 one
# cell out needs y2 two cells out, y2 two out needs y1 three out, and y1 three out needs x four
# out. So one exchange of a 4-deep halo of x (corners included) per step is enough, and k steps
# can be chained on one exchange of a 4k-deep halo: step j of k (j = 0..k-1) then writes x' on the
# block widened by w = 4(k-1-j), which is the 4-deep halo step j+1 needs. The widened rows and
# columns are recomputed redundantly by every block that holds them, with the very expression and
# operands their owner uses, hence bit for bit the owner's values. On a physical side nothing is
# widened: stages and x' stop at the edge and are mirrored (ghost = edge value) after every stage,
# exactly as the serial wavefront does. With every side physical the result equals
# :func:`ac_rk4_step_wavefront` on the whole grid.

RK4_HALO = 4        # halo cells one RK4 step consumes per neighbouring side


@njit(cache=True)
def _stage_span(stage, widen, own_lo, own_hi, phys_lo, phys_hi):
    """Half-open index range [lo, hi) on which RK4 stage ``stage`` (1..4; 4 = x') is computed
    along one axis: the owned range widened by ``widen + RK4_HALO - stage`` on each non-physical
    side, not at all on a physical one."""
    grow = widen + RK4_HALO - stage
    lo = own_lo if phys_lo else own_lo - grow
    hi = own_hi if phys_hi else own_hi + grow
    return lo, hi


@njit(cache=True)
def _mirror_span_ends(row, lo, hi, phys_lo, phys_hi):
    """Neumann ghosts of one row computed on columns [lo, hi) (physical sides only)."""
    if phys_lo:
        row[lo - 1] = row[lo]
    if phys_hi:
        row[hi] = row[hi - 1]


@njit(cache=True)
def ac_rk4_step_block(xpad, out, ring1, ring2, ring3, depth, widen, low0, high0, low1, high1,
                      dt, inv_h2, inv_eps2):
    """One RK4 step of a block padded with a ``depth``-deep halo, x' written ``widen`` cells into
    the halo on non-physical sides (``depth >= widen + RK4_HALO``).

    ``xpad``: ``(n0 + 2 depth, n1 + 2 depth)``, the owned block at ``[depth:-depth, depth:-depth]``;
    valid x (the neighbours' values, corners included) ``widen + 4`` cells out on non-physical
    sides, and the Neumann mirror (edge value) one cell out on physical sides. Those ``widen + 4``
    cells must be grid cells: a block that close to the far physical edge would widen past it
    without mirroring (FieldDomain keeps every block at least ``depth`` cells thick). ``low0, high0, low1,
    high1``: physical flags of the first/last row and column. ``out``: same shape, must not alias
    ``xpad``; receives x' on the owned block widened by ``widen`` on non-physical sides, plus its
    Neumann ghosts on physical sides, so it is a valid ``xpad`` for a next step with ``widen - 4``.
    Nothing else of ``out`` is written. ``ring1..3``: ``(RING, n1 + 2 depth)`` scratch rows.

    Row wavefront as in :func:`ac_rk4_step_wavefront`: at time t it computes y1 row t, y2 row
    t-1, y3 row t-2 and x' row t-3, each on its span (:func:`_stage_span`); a stage row's
    neighbours above/below are clamped to the row itself at a physical edge (the mirror).
    """
    if widen < 0 or depth < widen + RK4_HALO:
        raise ValueError("ac_rk4_step_block: need 0 <= widen and depth >= widen + RK4_HALO")
    n0 = xpad.shape[0] - 2 * depth
    n1 = xpad.shape[1] - 2 * depth
    half_dt = 0.5 * dt
    r_lo1, r_hi1 = _stage_span(1, widen, depth, depth + n0, low0, high0)
    r_lo2, r_hi2 = _stage_span(2, widen, depth, depth + n0, low0, high0)
    r_lo3, r_hi3 = _stage_span(3, widen, depth, depth + n0, low0, high0)
    r_lo4, r_hi4 = _stage_span(4, widen, depth, depth + n0, low0, high0)
    c_lo1, c_hi1 = _stage_span(1, widen, depth, depth + n1, low1, high1)
    c_lo2, c_hi2 = _stage_span(2, widen, depth, depth + n1, low1, high1)
    c_lo3, c_hi3 = _stage_span(3, widen, depth, depth + n1, low1, high1)
    c_lo4, c_hi4 = _stage_span(4, widen, depth, depth + n1, low1, high1)
    for t in range(r_lo1, r_hi4 + 3):
        r = t                                   # y1 row r from x rows r-1..r+1
        if r_lo1 <= r < r_hi1:
            a, b = c_lo1 - 1, c_hi1 + 1         # padded view: columns a+1..b-1 are computed
            y = ring1[r & RING_MASK]
            _ac_stage_row(xpad[r - 1, a:b], xpad[r, a:b], xpad[r + 1, a:b], xpad[r, a:b], y[a:b],
                          half_dt, inv_h2, inv_eps2)
            _mirror_span_ends(y, c_lo1, c_hi1, low1, high1)
        r = t - 1                               # y2 row r from y1 rows r-1..r+1
        if r_lo2 <= r < r_hi2:
            up = max(r - 1, r_lo1) & RING_MASK   # clamping only ever bites at a physical edge
            dn = min(r + 1, r_hi1 - 1) & RING_MASK
            a, b = c_lo2 - 1, c_hi2 + 1
            y = ring2[r & RING_MASK]
            _ac_stage_row(ring1[up, a:b], ring1[r & RING_MASK, a:b], ring1[dn, a:b], xpad[r, a:b],
                          y[a:b], half_dt, inv_h2, inv_eps2)
            _mirror_span_ends(y, c_lo2, c_hi2, low1, high1)
        r = t - 2                               # y3 row r from y2 rows r-1..r+1
        if r_lo3 <= r < r_hi3:
            up = max(r - 1, r_lo2) & RING_MASK
            dn = min(r + 1, r_hi2 - 1) & RING_MASK
            a, b = c_lo3 - 1, c_hi3 + 1
            y = ring3[r & RING_MASK]
            _ac_stage_row(ring2[up, a:b], ring2[r & RING_MASK, a:b], ring2[dn, a:b], xpad[r, a:b],
                          y[a:b], dt, inv_h2, inv_eps2)
            _mirror_span_ends(y, c_lo3, c_hi3, low1, high1)
        r = t - 3                               # x' row r from x, y1, y2, y3 rows r-1..r+1
        if r_lo4 <= r < r_hi4:
            a, b = c_lo4 - 1, c_hi4 + 1
            c = r & RING_MASK
            up1, dn1 = max(r - 1, r_lo1) & RING_MASK, min(r + 1, r_hi1 - 1) & RING_MASK
            up2, dn2 = max(r - 1, r_lo2) & RING_MASK, min(r + 1, r_hi2 - 1) & RING_MASK
            up3, dn3 = max(r - 1, r_lo3) & RING_MASK, min(r + 1, r_hi3 - 1) & RING_MASK
            _ac_final_row(xpad[r - 1, a:b], xpad[r, a:b], xpad[r + 1, a:b],
                          ring1[up1, a:b], ring1[c, a:b], ring1[dn1, a:b],
                          ring2[up2, a:b], ring2[c, a:b], ring2[dn2, a:b],
                          ring3[up3, a:b], ring3[c, a:b], ring3[dn3, a:b],
                          out[r, a:b], dt, inv_h2, inv_eps2)
            _mirror_span_ends(out[r], c_lo4, c_hi4, low1, high1)
    a = c_lo4 - 1 if low1 else c_lo4            # ghost rows of x' (corners included) = edge rows
    b = c_hi4 + 1 if high1 else c_hi4
    if low0:
        out[r_lo4 - 1, a:b] = out[r_lo4, a:b]
    if high0:
        out[r_hi4, a:b] = out[r_hi4 - 1, a:b]


# --------------------------------------------------------------------------------------------
# Predator-Prey:  u' = u(1 - u - v) + D s L u,   v' = a v (u - b) + s L v,   L = [1, -2, 1]
# (s = laplacian_scale: 1 in the reference code, 1/Δx² for the physical operator)
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def pp_point(u_left, u_c, u_right, v_left, v_c, v_right, a, b, diffusion_u, lap_scale):
    """Predator-Prey right-hand side ``(u', v')`` at one cell from its 3-point neighbourhood."""
    lap_u = ((u_left + u_right) - 2.0 * u_c) * lap_scale
    lap_v = ((v_left + v_right) - 2.0 * v_c) * lap_scale
    du = u_c * ((1.0 - u_c) - v_c) + diffusion_u * lap_u
    dv = (a * v_c) * (u_c - b) + lap_v
    return du, dv


@njit(cache=True)
def pp_rhs_from_padded(upad, vpad, out_u, out_v, a, b, diffusion_u, lap_scale):
    """Predator-Prey RHS on the interior of padded 1-D blocks ``upad``, ``vpad`` (length n+2).

    Writes ``out_u``, ``out_v`` (length n) in place.
    """
    for i in range(out_u.shape[0]):
        du, dv = pp_point(upad[i], upad[i + 1], upad[i + 2], vpad[i], vpad[i + 1], vpad[i + 2],
                          a, b, diffusion_u, lap_scale)
        out_u[i] = du
        out_v[i] = dv


@njit(cache=True)
def pp_partial_from_padded(upad, vpad, idx, out, a, b, diffusion_u, lap_scale):
    """Predator-Prey RHS at interior-local cells ``idx`` of padded blocks; ``out``: ``(k, 2)``."""
    for q in range(idx.shape[0]):
        i = idx[q] + 1
        du, dv = pp_point(upad[i - 1], upad[i], upad[i + 1], vpad[i - 1], vpad[i], vpad[i + 1],
                          a, b, diffusion_u, lap_scale)
        out[q, 0] = du
        out[q, 1] = dv


@njit(cache=True)
def pp_partial_neumann(x, n, idx, out, a, b, diffusion_u, lap_scale):
    """Predator-Prey RHS at cells ``idx`` of an unpadded state ``x = concat(u, v)`` (serial, O(k)).

    Neighbours are clamped to the grid (= the replication ghost). ``out``: ``(k, 2)``.
    """
    for q in range(idx.shape[0]):
        i = idx[q]
        left = i - 1 if i > 0 else i
        right = i + 1 if i < n - 1 else i
        du, dv = pp_point(x[left], x[i], x[right], x[n + left], x[n + i], x[n + right],
                          a, b, diffusion_u, lap_scale)
        out[q, 0] = du
        out[q, 1] = dv
