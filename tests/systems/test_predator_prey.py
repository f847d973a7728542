"""Predator-Prey: kernels vs a numpy re-implementation, partial/decomposed evaluation, steppers."""
import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.systems import stencils
from hpcsur.systems.base import System, simulate
from hpcsur.systems.predator_prey import PredatorPrey, PredatorPreyParams

N = 50


def numpy_rhs(x, n, a=3.0, b=0.4, D=0.0, scale=1.0):
    u, v = x[:n], x[n:]
    up, vp = np.pad(u, 1, mode="edge"), np.pad(v, 1, mode="edge")
    lu = (up[:-2] - 2 * u + up[2:]) * scale
    lv = (vp[:-2] - 2 * v + vp[2:]) * scale
    return np.concatenate([u * (1 - u - v) + D * lu, a * v * (u - b) + lv])


def numpy_euler(x, n, dt, steps, **kw):
    for _ in range(steps):
        x = x + dt * numpy_rhs(x, n, **kw)
    return x


def numpy_rk4(x, n, dt, steps, **kw):
    f = lambda y: numpy_rhs(y, n, **kw)  # noqa: E731
    for _ in range(steps):
        k1 = f(x); k2 = f(x + dt / 2 * k1); k3 = f(x + dt / 2 * k2); k4 = f(x + dt * k3)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture(scope="module")
def state():
    return np.random.default_rng(0).uniform(0.0, 1.0, 2 * N)


@pytest.mark.parametrize("D, scale_name, scale", [
    (0.0, "reference", 1.0), (0.7, "reference", 1.0), (0.3, "physical", float(N * N)),
])
def test_rhs_matches_numpy(state, D, scale_name, scale):
    pp = PredatorPrey(PredatorPreyParams(diffusion_u=D, laplacian_scale=scale_name))
    np.testing.assert_allclose(pp.rhs(state), numpy_rhs(state, N, D=D, scale=scale),
                               rtol=1e-12, atol=1e-12 * scale)


def test_is_a_system():
    pp = PredatorPrey()
    assert isinstance(pp, System)
    assert pp.layout.size == 100 and pp.layout.block_size == 2
    assert pp.observable_names == ("u_mean", "v_mean")


@pytest.mark.parametrize("idx", [[0], [N - 1], [0, 17, N - 1, 3], "all"])
def test_partial_rhs_equals_rhs(state, idx):
    pp = PredatorPrey(PredatorPreyParams(diffusion_u=0.5))
    idx = np.arange(N)[::-1] if idx == "all" else np.array(idx)
    part = pp.partial_rhs(state, idx)
    assert part.shape == (len(idx), 2)
    np.testing.assert_array_equal(part, pp.rhs(state)[pp.layout.coordinates(idx)])


@pytest.mark.parametrize("blocks", [2, 4, 7])
def test_decomposed_padded_kernel_is_bit_identical(state, blocks):
    pp = PredatorPrey(PredatorPreyParams(diffusion_u=0.5, laplacian_scale="physical"))
    u, v = state[:N], state[N:]
    out_u, out_v = np.empty(N), np.empty(N)
    for cells in np.array_split(np.arange(N), blocks):
        lo, hi = cells[0], cells[-1] + 1
        upad, vpad = np.zeros(hi - lo + 2), np.zeros(hi - lo + 2)
        upad[1:-1], vpad[1:-1] = u[lo:hi], v[lo:hi]
        if lo > 0:
            upad[0], vpad[0] = u[lo - 1], v[lo - 1]
        if hi < N:
            upad[-1], vpad[-1] = u[hi], v[hi]
        for pad in (upad, vpad):
            stencils.fill_neumann_halo(pad, (lo == 0, hi == N))
        stencils.pp_rhs_from_padded(upad, vpad, out_u[lo:hi], out_v[lo:hi], *pp._kernel_args)
        local = np.array([0, hi - lo - 1])
        part = np.empty((2, 2))
        stencils.pp_partial_from_padded(upad, vpad, local, part, *pp._kernel_args)
        assert np.array_equal(part, np.stack([out_u[lo:hi][local], out_v[lo:hi][local]], axis=1))
    assert np.array_equal(np.concatenate([out_u, out_v]), pp.rhs(state))


@pytest.mark.parametrize("method, reference", [("euler", numpy_euler), ("rk4", numpy_rk4)])
def test_trajectories_match_numpy(method, reference):
    pp = PredatorPrey()
    x0 = pp.initial_state(0.02, 0.52)
    x = x0
    step = pp.stepper(0.01, method=method)
    for _ in range(300):
        x = step(x)
    np.testing.assert_allclose(x, reference(x0, N, 0.01, 300), rtol=1e-10, atol=1e-12)


def test_rk4_convergence_order():
    pp = PredatorPrey(PredatorPreyParams(diffusion_u=0.2))
    x0 = pp.initial_state(0.15, 0.45)
    T = 2.0

    def run_default(dt):  # simulate() uses stepper(dt), whose default is Euler
        steps = int(round(T / dt))
        return list(simulate(pp, x0, dt, steps, every=steps))[-1].x

    def run_rk4(dt):
        step = pp.stepper(dt, method="rk4")
        x = x0
        for _ in range(int(round(T / dt))):
            x = step(x)
        return x

    fine = run_rk4(0.005)
    errs = [np.linalg.norm(run_rk4(dt) - fine) for dt in (0.2, 0.1, 0.05)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 3.7), orders
    # and the default (Euler) stepper is first order
    e_errs = [np.linalg.norm(run_default(dt) - fine) for dt in (0.02, 0.01)]
    assert 0.8 < np.log2(e_errs[0] / e_errs[1]) < 1.2


def test_observable_is_spatial_mean(state):
    pp = PredatorPrey()
    obs = pp.observable(state)
    assert obs.shape == (2,)
    assert obs[0] == pytest.approx(state[:N].mean()) and obs[1] == pytest.approx(state[N:].mean())
    x0 = pp.initial_state(0.1, 0.45)
    # cos(5πx) on cell centres sums to zero, so the means are exactly (c, 1 - c)
    np.testing.assert_allclose(pp.observable(x0), [0.45, 0.55], atol=1e-14)


def test_initial_condition_and_sampler():
    pp = PredatorPrey()
    x0 = pp.initial_state(0.2, 0.5)
    xs = (np.arange(1, N + 1) - 0.5) / N
    np.testing.assert_allclose(x0[:N], 0.5 + 0.2 * np.cos(5 * np.pi * xs))
    np.testing.assert_allclose(x0[:N] + x0[N:], 1.0)
    rng = np.random.default_rng(0)
    draws = np.array([pp.sample_ic_params(rng) for _ in range(200)])
    assert draws[:, 0].min() >= 0 and draws[:, 0].max() <= 0.2
    assert draws[:, 1].min() >= 0.4 and draws[:, 1].max() <= 0.6


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=2), "n"), (dict(a=float("nan")), "a"), (dict(diffusion_u=-1.0), "diffusion_u"),
    (dict(laplacian_scale="dx2"), "laplacian_scale"),
])
def test_bad_params_raise(kwargs, field):
    with pytest.raises(InputError, match=f"predator_prey.{field}"):
        PredatorPreyParams(**kwargs)


def test_bad_inputs_raise(state):
    pp = PredatorPrey()
    bad = state.copy()
    bad[N + 3] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        pp.rhs(bad)
    with pytest.raises(InputError, match="block 4"):
        pp.partial_rhs(bad, np.array([4]))
    with pytest.raises(InputError, match="out of range"):
        pp.partial_rhs(state, np.array([-1]))
    with pytest.raises(InputError, match="method"):
        pp.stepper(0.01, method="leapfrog")
    with pytest.raises(InputError, match="dt"):
        pp.stepper(float("inf"))
    with pytest.raises(InputError, match="c"):
        pp.initial_state(0.1, float("nan"))
