"""The macroscopic observables phi*(x) the closure encoder outputs first, in torch.

Each system kind defines its observables once, array-generically
(:attr:`hpcsur.systems.registry.SystemKind.observables`): the same function gives the data's values
on numpy arrays and the encoder's differentiable, batched values on torch tensors, so their Jacobian
rows enter J = phi'(x) exactly as the data were computed (tests check both against the systems' own
``observable``). Built from a store's attributes (``system``, ``params``, ``layout``), so training
needs nothing but the store.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from hpcsur.systems import registry

Observable = Callable[[torch.Tensor], torch.Tensor]


def observable_from_attrs(attrs: Mapping) -> Observable:
    """phi* for the system a store describes (its ``system``, ``params`` and ``layout`` attributes)."""
    kind = registry.get(attrs.get("system"))
    return kind.observables(attrs.get("params", {}), attrs.get("layout", {}))
