"""Explicit one-step integrators for ``dx/dt = f(x)`` (pure functions of the state).

Euler:  x_{n+1} = x_n + dt f(x_n)                                   (1st order)
RK4:    k1 = f(x_n), k2 = f(x_n + dt/2 k1), k3 = f(x_n + dt/2 k2), k4 = f(x_n + dt k3)
        x_{n+1} = x_n + dt/6 (k1 + 2 k2 + 2 k3 + k4)                 (4th order)

Velocity Verlet for particles lives with the particle system (it splits x into positions and
velocities and reuses the force of the previous half step).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Field = Callable[[np.ndarray], np.ndarray]


def euler_step(f: Field, x: np.ndarray, dt: float) -> np.ndarray:
    """One explicit Euler step."""
    return x + dt * f(x)


def rk4_slope(f: Field, x: np.ndarray, dt: float) -> np.ndarray:
    """The RK4 mean slope (k1 + 2 k2 + 2 k3 + k4) / 6, so that x_{n+1} = x_n + dt * slope."""
    k1 = f(x)
    k2 = f(x + (0.5 * dt) * k1)
    k3 = f(x + (0.5 * dt) * k2)
    k4 = f(x + dt * k3)
    return (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0


def rk4_step(f: Field, x: np.ndarray, dt: float) -> np.ndarray:
    """One classical 4th-order Runge-Kutta step."""
    return x + dt * rk4_slope(f, x, dt)


INTEGRATORS = {"euler": euler_step, "rk4": rk4_step}
