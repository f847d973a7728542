"""Spatial domain decomposition of a Lennard-Jones system over a 3-D Cartesian rank grid.

The scheme is LAMMPS's (``comm_style brick``, ``neighbor skin``, ``neigh_modify check yes``).

Ownership. Rank ``c`` of a ``dims`` grid owns the atoms whose wrapped position lies in its
sub-box ``[lo, hi)``, ``lo = c L / dims``. Owned atoms are kept sorted by cell (ties by atom id),
with unwrapped positions ``x``; ``offset`` (whole box vectors, fixed at a rebuild) moves them
into the rank's frame, ``pos = x - offset`` (wrapped at the rebuild).

Geometry per axis. An axis cut into >= 2 sub-boxes is ``OPEN`` for the force kernels: atoms of
the neighbouring ranks within ``cut = r_c + skin`` of the faces are copied in as *ghosts*. An axis
with one rank stays periodic and is handled by the kernel's image codes (minimum image), exactly as
in the serial box, so a ``[2, 1, 1]`` grid carries ghosts across the two x faces only and no rank
ever holds copies of its own atoms.

Rebuild (at :meth:`load` and whenever some atom has moved more than skin/2 since the last one;
one ``Allreduce`` of that flag per step):

1. migration: atoms that left the sub-box go to the neighbour that owns them now, one axis at a time
   (an atom moves less than skin/2 < one sub-box between rebuilds);
2. sort owned atoms by cell, take ``offset``;
3. borders: in staged passes over the cut axes, the atoms (owned and ghosts of earlier passes)
   within ``cut`` of the low / high face go to the lower / upper neighbour, shifted by the box
   vector when they cross the periodic boundary; staging brings edge and corner ghosts without
   diagonal messages. The send lists (*swaps*) are kept until the next rebuild;
4. sort the ghosts by cell; build the half Verlet list (cut = r_c + skin) of owned atoms over owned
   + ghost atoms (:func:`hpcsur.systems.lj_kernels.build_half_list`).

Every step between rebuilds only positions travel (*forward communication*): each swap packs
``pos[send] + shift`` into a fixed buffer and the receiver copies it into its ghost slots
(non-blocking sends / receives of contiguous float64 buffers, both directions of an axis at once).

Forces (``newton``): with Newton's third law across ranks (the default) each pair that crosses two
ranks is in the list of one of the two ranks only: a ghost carries the rank-grid offset it
travelled (+1 / -1 per axis, counted exactly through the staged swaps), and a rank computes the
pairs with ghosts whose first nonzero offset is positive (:func:`computes_pairs_with`); the partner
sees the negated offset, so both agree, and each rank computes half of them. Ghosts are sorted per
cell with those first, so the list build scans only them. The reaction forces collected on ghosts
go back to their owners (*reverse communication*, the swaps in reverse order). Without it both ranks compute such a
pair and no forces travel (more pair work, one message less per cut axis and direction; the
choice is measured in ``benchmarks/scaling.py``).

Labels use the cells of the last rebuild with current positions (valid: every atom is within
skin/2 of where it was binned, and cells have side >= r_c + skin) and compute forces on the chosen
owned atoms only, O(number chosen).

Determinism: :meth:`load` is a fresh start (rebuild from the given state), and every step is a
deterministic function of the state and the grid. On a ``[1, 1, 1]`` grid the trajectory is
bit-identical to the serial :class:`hpcsur.systems.lennard_jones.VelocityVerlet`; on other grids
it agrees to round-off (pair sums are ordered differently).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcsur.errors import InputError
from hpcsur.parallel.domain import assemble_labels
from hpcsur.parallel.grid import CartGrid
from hpcsur.systems import lj_kernels as K

_REVERSE_TAG = 64  # added to a swap's tag for its reverse communication
_NO_SHIFT = np.zeros(3)


# ----------------------------------------------------------------------------- pure helpers
def check_rank_grid(grid, box, cut) -> tuple[int, int, int]:
    """The rank grid as 3 ints; an axis cut into several sub-boxes needs sub-boxes at least
    ``cut = r_c + skin`` wide (ghosts come from the adjacent rank only)."""
    dims = tuple(int(d) for d in np.asarray(grid).ravel())
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"[parallel] grid = {list(grid)}: expected 3 positive integers for Lennard-Jones")
    for axis, (d, length) in enumerate(zip(dims, box)):
        if d > 1 and length / d < cut:
            raise InputError(f"[parallel] grid = {list(dims)}: sub-boxes along {'xyz'[axis]} are {length / d:.4g} wide, "
                             f"less than rcut + skin = {cut:g}; allowed: at most {max(int(length // cut), 1)} "
                             f"ranks on that axis")
    return dims


def owner_coords(wrapped: np.ndarray, width: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Rank-grid coordinates of the sub-boxes that own wrapped positions ``(n, 3)``."""
    return np.minimum((wrapped // width).astype(np.int64), dims - 1)


def crossing_shift(axis: int, coord: int, dims: int, box: float, upward: bool) -> np.ndarray:
    """Shift added to positions sent down (``upward=False``) or up along ``axis`` by the rank at
    ``coord``: +L / -L when the message crosses the periodic boundary, so that the ghosts sit next
    to the receiver's sub-box."""
    shift = np.zeros(3)
    if not upward and coord == 0:
        shift[axis] = box
    if upward and coord == dims - 1:
        shift[axis] = -box
    return shift


def computes_pairs_with(offsets: np.ndarray) -> np.ndarray:
    """Newton's third law across ranks: does this rank compute the pairs of its owned atoms with
    ghosts that travelled the rank-grid offsets ``offsets`` ((n, 3) ints, each -1, 0 or +1: the
    ghost came from the upper / lower neighbour along that axis)? Yes when the first nonzero
    offset is positive. The owner of the partner sees the negated offset, so exactly one of the
    two ranks computes each pair, and on a regular grid each rank computes half of them."""
    offsets = np.asarray(offsets)
    first = np.argmax(offsets != 0, axis=1)
    return offsets[np.arange(len(offsets)), first] > 0


def exchange_rows(comm, messages, width: int) -> list[np.ndarray]:
    """Non-blocking exchange of float64 row blocks of unknown size: ``messages`` are ``(rows (k,
    width), dest, source, tag)``; returns the blocks received from each ``source`` (in order).
    Counts travel first, then the data."""
    from mpi4py import MPI

    counts = [np.empty(1, np.int64) for _ in messages]
    sent = [np.array([len(rows)], np.int64) for rows, _, _, _ in messages]
    reqs = [comm.Irecv(c, source=src, tag=tag) for c, (_, _, src, tag) in zip(counts, messages)]
    reqs += [comm.Isend(s, dest=dest, tag=tag) for s, (_, dest, _, tag) in zip(sent, messages)]
    MPI.Request.Waitall(reqs)
    got = [np.empty((int(c[0]), width)) for c in counts]
    reqs = [comm.Irecv(g, source=src, tag=tag) for g, (_, _, src, tag) in zip(got, messages)]
    reqs += [comm.Isend(np.ascontiguousarray(rows, dtype=np.float64), dest=dest, tag=tag)
             for rows, dest, _, tag in messages]
    MPI.Request.Waitall(reqs)
    return got


@dataclass
class Swap:
    """One direction of the ghost exchange along one axis, fixed between rebuilds.

    Forward: ``pos[send] + shift`` goes to ``dest``; what comes from ``source`` fills ``pos[recv]``.
    Reverse: forces on ``recv`` go back to ``source``; those from ``dest`` are added to ``f[send]``.
    ``out`` / ``into`` are the contiguous send / receive buffers (reused every step)."""

    dest: int
    source: int
    tag: int
    send: np.ndarray
    shift: np.ndarray
    recv: np.ndarray
    out: np.ndarray = None
    into: np.ndarray = None

    def __post_init__(self):
        self.out = np.empty((len(self.send), 3))
        self.into = np.empty((len(self.recv), 3))


# ----------------------------------------------------------------------------- the domain
class ParticleDomain:
    """One LJ trajectory decomposed over a periodic 3-D rank grid (see the module docstring).

    ``ParticleDomain(system, dt, comm, grid, newton=True)``; implements the
    :class:`hpcsur.parallel.domain.Domain` interface (``load``, ``advance``, ``gather``, ``labels``).
    ``n_builds`` counts rebuilds, ``potential_energy`` is this rank's share of U (pairs it computed;
    the shares sum to U over ranks).
    """

    def __init__(self, system, dt: float, comm, grid, newton: bool = True):
        from mpi4py import MPI

        self._MPI = MPI
        if not (np.isfinite(dt) and dt > 0):
            raise InputError(f"dt: must be a finite number > 0, got {dt!r}")
        self.system, self.dt = system, float(dt)
        p = system.params
        self.n = system.n_atoms
        self.box = np.asarray(p.box, dtype=np.float64)
        self.cut = p.rcut + p.skin
        self.dims = np.asarray(check_rank_grid(grid, self.box, self.cut), dtype=np.int64)
        self.cart = CartGrid.create(comm, tuple(self.dims), periodic=(True, True, True))
        self.comm = self.cart.comm
        self.coords = np.asarray(self.cart.coords, dtype=np.int64)
        self.width = self.box / self.dims
        self.lo = self.coords * self.width
        self.hi = self.lo + self.width
        self.split_axes = tuple(int(a) for a in np.flatnonzero(self.dims > 1))
        self.grid = K.make_grid(self.box, self.cut, self.lo, self.hi, periodic=tuple(self.dims == 1))
        self.shifts = K.image_shifts(self.box)
        self.newton = bool(newton)
        self.rc2, self.eps, self.sigma2 = p.rcut ** 2, p.epsilon, p.sigma ** 2
        self.u_shift, self.mass = p.energy_shift, p.mass
        self.half_skin2 = (0.5 * p.skin) ** 2
        self.min_r2 = (0.5 * p.sigma) ** 2  # the serial system's overlap threshold (0.5 sigma)
        self.n_builds = 0
        self.potential_energy = np.nan
        self._capacity = 0
        self._flag = np.zeros(1, np.int32)
        self._any = np.zeros(1, np.int32)
        self.ids = np.empty(0, np.int64)

    # ------------------------------------------------------------------ state in and out
    def load(self, x: np.ndarray) -> None:
        """Take the owned atoms of a global state (all ranks pass the same ``x``), then rebuild and
        compute forces: a fresh start, independent of anything done before."""
        pos, vel = self.system.split(np.asarray(x, dtype=np.float64))
        wrapped = K.wrap_positions(np.ascontiguousarray(pos), self.box)
        mine = np.all(owner_coords(wrapped, self.width, self.dims) == self.coords, axis=1)
        self.ids = np.flatnonzero(mine).astype(np.int64)
        self.x, self.v = pos[mine].copy(), vel[mine].copy()
        self._rebuild(migrate=False)
        self._forces()

    def gather(self, root: int):
        """The global state vector on ``root`` (``Gatherv`` of ``[id, x, v]`` rows), None elsewhere."""
        rows = np.concatenate([self.ids[:, None].astype(np.float64), self.x, self.v], axis=1)
        counts = self.comm.gather(len(rows), root=root)
        is_root = self.comm.Get_rank() == root
        buf = np.empty((sum(counts), 7)) if is_root else None
        self.comm.Gatherv(rows, (buf, [7 * c for c in counts]) if is_root else None, root=root)
        if not is_root:
            return None
        ids = buf[:, 0].astype(np.int64)
        if len(ids) != self.n or not np.array_equal(np.sort(ids), np.arange(self.n)):
            raise RuntimeError(f"particle domain lost or duplicated atoms: gathered {len(ids)} rows for {self.n} atoms")
        pos, vel = np.empty((self.n, 3)), np.empty((self.n, 3))
        pos[ids], vel[ids] = buf[:, 1:4], buf[:, 4:7]
        return self.system.join(pos, vel)

    # ------------------------------------------------------------------ dynamics
    def advance(self, steps: int) -> None:
        """Velocity Verlet, ``steps`` times::

            v += dt/2 F/m;  x += dt v;  [rebuild if some atom moved > skin/2 | forward comm];
            F = F(x) [+ reverse comm];  v += dt/2 F/m
        """
        inv_mass = 1.0 / self.mass
        half = 0.5 * self.dt * inv_mass  # the serial stepper's expressions, for bit-identical [1, 1, 1] runs
        for _ in range(steps):
            exceeded = K.kick_drift(self.x, self.v, self.f, self.dt, inv_mass, self.x, self.v, self.ref,
                                    self.half_skin2)
            if self._anywhere(exceeded):
                self._rebuild(migrate=True)
            else:
                np.subtract(self.x, self.offset, out=self.pos[:len(self.ids)])
                self._forward()
            self._forces()
            self.v += half * self.f

    def _anywhere(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on some rank (one ``Allreduce``)."""
        self._flag[0] = int(flag)
        self.comm.Allreduce(self._flag, self._any, op=self._MPI.MAX)
        return bool(self._any[0])

    def _forces(self) -> None:
        """Forces on owned atoms from the half list (+ reverse communication with ``newton``)."""
        nl = self.nlist
        self.potential_energy, _ = K.half_list_forces(
            self.pos, nl.nbr_start, nl.nbr_mid, nl.nbr, nl.image, self.shifts, self.rc2, self.eps, self.sigma2,
            self.u_shift, 1.0 if self.newton else 0.5, self.f_local)
        if self.newton:
            self._reverse()

    # ------------------------------------------------------------------ rebuild
    def _rebuild(self, migrate: bool) -> None:
        """Migrate, sort owned atoms by (cell, id), exchange borders, sort ghosts, build the list."""
        if migrate and self.split_axes:
            self._migrate()
        g = self.grid
        cells = (g.mode, g.origin, g.length, g.n_cell)
        by_id = np.argsort(self.ids, kind="stable")
        own_start, atoms, _, wrapped = K.bin_cells(K.wrap_positions(self.x[by_id], self.box), *cells)
        order = by_id[atoms]
        self.ids, self.x, self.v = self.ids[order], self.x[order], self.v[order]
        self.offset = self.x - wrapped
        n_own = len(self.ids)

        ghost_pos, ghost_ids, offsets, swaps = self._borders(wrapped, self.ids)
        # ghosts sorted by cell, within a cell first those whose pairs this rank computes
        ghost_cell, ghost_pos = K.cells_of(ghost_pos, *cells)
        key = 2 * ghost_cell + ~computes_pairs_with(offsets)
        starts, g_atoms, g_slot = K.counting_sort(key, 2 * g.n_cells)
        ghost_pos = K.in_slot_order(ghost_pos, g_atoms)
        self.ghost_ids = ghost_ids[g_atoms]
        renumber = np.concatenate([np.arange(n_own), n_own + g_slot])  # arrival order -> local index
        self.swaps = [[Swap(s.dest, s.source, s.tag, renumber[s.send], s.shift, renumber[s.recv]) for s in pair]
                      for pair in swaps]
        self.own_start = own_start
        self.ghost_start, self.ghost_mid = starts[0::2] + n_own, starts[1::2] + n_own

        self.pos = np.concatenate([wrapped, ghost_pos])
        nl = K.half_list(self.pos, self.own_start, g, self.cut, self.ghost_start, self.ghost_mid, newton=self.newton,
                         min_r2=self.min_r2, capacity=self._capacity)
        self._capacity = int(len(nl.nbr) * 1.2) + 16
        self._check_overlap(nl)
        self.nlist = nl
        self.ref = self.x.copy()
        self.f_local = np.empty_like(self.pos)
        self.f = self.f_local[:n_own]
        self.id_order = np.argsort(self.ids)
        self.sorted_ids = self.ids[self.id_order]
        self.n_builds += 1
        # the list was built from wrapped positions; forces use x - offset (the serial convention)
        np.subtract(self.x, self.offset, out=self.pos[:n_own])
        self._forward()

    def _check_overlap(self, nl) -> None:
        """Raise the same InputError on every rank if some rank found two atoms closer than 0.5 sigma."""
        n_own = len(self.ids)
        key = np.array([np.iinfo(np.int64).max], np.int64)
        if nl.bad_a >= 0:
            a = int(self.ids[nl.bad_a])
            b = int(self.ids[nl.bad_b] if nl.bad_b < n_own else self.ghost_ids[nl.bad_b - n_own])
            key[0] = min(a, b) * self.n + max(a, b)  # one int64 per pair, so MIN picks one whole pair
        first = np.empty_like(key)
        self.comm.Allreduce(key, first, op=self._MPI.MIN)
        if first[0] != np.iinfo(np.int64).max:
            a, b = divmod(int(first[0]), self.n)
            raise InputError(f"positions: atoms {a} and {b} overlap (closer than 0.5 sigma)")

    def _migrate(self) -> None:
        """Send atoms that left the sub-box to their new owner, one cut axis at a time."""
        for axis in self.split_axes:
            wrapped = K.wrap_positions(self.x, self.box)
            owner = owner_coords(wrapped, self.width, self.dims)[:, axis]
            lower, upper = self.cart.neighbours(axis)
            c, d = int(self.coords[axis]), int(self.dims[axis])
            to_lower = owner == (c - 1) % d
            to_upper = (owner == (c + 1) % d) & ~to_lower
            stay = owner == c
            if not np.all(stay | to_lower | to_upper):
                raise RuntimeError("an atom moved further than one sub-box between list rebuilds (dt too large?)")
            rows = [np.concatenate([self.ids[m, None].astype(np.float64), self.x[m], self.v[m]], axis=1)
                    for m in (to_lower, to_upper)]  # [id, x, v] of the few that leave
            got = np.concatenate(exchange_rows(self.comm, [(rows[0], lower, upper, 2 * axis),
                                                           (rows[1], upper, lower, 2 * axis + 1)], 7))
            self.ids = np.concatenate([self.ids[stay], got[:, 0].astype(np.int64)])
            self.x = np.concatenate([self.x[stay], got[:, 1:4]])
            self.v = np.concatenate([self.v[stay], got[:, 4:7]])

    def _borders(self, wrapped: np.ndarray, ids: np.ndarray):
        """Staged ghost exchange over the cut axes. Returns, in arrival order, the ghost positions,
        ids and rank-grid offsets travelled, and the swaps (grouped per axis; local indices in
        arrival order). A message row is ``[x, y, z, id, offset (3)]`` at the sender; the receiver
        adds +1 (from its upper neighbour) or -1 (from its lower one) on the swap's axis."""
        local = np.concatenate([wrapped, ids[:, None].astype(np.float64), np.zeros((len(ids), 3))], axis=1)
        swaps = []
        for axis in self.split_axes:
            lower, upper = self.cart.neighbours(axis)
            c, d = int(self.coords[axis]), int(self.dims[axis])
            down = np.flatnonzero(local[:, axis] < self.lo[axis] + self.cut)
            up = np.flatnonzero(local[:, axis] >= self.hi[axis] - self.cut)
            moves = [(down, lower, upper, 2 * axis, crossing_shift(axis, c, d, self.box[axis], upward=False), +1),
                     (up, upper, lower, 2 * axis + 1, crossing_shift(axis, c, d, self.box[axis], upward=True), -1)]
            shifted = [local[sel] + np.concatenate([shift, np.zeros(4)]) for sel, _, _, _, shift, _ in moves]
            got = exchange_rows(self.comm, [(rows, dest, src, tag)
                                            for rows, (_, dest, src, tag, _, _) in zip(shifted, moves)], 7)
            start = len(local)
            pair = []
            for (sel, dest, src, tag, shift, came_from), rows in zip(moves, got):
                rows[:, 4 + axis] += came_from  # received from the upper neighbour: +1
                pair.append(Swap(dest, src, tag, sel, shift, np.arange(start, start + len(rows))))
                start += len(rows)
            swaps.append(pair)
            local = np.concatenate([local] + got)
        ghosts = local[len(ids):]
        return (np.ascontiguousarray(ghosts[:, :3]), ghosts[:, 3].astype(np.int64), ghosts[:, 4:].astype(np.int64),
                swaps)

    # ------------------------------------------------------------------ communication every step
    def _forward(self) -> None:
        """Ghost positions from their owners: per cut axis, both directions at once."""
        MPI = self._MPI
        for pair in self.swaps:
            reqs = [self.comm.Irecv(s.into, source=s.source, tag=s.tag) for s in pair]
            for s in pair:
                K.take_rows(self.pos, s.send, s.shift, s.out)
                reqs.append(self.comm.Isend(s.out, dest=s.dest, tag=s.tag))
            MPI.Request.Waitall(reqs)
            for s in pair:
                K.put_rows(self.pos, s.recv, s.into, False)

    def _reverse(self) -> None:
        """Reaction forces collected on ghosts go back to their owners (swaps in reverse order)."""
        MPI = self._MPI
        for pair in reversed(self.swaps):
            reqs = [self.comm.Irecv(s.out, source=s.dest, tag=s.tag + _REVERSE_TAG) for s in pair]
            for s in pair:
                K.take_rows(self.f_local, s.recv, _NO_SHIFT, s.into)
                reqs.append(self.comm.Isend(s.into, dest=s.source, tag=s.tag + _REVERSE_TAG))
            MPI.Request.Waitall(reqs)
            for s in pair:
                K.put_rows(self.f_local, s.send, s.out, True)

    # ------------------------------------------------------------------ labels
    def owned_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in idx, local rows)`` of the atoms of ``idx`` that this rank owns."""
        if len(self.ids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        where = np.minimum(np.searchsorted(self.sorted_ids, idx), len(self.ids) - 1)
        mine = np.flatnonzero(self.sorted_ids[where] == idx)
        return mine, self.id_order[where[mine]]

    def labels(self, idx: np.ndarray, root: int):
        """(v_i, F_i/m) for the chosen atoms, each computed by its owner with the partial kernel
        (cells of the last rebuild, current positions), assembled in ``idx`` order on ``root``."""
        idx = np.asarray(idx, dtype=np.int64)
        mine, rows = self.owned_rows(idx)
        g = self.grid
        forces, _ = K.partial_forces_cells(rows, self.pos, self.own_start, self.ghost_start, g.mode, g.n_cell, g.box,
                                           g.stencil, self.rc2, self.eps, self.sigma2)
        values = np.concatenate([self.v[rows], forces / self.mass], axis=1)
        return assemble_labels(self.comm, idx, mine, values, root)
