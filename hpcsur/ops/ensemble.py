"""Ensembles and parameter sweeps: derived job specs, one per member.

A member is the base spec with some fields replaced, addressed by dotted keys
(``"initial.temperature"``, ``"system.n_atoms"``, ``"simulation.seed"``). Every member gets its own
name (``<base>-<index>``), store (``<store>-<index>``) and run folder, so members never share a
store (one generator per store) and can run as independent Slurm array tasks or dask tasks.

:func:`sweep_points` expands ``{key: [values...]}`` into the Cartesian product, in a stable order
(keys sorted, values in the given order), so member ``i`` means the same thing on every machine.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec, parse_job


def sweep_points(sweep: Mapping[str, list]) -> list[dict[str, Any]]:
    """The Cartesian product of ``sweep`` as a list of ``{dotted key: value}`` (stable order)."""
    keys = sorted(sweep)
    for key in keys:
        if not isinstance(sweep[key], list) or not sweep[key]:
            raise InputError(f"sweep {key!r}: expected a non-empty list of values, got {sweep[key]!r}")
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def _set_dotted(tables: dict, key: str, value: Any, source: str) -> None:
    section, _, name = key.partition(".")
    if not name or "." in name:
        raise InputError(f"{source}: sweep key {key!r} must be <table>.<key>, e.g. initial.temperature")
    if section in ("store", "output"):
        raise InputError(f"{source}: sweep key {key!r}: members get their own [{section}] automatically")
    table = tables.setdefault(section, {})
    if not isinstance(table, dict):
        raise InputError(f"{source}: [{section}] must be a table")
    table[name] = value


def member_spec(spec: JobSpec, index: int, overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Member ``index`` of an ensemble built on ``spec``: ``overrides`` applied, own store and run folder.

    With no override for ``simulation.seed`` the member's seed is ``seed + index``, so an
    ensemble of identical specs still draws independent initial conditions and index sets.
    The result is validated like any job spec (a bad override is one error line).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InputError(f"ensemble member: index must be an integer >= 0, got {index!r}")
    tables = spec.to_dict()
    overrides = dict(overrides or {})
    overrides.setdefault("simulation.seed", spec.simulation.seed + index)
    for key, value in overrides.items():
        _set_dotted(tables, key, value, spec.source)
    tables["store"]["path"] = f"{spec.store.path}-{index}"
    tables["output"] = {**tables.get("output", {}), "dir": str(Path(spec.run_dir).with_name(
        f"{Path(spec.run_dir).name}-{index}"))}
    return parse_job(tables, source=f"{spec.source}[member {index}]", name=f"{spec.name}-{index}")
