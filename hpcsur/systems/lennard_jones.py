"""Lennard-Jones fluid (LAMMPS ``pair_style lj/cut``) in a 3-D orthorhombic periodic box.

State and vector field
----------------------
``x = concat(r.ravel(), v.ravel())`` of length 6n (xyz interleaved per atom), so the layout is
``Layout(block_size=6, n_blocks=n, fields=("positions", "velocities"))`` and

    f(x) = (v, F(r) / m),        F_i = sum_{j != i, r_ij < r_c} 24 eps [2 (s/r)^12 - (s/r)^6] d_ij / r_ij^2

with ``d_ij = r_i - r_j`` under the minimum image convention. Positions are kept **unwrapped**
(continuous trajectories); they are wrapped only to find cells.

Potential ``u(r) = 4 eps [(s/r)^12 - (s/r)^6] - u_shift`` for r < r_c, ``u_shift = u(r_c)`` when
``shift`` (the shift changes energies, never forces). Observables:

    T = sum_i m |v_i|^2 / (3 (n - 1))                 (temperature, k_B = 1; 3 momentum dof removed)
    P = (n T + (1/3) sum_{i<j} d_ij . F_ij) / V         (virial pressure)

The number of atoms
-------------------
The force routines (``forces``, ``partial_forces``, ``potential_energy``, ``pressure``) work for
any number of atoms. The System protocol (``layout``, ``rhs``, ``partial_rhs``, ``observable``,
``stepper``) needs a fixed n: pass ``n_atoms=`` to the constructor (``LennardJones(box,
n_atoms=len(positions))``); without it these raise an InputError that says so.

Determinism of the stepper
--------------------------
``lj.stepper(dt)`` keeps a Verlet list and the last forces. Forces summed over a neighbour list
depend (in the last bits) on the order of the list, i.e. on when it was built. A *fresh* stepper
(or ``step.reset()``) rebuilds the list from the state it is given, so the trajectory it produces
is a deterministic function of that state and of the rebuild schedule. For bit-identical
resume, call ``reset()`` at every checkpoint in the original run as well (or use
``rebuild_every=k`` with checkpoints at multiples of k); resuming from a checkpoint with a fresh
stepper then reproduces the original run bit for bit.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from hpcsur.config import field
from hpcsur.errors import InputError
from hpcsur.systems import lj_kernels as K
from hpcsur.systems.base import Layout, check_indices, check_state
from hpcsur.systems.registry import InitialParam, SystemKind

OVERLAP_FRACTION = 0.5  # atoms closer than 0.5 sigma are rejected as overlapping


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class LennardJonesParams:
    """Physical and numerical parameters of the LJ system (reduced LJ units, k_B = 1).

    ``box``: edge lengths (Lx, Ly, Lz) of the periodic box [0, L); ``n_atoms``: number of atoms
    (None = not fixed, only the force routines are usable); ``rcut``: cutoff r_c; ``skin``: extra
    Verlet-list distance; ``shift``: subtract u(r_c) from every pair energy; ``mass``: atom mass.
    """

    box: tuple[float, float, float]
    n_atoms: int | None = None
    epsilon: float = 1.0
    sigma: float = 1.0
    rcut: float = 2.5
    skin: float = 0.3
    shift: bool = False
    mass: float = 1.0

    def __post_init__(self):
        box = tuple(float(b) for b in np.asarray(self.box, dtype=np.float64).ravel())
        if len(box) != 3:
            raise InputError(f"box: expected 3 edge lengths (Lx, Ly, Lz), got {len(box)}")
        object.__setattr__(self, "box", box)
        for name in ("epsilon", "sigma", "rcut", "mass"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (np.isfinite(self.skin) and self.skin >= 0):
            raise InputError(f"skin: must be a finite number >= 0, got {self.skin!r}")
        if not all(np.isfinite(b) for b in box):
            raise InputError(f"box: edge lengths must be finite, got {box}")
        need = 2.0 * (self.rcut + self.skin)
        if min(box) < need:
            axis = "xyz"[int(np.argmin(box))]
            raise InputError(f"box: L{axis} = {min(box):g} is shorter than 2*(rcut + skin) = {need:g}; "
                             f"use a larger box or a smaller cutoff")
        if self.n_atoms is not None and not (isinstance(self.n_atoms, (int, np.integer)) and self.n_atoms >= 2):
            raise InputError(f"n_atoms: must be an integer >= 2, got {self.n_atoms!r}")

    @property
    def volume(self) -> float:
        """V = Lx Ly Lz."""
        return float(np.prod(self.box))

    @property
    def energy_shift(self) -> float:
        """u(r_c) when ``shift`` else 0."""
        return K.energy_shift(self.rcut, self.epsilon, self.sigma, self.shift)


class CellList(NamedTuple):
    """A periodic cell list of one configuration (cells of side >= r_c), reusable across
    ``partial_forces`` calls on that configuration. ``positions`` is the binned copy, ``grid``
    the :class:`lj_kernels.CellGrid`."""

    cell_start: np.ndarray
    atoms: np.ndarray
    slot_of: np.ndarray
    spos: np.ndarray
    n_cell: np.ndarray
    positions: np.ndarray
    grid: K.CellGrid


class NeighbourList(NamedTuple):
    """A half Verlet list in cell-sorted slot order: slot ``s`` holds atom ``atoms[s]``; its
    partners are the slots ``nbr[nbr_start[s]:nbr_start[s+1]]`` (all > s) seen through the
    periodic images ``shifts[image[...]]``; ``offset[s]`` moves atom ``atoms[s]`` into the
    build-time wrapped frame; ``ref_pos`` are the positions at build time (displacement check).
    ``nbr_mid`` splits a row into owned and ghost partners (a periodic box has no ghosts:
    ``nbr_mid[s] = nbr_start[s + 1]``)."""

    atoms: np.ndarray
    nbr_start: np.ndarray
    nbr: np.ndarray
    image: np.ndarray
    offset: np.ndarray
    ref_pos: np.ndarray
    nbr_mid: np.ndarray


# ----------------------------------------------------------------------------- the system
class LennardJones:
    """lj/cut fluid in a periodic box; implements :class:`hpcsur.systems.base.System`.

    ``LennardJones(box, n_atoms=None, rcut=2.5, epsilon=1.0, sigma=1.0, skin=0.3, shift=False,
    mass=1.0)`` or ``LennardJones.from_params(LennardJonesParams(...))``.
    """

    observable_names = ("temperature",)

    def __init__(self, box, n_atoms=None, rcut=2.5, epsilon=1.0, sigma=1.0, skin=0.3, shift=False, mass=1.0):
        self.params = LennardJonesParams(box=box, n_atoms=n_atoms, epsilon=epsilon, sigma=sigma, rcut=rcut,
                                         skin=skin, shift=shift, mass=mass)
        p = self.params
        self._box = np.array(p.box, dtype=np.float64)
        self._rc2 = p.rcut ** 2
        self._sigma2 = p.sigma ** 2
        self._min_r2 = (OVERLAP_FRACTION * p.sigma) ** 2
        # cells of side >= r_c for partial forces, >= r_c + skin for Verlet lists
        self._partial_grid = K.make_grid(self._box, p.rcut)
        self._nbr_guess = 0
        self._shifts = K.image_shifts(self._box)

    @classmethod
    def from_params(cls, params: LennardJonesParams) -> "LennardJones":
        return cls(params.box, params.n_atoms, params.rcut, params.epsilon, params.sigma, params.skin,
                   params.shift, params.mass)

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_atoms(self) -> int:
        if self.params.n_atoms is None:
            raise InputError("n_atoms: this LennardJones system has no fixed atom count; "
                             "construct it with LennardJones(box, n_atoms=len(positions), ...)")
        return int(self.params.n_atoms)

    @property
    def layout(self) -> Layout:
        return Layout(block_size=6, n_blocks=self.n_atoms, fields=("positions", "velocities"))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(positions (n, 3), velocities (n, 3))`` of a state vector (validated)."""
        n = self.n_atoms
        x = check_state(x, 6 * n)
        return x[:3 * n].reshape(n, 3), x[3 * n:].reshape(n, 3)

    @staticmethod
    def join(positions: np.ndarray, velocities: np.ndarray) -> np.ndarray:
        """State vector ``concat(positions.ravel(), velocities.ravel())``."""
        return np.concatenate([np.asarray(positions, np.float64).ravel(), np.asarray(velocities, np.float64).ravel()])

    def _positions(self, positions, name="positions") -> np.ndarray:
        pos = np.ascontiguousarray(positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] < 2:
            raise InputError(f"{name}: expected shape (n_atoms >= 2, 3), got {pos.shape}")
        if self.params.n_atoms is not None and pos.shape[0] != self.params.n_atoms:
            raise InputError(f"{name}: expected {self.params.n_atoms} atoms, got {pos.shape[0]}")
        if not np.all(np.isfinite(pos)):
            atom = int(np.flatnonzero(~np.all(np.isfinite(pos), axis=1))[0])
            raise InputError(f"{name}: non-finite coordinate (NaN or inf) for atom {atom}")
        return pos

    def _overlap_error(self, i: int, j: int, positions: np.ndarray) -> InputError:
        d = positions[i] - positions[j]
        d -= self._box * np.round(d / self._box)
        return InputError(f"positions: atoms {min(i, j)} and {max(i, j)} overlap (distance "
                          f"{np.linalg.norm(d):.4g} < {OVERLAP_FRACTION} sigma)")

    def _raise_overlap_near(self, i: int, positions: np.ndarray):
        """Raise the overlap error for atom ``i`` and its nearest neighbour (O(N), error path)."""
        d = positions - positions[i]
        d -= self._box * np.round(d / self._box)
        r2 = np.sum(d * d, axis=1)
        r2[i] = np.inf
        raise self._overlap_error(i, int(np.argmin(r2)), positions)

    # ------------------------------------------------------------------ neighbour lists
    def build_list(self, positions: np.ndarray, skin: float | None = None, check_overlap: bool = True) -> NeighbourList:
        """Bin (cells of side >= r_c + skin, :func:`lj_kernels.make_grid`), sort atoms by cell,
        build the half Verlet list (:func:`lj_kernels.half_list`, no ghosts).

        Raises InputError naming the pair when two atoms are closer than 0.5 sigma.
        """
        skin = self.params.skin if skin is None else skin
        pos = positions
        list_cut = self.params.rcut + skin
        grid = K.make_grid(self._box, list_cut)
        cell_start, atoms, _, spos = K.bin_cells(pos, grid.mode, grid.origin, grid.length, grid.n_cell)
        min_r2 = self._min_r2 if check_overlap else -1.0
        hl = K.half_list(spos, cell_start, grid, list_cut, min_r2=min_r2, capacity=self._nbr_guess)
        self._nbr_guess = int(len(hl.nbr) * 1.2) + 16
        if hl.bad_a >= 0:
            raise self._overlap_error(int(atoms[hl.bad_a]), int(atoms[hl.bad_b]), pos)
        offset = K.frame_offsets(pos, atoms, spos)
        return NeighbourList(atoms, hl.nbr_start, hl.nbr, hl.image, offset, pos.copy(), hl.nbr_mid)

    def _forces_from_list(self, pos: np.ndarray, nlist: NeighbourList):
        """(F in atom order, U, W) for positions ``pos`` using ``nlist``."""
        n = pos.shape[0]
        spos = np.empty((n, 3))
        K.gather_slots(pos, nlist.atoms, nlist.offset, spos)
        f_slots = np.empty((n, 3))
        energy, virial = K.half_list_forces(spos, nlist.nbr_start, nlist.nbr_mid, nlist.nbr, nlist.image, self._shifts,
                                            self._rc2, self.params.epsilon, self._sigma2, self.params.energy_shift, 1.0,
                                            f_slots)
        forces = np.empty((n, 3))
        K.scatter_slots(f_slots, nlist.atoms, forces)
        return forces, energy, virial

    def evaluate(self, positions, check_overlap: bool = True):
        """``(F (n, 3), U, W)``: forces, potential energy and virial W = sum_{i<j} d_ij . F_ij,
        via a cell list and a half neighbour list (no skin: a one-off evaluation)."""
        pos = self._positions(positions)
        nlist = self.build_list(pos, skin=0.0, check_overlap=check_overlap)
        return self._forces_from_list(pos, nlist)

    # ------------------------------------------------------------------ physics
    def forces(self, positions):
        """Full forces and potential energy ``(F (n, 3), U)``."""
        forces, energy, _ = self.evaluate(positions)
        return forces, energy

    def potential_energy(self, positions) -> float:
        """U = sum_{i<j, r_ij < r_c} u(r_ij)."""
        return self.evaluate(positions)[1]

    def kinetic_energy(self, velocities) -> float:
        """K = 1/2 m sum_i |v_i|^2."""
        v = np.asarray(velocities, dtype=np.float64)
        return 0.5 * self.params.mass * float(np.sum(v * v))

    def temperature(self, velocities) -> float:
        """T = m sum_i |v_i|^2 / (3 (n - 1))."""
        v = np.asarray(velocities, dtype=np.float64).reshape(-1, 3)
        return 2.0 * self.kinetic_energy(v) / (3.0 * (v.shape[0] - 1))

    def pressure(self, positions, velocities) -> float:
        """P = (n T + W / 3) / V with the virial W = sum_{i<j} d_ij . F_ij.

        (LAMMPS' ``thermo press`` uses 3(n-1) T / 3 = 2K/3 for the kinetic part instead of n T;
        the two differ by T / V, e.g. 2e-5 for in.lj.)"""
        v = np.asarray(velocities, dtype=np.float64).reshape(-1, 3)
        _, _, virial = self.evaluate(positions)
        return (v.shape[0] * self.temperature(v) + virial / 3.0) / self.params.volume

    def total_energy(self, x) -> float:
        """E = K + U of a state vector."""
        pos, vel = self.split(x)
        return self.kinetic_energy(vel) + self.potential_energy(pos)

    # ------------------------------------------------------------------ partial forces
    def bin(self, positions) -> CellList:
        """O(N) binning (cells of side >= r_c), reusable by ``partial_forces(..., cells=)``."""
        pos = self._positions(positions)
        g = self._partial_grid
        cell_start, atoms, slot_of, spos = K.bin_cells(pos, g.mode, g.origin, g.length, g.n_cell)
        return CellList(cell_start, atoms, slot_of, spos, g.n_cell, pos.copy(), g)

    def partial_forces(self, positions, idx, cells: CellList | None = None) -> np.ndarray:
        """Forces on atoms ``idx`` only, shape ``(k, 3)``, equal to ``forces(positions)[0][idx]``.

        With ``cells = lj.bin(positions)`` the call costs O(k): a full neighbour search over the
        27 cells around each chosen atom and nothing proportional to N. Without ``cells`` it bins
        first (O(N)). Only the chosen atoms' positions are checked against ``cells`` (O(k)).
        """
        if cells is None:
            cells = self.bin(positions)
            pos = cells.positions
        else:
            pos = positions if isinstance(positions, np.ndarray) else np.asarray(positions, dtype=np.float64)
            if pos.shape != cells.positions.shape:
                raise InputError(f"positions: shape {pos.shape} does not match the binned configuration "
                                 f"{cells.positions.shape}; call lj.bin(positions) again")
        idx = check_indices(idx, pos.shape[0])
        if cells is not None and not np.array_equal(pos[idx], cells.positions[idx]):
            raise InputError("cells: binned from a different configuration; call lj.bin(positions) again")
        g = cells.grid
        f, close = K.partial_forces_cells(cells.slot_of[idx], cells.spos, cells.cell_start, K.NO_GHOSTS, g.mode,
                                          g.n_cell, g.box, g.stencil, self._rc2, self.params.epsilon, self._sigma2)
        if idx.size and close.min() < self._min_r2:
            self._raise_overlap_near(int(idx[np.argmin(close)]), cells.positions)
        return f

    # ------------------------------------------------------------------ System protocol
    def rhs(self, x) -> np.ndarray:
        """f(x) = (v, F/m), flat, length 6n."""
        pos, vel = self.split(x)
        forces, _ = self.forces(pos)
        return np.concatenate([vel.ravel(), forces.ravel() / self.params.mass])

    def partial_rhs(self, x, idx, cells: CellList | None = None) -> np.ndarray:
        """f at atoms ``idx``: shape (k, 6) = [v_idx, F_idx / m] (``layout.coordinates`` order).

        Pass ``cells = lj.bin(positions)`` to make the call O(k); the state is then not scanned
        for NaN (the binning did that)."""
        n = self.n_atoms
        x = np.asarray(x)
        if cells is None:
            x = check_state(x, 6 * n)
        elif x.shape != (6 * n,):
            raise InputError(f"x: expected a flat state vector of length {6 * n}, got shape {x.shape}")
        pos = x[:3 * n].reshape(n, 3)
        idx = check_indices(idx, n)
        forces = self.partial_forces(pos, idx, cells=cells)
        out = np.empty((idx.size, 6))
        out[:, :3] = x[3 * n:].reshape(n, 3)[idx]
        out[:, 3:] = forces / self.params.mass
        return out

    def observable(self, x) -> np.ndarray:
        """phi*(x) = [T]."""
        _, vel = self.split(x)
        return np.array([self.temperature(vel)])

    def stepper(self, dt: float, rebuild_every: int | None = None) -> "VelocityVerlet":
        """A velocity-Verlet NVE stepper ``x -> x_new`` (see :class:`VelocityVerlet`)."""
        return VelocityVerlet(self, dt, rebuild_every=rebuild_every)


# ----------------------------------------------------------------------------- integrator
class VelocityVerlet:
    """Velocity-Verlet NVE integration with a persistent half Verlet list:

        v(t + dt/2) = v(t) + dt/2 F(r(t)) / m
        r(t + dt)   = r(t) + dt v(t + dt/2)                      (never wrapped)
        v(t + dt)   = v(t + dt/2) + dt/2 F(r(t + dt)) / m

    The list is rebuilt when some atom moved more than skin/2 since the last build
    (``rebuild_every=None``, safe), or unconditionally every ``rebuild_every`` steps without a
    check (LAMMPS ``neigh_modify every k check no``; for benchmarks). The forces of the last
    output are reused when the next input has the same positions (compared by value); any other
    input is treated as a fresh start (list rebuilt, forces recomputed), as is the first call and
    the first call after :meth:`reset`. Hence stepping is a deterministic function of the input
    state and of the rebuild schedule. ``n_builds`` counts list builds; ``potential_energy`` and
    ``virial`` are those of the last output.
    """

    def __init__(self, system: LennardJones, dt: float, rebuild_every: int | None = None):
        if not (np.isfinite(dt) and dt > 0):
            raise InputError(f"dt: must be a finite number > 0, got {dt!r}")
        if rebuild_every is not None and not (isinstance(rebuild_every, (int, np.integer)) and rebuild_every >= 1):
            raise InputError(f"rebuild_every: must be None or an integer >= 1, got {rebuild_every!r}")
        self.system = system
        self.dt = float(dt)
        self.rebuild_every = rebuild_every
        self.n = system.n_atoms
        self.n_builds = 0
        self.potential_energy = np.nan
        self.virial = np.nan
        self.reset()

    def reset(self) -> None:
        """Forget the neighbour list and forces: the next call starts fresh (deterministic)."""
        self._nlist = None
        self._forces = None
        self._last_pos = None
        self._since_build = 0

    def _rebuild(self, pos: np.ndarray) -> None:
        self._nlist = self.system.build_list(pos)
        self._since_build = 0
        self.n_builds += 1
        n = self.n
        self._spos = np.empty((n, 3))
        self._f_slots = np.empty((n, 3))

    def _needs_rebuild(self, exceeded: bool) -> bool:
        if self.rebuild_every is None:
            return exceeded
        return self._since_build >= self.rebuild_every

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = self.n
        sysm = self.system
        p = sysm.params
        x = check_state(x, 6 * n)
        pos = x[:3 * n].reshape(n, 3)
        if self._forces is None or not np.array_equal(pos, self._last_pos):
            self._rebuild(pos)
            self._forces, self.potential_energy, self.virial = sysm._forces_from_list(pos, self._nlist)
        x_new = np.empty_like(x)
        half_skin2 = (0.5 * p.skin) ** 2
        exceeded = K.kick_drift(pos, x[3 * n:].reshape(n, 3), self._forces, self.dt, 1.0 / p.mass,
                                x_new[:3 * n].reshape(n, 3), x_new[3 * n:].reshape(n, 3), self._nlist.ref_pos,
                                half_skin2)
        self._since_build += 1
        new_pos = x_new[:3 * n].reshape(n, 3)
        if self._needs_rebuild(exceeded):
            self._rebuild(new_pos)
        nl = self._nlist
        self.potential_energy, self.virial = K.forces_and_kick(
            x_new, nl.atoms, nl.offset, self._spos, self._f_slots, nl.nbr_start, nl.nbr_mid, nl.nbr, nl.image,
            sysm._shifts, sysm._rc2, p.epsilon, sysm._sigma2, p.energy_shift, self._forces, self.dt, 1.0 / p.mass)
        self._last_pos = new_pos.copy()
        return x_new


# ----------------------------------------------------------------------------- initial conditions
FCC_BASIS = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])


def fcc_lattice(n_cells, density: float):
    """fcc lattice of ``n_cells`` unit cells per axis (int or 3 ints), 4 atoms per cell, with
    lattice constant a = (4 / density)^(1/3). Returns ``(positions (4 nx ny nz, 3), box)``."""
    nc = np.broadcast_to(np.asarray(n_cells, dtype=np.int64), (3,))
    if np.any(nc < 1):
        raise InputError(f"n_cells: must be >= 1 along every axis, got {n_cells!r}")
    if not (np.isfinite(density) and density > 0):
        raise InputError(f"density: must be a finite number > 0, got {density!r}")
    a = (4.0 / density) ** (1.0 / 3.0)
    grid = np.stack(np.meshgrid(np.arange(nc[0]), np.arange(nc[1]), np.arange(nc[2]), indexing="ij"), -1)
    corners = grid.reshape(-1, 1, 3).astype(np.float64)
    positions = ((corners + FCC_BASIS[None, :, :]) * a).reshape(-1, 3)
    return positions, tuple(float(v) for v in nc * a)


def random_positions(n: int, box, rng: np.random.Generator, min_dist: float | None = None) -> np.ndarray:
    """``n`` uniform random positions in ``[0, box)`` (like LAMMPS ``create_atoms random``).

    With ``min_dist`` atoms are placed one by one and a candidate closer than ``min_dist`` to a
    placed atom (minimum image) is redrawn (random sequential addition; keep the packing
    fraction pi/6 rho min_dist^3 well below 0.38)."""
    box = np.asarray(box, dtype=np.float64)
    if min_dist is None:
        return rng.random((n, 3)) * box
    n_cell = np.maximum(1, np.floor(box / min_dist)).astype(np.int64)
    head = np.full(int(np.prod(n_cell)), -1, dtype=np.int64)
    next_atom = np.empty(n, dtype=np.int64)
    out = np.empty((n, 3))
    placed, drawn = 0, 0
    while placed < n:
        if drawn > 1000 * n + 100000:
            raise InputError(f"min_dist: could place only {placed} of {n} atoms at min_dist={min_dist:g}; "
                             f"lower min_dist or the density")
        batch = rng.random((max(1024, n - placed), 3)) * box
        placed, used = K.insert_candidates(out, placed, batch, box, float(min_dist) ** 2, n_cell, head, next_atom)
        drawn += used
    return out


def relax(positions, lj: LennardJones, etol: float = 1e-4, ftol: float = 1e-4, max_iter: int = 1000,
          max_step: float = 0.1) -> np.ndarray:
    """Steepest-descent energy minimisation (removes overlaps, like LAMMPS ``minimize``).

    r <- r + alpha F with the largest single-atom displacement capped at ``max_step``; a step is
    accepted only if U decreases (then alpha grows by 1.2), otherwise alpha halves. Stops when the
    relative energy change of an accepted step is below ``etol``, max |F_i| < ftol, or after
    ``max_iter`` force evaluations. Overlap checks are off (it is what removes them). Returns new
    (unwrapped) positions.
    """
    pos = lj._positions(positions).copy()
    forces, energy, _ = lj.evaluate(pos, check_overlap=False)
    alpha = 1e-3
    for _ in range(max_iter):
        fmax = float(np.sqrt(np.max(np.sum(forces * forces, axis=1))))
        if fmax < ftol:
            break
        step = alpha * forces
        biggest = alpha * fmax
        if biggest > max_step:
            step *= max_step / biggest
        trial = pos + step
        f_trial, e_trial, _ = lj.evaluate(trial, check_overlap=False)
        if e_trial < energy:
            converged = abs(energy - e_trial) <= etol * max(abs(e_trial), 1e-300)
            pos, forces, energy = trial, f_trial, e_trial
            alpha *= 1.2
            if converged:
                break
        else:
            alpha *= 0.5
            if alpha < 1e-14:
                break
    return pos


def maxwell_boltzmann(n: int, T0: float, mass: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian velocities (n, 3) with zero net momentum, rescaled so that
    T = m sum |v_i|^2 / (3 (n - 1)) equals ``T0`` exactly (up to rounding)."""
    if n < 2:
        raise InputError(f"n: need at least 2 atoms for a temperature, got {n}")
    if not (np.isfinite(T0) and T0 > 0):
        raise InputError(f"T0: must be a finite number > 0, got {T0!r}")
    v = rng.normal(0.0, np.sqrt(T0 / mass), size=(n, 3))
    v -= v.mean(axis=0)
    temperature = mass * np.sum(v * v) / (3.0 * (n - 1))
    return v * np.sqrt(T0 / temperature)


def lj_state(lj: LennardJones, positions, velocities) -> np.ndarray:
    """Convenience: the flat state vector for ``lj``."""
    return check_state(LennardJones.join(positions, velocities), lj.layout.size)


# ----------------------------------------------------------------------------- the registry entry
@dataclass(frozen=True)
class LennardJonesSystem:
    """The job spec's ``[system]`` table: an LJ fluid in a periodic box; ``n_atoms`` at ``density``
    (box side = (n/rho)^(1/3))."""

    lattice: str = field("random", choices=("random", "fcc"),
                         doc="random placement + relaxation (paper) or an fcc lattice (n = 4 k^3)")
    n_atoms: int = field(800, ge=2)
    density: float = field(0.8, gt=0.0, le=1.5)
    rcut: float = field(2.5, gt=0.0)
    skin: float = field(0.3, ge=0.0)
    epsilon: float = field(1.0, gt=0.0)
    sigma: float = field(1.0, gt=0.0)
    mass: float = field(1.0, gt=0.0)
    shift: bool = field(False)
    placement_seed: int = field(34141, ge=0, doc="seed of the random placement (the paper reuses one)")
    velocity_seed: Optional[int] = field(None, ge=0, doc="one Gaussian velocity draw shared by every trajectory, "
                                                         "rescaled to each one's temperature (the reference's "
                                                         "`velocity create T 87878`: its data are a one-parameter "
                                                         "family in T); unset: each trajectory draws its own")

    @property
    def side(self) -> float:
        """Cubic box side L = (n / rho)^(1/3)."""
        return (self.n_atoms / self.density) ** (1.0 / 3.0)

    def validate(self, where: str) -> None:
        if self.lattice == "fcc":
            k = round((self.n_atoms / 4) ** (1 / 3))
            if 4 * k ** 3 != self.n_atoms:
                raise InputError(f"{where} n_atoms = {self.n_atoms} is not 4*k^3 as an fcc lattice needs "
                                 f"(e.g. {4 * k ** 3} or {4 * (k + 1) ** 3})")
        if self.side < 2 * (self.rcut + self.skin):
            raise InputError(f"{where} box side {self.side:.3g} (from n_atoms and density) is shorter than "
                             f"2*(rcut + skin) = {2 * (self.rcut + self.skin):.3g}; use more atoms")


def _build(table: LennardJonesSystem) -> LennardJones:
    side = table.side
    return LennardJones((side, side, side), n_atoms=table.n_atoms, rcut=table.rcut, epsilon=table.epsilon,
                        sigma=table.sigma, skin=table.skin, shift=table.shift, mass=table.mass)


@functools.lru_cache(maxsize=4)
def starting_positions(table: LennardJonesSystem) -> np.ndarray:
    """The shared starting configuration of every trajectory (as the paper: one placement).

    fcc: the lattice. random: uniform placement (seeded by ``placement_seed``) relaxed by steepest
    descent, as LAMMPS ``create_atoms random`` + ``minimize`` in the reference.
    """
    if table.lattice == "fcc":
        positions, _ = fcc_lattice(round((table.n_atoms / 4) ** (1 / 3)), table.density)
        return positions
    side = table.side
    lj = LennardJones((side, side, side), n_atoms=table.n_atoms, rcut=table.rcut, epsilon=table.epsilon,
                      sigma=table.sigma, skin=0.0)
    rng = np.random.Generator(np.random.Philox(key=table.placement_seed))
    return relax(random_positions(table.n_atoms, (side, side, side), rng), lj)


def _initial_state(system: LennardJones, table: LennardJonesSystem, values, rng) -> np.ndarray:
    """The shared positions with Maxwell-Boltzmann velocities at the drawn temperature: from the trajectory's own
    stream ``rng``, or with ``velocity_seed`` the same draw for every trajectory, so that trajectories differ only
    in the scale sqrt(T) of their velocities."""
    if table.velocity_seed is not None:
        rng = np.random.Generator(np.random.Philox(key=table.velocity_seed))
    velocities = maxwell_boltzmann(table.n_atoms, values["temperature"], table.mass, rng)
    return system.join(starting_positions(table), velocities)


def temperature_observable(params, layout):
    """``T = m sum_i |v_i|^2 / (3 (n - 1))`` for states ``(..., 6n)``; numpy arrays or torch tensors."""
    n, mass = int(layout["n_blocks"]), float(params.get("mass", 1.0))

    def phi(x):
        v = x[..., 3 * n:]
        return (mass * (v * v).sum(-1) / (3.0 * (n - 1)))[..., None]
    return phi


KIND = SystemKind(
    name="lennard_jones", params=LennardJonesSystem,
    initial={"temperature": InitialParam((0.5, 1.5), (0.0, None))},
    integrators=("verlet",), observable_names=LennardJones.observable_names,
    build=_build, state_layout=lambda table: (6, table.n_atoms),
    initial_state=_initial_state, observables=temperature_observable,
    # the decomposable extent: whole interaction lengths (rcut + skin) per box side
    spatial_dims=3, decomposition="particles",
    grid_shape=lambda table: (int(np.floor(table.side / (table.rcut + table.skin))),) * 3,
    min_cells_per_rank=1, weak_scale=lambda table, root: {"n_atoms": table.n_atoms * root ** 3},
    positions_unwrapped=True, step_cost=(5e-5, 7.2e-7), work_bytes_per_block=1200,
    # Chen & Li, 800 atoms, Fig. 3 / Table 1 (10 repeats, population std); L_x,p: 20,000 x 50 atoms
    published={("lz", None, 1250, "onsagernet"): (4.45e-3, 2.03e-3, "population", 10, "Table 1 / Fig. 3"),
               ("lxp", 0.0625, 1250, "onsagernet"): (1.17e-3, 0.18e-3, "population", 10, "Table 1 / Fig. 3"),
               ("lz", None, 1250, "mlp"): (2.60e-2, 1.01e-2, "population", 10, "Fig. 3"),
               ("lxp", 0.0625, 1250, "mlp"): (1.34e-3, 0.26e-3, "population", 10, "Fig. 3"),
               ("lz", None, 1250, "gfinn"): (1.28e-2, 0.74e-2, "population", 10, "Fig. 3"),
               ("lxp", 0.0625, 1250, "gfinn"): (2.84e-3, 0.99e-3, "population", 10, "Fig. 3"),
               # 51,200 atoms, p = 1/1024: 5,000 configurations x 50 atoms ~ 5 full-force frames ("due to memory
               # limit"); no script in the reference, so the repeats are Table 1's (inferred)
               ("lxp", 0.000977, 5, "onsagernet"): (4.96e-3, 0.56e-3, "population", 10, "Table 1 (51,200 atoms)")},
    description="Lennard-Jones fluid, NVE, periodic box (Chen & Li section 2.3)")
