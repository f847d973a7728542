"""The microscopic-system protocol shared by every system.

A microscopic system is an ODE ``dx/dt = f(x)`` on a flat float64 state vector ``x`` of length
``N = m * n``: ``n`` *blocks* (an atom, a grid point) of ``m`` coordinates each. The method of
Chen & Li computes ``f`` only on a random subset ``I`` of blocks, so every system offers

* ``rhs(x)``                the full vector field ``f(x)``, shape ``(N,)``;
* ``partial_rhs(x, idx)``   ``f`` at the blocks ``idx`` only, shape ``(len(idx), m)``, with cost
                            proportional to ``len(idx)`` (plus reusable O(N) binning for particles);
* ``observable(x)``         the macroscopic observable ``phi*(x)``, shape ``(n_obs,)``;
* ``layout``                the block structure: ``layout.coordinates(idx)`` maps blocks to the
                            flat coordinate indices, so ``rhs(x)[layout.coordinates(idx)] ==
                            partial_rhs(x, idx)``;
* ``params``                a frozen dataclass with every physical parameter;
* ``stepper(dt)``           a callable advancing the state by one time step (the system's own
                            integrator: velocity Verlet for particles, RK4 / Euler for PDEs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol, runtime_checkable

import numpy as np

from hpcsur.errors import InputError


@dataclass(frozen=True)
class Layout:
    """Block structure of a state vector.

    ``block_size`` (m) coordinates per block, ``n_blocks`` (n) blocks. ``fields`` names the
    sub-vectors the state is made of, each of length ``n * (m // len(fields))``; the flat state is
    their concatenation (LJ: positions then velocities, interleaved xyz; Predator-Prey: u then v).
    """

    block_size: int
    n_blocks: int
    fields: tuple[str, ...] = ("x",)

    @property
    def size(self) -> int:
        """Total number of coordinates N = m * n."""
        return self.block_size * self.n_blocks

    def coordinates(self, idx: np.ndarray) -> np.ndarray:
        """Flat coordinate indices of blocks ``idx``, shape ``(len(idx), m)``.

        With ``q = m / len(fields)`` coordinates per field and block, block ``i`` owns, in field
        ``k``, the coordinates ``k*n*q + i*q + (0..q-1)``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        nf = len(self.fields)
        q = self.block_size // nf
        per_field = idx[:, None] * q + np.arange(q)[None, :]
        return np.concatenate([k * self.n_blocks * q + per_field for k in range(nf)], axis=1)


@runtime_checkable
class System(Protocol):
    """What every microscopic system provides (see the module docstring)."""

    params: Any
    layout: Layout
    observable_names: tuple[str, ...]

    def rhs(self, x: np.ndarray) -> np.ndarray: ...

    def partial_rhs(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray: ...

    def observable(self, x: np.ndarray) -> np.ndarray: ...

    def stepper(self, dt: float) -> Callable[[np.ndarray], np.ndarray]: ...


def check_state(x: np.ndarray, size: int, name: str = "x") -> np.ndarray:
    """Return ``x`` as a contiguous float64 vector of length ``size``; reject NaN/inf."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] != size:
        raise InputError(f"{name}: expected a flat state vector of length {size}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InputError(f"{name}: non-finite value (NaN or inf) at coordinate {bad}")
    return x


def check_indices(idx, n: int, name: str = "idx") -> np.ndarray:
    """Validate a block index set: integers in ``[0, n)``, no duplicates. Returns int64 array."""
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array of block indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: block indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise InputError(f"{name}: block index {bad} out of range [0, {n})")
    if np.unique(arr).size != arr.size:
        raise InputError(f"{name}: duplicate block indices (an index set must be distinct)")
    return arr


class Frame(NamedTuple):
    """One stored configuration of a trajectory."""

    step: int
    t: float
    x: np.ndarray


def simulate(system: System, x0: np.ndarray, dt: float, steps: int, every: int = 1) -> Iterator[Frame]:
    """Integrate ``system`` from ``x0`` for ``steps`` steps of size ``dt``; yield every ``every``-th state.

    Yields ``Frame(step, t, x)`` for ``step = 0, every, 2*every, ... <= steps`` (frame 0 is the
    initial state). Each yielded ``x`` is a fresh copy, so callers may keep it.
    """
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise InputError(f"steps: must be an integer >= 1, got {steps!r}")
    if not (isinstance(every, (int, np.integer)) and every >= 1):
        raise InputError(f"every: must be an integer >= 1, got {every!r}")
    if not (np.isfinite(dt) and dt > 0):
        raise InputError(f"dt: must be a finite number > 0, got {dt!r}")
    x = check_state(x0, system.layout.size, "x0").copy()
    advance = system.stepper(dt)
    yield Frame(0, 0.0, x.copy())
    for n in range(1, steps + 1):
        x = advance(x)
        if n % every == 0:
            yield Frame(n, n * dt, x.copy())
