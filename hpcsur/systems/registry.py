"""The system registry: one :class:`SystemKind` per kind of microscopic system, looked up by name.

Everything the rest of hpcsur needs to know about a kind lives on its ``SystemKind``: the job spec's
``[system]`` schema (a frozen dataclass of :func:`hpcsur.config.field` s) and ``[initial]`` schema,
how to build the system and draw a trajectory's initial state, the state layout, the integrators,
how the domain decomposes, the macroscopic observables as one array-generic definition (numpy or
torch, whichever the caller passes) and the cost hints of the pre-flight estimate and the scaling
model. ``ops``, ``learn`` and ``parallel`` ask :func:`get`; no module outside ``hpcsur/systems``
branches on a kind's name.

Built-in kinds are declared at the end of their own modules (``KIND = SystemKind(...)``) and
imported on first use. Third-party kinds register through the entry-point group
``hpcsur.systems`` (``[project.entry-points."hpcsur.systems"] my_kind = "my_module:KIND"``), or by
calling :func:`register` before the job spec is read. A new system is one file: its class (the
:class:`hpcsur.systems.base.System` protocol) and its ``KIND``.

Decomposition (``decomposition``):

* ``"ensemble"``  whole trajectories per rank; a trajectory is never split (any system);
* ``"grid"``      a block of an ``n0 x n1 ...`` grid per rank with halo exchange
                  (:class:`hpcsur.parallel.fields.FieldDomain`: the built-in stencil systems);
* ``"particles"`` a sub-box per rank with ghost atoms (:class:`hpcsur.parallel.particles.ParticleDomain`).
"""
from __future__ import annotations

import dataclasses
import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from hpcsur.errors import InputError

BUILTIN = {
    "lennard_jones": "hpcsur.systems.lennard_jones",
    "allen_cahn": "hpcsur.systems.allen_cahn",
    "predator_prey": "hpcsur.systems.predator_prey",
}
ENTRY_POINT_GROUP = "hpcsur.systems"
DECOMPOSITIONS = ("ensemble", "grid", "particles")


@dataclass(frozen=True)
class InitialParam:
    """One scalar of the ``[initial]`` table: its default ``(low, high)`` draw and the range every
    sample must lie in (``None``: unbounded above)."""

    default: tuple[float, float]
    allowed: tuple[float, Optional[float]]


@dataclass(frozen=True)
class SystemKind:
    """Everything hpcsur knows about one kind of microscopic system (see the module docstring).

    Callables take the ``[system]`` parameters (an instance of ``params``) unless said otherwise:

    * ``build(params) -> System``;
    * ``state_layout(params) -> (m, n)``: coordinates per block and blocks, without building anything
      (absurd sizes are refused before allocation);
    * ``initial_state(system, params, values, rng) -> x0``: ``values`` maps each ``[initial]`` name to
      its draw for this trajectory; ``rng`` is the trajectory's own stream (velocities and the like);
    * ``observables(params, layout) -> phi``: ``phi(x)`` maps states ``(..., N)`` to ``(..., n_obs)``
      using only operators numpy arrays and torch tensors share (slicing, reshape, arithmetic,
      ``.sum``/``.mean``), so the same definition gives the data's and the encoder's observables;
      ``params`` is the ``[system]`` table as a mapping (as a store records it), ``layout`` the store's
      layout attributes (``block_size``, ``n_blocks``);
    * ``published``: errors a paper reports for this kind, ``(loss, p or None, equivalent data, model
      family) -> (mean, std or None, "sample" | "population" | "", repeats, source)`` (the reference
      code's non-squared metric), with ``published_notes`` on how they were made;
    * ``grid_shape(params)``: the decomposable extent per axis (grid cells; for particles, whole
      interaction lengths per box side); ``weak_scale(params, root)``: the ``[system]`` overrides of a
      domain ``root`` times larger along every axis (weak scaling).
    """

    name: str
    params: type
    initial: Mapping[str, InitialParam]
    integrators: tuple[str, ...]
    observable_names: tuple[str, ...]
    build: Callable[[Any], Any]
    state_layout: Callable[[Any], tuple[int, int]]
    initial_state: Callable[[Any, Any, Mapping[str, float], np.random.Generator], np.ndarray]
    observables: Callable[[Mapping, Mapping], Callable]
    spatial_dims: int = 1
    decomposition: str = "ensemble"
    grid_shape: Optional[Callable[[Any], tuple[int, ...]]] = None
    min_cells_per_rank: int = 1
    weak_scale: Optional[Callable[[Any, int], dict]] = None
    positions_unwrapped: bool = False
    published: Mapping[tuple, tuple] = dataclasses.field(default_factory=dict)
    published_notes: str = ""
    step_cost: tuple[float, float] = (5e-5, 1e-7)
    work_bytes_per_block: int = 200
    description: str = ""

    def __post_init__(self) -> None:
        where = f"system kind {self.name!r}:"
        if not self.name.isidentifier():
            raise InputError(f"{where} name must be an identifier")
        if self.decomposition not in DECOMPOSITIONS:
            raise InputError(f"{where} decomposition = {self.decomposition!r}; allowed: {', '.join(DECOMPOSITIONS)}")
        if self.decomposition != "ensemble" and (self.grid_shape is None or self.weak_scale is None):
            raise InputError(f"{where} a {self.decomposition!r} decomposition needs grid_shape and weak_scale")
        if not self.integrators:
            raise InputError(f"{where} needs at least one integrator")
        if not self.observable_names:
            raise InputError(f"{where} needs at least one observable")

    @property
    def default_integrator(self) -> str:
        return self.integrators[0]

    @property
    def n_observables(self) -> int:
        return len(self.observable_names)

    def domain_shape(self, params) -> tuple[int, ...]:
        """The decomposable extent per axis; an ensemble-only kind has one indivisible cell per axis."""
        if self.grid_shape is None:
            return (1,) * self.spatial_dims
        return tuple(self.grid_shape(params))


_KINDS: dict[str, SystemKind] = {}
_LOCK = threading.Lock()
_ENTRY_POINTS_LOADED = False


def register(kind: SystemKind) -> SystemKind:
    """Add ``kind`` to the registry (a second kind of the same name is refused)."""
    if not isinstance(kind, SystemKind):
        raise InputError(f"register: expected a SystemKind, got {type(kind).__name__}")
    with _LOCK:
        known = _KINDS.get(kind.name)
        if known is not None and known is not kind:
            raise InputError(f"system kind {kind.name!r} is registered twice")
        _KINDS[kind.name] = kind
    return kind


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _KINDS or ep.name in BUILTIN:
            continue
        try:
            kind = ep.load()
        except Exception as err:  # a broken plug-in names itself, in one line
            raise InputError(f"system kind {ep.name!r} (entry point {ep.value}) failed to load: "
                             f"{type(err).__name__}: {err}") from None
        if not isinstance(kind, SystemKind) or kind.name != ep.name:
            raise InputError(f"system kind {ep.name!r} (entry point {ep.value}) is not a SystemKind named {ep.name!r}")
        register(kind)


def names() -> tuple[str, ...]:
    """Every known kind: the built-ins, then the installed plug-ins and registered ones, sorted."""
    _load_entry_points()
    return tuple(BUILTIN) + tuple(sorted(set(_KINDS) - set(BUILTIN)))


def get(name: str) -> SystemKind:
    """The kind called ``name``; one line naming the known kinds when there is none."""
    kind = _KINDS.get(name)
    if kind is not None:
        return kind
    if isinstance(name, str) and name in BUILTIN:
        return register(importlib.import_module(BUILTIN[name]).KIND)
    _load_entry_points()
    if name in _KINDS:
        return _KINDS[name]
    raise InputError(f"system kind {name!r} is not known; choose one of: {', '.join(names())}")
