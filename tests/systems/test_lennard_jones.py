"""Lennard-Jones system: forces against brute force, partial forces, NVE, lists, bad input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.systems import lj_kernels as K
from hpcsur.systems.base import Layout, System
from hpcsur.systems.lennard_jones import (LennardJones, fcc_lattice, maxwell_boltzmann, random_positions,
                                          relax)

RC = 2.5


# ----------------------------------------------------------------------------- references
def brute_force(pos, box, rc=RC, shift=False, epsilon=1.0, sigma=1.0):
    """O(N^2) minimum-image reference: (F, U, W) with plain numpy."""
    box = np.asarray(box, dtype=np.float64)
    d = pos[:, None, :] - pos[None, :, :]
    d -= box * np.round(d / box)
    r2 = np.sum(d * d, axis=-1)
    np.fill_diagonal(r2, np.inf)
    inside = r2 < rc * rc
    sr6 = np.where(inside, (sigma * sigma / r2) ** 3, 0.0)
    u_cut = 4 * epsilon * ((sigma / rc) ** 12 - (sigma / rc) ** 6) if shift else 0.0
    u = np.where(inside, 4 * epsilon * (sr6 * sr6 - sr6) - u_cut, 0.0)
    f_over_r = np.where(inside, 24 * epsilon * (2 * sr6 * sr6 - sr6) / r2, 0.0)
    forces = np.sum(f_over_r[..., None] * d, axis=1)
    virial = 0.5 * np.sum(f_over_r * np.where(inside, r2, 0.0))
    return forces, 0.5 * np.sum(u), virial


def scale(forces):
    """Tolerance unit: 1e-12 of the largest force component (at least 1)."""
    return max(1.0, float(np.abs(forces).max()))


def perturbed_fcc(n_cells, density, rng, amplitude=0.05):
    pos, box = fcc_lattice(n_cells, density)
    return pos + rng.normal(0.0, amplitude, pos.shape), box


def relaxed_random(n, density, rng, max_iter=300):
    length = (n / density) ** (1.0 / 3.0)
    box = (length, length, length)
    lj = LennardJones(box)
    return relax(random_positions(n, box, rng), lj, max_iter=max_iter), box


@pytest.fixture(scope="module")
def liquid800():
    """800 atoms at rho = 0.8 in a box of 10 (the paper's case), random and relaxed."""
    rng = np.random.default_rng(34141)
    pos, box = relaxed_random(800, 0.8, rng)
    return pos, box


# ----------------------------------------------------------------------------- full forces
@pytest.mark.parametrize("density", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("kind", ["fcc", "random"])
def test_forces_match_brute_force(density, shift, kind):
    rng = np.random.default_rng(int(density * 10) + 7 * shift)
    if kind == "fcc":
        pos, box = perturbed_fcc(4, density, rng)
    else:
        pos, box = relaxed_random(256, density, rng, max_iter=200)
    lj = LennardJones(box, n_atoms=len(pos), shift=shift)
    forces, energy = lj.forces(pos)
    f_ref, u_ref, w_ref = brute_force(pos, box, shift=shift)
    assert np.abs(forces - f_ref).max() <= 1e-12 * scale(f_ref)
    assert energy == pytest.approx(u_ref, rel=1e-12, abs=1e-10)
    _, _, virial = lj.evaluate(pos)
    assert virial == pytest.approx(w_ref, rel=1e-12, abs=1e-10)
    # Newton's third law: the net force vanishes
    assert np.abs(forces.sum(axis=0)).max() <= 1e-12 * scale(f_ref) * len(pos)


def test_forces_are_minus_gradient_of_energy():
    rng = np.random.default_rng(3)
    pos, box = perturbed_fcc(4, 0.8, rng, amplitude=0.1)
    lj = LennardJones(box, n_atoms=len(pos), shift=True)
    forces, _ = lj.forces(pos)
    h = 1e-6
    for atom, axis in [(0, 0), (17, 1), (100, 2), (255, 0), (128, 2)]:
        plus, minus = pos.copy(), pos.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        derivative = (lj.potential_energy(plus) - lj.potential_energy(minus)) / (2 * h)
        assert -derivative == pytest.approx(forces[atom, axis], rel=1e-6, abs=1e-6)


def test_energy_shift_changes_energy_not_forces():
    rng = np.random.default_rng(4)
    pos, box = perturbed_fcc(4, 0.8, rng)
    f0, u0 = LennardJones(box, shift=False).forces(pos)
    f1, u1 = LennardJones(box, shift=True).forces(pos)
    assert np.array_equal(f0, f1)
    assert u1 > u0  # u(rc) < 0, so subtracting it raises every pair energy


def test_pressure_matches_virial_formula():
    rng = np.random.default_rng(5)
    pos, box = perturbed_fcc(4, 0.8, rng)
    vel = maxwell_boltzmann(len(pos), 1.3, 1.0, rng)
    lj = LennardJones(box, n_atoms=len(pos))
    _, _, w_ref = brute_force(pos, box)
    expected = (len(pos) * 1.3 + w_ref / 3.0) / np.prod(box)
    assert lj.pressure(pos, vel) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- partial forces
def test_partial_forces_equal_full_forces(liquid800):
    pos, box = liquid800
    n = len(pos)
    lj = LennardJones(box, n_atoms=n)
    forces, _ = lj.forces(pos)
    cells = lj.bin(pos)
    rng = np.random.default_rng(0)
    for k in (1, 50, n):
        idx = rng.choice(n, k, replace=False)
        got = lj.partial_forces(pos, idx, cells=cells)
        assert got.shape == (k, 3)
        assert np.abs(got - forces[idx]).max() <= 1e-12 * scale(forces)
    # binning inside the call gives the same answer
    idx = np.array([5, 3, 799])
    assert np.array_equal(lj.partial_forces(pos, idx), lj.partial_forces(pos, idx, cells=cells))


def test_partial_forces_at_faces_corners_and_outside(liquid800):
    pos, box = liquid800
    length = box[0]
    tiny = 1e-12
    targets = [
        [0.0, 0.0, 0.0],                                  # corner at the origin
        [length - tiny, length - tiny, length - tiny],    # the far corner, just inside
        [length - tiny, 0.5 * length, 0.0],               # on faces
        [-tiny, length, 2.0 * length],                    # just outside / on images of faces
        [-3.0 * length + 1.3, 2.0 * length + 4.1, 7.2],   # far outside the box
    ]
    lj = LennardJones(box, n_atoms=len(pos))
    f_orig, _ = lj.forces(pos)
    for atom, target in zip([0, 1, 2, 3, 4], targets):
        # translate the whole configuration so that `atom` sits exactly at `target`: distances,
        # hence forces, are unchanged, while atoms land on faces, corners and outside the box
        moved = pos - pos[atom] + np.asarray(target)
        assert np.array_equal(moved[atom], np.asarray(target))
        forces, _ = lj.forces(moved)
        assert np.abs(forces - f_orig).max() <= 1e-11 * scale(f_orig)
        idx = np.array([atom, 100, 500])
        got = lj.partial_forces(moved, idx, cells=lj.bin(moved))
        assert np.abs(got - forces[idx]).max() <= 1e-12 * scale(forces)


@pytest.mark.parametrize("n", [2700, 51200])
def test_partial_forces_large_boxes(n):
    rng = np.random.default_rng(n)
    length = (n / 0.8) ** (1.0 / 3.0)
    box = (length,) * 3
    pos = random_positions(n, box, rng, min_dist=0.9)
    pos[:10] += rng.integers(-3, 4, size=(10, 3)) * length  # some unwrapped images
    lj = LennardJones(box, n_atoms=n)
    forces, _ = lj.forces(pos)
    idx = np.concatenate([np.arange(10), rng.choice(np.arange(10, n), 40, replace=False)])
    got = lj.partial_forces(pos, idx, cells=lj.bin(pos))
    assert np.abs(got - forces[idx]).max() <= 1e-12 * scale(forces)


def test_partial_forces_reject_bad_indices(liquid800):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos))
    cells = lj.bin(pos)
    with pytest.raises(InputError, match="duplicate"):
        lj.partial_forces(pos, np.array([1, 2, 1]), cells=cells)
    with pytest.raises(InputError, match="out of range"):
        lj.partial_forces(pos, np.array([0, 800]), cells=cells)
    with pytest.raises(InputError, match="out of range"):
        lj.partial_forces(pos, np.array([-1]), cells=cells)
    moved = pos.copy()
    moved[7] += 0.01
    with pytest.raises(InputError, match="different configuration"):
        lj.partial_forces(moved, np.array([7]), cells=cells)


def test_partial_rhs_equals_rhs_at_blocks(liquid800):
    pos, box = liquid800
    n = len(pos)
    lj = LennardJones(box, n_atoms=n, mass=2.0)
    vel = maxwell_boltzmann(n, 1.0, 2.0, np.random.default_rng(1))
    x = lj.join(pos, vel)
    full = lj.rhs(x)
    assert full.shape == (6 * n,)
    idx = np.array([0, 13, 400, 799])
    want = full[lj.layout.coordinates(idx)]
    assert np.abs(lj.partial_rhs(x, idx) - want).max() <= 1e-12 * scale(want)
    assert np.abs(lj.partial_rhs(x, idx, cells=lj.bin(pos)) - want).max() <= 1e-12 * scale(want)
    assert np.array_equal(lj.partial_rhs(x, idx)[:, :3], vel[idx])


def test_system_protocol_and_layout():
    pos, box = fcc_lattice(4, 0.8)
    lj = LennardJones(box, n_atoms=len(pos))
    assert isinstance(lj, System)
    assert lj.layout == Layout(block_size=6, n_blocks=256, fields=("positions", "velocities"))
    assert lj.observable_names == ("temperature",)
    with pytest.raises(InputError, match="n_atoms"):
        LennardJones(box).layout


# ----------------------------------------------------------------------------- ghost-aware kernel
def ghost_frame(pos, box, lo, hi, rc):
    """Owned atoms (wrapped into [lo, hi)) followed by every periodic image within rc of the
    sub-box as ghosts. Returns (positions, owned atom ids)."""
    box = np.asarray(box)
    wrapped = pos - box * np.floor(pos / box)
    owned = np.flatnonzero(np.all((wrapped >= lo) & (wrapped < hi), axis=1))
    ghosts = []
    for shift in itertools.product((-1, 0, 1), repeat=3):
        image = wrapped + np.asarray(shift) * box
        near = np.all((image >= np.asarray(lo) - rc) & (image < np.asarray(hi) + rc), axis=1)
        inside = np.all((image >= lo) & (image < hi), axis=1)
        ghosts.append(image[near & ~inside])
    return np.concatenate([wrapped[owned]] + ghosts), owned


@pytest.mark.parametrize("shift", [False, True])
def test_forces_open_whole_box_with_ghost_shell(liquid800, shift):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos), shift=shift)
    forces, energy, virial = lj.evaluate(pos)
    frame, owned = ghost_frame(pos, box, np.zeros(3), np.asarray(box), RC)
    assert len(owned) == len(pos) and len(frame) > len(pos)
    f_open, u_open, w_open, dmin = K.forces_open(frame, len(owned), np.zeros(3), box, RC, shift=shift)
    assert np.abs(f_open - forces[owned]).max() <= 1e-12 * scale(forces)
    assert u_open == pytest.approx(energy, rel=1e-12)
    assert w_open == pytest.approx(virial, rel=1e-12)
    assert dmin > 0.5
    idx = np.array([0, 5, 300, len(owned) - 1])
    cells = K.bin_open_box(frame, np.zeros(3), box, RC)
    f_part, _ = K.partial_forces_open(frame, idx, np.zeros(3), box, RC, cells=cells)
    assert np.abs(f_part - forces[owned[idx]]).max() <= 1e-12 * scale(forces)


def test_forces_open_two_subdomains_sum_to_total(liquid800):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos))
    forces, energy = lj.forces(pos)
    half = box[0] / 2
    total = 0.0
    for lo, hi in [((0, 0, 0), (half, box[1], box[2])), ((half, 0, 0), box)]:
        frame, owned = ghost_frame(pos, box, np.asarray(lo, float), np.asarray(hi, float), RC)
        f_open, u_open, _, _ = K.forces_open(frame, len(owned), lo, hi, RC)
        assert np.abs(f_open - forces[owned]).max() <= 1e-12 * scale(forces)
        total += u_open
    assert total == pytest.approx(energy, rel=1e-12)


# ----------------------------------------------------------------------------- dynamics
def nve_start(n_cells=5, density=0.8, T0=1.0, seed=0, shift=True):
    pos, box = fcc_lattice(n_cells, density)
    lj = LennardJones(box, n_atoms=len(pos), shift=shift)
    vel = maxwell_boltzmann(len(pos), T0, 1.0, np.random.default_rng(seed))
    return lj, lj.join(pos, vel)


def test_nve_energy_drift_and_momentum():
    lj, x = nve_start()  # 500 atoms, rho = 0.8, T0 = 1, shifted
    n = lj.n_atoms
    step = lj.stepper(0.005)
    e0 = lj.total_energy(x)
    energies = []
    for _ in range(1000):
        x = step(x)
        energies.append(lj.kinetic_energy(x[3 * n:]) + step.potential_energy)
    drift = abs(energies[-1] - e0) / n
    spread = (max(energies) - min(energies)) / n
    # measured (500 atoms, 1000 steps, seeds 0/1/2): |E_end - E_0| / n = 2.1e-4 / 1.3e-4 / 2.0e-4,
    # (max E - min E) / n = 1.0e-3 / 0.96e-3 / 1.1e-3, both shrinking ~4x at dt = 0.0025 (the
    # O(dt^2) shadow-energy error); momentum 6e-14. Bounds at about 4-5x the measurement.
    assert drift < 1e-3
    assert spread < 4e-3
    assert energies[-1] == pytest.approx(lj.total_energy(x), rel=1e-12)
    momentum = x[3 * n:].reshape(n, 3).sum(axis=0)
    assert np.abs(momentum).max() < 1e-10
    assert step.n_builds > 1


def test_stepper_matches_fresh_forces_and_plain_verlet():
    lj, x = nve_start(n_cells=4, T0=2.0, seed=3)
    n = lj.n_atoms
    dt = 0.005
    step = lj.stepper(dt)
    y = x.copy()
    for _ in range(60):
        x = step(x)
        pos, vel = y[:3 * n].reshape(n, 3), y[3 * n:].reshape(n, 3)
        f, _ = lj.forces(pos)
        vel = vel + 0.5 * dt * f
        pos = pos + dt * vel
        f, _ = lj.forces(pos)
        vel = vel + 0.5 * dt * f
        y = np.concatenate([pos.ravel(), vel.ravel()])
    assert step.n_builds > 1  # the list was rebuilt along the way
    assert np.abs(x - y).max() < 1e-9
    forces, energy = lj.forces(x[:3 * n].reshape(n, 3))
    assert np.abs(step._forces - forces).max() <= 1e-12 * scale(forces)
    assert step.potential_energy == pytest.approx(energy, rel=1e-12)


def test_stepper_keeps_positions_unwrapped_across_the_boundary():
    lj, x = nve_start(n_cells=4, T0=2.0, seed=4)
    n = lj.n_atoms
    box = np.asarray(lj.params.box)
    shifted = x.copy()
    images = np.random.default_rng(0).integers(-2, 3, size=(n, 3))
    shifted[:3 * n] += (images * box).ravel()
    a, b = lj.stepper(0.005), lj.stepper(0.005)
    for _ in range(200):
        prev = x
        x, shifted = a(x), b(shifted)
        assert np.abs(x[:3 * n] - prev[:3 * n]).max() < 0.1  # continuous: never wrapped
    pos = x[:3 * n].reshape(n, 3)
    assert np.any(pos < 0) or np.any(pos >= box)
    back = shifted[:3 * n] - (images * box).ravel()
    assert np.abs(back - x[:3 * n]).max() < 1e-9
    assert np.abs(shifted[3 * n:] - x[3 * n:]).max() < 1e-9


def test_fresh_and_reset_steppers_are_bit_identical():
    lj, x0 = nve_start(n_cells=4, seed=5)
    a = lj.stepper(0.005)
    x = x0
    for _ in range(30):
        x = a(x)
    a.reset()
    fresh = lj.stepper(0.005)
    xa, xf = x, x.copy()
    for _ in range(30):
        xa, xf = a(xa), fresh(xf)
    assert np.array_equal(xa, xf)
    fixed1, fixed2 = lj.stepper(0.005, rebuild_every=10), lj.stepper(0.005, rebuild_every=10)
    y1, y2 = x0, x0.copy()
    for _ in range(25):
        y1, y2 = fixed1(y1), fixed2(y2)
    assert np.array_equal(y1, y2) and fixed1.n_builds == 3


# ----------------------------------------------------------------------------- bad input
def test_non_finite_positions_rejected(liquid800):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos))
    for bad in (np.nan, np.inf):
        p = pos.copy()
        p[42, 1] = bad
        with pytest.raises(InputError, match="non-finite.*atom 42"):
            lj.forces(p)
    x = lj.join(pos, np.zeros_like(pos))
    x[3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        lj.stepper(0.005)(x)


def test_box_too_small_rejected():
    with pytest.raises(InputError, match=r"shorter than 2\*\(rcut \+ skin\)"):
        LennardJones((10.0, 5.5, 10.0))
    with pytest.raises(InputError, match="rcut"):
        LennardJones((10.0, 10.0, 10.0), rcut=-1.0)


def test_overlapping_atoms_named(liquid800):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos))
    p = pos.copy()
    p[123] = p[45] + np.array([0.2, 0.0, 0.0]) + np.asarray(box)  # overlap through an image
    with pytest.raises(InputError, match="atoms 45 and 123 overlap"):
        lj.forces(p)
    with pytest.raises(InputError, match="atoms 45 and 123 overlap"):
        lj.partial_forces(p, np.array([123]))


def test_positions_outside_box_are_wrapped(liquid800):
    pos, box = liquid800
    lj = LennardJones(box, n_atoms=len(pos))
    wrapped = pos - np.asarray(box) * np.floor(pos / np.asarray(box))
    moved = wrapped + np.random.default_rng(2).integers(-5, 6, size=pos.shape) * np.asarray(box)
    f_wrapped, u_wrapped = lj.forces(wrapped)
    f_moved, u_moved = lj.forces(moved)
    assert np.abs(f_moved - f_wrapped).max() <= 1e-12 * scale(f_wrapped)
    assert u_moved == pytest.approx(u_wrapped, rel=1e-12)


# ----------------------------------------------------------------------------- initial conditions
def test_maxwell_boltzmann_exact_temperature_zero_momentum():
    rng = np.random.default_rng(87287)
    v = maxwell_boltzmann(800, 1.44, 2.0, rng)
    assert np.abs(v.sum(axis=0)).max() < 1e-12
    lj = LennardJones((10.0, 10.0, 10.0), mass=2.0)
    assert lj.temperature(v) == pytest.approx(1.44, rel=1e-13)


def test_fcc_lattice_and_relax():
    pos, box = fcc_lattice((2, 3, 4), 0.8)
    assert pos.shape == (4 * 24, 3)
    assert len(pos) / np.prod(box) == pytest.approx(0.8)
    rng = np.random.default_rng(6)
    start = random_positions(200, (7.0, 7.0, 7.0), rng)
    lj = LennardJones((7.0, 7.0, 7.0))
    with pytest.raises(InputError, match="overlap"):
        lj.forces(start)
    relaxed = relax(start, lj)
    assert lj.potential_energy(relaxed) < 0  # overlaps gone; forces() accepts it


def test_a_shared_velocity_seed_makes_trajectories_differ_only_in_temperature(tmp_path):
    """[system] velocity_seed (the reference's fixed `velocity create T 87878`): every trajectory starts from the same
    positions and the same velocity directions, v_b = sqrt(T_b / T_a) v_a, each at exactly its drawn temperature;
    without it each trajectory draws its own directions."""
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.systems import build_system, initial_state

    text = """
[system]
kind = "lennard_jones"
lattice = "random"
n_atoms = 200
density = 0.8
{extra}
[simulation]
trajectories = 3
dt = 0.001
steps = 10
seed = 4
[initial]
temperature = {{ uniform = [0.5, 1.5] }}
[labels]
p = 0.25
[store]
path = "store"
"""
    states = {}
    for name, extra in (("shared", "velocity_seed = 87878"), ("own", "")):
        job = tmp_path / f"{name}.toml"
        job.write_text(text.format(extra=extra))
        spec = load_job(job)
        system = build_system(spec)
        states[name] = [system.split(initial_state(spec, system, t)) for t in range(3)]
    (pa, va), (pb, vb) = states["shared"][0], states["shared"][2]
    np.testing.assert_array_equal(pa, pb)
    ta, tb = (float((v * v).sum() / (3 * (200 - 1))) for v in (va, vb))
    assert abs(ta - tb) > 0.01                                     # two different drawn temperatures
    np.testing.assert_allclose(vb, va * np.sqrt(tb / ta), rtol=1e-12, atol=1e-14)
    (_, oa), (_, ob) = states["own"][0], states["own"][2]
    cos = float((oa * ob).sum() / np.sqrt((oa * oa).sum() * (ob * ob).sum()))
    assert abs(cos) < 0.5                                          # independent directions
