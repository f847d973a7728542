"""From a job spec to physics: the system, each trajectory's initial state, and its domain.

Initial conditions are drawn from counter-based streams keyed by (seed, trajectory), so a
trajectory's initial state does not depend on which rank or group simulates it.
"""
from __future__ import annotations

import functools

import numpy as np

from hpcsur.ops.jobspec import JobSpec
from hpcsur.parallel.sampling import PURPOSE_VELOCITIES, stream, uniforms


def lj_box_side(spec: JobSpec) -> float:
    """Cubic box side L = (n / rho)^(1/3)."""
    return (spec.system.n_atoms / spec.system.density) ** (1.0 / 3.0)


def build_system(spec: JobSpec):
    """The microscopic system of a job spec."""
    s = spec.system
    if spec.kind == "lennard_jones":
        from hpcsur.systems.lennard_jones import LennardJones

        side = lj_box_side(spec)
        return LennardJones((side, side, side), n_atoms=s.n_atoms, rcut=s.rcut, epsilon=s.epsilon,
                            sigma=s.sigma, skin=s.skin, shift=s.shift, mass=s.mass)
    if spec.kind == "allen_cahn":
        from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams

        return AllenCahn(AllenCahnParams(n=s.n, epsilon=s.epsilon))
    from hpcsur.systems.predator_prey import PredatorPrey, PredatorPreyParams

    return PredatorPrey(PredatorPreyParams(n=s.n, a=s.a, b=s.b, diffusion_u=s.D, laplacian_scale=s.laplacian_scale))


@functools.lru_cache(maxsize=4)
def _lj_positions(lattice: str, n_atoms: int, density: float, placement_seed: int, rcut: float,
                  epsilon: float, sigma: float, side: float) -> np.ndarray:
    """The shared starting configuration of every LJ trajectory (as the paper: one placement).

    fcc: the lattice. random: uniform placement (seeded by ``placement_seed``) relaxed by steepest
    descent, as LAMMPS ``create_atoms random`` + ``minimize`` in the reference.
    """
    from hpcsur.systems.lennard_jones import LennardJones, fcc_lattice, random_positions, relax

    if lattice == "fcc":
        k = round((n_atoms / 4) ** (1 / 3))
        positions, _ = fcc_lattice(k, density)
        return positions
    lj = LennardJones((side, side, side), n_atoms=n_atoms, rcut=rcut, epsilon=epsilon, sigma=sigma, skin=0.0)
    rng = np.random.Generator(np.random.Philox(key=placement_seed))
    return relax(random_positions(n_atoms, (side, side, side), rng), lj)


def initial_state(spec: JobSpec, system, traj: int) -> np.ndarray:
    """Trajectory ``traj``'s initial state, a pure function of (spec, traj)."""
    names = sorted(spec.initial)
    u = dict(zip(names, uniforms(spec.simulation.seed, traj, len(names))))
    value = {name: spec.initial[name].sample(u[name]) for name in names}
    if spec.kind == "lennard_jones":
        from hpcsur.systems.lennard_jones import maxwell_boltzmann

        s = spec.system
        positions = _lj_positions(s.lattice, s.n_atoms, s.density, s.placement_seed, s.rcut, s.epsilon,
                                  s.sigma, lj_box_side(spec))
        rng = stream(spec.simulation.seed, traj, 0, PURPOSE_VELOCITIES)
        velocities = maxwell_boltzmann(s.n_atoms, value["temperature"], s.mass, rng)
        return system.join(positions, velocities)
    if spec.kind == "allen_cahn":
        return system.torus(value["r1"], value["r2"])
    return system.initial_state(value["s"], value["c"])


def domain_shape(spec: JobSpec, system) -> tuple[int, ...]:
    """The decomposable extent per axis: grid cells, or (LJ) whole interaction lengths per side."""
    if spec.kind == "lennard_jones":
        cells = int(np.floor(lj_box_side(spec) / (spec.system.rcut + spec.system.skin)))
        return (cells,) * 3
    if spec.kind == "allen_cahn":
        return (spec.system.n, spec.system.n)
    return (spec.system.n,)


def min_cells_per_rank(spec: JobSpec, system) -> int:
    """Smallest block per rank: one interaction length (LJ) or two grid cells (PDEs)."""
    return 1 if spec.kind == "lennard_jones" else 2


def make_domain(spec: JobSpec, system, group, grid):
    """The distributed state for one trajectory on communicator ``group`` with rank grid ``grid``."""
    from hpcsur.parallel.domain import SerialDomain

    if spec.kind == "lennard_jones":
        # also on one rank: its labels reuse the cells of the last neighbour-list rebuild, so a
        # frame's labels cost O(|I|) instead of re-binning all N atoms (bit-identical to the
        # serial velocity-Verlet stepper on a 1x1x1 grid)
        from hpcsur.parallel.particles import ParticleDomain

        return ParticleDomain(system, spec.simulation.dt, group, grid)
    if group.Get_size() == 1:
        return SerialDomain(system, spec.simulation.dt, group, integrator=spec.integrator)
    from hpcsur.parallel.fields import FieldDomain

    return FieldDomain(system, spec.simulation.dt, group, grid, spec.integrator)
