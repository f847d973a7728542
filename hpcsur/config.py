"""Typed TOML sections: frozen dataclasses whose fields carry their allowed ranges (shared by every room).

Each section of a job spec is a frozen dataclass; each field is declared with :func:`field`
giving its bounds or choices. :func:`build` turns a TOML table into an instance and raises
:class:`~hpcsur.errors.InputError` with one line that names the file, the section, the key, the
value and what is allowed, e.g.::

    jobs/lj.toml: [labels] p = 1.5 is out of range; allowed: 0 < p <= 1
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from hpcsur.errors import InputError

MISSING = dataclasses.MISSING


def field(default: Any = MISSING, *, gt=None, ge=None, lt=None, le=None, choices=None,
          length=None, doc: str = ""):
    """A dataclass field with validation metadata (bounds apply to numbers and list items)."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices, "length": length, "doc": doc}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _range_text(name: str, meta: dict) -> str:
    lo = f"{meta['gt']} < " if meta["gt"] is not None else (f"{meta['ge']} <= " if meta["ge"] is not None else "")
    hi = f" < {meta['lt']}" if meta["lt"] is not None else (f" <= {meta['le']}" if meta["le"] is not None else "")
    return f"{lo}{name}{hi}"


def _in_range(v: float, meta: dict) -> bool:
    return not ((meta["gt"] is not None and not v > meta["gt"])
                or (meta["ge"] is not None and not v >= meta["ge"])
                or (meta["lt"] is not None and not v < meta["lt"])
                or (meta["le"] is not None and not v <= meta["le"]))


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check ``value`` against annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except InputError as err:
                errors.append(err)
        raise errors[0]
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} = {value!r} has the wrong type; expected a list of {_type_name(item_tp)}")
        items = [_coerce(v, item_tp, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where} = {value!r} has the wrong type; expected a table")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} = {value!r} has the wrong type; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where} = {value!r} has the wrong type; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} = {value!r} has the wrong type; expected a number")
        if not math.isfinite(value):
            raise InputError(f"{where} = {value!r} is not finite; expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where} = {value!r} has the wrong type; expected a string")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return value


def _check(value, meta: dict, name: str, where: str) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    if meta["length"] is not None and isinstance(value, (list, tuple)):
        allowed = meta["length"] if isinstance(meta["length"], (list, tuple)) else (meta["length"],)
        if len(value) not in allowed:
            raise InputError(f"{where} = {value!r} has {len(value)} entries; allowed: "
                             + " or ".join(str(a) for a in allowed))
    for item in items:
        if meta["choices"] is not None and item not in meta["choices"]:
            raise InputError(f"{where} = {item!r} is not allowed; choose one of: "
                             + ", ".join(repr(c) for c in meta["choices"]))
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not _in_range(item, meta):
            raise InputError(f"{where} = {item!r} is out of range; allowed: {_range_text(name, meta)}")


def build(cls, table: Any, where: str):
    """Instantiate dataclass ``cls`` from a TOML table, validating every key.

    ``where`` is the prefix used in messages (e.g. ``"jobs/lj.toml: [labels]"``).
    """
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise InputError(f"{where} unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_where = f"{where} {name}"
        if name in table:
            value = _coerce(table[name], hints[name], key_where)
        elif f.default is not MISSING or f.default_factory is not MISSING:
            continue
        else:
            raise InputError(f"{where} missing required key {name!r}")
        if value is not None:
            _check(value, dict(f.metadata) or {"gt": None, "ge": None, "lt": None, "le": None,
                                                   "choices": None, "length": None}, name, key_where)
        values[name] = value
    obj = cls(**values)
    post = getattr(obj, "validate", None)
    if post is not None:
        post(where)
    return obj


def to_table(obj) -> dict:
    """The inverse of :func:`build`: a plain dict (TOML-serialisable, no ``None`` values)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = to_table(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
