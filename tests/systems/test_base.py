"""The System protocol helpers: Layout, simulate, and the explicit integrators' orders."""
import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.systems.base import Layout, check_indices, check_state, simulate
from hpcsur.systems.integrators import euler_step, rk4_slope, rk4_step


class LinearSystem:
    """dx/dt = A x with a rotation-plus-decay A; exact solution expm(A t) x0."""

    observable_names = ("norm",)

    def __init__(self):
        self.A = np.array([[-0.1, 1.0], [-1.0, -0.1]])
        self.layout = Layout(2, 1, ("x",))
        self.params = None

    def rhs(self, x):
        return self.A @ x

    def partial_rhs(self, x, idx):
        return self.rhs(x)[self.layout.coordinates(idx)]

    def observable(self, x):
        return np.array([np.linalg.norm(x)])

    def stepper(self, dt, method="rk4"):
        step = rk4_step if method == "rk4" else euler_step
        return lambda x: step(self.rhs, x, dt)

    def exact(self, x0, t):
        # A = -0.1 I + rotation generator: closed form, no scipy needed.
        c, s = np.cos(t), np.sin(t)
        return np.exp(-0.1 * t) * np.array([[c, s], [-s, c]]) @ x0


def test_layout_coordinates_two_fields():
    lay = Layout(2, 5, ("u", "v"))
    assert lay.size == 10
    np.testing.assert_array_equal(lay.coordinates(np.array([0, 3])), [[0, 5], [3, 8]])


def test_layout_coordinates_interleaved_blocks():
    # LJ-like: 2 fields (positions, velocities) of 3 coordinates each, 4 atoms.
    lay = Layout(6, 4, ("r", "p"))
    np.testing.assert_array_equal(lay.coordinates(np.array([1])), [[3, 4, 5, 15, 16, 17]])


def test_layout_coordinates_single_field():
    lay = Layout(1, 7, ("v",))
    np.testing.assert_array_equal(lay.coordinates(np.array([6, 0])), [[6], [0]])


def test_simulate_yields_requested_frames_as_copies():
    sys_ = LinearSystem()
    x0 = np.array([1.0, 0.0])
    frames = list(simulate(sys_, x0, 0.1, 10, every=3))
    assert [f.step for f in frames] == [0, 3, 6, 9]
    np.testing.assert_allclose([f.t for f in frames], [0.0, 0.3, 0.6, 0.9])
    np.testing.assert_array_equal(frames[0].x, x0)
    frames[1].x[:] = 99.0   # a copy: must not alter later frames
    assert not np.any(frames[2].x == 99.0)
    np.testing.assert_allclose(frames[-1].x, sys_.exact(x0, 0.9), rtol=1e-5)


@pytest.mark.parametrize("kwargs, field", [
    (dict(dt=0.1, steps=0), "steps"),
    (dict(dt=0.1, steps=3, every=0), "every"),
    (dict(dt=-1.0, steps=3), "dt"),
    (dict(dt=float("nan"), steps=3), "dt"),
])
def test_simulate_rejects_bad_arguments(kwargs, field):
    with pytest.raises(InputError, match=field):
        list(simulate(LinearSystem(), np.array([1.0, 0.0]), **kwargs))


def test_simulate_rejects_non_finite_initial_state():
    with pytest.raises(InputError, match="x0"):
        list(simulate(LinearSystem(), np.array([np.nan, 0.0]), 0.1, 2))


def test_check_state_and_indices_reject_bad_input():
    with pytest.raises(InputError, match="length 3"):
        check_state(np.zeros(4), 3)
    with pytest.raises(InputError, match="out of range"):
        check_indices([0, 5], 5)
    with pytest.raises(InputError, match="duplicate"):
        check_indices([1, 1], 5)
    with pytest.raises(InputError, match="integers"):
        check_indices(np.array([0.5]), 5)


def _global_error(step, dt, T=1.0):
    sys_ = LinearSystem()
    x = np.array([1.0, 0.5])
    x0 = x.copy()
    for _ in range(int(round(T / dt))):
        x = step(sys_.rhs, x, dt)
    return np.linalg.norm(x - sys_.exact(x0, T))


@pytest.mark.parametrize("step, order", [(rk4_step, 4), (euler_step, 1)])
def test_integrator_convergence_order(step, order):
    errors = [_global_error(step, dt) for dt in (0.1, 0.05, 0.025)]
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(observed - order) < 0.15), observed


def test_rk4_slope_matches_step():
    sys_ = LinearSystem()
    x = np.array([0.3, -0.2])
    np.testing.assert_array_equal(rk4_step(sys_.rhs, x, 0.1), x + 0.1 * rk4_slope(sys_.rhs, x, 0.1))
