"""Latent ODE models dz/dt = g_theta(z), selected by name (``[latent] model``).

All models act on normalised coordinates (``LatentDynamics`` maps raw z to raw dz/dt):

* ``mlp``         g(z) = MLP(z).
* ``onsagernet``  g(z) = -(M(z) + W(z) + alpha I) grad V(z) + F(z)   (Yu et al.; Chen & Li App. C)
                  M = L L^T (symmetric positive semi-definite, L lower triangular from a network),
                  W = U - U^T (antisymmetric, U strictly upper triangular from the same network),
                  V(z) = 1/2 |P(z) + Gamma z|^2 + beta |z|^2 (bounded below), alpha = 0.1, beta = 0.1,
                  F an optional learned forcing. Without forcing
                  dV/dt = grad V . g = -grad V^T (M + alpha I) grad V <= 0: the potential cannot increase.
* ``onsagernet_ref``  the reference code's Predator-Prey OnsagerNet, exactly (Chen & Li code, ``G``):
                  g(z) = -(M(z) + W(z)) grad E(z) - alpha_ref grad E(z),  alpha_ref = 0.01,
                  E(z) = beta |z|^2 + 1/2 |P(z) + Gamma z|^2 with P: d -> h1 -> h2 -> h2 (tanh) and
                  Gamma: d -> h2 linear without bias; M = L L^T, W = U - U^T with L = tril(A),
                  U = triu(A) from A = MW(z), MW: d -> 2 h1 -> 2 h2 -> d^2 (tanh; the reference's
                  [32, 32] / [64, 64]); Xavier-uniform weights, torch's default biases, no forcing.
                  It differs from ``onsagernet`` in alpha (0.01 vs 0.1), the potential's output width
                  (h2 vs d), the wider matrix net, its initial scale (gain 1 vs 0.1) and the biases --
                  differences that decide the L_x,p error at the paper's scale (see the README).
* ``onsagernet_shared``  the reference code's Lennard-Jones / Allen-Cahn OnsagerNet (see
                  :class:`SharedOnsagerNet`): one ResNet trunk feeds the potential, the matrices and a forcing;
                  g(z) = -(M(z) + W(z) + alpha I) grad V(z) + F(z), V = |P(z)|^2 + beta |z|^2, W's diagonal zero;
                  grad V by an explicit backward sweep, so training needs one backward pass, not a double one.
* ``gfinn``       g(z) = L(z) grad E(z) + M(z) grad S(z)   (GENERIC; Zhang, Shin & Karniadakis)
                  with the degeneracy conditions L grad S = 0 and M grad E = 0 built in exactly:
                  L = P_S A P_S (A antisymmetric from a network, P_S = I - s s^T, s = grad S / |grad S|)
                  M = P_E B B^T P_E (P_E = I - e e^T, e = grad E / |grad E|), so L is antisymmetric,
                  M symmetric positive semi-definite, dE/dt = 0 and dS/dt >= 0 to round-off.
                  (The reference builds L and M from K skew matrices xi_k; the projections give the
                  same structure with the conditions exact rather than approximate.)

Gradients of V, E, S are taken with autograd inside ``forward`` (``onsagernet_shared``: explicitly); in
training the graph is kept (``create_graph``) so the parameters get gradients through them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from hpcsur.errors import InputError
from hpcsur.learn.nets import activation_and_slope, mlp

ALPHA, BETA = 0.1, 0.1
ALPHA_REF = 0.01


def input_gradient(scalar_fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, d value / d z) of a per-sample scalar function, differentiable when grad is enabled."""
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        zz = z if z.requires_grad else z.detach().requires_grad_(True)
        value = scalar_fn(zz)
        (grad,) = torch.autograd.grad(value.sum(), zz, create_graph=keep_graph)
    return value, grad


class MLPDynamics(nn.Module):
    def __init__(self, d: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.net = mlp([d] + list(hidden) + [d], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class OnsagerNet(nn.Module):
    def __init__(self, d: int, hidden: list[int], activation: str = "tanh", forcing: bool = False):
        super().__init__()
        self.d = d
        self.potential_net = mlp([d] + list(hidden) + [d], activation)
        self.gamma = nn.Linear(d, d, bias=False)
        self.matrix_net = mlp([d] + list(hidden) + [d * d], activation, gain=0.1)
        self.forcing_net = mlp([d] + list(hidden) + [d], activation, gain=0.1) if forcing else None

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """V(z) = 1/2 |P(z) + Gamma z|^2 + beta |z|^2 >= 0."""
        return 0.5 * ((self.potential_net(z) + self.gamma(z)) ** 2).sum(-1) + BETA * (z * z).sum(-1)

    def operators(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, W): symmetric PSD and antisymmetric d x d matrices per sample."""
        a = self.matrix_net(z).reshape(*z.shape[:-1], self.d, self.d)
        lower = torch.tril(a)
        upper = torch.triu(a, diagonal=1)
        return lower @ lower.transpose(-1, -2), upper - upper.transpose(-1, -2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, grad_v = input_gradient(self.potential, z)
        m, w = self.operators(z)
        out = -((m + w) @ grad_v.unsqueeze(-1)).squeeze(-1) - ALPHA * grad_v
        if self.forcing_net is not None:
            out = out + self.forcing_net(z)
        return out


class ReferenceOnsagerNet(nn.Module):
    """The reference code's Predator-Prey OnsagerNet (see the module docstring, ``onsagernet_ref``)."""

    def __init__(self, d: int, hidden: list[int], activation: str = "tanh"):
        super().__init__()
        self.d = d
        width = hidden[-1]
        self.potential_net = mlp([d] + list(hidden) + [width], activation, zero_bias=False)
        self.gamma = nn.Linear(d, width, bias=False)
        nn.init.xavier_uniform_(self.gamma.weight)
        self.matrix_net = mlp([d] + [2 * h for h in hidden] + [d * d], activation, zero_bias=False)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """E(z) = beta |z|^2 + 1/2 |P(z) + Gamma z|^2."""
        return BETA * (z * z).sum(-1) + 0.5 * ((self.potential_net(z) + self.gamma(z)) ** 2).sum(-1)

    def operators(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, W) = (L L^T, U - U^T), L = tril(A), U = triu(A) (diagonal included in both)."""
        a = self.matrix_net(z).reshape(*z.shape[:-1], self.d, self.d)
        lower, upper = torch.tril(a), torch.triu(a)
        return lower @ lower.transpose(-1, -2), upper - upper.transpose(-1, -2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, grad_e = input_gradient(self.potential, z)
        m, w = self.operators(z)
        return -((m + w) @ grad_e.unsqueeze(-1)).squeeze(-1) - ALPHA_REF * grad_e


def transposed(layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """delta W for a linear layer y = W x + b: the pull-back of d(.)/dy to d(.)/dx (also for a
    :class:`StackedLinear`, whose weight is stored (K, in, out))."""
    if isinstance(layer, nn.Linear):
        return delta @ layer.weight
    k = layer.weight.shape[0]
    flat = delta.reshape(k, -1, delta.shape[-1])
    return torch.bmm(flat, layer.weight.transpose(1, 2)).reshape(*delta.shape[:-1], layer.weight.shape[1])


class SharedOnsagerNet(nn.Module):
    """The reference code's Lennard-Jones / Allen-Cahn OnsagerNet (``onsagernet_shared``).

    One trunk h(z): d -> h_1 -> ... -> h_L, h_1 = f(A_1 z + b_1) and h_i = f(A_i h_(i-1) + b_i) + h_(i-1) for
    i > 1 where the widths agree (a ResNet skip), feeds three linear heads:

        P(z) = A_p h(z) + b_p + G z + b_g            (width d)      V(z) = |P(z)|^2 + beta |z|^2
        A(z) = A_m h(z) + b_m                        (d x d)        M = L L^T, L = tril(A);  W = U - U^T, U = triu(A, 1)
        F(z) = A_f h(z) + b_f                        (width d)

    g(z) = -(M(z) + W(z) + alpha I) grad V(z) + F(z), alpha = beta = 0.1.

    grad V = 2 (dP/dz)^T P + 2 beta z is computed by an explicit backward sweep through the trunk,
    delta_L = A_p^T 2P, delta_(i-1) = A_i^T (f'(a_i) * delta_i) (+ delta_i across a skip), grad V = delta_0 +
    G^T 2P + 2 beta z -- ordinary tensor operations, so a training step needs one backward pass instead of
    autograd's double backward through the potential's gradient. Initialisation as the reference: trunk and
    matrix head Xavier-uniform (gain 0.1), trunk biases U(0, 0.05), the matrix head's bias a random orthogonal
    d x d matrix, potential heads orthogonal (gain 0.1) with biases U(0, 0.1), forcing head orthogonal (gain 0.1)
    with bias U(0, 0.05).
    """

    def __init__(self, d: int, hidden: list[int], activation: str = "relu2"):
        super().__init__()
        activation_and_slope(activation, torch.zeros(1))      # refuse an activation without a closed-form slope
        self.d, self.activation = d, activation
        widths = [d] + list(hidden)
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.skip = [i > 0 and widths[i] == widths[i + 1] for i in range(len(hidden))]
        self.potential_head = nn.Linear(widths[-1], d)
        self.gamma = nn.Linear(d, d)
        self.matrix_head = nn.Linear(widths[-1], d * d)
        self.forcing_head = nn.Linear(widths[-1], d)
        for layer in self.trunk:
            nn.init.xavier_uniform_(layer.weight, gain=0.1)
            nn.init.uniform_(layer.bias, 0.0, 0.05)
        nn.init.xavier_uniform_(self.matrix_head.weight, gain=0.1)
        with torch.no_grad():
            self.matrix_head.bias.copy_(nn.init.orthogonal_(torch.empty(d, d)).reshape(-1))
        for head, bias in ((self.potential_head, 0.1), (self.gamma, 0.1), (self.forcing_head, 0.05)):
            nn.init.orthogonal_(head.weight, gain=0.1)
            nn.init.uniform_(head.bias, 0.0, bias)
        ones = torch.ones(d, d)
        self.register_buffer("lower_mask", torch.tril(ones), persistent=False)        # L = tril(A)
        self.register_buffer("upper_mask", torch.triu(ones, diagonal=1), persistent=False)   # U = triu(A, 1)

    def _trunk(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h(z) and the activation slopes f'(a_i) of every trunk layer."""
        h, slopes = z, []
        for layer, skip in zip(self.trunk, self.skip):
            value, slope = activation_and_slope(self.activation, layer(h))
            h = value + h if skip else value
            slopes.append(slope)
        return h, slopes

    def _potential_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        h, slopes = self._trunk(z)
        return h, self.potential_head(h) + self.gamma(z), slopes

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """V(z) = |P(z)|^2 + beta |z|^2."""
        _, p, _ = self._potential_terms(z)
        return (p * p).sum(-1) + BETA * (z * z).sum(-1)

    def potential_gradient(self, z: torch.Tensor, h=None, p=None, slopes=None) -> torch.Tensor:
        """grad V(z) by the explicit backward sweep (see the class docstring)."""
        if h is None:
            h, p, slopes = self._potential_terms(z)
        two_p = 2.0 * p
        delta = transposed(self.potential_head, two_p)
        for layer, skip, slope in reversed(list(zip(self.trunk, self.skip, slopes))):
            back = transposed(layer, slope * delta)
            delta = back + delta if skip else back
        return delta + transposed(self.gamma, two_p) + 2.0 * BETA * z

    def operators(self, z: torch.Tensor, h=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, W): symmetric PSD and antisymmetric d x d matrices per sample."""
        h = self._trunk(z)[0] if h is None else h
        a = self.matrix_head(h).reshape(*z.shape[:-1], self.d, self.d)
        lower, upper = torch.tril(a), torch.triu(a, diagonal=1)
        return lower @ lower.transpose(-1, -2), upper - upper.transpose(-1, -2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, p, slopes = self._potential_terms(z)
        grad_v = self.potential_gradient(z, h, p, slopes)
        a = self.matrix_head(h).reshape(*z.shape[:-1], self.d, self.d)
        lower, upper = a * self.lower_mask, a * self.upper_mask
        # (M + W) g = L (L^T g) + U g - U^T g as broadcast products and sums: batched d x d matrix-vector
        # products through bmm, and tril / triu copies, cost more than the trunk's matrix products here
        row, col = grad_v.unsqueeze(-1), grad_v.unsqueeze(-2)
        lt_g = (lower * row).sum(-2)
        mw = (lower * lt_g.unsqueeze(-2)).sum(-1) + (upper * col).sum(-1) - (upper * row).sum(-2)
        return -mw - ALPHA * grad_v + self.forcing_head(h)


def _projector(g: torch.Tensor) -> torch.Tensor:
    """I - u u^T with u = g / |g| (the orthogonal projector onto the complement of g), per sample.
    (|g| is only kept away from 0; any larger floor would bias P g = 0 away from round-off.)"""
    u = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return eye - u.unsqueeze(-1) * u.unsqueeze(-2)


class GFINN(nn.Module):
    def __init__(self, d: int, hidden: list[int], activation: str = "tanh", rank: int | None = None):
        super().__init__()
        self.d, self.k = d, rank or d
        self.energy_net = mlp([d] + list(hidden) + [1], activation, last_bias=False)   # only gradients matter
        self.entropy_net = mlp([d] + list(hidden) + [1], activation, last_bias=False)
        self.skew_net = mlp([d] + list(hidden) + [d * d], activation, gain=0.1)
        self.friction_net = mlp([d] + list(hidden) + [d * self.k], activation, gain=0.1)

    def energy(self, z):
        return self.energy_net(z).squeeze(-1)

    def entropy(self, z):
        return self.entropy_net(z).squeeze(-1)

    def operators(self, z, grad_e, grad_s) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, M) with L antisymmetric, L grad S = 0; M symmetric PSD, M grad E = 0."""
        a = self.skew_net(z).reshape(*z.shape[:-1], self.d, self.d)
        b = self.friction_net(z).reshape(*z.shape[:-1], self.d, self.k)
        p_s, p_e = _projector(grad_s), _projector(grad_e)
        skew = a - a.transpose(-1, -2)
        return p_s @ skew @ p_s, p_e @ b @ b.transpose(-1, -2) @ p_e

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, grad_e = input_gradient(self.energy, z)
        _, grad_s = input_gradient(self.entropy, z)
        l_op, m_op = self.operators(z, grad_e, grad_s)
        return (l_op @ grad_e.unsqueeze(-1) + m_op @ grad_s.unsqueeze(-1)).squeeze(-1)


MODELS = {"mlp": MLPDynamics, "onsagernet": OnsagerNet, "onsagernet_ref": ReferenceOnsagerNet,
          "onsagernet_shared": SharedOnsagerNet, "gfinn": GFINN}


@dataclass(frozen=True)
class LatentShape:
    """Everything needed to rebuild a latent model (stored in checkpoints)."""

    model: str
    latent_dim: int
    hidden: tuple[int, ...]
    activation: str
    forcing: bool = False

    def build(self) -> nn.Module:
        if self.model not in MODELS:
            raise InputError(f"latent model {self.model!r} is not known; choose one of: {', '.join(MODELS)}")
        kwargs = {"forcing": self.forcing} if self.model == "onsagernet" else {}
        return MODELS[self.model](self.latent_dim, list(self.hidden), self.activation, **kwargs)

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}


class LatentDynamics(nn.Module):
    """Raw latent velocity dz/dt = g(z) = s_t * net((z - m_z) / s_z) + m_t (statistics as buffers)."""

    def __init__(self, shape: LatentShape):
        super().__init__()
        self.shape = shape
        self.net = shape.build()
        d = shape.latent_dim
        for name, value in (("z_mean", 0.0), ("z_std", 1.0), ("t_mean", 0.0), ("t_std", 1.0)):
            self.register_buffer(name, torch.full((d,), value))

    def set_normalisation(self, z_mean, z_std, t_mean, t_std) -> None:
        for name, value in (("z_mean", z_mean), ("z_std", z_std), ("t_mean", t_mean), ("t_std", t_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=getattr(self, name).dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.t_std * self.net((z - self.z_mean) / self.z_std) + self.t_mean


class StackedLinear(nn.Module):
    """K linear layers applied at once: x (K, ..., in) -> (K, ..., out) with each model's weights."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in layers]).transpose(1, 2),
                                   requires_grad=False)                                  # (K, in, out)
        bias = [lin.bias.detach() if lin.bias is not None else torch.zeros_like(lin.weight[:, 0]) for lin in layers]
        self.bias = nn.Parameter(torch.stack(bias), requires_grad=False)                 # (K, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[0]
        flat = x.reshape(k, -1, x.shape[-1])
        out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One module that evaluates K models of one architecture at once on inputs (K, batch, d).

    Every ``nn.Linear`` becomes a :class:`StackedLinear` and every buffer gets a model axis (K, 1,
    ...), so the models' own forward code (activations, autograd gradients of potentials, triangular
    parts, batched matrix products, which all broadcast over leading axes) runs unchanged for all K
    in one pass: a rollout of K snapshots costs about one rollout, not K.
    """
    import copy

    stacked = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(dict(stacked.named_modules()).items()):
        if isinstance(module, nn.Linear):
            parent_name, _, attr = name.rpartition(".")
            parent = stacked.get_submodule(parent_name) if parent_name else stacked
            setattr(parent, attr, StackedLinear([mods[name] for mods in modules]))
    for name, _ in list(stacked.named_buffers()):
        owner_name, _, attr = name.rpartition(".")
        owner = stacked.get_submodule(owner_name) if owner_name else stacked
        values = torch.stack([m.get_buffer(name) for m in models])
        owner.register_buffer(attr, values.reshape(values.shape[0], 1, *values.shape[1:]))
    return stacked


def rk4_step(g, z: torch.Tensor, dt: float) -> torch.Tensor:
    """One classical RK4 step of dz/dt = g(z)."""
    k1 = g(z)
    k2 = g(z + 0.5 * dt * k1)
    k3 = g(z + 0.5 * dt * k2)
    k4 = g(z + dt * k3)
    return z + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_rollout(g, z0: torch.Tensor, dt: float, steps: int, every: int = 1, progress=None) -> torch.Tensor:
    """Classical RK4 for dz/dt = g(z) from z0 (..., d); returns every ``every``-th state,
    shape (steps // every + 1, ..., d), starting with z0. No graph is kept between steps.
    ``progress`` (a :class:`hpcsur.log.Progress` in trajectory steps: one RK4 step of one of the z0[..., :]
    states), if given, is advanced at each kept state."""
    out = [z0.detach()]
    z = z0.detach()
    paths = z0[..., 0].numel()
    for n in range(1, steps + 1):
        z = rk4_step(g, z, dt).detach()
        if n % every == 0:
            out.append(z)
            if progress is not None:
                progress.update(every * paths)
    return torch.stack(out)
