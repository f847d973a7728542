"""1-D Predator-Prey reaction-diffusion system (Chen & Li §2.1; reference Predator_Prey solver).

    u_t = u (1 - u - v) + D L u,     v_t = a v (u - b) + L v,     on [0, 1], Neumann boundaries,

on ``n`` cells ``x_i = (i - ½) Δx``, ``Δx = 1/n``, with ``L w_i = s (w_{i-1} - 2 w_i + w_{i+1})``
and the ghost cells equal to the edge values (replication padding). The scale ``s`` is the
``laplacian_scale`` parameter:

* ``"reference"`` (default): ``s = 1`` — the reference code applies the stencil [1, -2, 1]
  **without** dividing by Δx² (a paper≠code difference: its diffusion is Δx² = 4e-4 times the
  paper's Eq. 41 for n = 50). Use this to reproduce the reference data.
* ``"physical"``: ``s = 1/Δx² = n²`` — the second-difference operator of the paper.

State ``x = concat(u, v)`` (length 2n), block ``i = (u_i, v_i)``. Observable: the spatial means
``φ*(x) = (ū, v̄)``. Reference parameters: ``a = 3``, ``b = 0.4``, ``D = 0``; training data use
explicit Euler with ``dt = 0.01``, the metric test set RK4 with ``dt = 0.01``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hpcsur.config import field
from hpcsur.errors import InputError
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import _as_state_no_scan, _check_dt, _reject_non_finite
from hpcsur.systems.base import Layout, check_indices, check_state
from hpcsur.systems.integrators import INTEGRATORS
from hpcsur.systems.registry import InitialParam, SystemKind

LAPLACIAN_SCALES = ("reference", "physical")
IC_AMPLITUDE_RANGE = (0.0, 0.2)   # s
IC_OFFSET_RANGE = (0.4, 0.6)      # c


def _finite_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(value))


@dataclass(frozen=True)
class PredatorPreyParams:
    """Cells ``n``, reaction parameters ``a``, ``b``, prey diffusion ``diffusion_u`` (D) and the
    Laplacian convention ``laplacian_scale`` ("reference": no 1/Δx², "physical": 1/Δx²)."""

    n: int = 50
    a: float = 3.0
    b: float = 0.4
    diffusion_u: float = 0.0
    laplacian_scale: str = "reference"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 3:
            raise InputError(f"predator_prey.n: must be an integer >= 3, got {self.n!r}")
        for name in ("a", "b"):
            if not _finite_number(getattr(self, name)):
                raise InputError(f"predator_prey.{name}: must be a finite number, got {getattr(self, name)!r}")
        if not (_finite_number(self.diffusion_u) and self.diffusion_u >= 0):
            raise InputError(f"predator_prey.diffusion_u: must be a finite number >= 0, got {self.diffusion_u!r}")
        if self.laplacian_scale not in LAPLACIAN_SCALES:
            raise InputError(f"predator_prey.laplacian_scale: must be one of {LAPLACIAN_SCALES}, "
                             f"got {self.laplacian_scale!r}")

    @property
    def dx(self) -> float:
        """Cell width ``1/n``."""
        return 1.0 / self.n

    @property
    def stencil_scale(self) -> float:
        """The factor ``s`` multiplying the [1, -2, 1] stencil (1 or n² = 1/Δx²)."""
        return 1.0 if self.laplacian_scale == "reference" else float(self.n * self.n)


class PredatorPrey:
    """The 1-D Predator-Prey system (see the module docstring for the equations)."""

    observable_names = ("u_mean", "v_mean")

    def __init__(self, params: PredatorPreyParams | None = None) -> None:
        self.params = params if params is not None else PredatorPreyParams()
        self.layout = Layout(2, self.params.n, ("u", "v"))
        p = self.params
        # Kernel arguments, fixed once so every code path uses identical scalars.
        self._kernel_args = (float(p.a), float(p.b), float(p.diffusion_u), p.stencil_scale)

    # ---- vector field -------------------------------------------------------------------

    def rhs(self, x: np.ndarray) -> np.ndarray:
        """Full vector field ``f(x) = concat(u', v')``, shape ``(2n,)``."""
        x = check_state(x, self.layout.size)
        return self._rhs_unchecked(x)

    def _rhs_unchecked(self, x: np.ndarray) -> np.ndarray:
        n = self.params.n
        upad = stencils.pad_with_neumann_halo(x[:n])
        vpad = stencils.pad_with_neumann_halo(x[n:])
        out = np.empty(2 * n, dtype=np.float64)
        stencils.pp_rhs_from_padded(upad, vpad, out[:n], out[n:], *self._kernel_args)
        return out

    def partial_rhs(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``(u'_i, v'_i)`` at cells ``idx``, shape ``(k, 2)``; O(k) cost (only k stencils read)."""
        x = _as_state_no_scan(x, self.layout.size)
        idx = check_indices(idx, self.layout.n_blocks)
        out = np.empty((idx.shape[0], 2), dtype=np.float64)
        stencils.pp_partial_neumann(x, self.params.n, idx, out, *self._kernel_args)
        _reject_non_finite(out, idx)
        return out

    # ---- observable ---------------------------------------------------------------------

    def observable(self, x: np.ndarray) -> np.ndarray:
        """``φ*(x) = (ū, v̄)``, the spatial means (Jacobian rows are 1/n on each half)."""
        x = check_state(x, self.layout.size)
        n = self.params.n
        return np.array([x[:n].mean(), x[n:].mean()])

    # ---- time stepping ------------------------------------------------------------------

    def stepper(self, dt: float, method: str = "euler") -> Callable[[np.ndarray], np.ndarray]:
        """One step of size ``dt`` with ``"euler"`` (default; the reference training data) or
        ``"rk4"`` (the reference metric test set); both from :mod:`hpcsur.systems.integrators`."""
        dt = _check_dt(dt)
        if method not in INTEGRATORS:
            raise InputError(f"method: must be one of {tuple(INTEGRATORS)}, got {method!r}")
        step = INTEGRATORS[method]
        f = self._rhs_unchecked
        return lambda x: step(f, x, dt)

    # ---- initial conditions -------------------------------------------------------------

    def cell_centres(self) -> np.ndarray:
        """``x_i = (i - ½) Δx`` for ``i = 1..n``."""
        return (np.arange(1, self.params.n + 1) - 0.5) * self.params.dx

    def initial_state(self, s: float, c: float) -> np.ndarray:
        """``u = c + s cos(5πx)``, ``v = (1 - c) - s cos(5πx)`` as ``concat(u, v)``."""
        for name, value in (("s", s), ("c", c)):
            if not _finite_number(value):
                raise InputError(f"{name}: initial-condition parameter must be a finite number, got {value!r}")
        wave = np.cos(5.0 * np.pi * self.cell_centres())
        return np.concatenate([c + s * wave, (1.0 - c) - s * wave])

    def sample_ic_params(self, rng: np.random.Generator) -> tuple[float, float]:
        """Draw ``s ~ U[0, 0.2]`` then ``c ~ U[0.4, 0.6]`` (the reference a_list / b_list)."""
        s = float(rng.uniform(*IC_AMPLITUDE_RANGE))
        c = float(rng.uniform(*IC_OFFSET_RANGE))
        return s, c

    def sample_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """An initial state with ``(s, c)`` drawn by :meth:`sample_ic_params`."""
        return self.initial_state(*self.sample_ic_params(rng))


# ---- the registry entry ----------------------------------------------------------------------

@dataclass(frozen=True)
class PredatorPreySystem:
    """The job spec's ``[system]`` table: 1-D predator-prey reaction-diffusion, n cells."""

    n: int = field(50, ge=3)
    a: float = field(3.0, gt=0.0)
    b: float = field(0.4, gt=0.0)
    D: float = field(0.0, ge=0.0)
    laplacian_scale: str = field("reference", choices=LAPLACIAN_SCALES)


def _build(table: PredatorPreySystem) -> PredatorPrey:
    return PredatorPrey(PredatorPreyParams(n=table.n, a=table.a, b=table.b, diffusion_u=table.D,
                                           laplacian_scale=table.laplacian_scale))


def spatial_means(params, layout):
    """``phi*(x) = (mean u, mean v)`` for ``x = concat(u, v)``; numpy arrays or torch tensors."""
    n = int(params["n"])

    def phi(x):
        return x[..., :2 * n].reshape(*x.shape[:-1], 2, n).mean(-1)
    return phi


_TABLE2 = "Table 2 (3 seeds, sample std)"
_LZ_CSV = "result.csv behind Fig. 2/8 (L_z at the same equivalent sizes; no spread published)"
#: Chen & Li's errors (reference metric): (loss, p, equivalent data, family) -> (mean, std, kind, repeats, source)
PUBLISHED = {
    **{("lx", None, n, "onsagernet"): (m, s, "sample", 3, _TABLE2)
       for n, (m, s) in {600: (1.09e-2, 0.57e-2), 1500: (4.70e-3, 0.46e-3), 3000: (2.90e-3, 1.63e-3),
                         6000: (1.24e-3, 0.16e-3), 12000: (9.20e-4, 2.30e-4), 24000: (6.76e-4, 0.93e-4)}.items()},
    **{("lxp", 0.2, n, "onsagernet"): (m, s, "sample", 3, _TABLE2)
       for n, (m, s) in {600: (4.00e-3, 1.78e-3), 1500: (1.92e-3, 0.47e-3), 3000: (1.34e-3, 0.20e-3),
                         6000: (1.13e-3, 0.31e-3), 12000: (8.36e-4, 1.94e-4), 24000: (5.70e-4, 1.00e-4)}.items()},
    **{("lxp", 0.25, n, "onsagernet"): (m, s, "sample", 3, _TABLE2)
       for n, (m, s) in {600: (3.50e-3, 1.33e-3), 1500: (2.19e-3, 0.57e-3), 3000: (1.23e-3, 0.16e-3),
                         6000: (9.08e-4, 0.25e-4), 12000: (7.66e-4, 3.14e-4), 24000: (5.64e-4, 0.18e-4)}.items()},
    **{("lxp", 0.5, n, "onsagernet"): (m, s, "sample", 3, _TABLE2)
       for n, (m, s) in {600: (9.22e-3, 4.46e-3), 1500: (3.30e-3, 1.60e-3), 3000: (1.57e-3, 0.45e-3),
                         6000: (1.46e-3, 0.59e-3), 12000: (8.23e-4, 0.13e-4), 24000: (6.98e-4, 1.20e-4)}.items()},
    **{("lxp", 0.75, n, "onsagernet"): (m, s, "sample", 3, _TABLE2)
       for n, (m, s) in {600: (1.79e-2, 1.11e-2), 1500: (4.56e-3, 1.97e-3), 3000: (2.07e-3, 0.41e-3),
                         6000: (1.07e-3, 0.18e-3), 12000: (8.13e-4, 0.64e-4), 24000: (6.85e-4, 0.95e-4)}.items()},
    **{("lz", None, n, "onsagernet"): (m, None, "", 3, _LZ_CSV)
       for n, m in {600: 1.86e-2, 1500: 9.58e-3, 6000: 1.24e-3, 12000: 1.03e-3, 24000: 7.93e-4}.items()},
    ("lz", None, 3000, "onsagernet"): (3.19e-3, 0.60e-3, "population", 3, "Table 1, row 1 (3 seeds)"),
}

KIND = SystemKind(
    name="predator_prey", params=PredatorPreySystem,
    initial={"s": InitialParam(IC_AMPLITUDE_RANGE, (0.0, None)), "c": InitialParam(IC_OFFSET_RANGE, (0.0, 1.0))},
    integrators=("euler", "rk4"), observable_names=PredatorPrey.observable_names,
    build=_build, state_layout=lambda table: (2, table.n),
    initial_state=lambda system, table, values, rng: system.initial_state(values["s"], values["c"]),
    observables=spatial_means,
    spatial_dims=1, decomposition="grid", grid_shape=lambda table: (table.n,), min_cells_per_rank=2,
    weak_scale=lambda table, root: {"n": table.n * root},
    step_cost=(4e-5, 1e-8), work_bytes_per_block=80, published=PUBLISHED,
    published_notes=("Table 2's L_x at 1,500 drops an outlier seed by hand (1.22e-2 with it). The paper's "
                     "L_x,p index sets are 20 of the 100 coordinates drawn with replacement; ours are 10 of "
                     "the 50 grid points (u and v together) without replacement."),
    description="1-D predator-prey reaction-diffusion (Chen & Li section 2.1)")
