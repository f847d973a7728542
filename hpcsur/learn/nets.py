"""Small building blocks: activations and multilayer perceptrons with Xavier-uniform weights."""
from __future__ import annotations

import torch
from torch import nn

from hpcsur.errors import InputError


class ReLU2(nn.Module):
    """OnsagerNet's smooth-ish activation F(x) = ReLU(x)^2 - ReLU(x - 1/2)^2 (C^1, linear growth)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) ** 2 - torch.relu(x - 0.5) ** 2


_ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU,
                "silu": nn.SiLU, "relu2": ReLU2}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (see :data:`hpcsur.learn.config.ACTIVATIONS`)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise InputError(f"activation {name!r} is not allowed; choose one of: {', '.join(_ACTIVATIONS)}") from None


#: The activations with a closed-form slope (:func:`activation_and_slope`).
SLOPES = ("relu2", "tanh", "softplus", "relu")


def activation_and_slope(name: str, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(a), f'(a)) of the activations with a closed-form slope (as torch's modules: softplus with beta 1 and
    threshold 20, above which it is the identity)."""
    if name == "relu2":     # f = relu(a)^2 - relu(a - 1/2)^2, f' = 2 relu(a) - 2 relu(a - 1/2)
        r, r_shift = torch.relu(a), torch.relu(a - 0.5)
        return r * r - r_shift * r_shift, 2.0 * (r - r_shift)
    if name == "tanh":
        t = torch.tanh(a)
        return t, 1.0 - t * t
    if name == "softplus":
        return torch.nn.functional.softplus(a), torch.where(a > 20.0, torch.ones_like(a), torch.sigmoid(a))
    if name == "relu":
        return torch.relu(a), (a > 0).to(a.dtype)
    raise InputError(f"activation {name!r} is not allowed for onsagernet_shared; choose one of: {', '.join(SLOPES)}")


def mlp(widths: list[int], act: str, last_activation: bool = False, gain: float = 1.0,
        last_bias: bool = True, zero_bias: bool = True) -> nn.Sequential:
    """``widths[0] -> ... -> widths[-1]`` with ``act`` between layers (and after the last one if
    ``last_activation``). Weights Xavier-uniform with ``gain``; biases zero, or with
    ``zero_bias=False`` torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the reference code
    leaves them; ``last_bias=False`` drops the output bias (e.g. for a potential, whose constant
    never matters)."""
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise InputError(f"mlp widths must be >= 2 positive sizes, got {widths}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        linear = nn.Linear(a, b, bias=last_bias or not last)
        nn.init.xavier_uniform_(linear.weight, gain=gain)
        if linear.bias is not None and zero_bias:
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last or last_activation:
            layers.append(activation(act))
    return nn.Sequential(*layers)
