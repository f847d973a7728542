"""A third-party system in one file: a ring of n cells exchanging heat with their neighbours and
losing it to the surroundings,

    dx_i/dt = k (x_{i-1} - 2 x_i + x_{i+1}) - g x_i,     i mod n (periodic),

observable: the mean temperature, which decays as exp(-g t) (the ring term sums to zero). Initial
state: x_i = c + a sin(2 pi i / n). Registered with hpcsur through the entry-point group
``hpcsur.systems`` (pyproject.toml next to this file); hpcsur runs its trajectories whole, one rank
each (``decomposition = "ensemble"``).
"""
from dataclasses import dataclass

import numpy as np

from hpcsur.config import field
from hpcsur.systems.base import Layout, check_indices, check_state
from hpcsur.systems.registry import InitialParam, SystemKind


@dataclass(frozen=True)
class CoolingRingTable:
    """The job spec's [system] table."""

    n: int = field(16, ge=3)
    k: float = field(0.5, ge=0.0)
    g: float = field(0.2, ge=0.0)


class CoolingRing:
    observable_names = ("mean_temperature",)

    def __init__(self, table: CoolingRingTable):
        self.params = table
        self.layout = Layout(block_size=1, n_blocks=table.n)

    def rhs(self, x):
        x = check_state(x, self.layout.size)
        return self.params.k * (np.roll(x, 1) - 2 * x + np.roll(x, -1)) - self.params.g * x

    def partial_rhs(self, x, idx):
        """f at the cells ``idx`` only: three neighbours per cell."""
        x = check_state(x, self.layout.size)
        idx = check_indices(idx, self.layout.n_blocks)
        n, k, g = self.params.n, self.params.k, self.params.g
        f = k * (x[(idx - 1) % n] - 2 * x[idx] + x[(idx + 1) % n]) - g * x[idx]
        return f[:, None]

    def observable(self, x):
        return np.array([np.mean(x)])

    def stepper(self, dt, method="euler"):
        if method == "euler":
            return lambda x: x + dt * self.rhs(x)

        def rk4(x):
            k1 = self.rhs(x)
            k2 = self.rhs(x + 0.5 * dt * k1)
            k3 = self.rhs(x + 0.5 * dt * k2)
            k4 = self.rhs(x + dt * k3)
            return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return rk4

    def initial_state(self, a, c):
        i = np.arange(self.params.n)
        return c + a * np.sin(2 * np.pi * i / self.params.n)


def mean_temperature(params, layout):
    def phi(x):
        return x.mean(-1)[..., None]
    return phi


KIND = SystemKind(
    name="cooling_ring", params=CoolingRingTable,
    initial={"a": InitialParam((0.0, 1.0), (0.0, None)), "c": InitialParam((0.5, 1.5), (0.0, None))},
    integrators=("euler", "rk4"), observable_names=CoolingRing.observable_names,
    build=CoolingRing, state_layout=lambda table: (1, table.n),
    initial_state=lambda system, table, values, rng: system.initial_state(values["a"], values["c"]),
    observables=mean_temperature, description="a cooling ring of cells (hpcsur's plug-in example)")
