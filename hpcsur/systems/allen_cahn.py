"""Allen-Cahn equation on the unit square (Chen & Li §2.2; reference ``batch_solver_RK4.py``).

    v_t = Δv - F'(v)/ε²,   F(v) = (v² - 1)²/4,   ∂_n v = 0 on ∂[0,1]²

Discretisation: an ``n × n`` cell-centred grid, ``h = 1/n``, cell centres ``((i+½)h, (j+½)h)``;
the Neumann condition is a mirrored ghost layer equal to the edge value (replication padding), and

    f(v)_{ij} = (v_{i-1,j} + v_{i+1,j} + v_{i,j-1} + v_{i,j+1} - 4 v_{ij}) / h² + (v_{ij} - v_{ij}³)/ε².

The state is ``x = v.ravel()`` (row-major), one grid point per block (``m = 1``). The macroscopic
observable is the discrete free energy of the reference autoencoder's ``energy_calculator``

    E = h² Σ_ij [ (v_ij² - 1)²/(4ε²) + ½ ( ((v_{i+1,j} - v_{i-1,j})/(2h))² + ((v_{i,j+1} - v_{i,j-1})/(2h))² ) ]

evaluated on the replicate-padded field. Default ``ε = 10h / (2√2 atanh 0.9) = 0.012007`` for
``h = 1/200``; the reference integrates with RK4 at ``dt = 0.1 h²``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hpcsur.config import field
from hpcsur.errors import InputError
from hpcsur.systems import stencils
from hpcsur.systems.base import Layout, check_indices, check_state
from hpcsur.systems.integrators import euler_step
from hpcsur.systems.registry import InitialParam, SystemKind

METHODS = ("rk4", "euler")
TORUS_R1_RANGE = (0.30, 0.40)
TORUS_R2_RANGE = (0.10, 0.15)


def reference_epsilon(n: int) -> float:
    """Interface width of the reference code: ``ε = 10h / (2√2 atanh 0.9)`` with ``h = 1/n``."""
    return 10.0 / n / (2.0 * math.sqrt(2.0) * math.atanh(0.9))


@dataclass(frozen=True)
class AllenCahnParams:
    """Grid size ``n`` (``n × n`` cells, ``h = 1/n``) and interface parameter ``epsilon``."""

    n: int = 200
    epsilon: float = 0.012007

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 3:
            raise InputError(f"allen_cahn.n: must be an integer >= 3, got {self.n!r}")
        if not (isinstance(self.epsilon, (int, float, np.floating)) and math.isfinite(self.epsilon)
                and self.epsilon > 0):
            raise InputError(f"allen_cahn.epsilon: must be a finite number > 0, got {self.epsilon!r}")

    @property
    def h(self) -> float:
        """Grid spacing ``1/n``."""
        return 1.0 / self.n


class AllenCahn:
    """The 2-D Allen-Cahn system (see the module docstring for the equations)."""

    observable_names = ("free_energy",)

    def __init__(self, params: AllenCahnParams | None = None) -> None:
        self.params = params if params is not None else AllenCahnParams()
        n = self.params.n
        self.layout = Layout(1, n * n, ("v",))
        h = self.params.h
        eps = float(self.params.epsilon)
        # Scalars passed to every kernel, computed once so all code paths use identical values.
        self.inv_h2 = 1.0 / (h * h)
        self.inv_eps2 = 1.0 / (eps * eps)
        self.inv_4eps2 = 1.0 / (4.0 * eps * eps)
        self.inv_2h = 1.0 / (2.0 * h)

    # ---- vector field -------------------------------------------------------------------

    def rhs(self, x: np.ndarray) -> np.ndarray:
        """Full vector field ``f(x)``, shape ``(n*n,)``."""
        x = check_state(x, self.layout.size)
        return self._rhs_unchecked(x)

    def _rhs_unchecked(self, x: np.ndarray) -> np.ndarray:
        n = self.params.n
        vpad = stencils.pad_with_neumann_halo(x.reshape(n, n))
        out = np.empty((n, n), dtype=np.float64)
        stencils.ac_rhs_from_padded(vpad, out, self.inv_h2, self.inv_eps2)
        return out.reshape(-1)

    def partial_rhs(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``f`` at grid points ``idx`` (flat row-major indices), shape ``(k, 1)``; O(k) cost.

        Only the k stencils are read, so the finiteness check covers those stencils: a NaN/inf
        anywhere in them makes the result non-finite, which is reported as an InputError.
        """
        x = _as_state_no_scan(x, self.layout.size)
        idx = check_indices(idx, self.layout.n_blocks)
        out = np.empty(idx.shape[0], dtype=np.float64)
        stencils.ac_partial_neumann(x, self.params.n, self.params.n, idx, out,
                                    self.inv_h2, self.inv_eps2)
        _reject_non_finite(out, idx)
        return out.reshape(-1, 1)

    # ---- observable ---------------------------------------------------------------------

    def free_energy(self, x: np.ndarray) -> float:
        """Discrete free energy ``E`` of the reference ``energy_calculator`` (module docstring)."""
        x = check_state(x, self.layout.size)
        n = self.params.n
        vpad = stencils.pad_with_neumann_halo(x.reshape(n, n))
        row_sums = np.empty(n, dtype=np.float64)
        stencils.ac_energy_row_sums_from_padded(vpad, row_sums, self.inv_4eps2, self.inv_2h)
        h = self.params.h
        return float(stencils.ordered_sum(row_sums) * (h * h))

    def observable(self, x: np.ndarray) -> np.ndarray:
        """``φ*(x) = [E(x)]``, shape ``(1,)``."""
        return np.array([self.free_energy(x)])

    # ---- time stepping ------------------------------------------------------------------

    def stepper(self, dt: float, method: str = "rk4") -> Callable[[np.ndarray], np.ndarray]:
        """One step of size ``dt``: ``"rk4"`` (default; fused numba sweeps, bit-identical to
        ``integrators.rk4_step(rhs, x, dt)``) or ``"euler"``. Returns a fresh array each call."""
        dt = _check_dt(dt)
        if method == "rk4":
            return lambda x: self.integrate(x, dt, 1)
        if method == "euler":
            return lambda x: euler_step(self._rhs_unchecked, x, dt)
        raise InputError(f"method: must be one of {METHODS}, got {method!r}")

    def integrate(self, x: np.ndarray, dt: float, steps: int) -> np.ndarray:
        """``steps`` RK4 steps from ``x`` with the fused kernels; returns a new state vector.

        Serial fast path: all four stages fused into one row wavefront
        (:func:`stencils.ac_rk4_step_wavefront`), bit-identical to ``integrators.rk4_step``. The
        padded work arrays live for the whole call, so long runs pay one pad/unpad in total.
        """
        dt = _check_dt(dt)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise InputError(f"steps: must be an integer >= 0, got {steps!r}")
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.shape != (self.layout.size,):
            raise InputError(f"x: expected a flat state vector of length {self.layout.size}, got shape {x.shape}")
        n = self.params.n
        xpad = stencils.pad_with_neumann_halo(x.reshape(n, n))
        out = np.empty_like(xpad)
        rings = [np.empty((stencils.RING, n + 2)) for _ in range(3)]
        final = stencils.ac_rk4_steps_serial(xpad, out, *rings, int(steps), dt,
                                             self.inv_h2, self.inv_eps2)
        return final[1:-1, 1:-1].copy().reshape(-1)

    # ---- initial conditions -------------------------------------------------------------

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates ``(X, Y)``, each ``(n, n)``; ``X`` varies along axis 0."""
        n = self.params.n
        c = (np.arange(n) + 0.5) * self.params.h
        return np.meshgrid(c, c, indexing="ij")

    def torus(self, r1: float, r2: float) -> np.ndarray:
        """Torus initial state ``v = -1 + tanh((r1 - d)/(√2ε)) - tanh((r2 - d)/(√2ε))``.

        ``d`` = distance of the cell centre to (0.5, 0.5); ``0 < r2 < r1`` (outer, inner radius).
        """
        for name, r in (("r1", r1), ("r2", r2)):
            if not (np.isfinite(r) and r > 0):
                raise InputError(f"{name}: torus radius must be a finite number > 0, got {r!r}")
        if not r2 < r1:
            raise InputError(f"r2: inner radius must be smaller than r1={r1!r}, got {r2!r}")
        X, Y = self.cell_centres()
        d = np.sqrt((X - 0.5) ** 2 + (Y - 0.5) ** 2)
        width = math.sqrt(2.0) * self.params.epsilon
        v = -1.0 + np.tanh((r1 - d) / width) - np.tanh((r2 - d) / width)
        return v.reshape(-1)

    def sample_torus_radii(self, rng: np.random.Generator) -> tuple[float, float]:
        """Draw ``r1 ~ U[0.3, 0.4]`` then ``r2 ~ U[0.1, 0.15]`` (the reference distribution)."""
        r1 = float(rng.uniform(*TORUS_R1_RANGE))
        r2 = float(rng.uniform(*TORUS_R2_RANGE))
        return r1, r2

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A torus initial state with radii drawn by :meth:`sample_torus_radii`."""
        return self.torus(*self.sample_torus_radii(rng))


# ---- small shared helpers (also used by predator_prey) ---------------------------------------


def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating, np.integer)) \
            or not (math.isfinite(dt) and dt > 0):
        raise InputError(f"dt: must be a finite number > 0, got {dt!r}")
    return float(dt)


def _as_state_no_scan(x: np.ndarray, size: int) -> np.ndarray:
    """Shape/dtype check without the O(N) finiteness scan (partial evaluations stay O(k))."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] != size:
        raise InputError(f"x: expected a flat state vector of length {size}, got shape {x.shape}")
    return x


def _reject_non_finite(values: np.ndarray, idx: np.ndarray) -> None:
    """Raise InputError if a partial result is NaN/inf (a non-finite value in a stencil)."""
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(values.shape[0], -1).any(axis=1))
        raise InputError(f"x: non-finite value (NaN or inf) in the stencil of block {int(idx[rows[0]])}")


# ---- the registry entry ----------------------------------------------------------------------

@dataclass(frozen=True)
class AllenCahnSystem:
    """The job spec's ``[system]`` table: Allen-Cahn on the unit square, n x n cell-centred grid."""

    n: int = field(200, ge=3)
    epsilon: float = field(0.012007, gt=0.0)


def free_energy_observable(params, layout):
    """The module docstring's discrete free energy E(v) on the replicate-padded field, for states
    ``(..., n*n)``; numpy arrays or torch tensors (edge replication by index lists)."""
    n, epsilon = int(params["n"]), float(params["epsilon"])
    h = 1.0 / n
    inv_4eps2, inv_2h = 1.0 / (4.0 * epsilon * epsilon), 1.0 / (2.0 * h)
    padded = [0, *range(n), n - 1]

    def phi(x):
        v = x.reshape(*x.shape[:-1], n, n)
        p = v[..., padded, :][..., :, padded]
        c = p[..., 1:-1, 1:-1]
        gx = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * inv_2h
        gy = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * inv_2h
        density = (c * c - 1.0) ** 2 * inv_4eps2 + 0.5 * (gx * gx + gy * gy)
        return (density.sum((-2, -1)) * (h * h))[..., None]
    return phi


KIND = SystemKind(
    name="allen_cahn", params=AllenCahnSystem,
    initial={"r1": InitialParam(TORUS_R1_RANGE, (0.0, 0.5)), "r2": InitialParam(TORUS_R2_RANGE, (0.0, 0.5))},
    integrators=METHODS, observable_names=AllenCahn.observable_names,
    build=lambda table: AllenCahn(AllenCahnParams(n=table.n, epsilon=table.epsilon)),
    state_layout=lambda table: (1, table.n * table.n),
    initial_state=lambda system, table, values, rng: system.torus(values["r1"], values["r2"]),
    observables=free_energy_observable,
    spatial_dims=2, decomposition="grid", grid_shape=lambda table: (table.n, table.n), min_cells_per_rank=2,
    weak_scale=lambda table, root: {"n": table.n * root},
    step_cost=(3e-5, 7e-9), work_bytes_per_block=80,
    # Chen & Li Table 1, row 2 (the reference's counts: L_z on 2,500 configurations, L_x,p on 40,000 at p = 1/25)
    published={("lz", None, 2500, "onsagernet"): (6.93e-3, 2.80e-3, "population", 3, "Table 1, row 2"),
               ("lxp", 0.04, 1600, "onsagernet"): (3.98e-3, 1.58e-3, "population", 3, "Table 1, row 2")},
    description="Allen-Cahn phase field on the unit square (Chen & Li section 2.2)")
