"""Allen-Cahn: kernels vs numpy re-implementations, partial/decomposed evaluation, energy decay."""
import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams, reference_epsilon
from hpcsur.systems.base import System, simulate
from hpcsur.systems.integrators import euler_step, rk4_step

N = 24


def numpy_rhs(v, h, eps):
    p = np.pad(v, 1, mode="edge")
    lap = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * v) / h**2
    return lap + (v - v**3) / eps**2


def numpy_energy(v, h, eps):
    p = np.pad(v, 1, mode="edge")
    gx = (p[2:, 1:-1] - p[:-2, 1:-1]) / (2 * h)
    gy = (p[1:-1, 2:] - p[1:-1, :-2]) / (2 * h)
    return h**2 * np.sum((v**2 - 1) ** 2 / (4 * eps**2) + 0.5 * (gx**2 + gy**2))


@pytest.fixture(scope="module")
def system():
    return AllenCahn(AllenCahnParams(n=N, epsilon=0.05))


@pytest.fixture(scope="module")
def state():
    return np.random.default_rng(0).uniform(-1.2, 1.2, N * N)


def test_is_a_system(system):
    assert isinstance(system, System)
    assert system.layout.size == N * N and system.layout.block_size == 1
    assert system.observable_names == ("free_energy",)


def test_reference_epsilon_default():
    assert abs(reference_epsilon(200) - AllenCahnParams().epsilon) < 5e-7


def test_rhs_matches_numpy(system, state):
    expected = numpy_rhs(state.reshape(N, N), 1 / N, 0.05).ravel()
    np.testing.assert_allclose(system.rhs(state), expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("idx", [
    [0], [N * N - 1], [N - 1, N * (N - 1), 5 * N + 7, N + 1, 2 * N - 1], "all",
])
def test_partial_rhs_equals_rhs_at_points(system, state, idx):
    idx = np.arange(N * N)[::-1] if idx == "all" else np.array(idx)
    part = system.partial_rhs(state, idx)
    assert part.shape == (len(idx), 1)
    full = system.rhs(state)
    np.testing.assert_array_equal(part, full[system.layout.coordinates(idx)])


def decomposed_rhs(system, v, splits0, splits1):
    """Evaluate the RHS block by block: halos copied from neighbours, mirrors on the boundary."""
    out = np.empty_like(v)
    b0 = np.array_split(np.arange(v.shape[0]), splits0)
    b1 = np.array_split(np.arange(v.shape[1]), splits1)
    for r in b0:
        for c in b1:
            r0, r1, c0, c1 = r[0], r[-1] + 1, c[0], c[-1] + 1
            vpad = np.zeros((r1 - r0 + 2, c1 - c0 + 2))
            vpad[1:-1, 1:-1] = v[r0:r1, c0:c1]
            sides = (r0 == 0, r1 == v.shape[0], c0 == 0, c1 == v.shape[1])
            # neighbour halos ("received" from adjacent blocks)
            if not sides[0]:
                vpad[0, 1:-1] = v[r0 - 1, c0:c1]
            if not sides[1]:
                vpad[-1, 1:-1] = v[r1, c0:c1]
            if not sides[2]:
                vpad[1:-1, 0] = v[r0:r1, c0 - 1]
            if not sides[3]:
                vpad[1:-1, -1] = v[r0:r1, c1]
            stencils.fill_neumann_halo(vpad, sides)
            blk = np.empty((r1 - r0, c1 - c0))
            stencils.ac_rhs_from_padded(vpad, blk, system.inv_h2, system.inv_eps2)
            out[r0:r1, c0:c1] = blk
            # the padded partial kernel with local indices agrees too
            rows = np.array([0, r1 - r0 - 1]); cols = np.array([c1 - c0 - 1, 0])
            part = np.empty(2)
            stencils.ac_partial_from_padded(vpad, rows, cols, part, system.inv_h2, system.inv_eps2)
            assert np.array_equal(part, blk[rows, cols])
    return out


@pytest.mark.parametrize("splits0, splits1", [(2, 1), (1, 2), (2, 2), (4, 1), (3, 5)])
def test_decomposed_padded_kernel_is_bit_identical(system, state, splits0, splits1):
    v = state.reshape(N, N)
    out = decomposed_rhs(system, v, splits0, splits1)
    assert np.array_equal(out.ravel(), system.rhs(state))


def test_fused_rk4_is_bit_identical_to_reference_rk4(system, state):
    dt = 1e-4
    x = state
    y = state
    for _ in range(3):
        x = system.stepper(dt)(x)
        y = rk4_step(system.rhs, y, dt)
    assert np.array_equal(x, y)
    assert np.array_equal(system.integrate(state, dt, 3), y)
    # the stage-wise schedule (what a decomposed run follows) agrees bit for bit as well
    xpad = stencils.pad_with_neumann_halo(state.reshape(N, N))
    scratch = [np.empty_like(xpad) for _ in range(4)]
    final = stencils.ac_rk4_steps_stagewise(xpad, *scratch, 3, dt, system.inv_h2, system.inv_eps2)
    assert np.array_equal(final[1:-1, 1:-1].ravel(), y)


@pytest.mark.parametrize("n", [3, 4, 9])
def test_wavefront_rk4_on_tiny_grids(n):
    # grids smaller than the ring buffer exercise the row clamping at both ends at once
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=0.3))
    x = np.random.default_rng(n).uniform(-1, 1, n * n)
    assert np.array_equal(ac.integrate(x, 1e-3, 2), rk4_step(ac.rhs, rk4_step(ac.rhs, x, 1e-3), 1e-3))


def test_euler_stepper(system, state):
    np.testing.assert_array_equal(system.stepper(1e-4, method="euler")(state),
                                  euler_step(system.rhs, state, 1e-4))


def test_energy_matches_numpy(system, state):
    assert system.observable(state).shape == (1,)
    assert system.free_energy(state) == pytest.approx(numpy_energy(state.reshape(N, N), 1 / N, 0.05),
                                                      rel=1e-12)


def test_energy_row_sums_reproduce_serial_for_row_slabs(system, state):
    v = state.reshape(N, N)
    pieces = []
    for rows in np.array_split(np.arange(N), 3):
        r0, r1 = rows[0], rows[-1] + 1
        vpad = np.zeros((r1 - r0 + 2, N + 2))
        vpad[1:-1, 1:-1] = v[r0:r1]
        if r0 > 0:
            vpad[0, 1:-1] = v[r0 - 1]
        if r1 < N:
            vpad[-1, 1:-1] = v[r1]
        stencils.fill_neumann_halo(vpad, (r0 == 0, r1 == N, True, True))
        s = np.empty(r1 - r0)
        stencils.ac_energy_row_sums_from_padded(vpad, s, system.inv_4eps2, system.inv_2h)
        pieces.append(s)
    total = stencils.ordered_sum(np.concatenate(pieces)) * (system.params.h ** 2)
    assert total == system.free_energy(state)


def test_free_energy_decreases_along_rk4_trajectory():
    n = 48
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=reference_epsilon(n)))
    x0 = ac.torus(0.35, 0.12)
    h = 1 / n
    energies = [ac.free_energy(f.x) for f in simulate(ac, x0, 0.1 * h * h, 300, every=10)]
    diffs = np.diff(energies)
    assert np.all(diffs <= 1e-12 * energies[0]), diffs.max()
    assert energies[-1] < energies[0]


def test_torus_ic_shape_and_values():
    ac = AllenCahn(AllenCahnParams(n=40, epsilon=0.01))
    v = ac.torus(0.35, 0.12).reshape(40, 40)
    assert v[0, 0] == pytest.approx(-1.0, abs=1e-6)            # outside the outer circle
    assert v[20, 20] == pytest.approx(-1.0, abs=1e-3)          # inside the inner hole
    X, Y = ac.cell_centres()
    ring = np.abs(np.hypot(X - 0.5, Y - 0.5) - 0.235) < 0.02
    assert np.all(v[ring] > 0.9)


def test_torus_sampler_ranges():
    ac = AllenCahn(AllenCahnParams(n=8, epsilon=0.05))
    rng = np.random.default_rng(3)
    radii = np.array([ac.sample_torus_radii(rng) for _ in range(200)])
    assert radii[:, 0].min() >= 0.3 and radii[:, 0].max() <= 0.4
    assert radii[:, 1].min() >= 0.1 and radii[:, 1].max() <= 0.15
    assert ac.sample_initial_state(np.random.default_rng(1)).shape == (64,)


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=2), "n"), (dict(n=10.0), "n"), (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=float("inf")), "epsilon"), (dict(epsilon=-1.0), "epsilon"),
])
def test_bad_params_raise(kwargs, field):
    with pytest.raises(InputError, match=f"allen_cahn.{field}"):
        AllenCahnParams(**kwargs)


def test_bad_inputs_raise(system, state):
    bad = state.copy()
    bad[7] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        system.rhs(bad)
    with pytest.raises(InputError, match="block 8"):
        system.partial_rhs(bad, np.array([8]))          # NaN sits in block 8's stencil
    with pytest.raises(InputError, match="out of range"):
        system.partial_rhs(state, np.array([N * N]))
    with pytest.raises(InputError, match="duplicate"):
        system.partial_rhs(state, np.array([1, 1]))
    with pytest.raises(InputError, match="length"):
        system.rhs(state[:-1])
    with pytest.raises(InputError, match="dt"):
        system.stepper(0.0)
    with pytest.raises(InputError, match="method"):
        system.stepper(0.1, method="rk45")
    with pytest.raises(InputError, match="r2"):
        system.torus(0.1, 0.2)
    with pytest.raises(InputError, match="sides"):
        stencils.fill_neumann_halo(np.zeros((4, 4)), (True, True))
