"""From a job spec to physics: the system, each trajectory's initial state, and its domain.

Every system-specific fact comes from the spec's :class:`hpcsur.systems.registry.SystemKind`.
Initial conditions are drawn from counter-based streams keyed by (seed, trajectory), so a
trajectory's initial state does not depend on which rank or group simulates it.
"""
from __future__ import annotations

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec
from hpcsur.parallel.sampling import PURPOSE_VELOCITIES, stream, uniforms
from hpcsur.systems import registry


def build_system(spec: JobSpec):
    """The microscopic system of a job spec."""
    return registry.get(spec.kind).build(spec.system)


def initial_state(spec: JobSpec, system, traj: int):
    """Trajectory ``traj``'s initial state, a pure function of (spec, traj): each ``[initial]`` value is
    one uniform variate of the trajectory's stream, anything else random (velocities) its own stream."""
    names = sorted(spec.initial)
    u = dict(zip(names, uniforms(spec.simulation.seed, traj, len(names))))
    values = {name: spec.initial[name].sample(u[name]) for name in names}
    rng = stream(spec.simulation.seed, traj, 0, PURPOSE_VELOCITIES)
    return registry.get(spec.kind).initial_state(system, spec.system, values, rng)


def domain_shape(spec: JobSpec, system=None) -> tuple[int, ...]:
    """The decomposable extent per axis: grid cells, or (particles) whole interaction lengths per side."""
    return registry.get(spec.kind).domain_shape(spec.system)


def min_cells_per_rank(spec: JobSpec, system=None) -> int:
    """Smallest block per rank along an axis (one interaction length, two grid cells, ...)."""
    return registry.get(spec.kind).min_cells_per_rank


def make_domain(spec: JobSpec, system, group, grid):
    """The distributed state for one trajectory on communicator ``group`` with rank grid ``grid``."""
    from hpcsur.parallel.domain import SerialDomain

    decomposition = registry.get(spec.kind).decomposition
    if decomposition == "particles":
        # also on one rank: its labels reuse the cells of the last neighbour-list rebuild, so a
        # frame's labels cost O(|I|) instead of re-binning all N atoms (bit-identical to the
        # serial velocity-Verlet stepper on a 1x1x1 grid)
        from hpcsur.parallel.particles import ParticleDomain

        return ParticleDomain(system, spec.simulation.dt, group, grid)
    if group.Get_size() == 1:
        return SerialDomain(system, spec.simulation.dt, group, integrator=spec.integrator)
    if decomposition == "grid":
        from hpcsur.parallel.fields import FieldDomain

        return FieldDomain(system, spec.simulation.dt, group, grid, spec.integrator)
    raise InputError(f"{spec.source}: system {spec.kind!r} runs whole trajectories per rank; "
                     f"[parallel] grid = {list(grid)} would split one")
