"""The macroscopic observables phi*(x) of each system, in torch (differentiable, batched).

They must agree with the systems' own numpy ``observable`` (tests check this): the encoder's
first ``n_obs`` outputs are these fixed functions, and their Jacobian rows enter J = phi'(x).

* Predator-Prey, x = (u, v) on n cells:   phi* = (mean u, mean v)
* Allen-Cahn, x = v on an n x n grid, replicate-padded (Neumann), h = 1/n:
      E = h^2 sum_ij [ (v_ij^2 - 1)^2 / (4 eps^2)
                       + 1/2 ( ((v_{i+1,j} - v_{i-1,j}) / 2h)^2 + ((v_{i,j+1} - v_{i,j-1}) / 2h)^2 ) ]
* Lennard-Jones, x = (positions, velocities), n atoms of mass m:   T = m sum_i |v_i|^2 / (3 (n - 1))

Built from a store's attributes (``system``, ``params``, ``layout``), so training needs nothing but
the store.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from hpcsur.errors import InputError

Observable = Callable[[torch.Tensor], torch.Tensor]


def predator_prey_means(n: int) -> Observable:
    def phi(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., :n].mean(-1), x[..., n:2 * n].mean(-1)], dim=-1)
    return phi


def allen_cahn_energy(n: int, epsilon: float) -> Observable:
    h = 1.0 / n
    inv_4eps2, inv_2h = 1.0 / (4.0 * epsilon * epsilon), 1.0 / (2.0 * h)

    def phi(x: torch.Tensor) -> torch.Tensor:
        v = x.reshape(-1, 1, n, n)
        p = F.pad(v, (1, 1, 1, 1), mode="replicate")[:, 0]
        c = p[:, 1:-1, 1:-1]
        gx = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) * inv_2h
        gy = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * inv_2h
        density = (c * c - 1.0) ** 2 * inv_4eps2 + 0.5 * (gx * gx + gy * gy)
        return (density.sum(dim=(-2, -1)) * (h * h)).reshape(*x.shape[:-1], 1)
    return phi


def lennard_jones_temperature(n_atoms: int, mass: float) -> Observable:
    def phi(x: torch.Tensor) -> torch.Tensor:
        v = x[..., 3 * n_atoms:]
        return (mass * (v * v).sum(-1) / (3.0 * (n_atoms - 1))).unsqueeze(-1)
    return phi


def observable_from_attrs(attrs: Mapping) -> Observable:
    """phi* for the system a store describes (its ``system``, ``params`` and ``layout`` attributes)."""
    kind, params, layout = attrs.get("system"), attrs.get("params", {}), attrs.get("layout", {})
    if kind == "predator_prey":
        return predator_prey_means(int(params["n"]))
    if kind == "allen_cahn":
        return allen_cahn_energy(int(params["n"]), float(params["epsilon"]))
    if kind == "lennard_jones":
        return lennard_jones_temperature(int(layout["n_blocks"]), float(params.get("mass", 1.0)))
    raise InputError(f"store: system {kind!r} has no torch observable (known: predator_prey, allen_cahn, lennard_jones)")
