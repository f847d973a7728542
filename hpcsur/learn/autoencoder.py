"""The closure autoencoder: find closure variables z_hat so that z = (phi*, z_hat) is closed.

Encoder and decoder (Chen & Li, Sec. 3.1)::

    phi(x) = ( phi*(x), phi_hat(x) ) in R^d,   phi_hat = MLP((x - mu) / sigma),   d = n_obs + closure
    psi(z) = mu + sigma * MLP((z - m_z) / s_z)                  (the decoder sees all of z)

phi* is the system's analytic observable (no parameters); mu, sigma are per-coordinate statistics
of the training frames and m_z, s_z scale the observable part of z for the decoder (closure
coordinates are used as they come). With the reference code's recipe (``recipe = "reference"``)
mu = m_z = 0 and sigma = s_z = 1 -- raw inputs, raw observables into the decoder -- and the
biases keep torch's default initialisation. The loss is

    L_AE = L_rec + lambda_cond L_cond
    L_rec  = mean over frames and coordinates of ((x - psi(phi(x))) / sigma)^2
    L_cond = mean over frames of (kappa(J J^T) - 1)^2,   J = d phi / d x in R^{d x N}

where kappa = lambda_max / lambda_min of the symmetric positive (semi-)definite d x d matrix J J^T,
taken from ``eigvalsh`` (no SVD of J). Optionally (``lambda_coherence > 0``) a penalty on how
unevenly the coordinates share J's row space,

    L_coh = mean over frames of  (N / d^2) sum_c l_c^2 - 1  >= 0,   l_c = J_c^T (J J^T)^{-1} J_c,

zero exactly when every coordinate has the leverage d/N: uniform partial labels then sample the
latent tangent space evenly (see :func:`hpcsur.learn.losses.leverage_scores`). And
(``lambda_tangent > 0``) a penalty on the part of the decoder's tangent space that lies outside the
encoder's row space,

    L_tan = mean over frames of  |(I - J^+ J) psi'(z)|_F^2 / |psi'(z)|_F^2,   J^+ J = J^T (J J^T)^{-1} J,

zero when the encoder's fibres cross the data manifold (whose tangent space the decoder spans)
orthogonally. L_x and L_x,p model f as J^+ g, i.e. they assume f lies in row(J); for dynamics on
the manifold f lies in its tangent space, so L_tan is what makes that assumption true. It needs no
forces. (Measured on Predator-Prey: a residual |f - J^+ J f|^2 of 24 % of |f|^2 makes the L_x,p labels
ten times noisier than at 3 %; see ``hpcsur diagnose``.) Theorem 1 of the paper bounds L_z between b1 (L_x + C)
and b2 (L_x + C) with [b1, b2] the spectrum of J J^T, which is why kappa -> 1 helps. With
``cond_rows = "closure"`` only the closure rows of J enter kappa (the reference does this for LJ).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from hpcsur.learn.losses import check_rank, leverage_scores
from hpcsur.learn.nets import SLOPES, activation_and_slope, mlp
from hpcsur.learn.observables import Observable


@dataclass(frozen=True)
class AutoencoderShape:
    """Everything needed to rebuild the architecture (stored in checkpoints)."""

    n_state: int
    n_obs: int
    latent_dim: int
    hidden: tuple[int, ...]
    activation: str
    recipe: str = "hpcsur"
    observable_scale: tuple[float, ...] = ()      # s: z* = s phi*(x); () = 1

    @property
    def closure_dim(self) -> int:
        return self.latent_dim - self.n_obs


def scaled_observable(observable: Observable, scale) -> Observable:
    """x -> s * phi*(x), one factor per observable."""
    factors = tuple(float(s) for s in scale)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return observable(x) * torch.as_tensor(factors, dtype=x.dtype, device=x.device)
    return scaled


class ClosureAutoencoder(nn.Module):
    """phi = (phi*, phi_hat) and psi (see the module docstring). Buffers hold the normalisation."""

    def __init__(self, shape: AutoencoderShape, observable: Observable):
        super().__init__()
        self.shape = shape
        self.observable = scaled_observable(observable, shape.observable_scale) if shape.observable_scale else observable
        hidden = list(shape.hidden)
        zero_bias = shape.recipe != "reference"
        self.encoder_net = mlp([shape.n_state] + hidden + [shape.closure_dim], shape.activation, zero_bias=zero_bias)
        self.decoder_net = mlp([shape.latent_dim] + hidden[::-1] + [shape.n_state], shape.activation,
                               zero_bias=zero_bias)
        self.register_buffer("x_mean", torch.zeros(shape.n_state))
        self.register_buffer("x_std", torch.ones(shape.n_state))
        self.register_buffer("obs_mean", torch.zeros(shape.n_obs))
        self.register_buffer("obs_std", torch.ones(shape.n_obs))

    def set_normalisation(self, x_mean, x_std, obs_mean, obs_std) -> None:
        for name, value in (("x_mean", x_mean), ("x_std", x_std), ("obs_mean", obs_mean), ("obs_std", obs_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=getattr(self, name).dtype))

    def closure(self, x: torch.Tensor) -> torch.Tensor:
        """phi_hat(x), shape (..., d - n_obs)."""
        return self.encoder_net((x - self.x_mean) / self.x_std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = phi(x) = (phi*(x), phi_hat(x)), shape (..., d)."""
        return torch.cat([self.observable(x), self.closure(x)], dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat = psi(z), shape (..., N)."""
        k = self.shape.n_obs
        scaled = torch.cat([(z[..., :k] - self.obs_mean) / self.obs_std, z[..., k:]], dim=-1)
        return self.x_mean + self.x_std * self.decoder_net(scaled)

    def observable_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """d phi* / d x, shape (B, n_obs, N) (reverse mode, one pass per observable)."""
        return vmap(jacrev(self.observable))(x)

    def closure_factors(self, x: torch.Tensor, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, W) with d phi_hat / d x = A W per frame, by the chain rule through the encoder MLP
        phi_hat = W_L f(... f(W_1 (x - mu) / sigma + b_1) ...) + b_L:

            A = W_L D_(L-1) W_(L-1) ... W_2 D_1   (B, d - n_obs, h_1),   D_i = diag(f'(a_i)),
            W = W_1 diag(1 / sigma)                (h_1, N), the same for every frame.

        Everything per frame is h-dimensional; N enters only through W (pass ``w``, a W computed before, to skip
        forming it again). None for an activation without a closed-form slope (:data:`hpcsur.learn.nets.SLOPES`)."""
        layers = [m for m in self.encoder_net if isinstance(m, nn.Linear)]
        if self.shape.activation not in SLOPES or len(layers) < 2:
            return None
        h, slopes = (x - self.x_mean) / self.x_std, []
        for layer in layers[:-1]:
            h, slope = activation_and_slope(self.shape.activation, layer(h))
            slopes.append(slope)
        a = layers[-1].weight.expand(x.shape[0], -1, -1)
        for layer, slope in zip(reversed(layers[1:-1]), reversed(slopes[1:])):
            a = (a * slope.unsqueeze(-2)) @ layer.weight
        return a * slopes[0].unsqueeze(-2), layers[0].weight / self.x_std if w is None else w

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """J = d phi / d x for a batch, shape (B, d, N): the observable's rows in reverse mode, the closure rows
        as one matrix product A W (:meth:`closure_factors`; reverse mode per row where it does not apply)."""
        factors = self.closure_factors(x)
        closure = vmap(jacrev(self.closure))(x) if factors is None else factors[0] @ factors[1]
        return torch.cat([self.observable_jacobian(x), closure], dim=-2)

    def gram(self, x: torch.Tensor, rows: str = "all") -> torch.Tensor:
        """J J^T (``rows = "closure"``: of the closure rows only), shape (B, d, d), without forming J:

            closure block  A (W W^T) A^T        (W W^T is h_1 x h_1, once per batch)
            cross block    A (W grad phi*^T)    observable block  grad phi* grad phi*^T

        so the condition loss costs O(N h + d h^2) per frame instead of O(d N h)."""
        factors = self.closure_factors(x)
        if factors is None:
            j = self.jacobian(x)
            j = j[:, self.shape.n_obs:] if rows == "closure" else j
            return j @ j.transpose(-1, -2)
        a, w = factors
        if rows == "closure":
            return a @ (w @ w.T) @ a.transpose(-1, -2)
        return factored_gram(self.observable_jacobian(x), a, w, w @ w.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def factored_gram(j_obs: torch.Tensor, a: torch.Tensor, w: torch.Tensor, wwt: torch.Tensor) -> torch.Tensor:
    """J J^T of J = [grad phi*; A W] (B, d, d) from j_obs (B, n_obs, N), A (B, d - n_obs, h), W (h, N) and W W^T:
    closure block A (W W^T) A^T, cross block A (W grad phi*^T), observable block grad phi* grad phi*^T."""
    closure = a @ wwt @ a.transpose(-1, -2)
    cross = a @ (w @ j_obs.transpose(-1, -2))                                      # (B, d - n_obs, n_obs)
    top = torch.cat([j_obs @ j_obs.transpose(-1, -2), cross.transpose(-1, -2)], dim=-1)
    return torch.cat([top, torch.cat([cross, closure], dim=-1)], dim=-2)


def condition_number(j: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """kappa(J J^T) = lambda_max / lambda_min per frame (see :func:`gram_condition_number`)."""
    return gram_condition_number(j @ j.transpose(-1, -2), eps)


def gram_condition_number(gram: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """kappa = lambda_max / lambda_min per frame from the eigenvalues of the d x d Gram matrix J J^T;
    :class:`hpcsur.learn.losses.RankDeficientJacobian` for a frame where it is numerically singular (its
    (kappa - 1)^2 would make the loss infinite and the weights NaN)."""
    check_rank(gram)
    lam = torch.linalg.eigvalsh(gram)
    return lam[..., -1] / lam[..., 0].clamp_min(eps)


def coherence_penalty(j: torch.Tensor) -> torch.Tensor:
    """(N / d^2) sum_c l_c^2 - 1 per frame (0 for uniform leverage, at most N/d - 1)."""
    d, n = j.shape[-2:]
    lev = leverage_scores(j)
    return (n / d ** 2) * (lev * lev).sum(-1) - 1.0


def tangent_penalty(model: ClosureAutoencoder, z: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """|(I - J^+ J) psi'(z)|_F^2 / |psi'(z)|_F^2 per frame (differentiable in both networks)."""
    tangent = vmap(jacfwd(model.decode))(z)                                 # (B, N, d)
    chol = torch.linalg.cholesky(j @ j.transpose(-1, -2))
    outside = tangent - j.transpose(-1, -2) @ torch.cholesky_solve(j @ tangent, chol)
    return (outside ** 2).sum((-2, -1)) / (tangent ** 2).sum((-2, -1))


def autoencoder_loss(model: ClosureAutoencoder, x: torch.Tensor, lambda_cond: float,
                     cond_rows: str = "all", lambda_coherence: float = 0.0,
                     lambda_tangent: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L_AE = L_rec + lambda_cond L_cond (+ lambda_coherence L_coh + lambda_tangent L_tan) on a batch;
    also returns the parts."""
    z = model.encode(x)
    rec = (((x - model.decode(z)) / model.x_std) ** 2).mean()
    loss, parts = rec, {"rec": float(rec.detach())}
    if lambda_coherence > 0 or lambda_tangent > 0:
        j = model.jacobian(x)
        gram = j[:, model.shape.n_obs:] if cond_rows == "closure" else j
        gram = gram @ gram.transpose(-1, -2)
    elif lambda_cond > 0:
        gram = model.gram(x, cond_rows)        # J J^T without J: what L_cond alone needs
    if lambda_cond > 0:
        cond = ((gram_condition_number(gram) - 1.0) ** 2).mean()
        loss = loss + lambda_cond * cond
        parts["cond"] = float(cond.detach())
    if lambda_coherence > 0 or lambda_tangent > 0:
        if lambda_coherence > 0:
            coh = coherence_penalty(j).mean()
            loss = loss + lambda_coherence * coh
            parts["coherence"] = float(coh.detach())
        if lambda_tangent > 0:
            tan = tangent_penalty(model, z, j).mean()
            loss = loss + lambda_tangent * tan
            parts["tangent"] = float(tan.detach())
    return loss, parts
