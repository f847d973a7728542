"""The three latent losses and the per-frame quantities they need.

Notation (per frame): x in R^N, f = dx/dt, z = phi(x) in R^d, J = phi'(x) in R^{d x N} with full row
rank, G = J J^T = C C^T (Cholesky), g = g_theta(z) the model's latent velocity, I the chosen blocks
(k of n, each with m coordinates; ``cols`` their km flat coordinates), p = k / n.

    L_z   = mean ||J f - g||^2                                      (paper Eq. 9)
    L_x   = mean ||f - J^+ g||^2,      J^+ = J^T G^{-1}              (Eq. 10)
    L_x,p = mean (1/p) ||f_I - (J^+)_I g||^2                        (Eq. 12)

**Convention for L_x,p**: sums over coordinates (not means), with the factor 1/p explicit, p = k/n
the exact fraction of blocks drawn. Each block is in I with probability p (I is drawn uniformly
without replacement), so E_I[(1/p) sum_{j in I} e_j] = sum_j e_j: the expectation of L_x,p over
I equals L_x (Eq. 13). (The reference code divides both by the number of entries instead, which
hides the 1/p.)

**Least-squares form.** Every loss is ||y - R g||^2 + r2 for a per-frame triple (R, y, r2) that
does not depend on g:

* L_x,p: P = (J^+)_I = J_I^T G^{-1} in R^{km x d} (only the rows the loss needs -- never the
  N x d pseudo-inverse, never an SVD of J). With the thin QR P = Q R:
  ||f_I - P g||^2 = ||Q^T f_I - R g||^2 + ||f_I - Q Q^T f_I||^2, so y = Q^T f_I, r2 = the residual.
* L_x: J^+ = J^T C^{-T} C^{-1} and Q0 = J^T C^{-T} has orthonormal columns, so
  ||f - J^+ g||^2 = ||C^{-1} J f - C^{-1} g||^2 + (||f||^2 - ||C^{-1} J f||^2):  R = C^{-1}, y = R J f.
* L_z: R = I, y = J f, r2 = 0.

So a frame's training data is d + d^2 + 1 numbers whatever N and |I| are (the reference stores the
km x d rows of J^+ per frame: 4 GB for its Allen-Cahn run), the loss needs no N-sized work, and it
is evaluated without cancellation (no expansion of the square).
"""
from __future__ import annotations

import torch

from hpcsur.errors import DataError

#: kappa(J J^T) beyond which a frame's encoder Jacobian counts as rank-deficient. Float32 training sees kappa
#: only up to ~1e7-1e8 (rounding of the Gram matrix); beyond 1e12 (in float64) a row of J is zero or
#: dependent (e.g. the observable's gradient vanishes), and (kappa - 1)^2 would wreck the training.
KAPPA_LIMIT = 1e12


class RankDeficientJacobian(DataError):
    """J J^T of some frame is numerically singular; ``row`` is its index in the batch, ``kappa`` its condition."""

    def __init__(self, row: int, kappa: float, count: int, total: int):
        self.row, self.kappa, self.count, self.total = row, kappa, count, total
        super().__init__(f"the encoder Jacobian is numerically rank-deficient (kappa(J J^T) = {kappa:.3g}; "
                         f"{count} of {total} frame(s) of this batch)")

    def at(self, where: str, stage: str) -> DataError:
        """The one line a stage reports: which frame, kappa, and what to do. A non-finite J J^T (kappa NaN) is not
        a property of the data but of the network: its weights or activations overflowed."""
        if self.kappa != self.kappa:
            return DataError(f"{stage}: the encoder Jacobian is not finite at {where} ({self.count} of {self.total} "
                             "frame(s) of the batch): the encoder's weights or activations overflowed; in train-ae "
                             "usually a learning rate too large for the inputs' scale: lower [autoencoder] lr or set "
                             "normalise = \"centre\" or \"field\" (raw, uncentred inputs of many coordinates move "
                             "every first-layer pre-activation by about lr sum|x| a step)")
        training = ("; or, while training, the closure rows collapsed: raw, uncentred inputs of many coordinates "
                    "saturate the encoder's first layer (the LJ-6400 box at side 20 does within 10 steps); set "
                    "[autoencoder] normalise = \"centre\" or \"field\"") if stage == "train-ae" else ""
        return DataError(f"{stage}: the encoder Jacobian is numerically rank-deficient at {where} "
                         f"(kappa(J J^T) = {self.kappa:.3g}; {self.count} of {self.total} frame(s) of the batch): "
                         "the observable's gradient vanishes there (e.g. an Allen-Cahn torus that has vanished), so "
                         "no latent dynamics can be learned from it; leave such frames out with [split] "
                         f"observable_floor (the reference's Allen-Cahn rule: 1e-4){training}")


def check_rank(gram: torch.Tensor) -> torch.Tensor:
    """kappa(J J^T) per frame from the Gram matrices ``gram`` (..., d, d), computed in float64 and detached;
    raises :class:`RankDeficientJacobian` naming the first frame that is non-finite or beyond :data:`KAPPA_LIMIT`."""
    gram = gram.detach().double()
    finite = torch.isfinite(gram).flatten(-2).all(-1)
    lam = torch.linalg.eigvalsh(torch.where(finite[..., None, None], gram, torch.eye(gram.shape[-1], dtype=gram.dtype)))
    top, low = lam[..., -1], lam[..., 0]
    singular = ~finite | (low <= top / KAPPA_LIMIT)
    if bool(singular.any()):
        bad = singular.nonzero().flatten()
        i = int(bad[0])
        kappa = float("nan") if not bool(finite[i]) else float(top[i] / low[i]) if float(low[i]) > 0 else float("inf")
        raise RankDeficientJacobian(i, kappa, int(bad.numel()), int(gram.shape[0]))
    return top / low


def gram_cholesky(j: torch.Tensor) -> torch.Tensor:
    """C with C C^T = J J^T (batched, lower triangular); :class:`RankDeficientJacobian` where J J^T is
    numerically singular."""
    gram = j @ j.transpose(-1, -2)
    check_rank(gram)
    return torch.linalg.cholesky(gram)


def partial_pinv_rows(j: torch.Tensor, cols: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """(J^+)_I = J_I^T (J J^T)^{-1}: the rows ``cols`` of the pseudo-inverse, shape (..., km, d).

    ``j`` (..., d, N), ``cols`` (..., km) integer coordinates. Costs O(N d^2) for the Gram matrix
    (or nothing if ``chol`` is given) plus O(km d^2); the N x d pseudo-inverse is never formed.
    """
    chol = gram_cholesky(j) if chol is None else chol
    return pinv_rows(torch.gather(j, -1, cols.unsqueeze(-2).expand(*j.shape[:-1], cols.shape[-1])), chol)


def pinv_rows(j_cols: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """:func:`partial_pinv_rows` from J's columns J_I (..., d, km) and the Cholesky factor C of J J^T."""
    return torch.cholesky_solve(j_cols, chol).transpose(-1, -2)


def leverage_scores(j: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """l_c = J_c^T (J J^T)^{-1} J_c per coordinate c, shape (..., N): the squared row norms of an
    orthonormal basis Q0 = J^T C^{-T} of J's row space (statistical leverage; sum_c l_c = d).

    Uniform leverage (l_c = d/N) means every coordinate carries the same share of the latent
    tangent space, so a uniform sample of coordinates -- the partial labels -- sees it evenly; the
    *coherence* mu = (N/d) max_c l_c (1 <= mu <= N/d) measures how far from that a Jacobian is.
    """
    chol = gram_cholesky(j) if chol is None else chol
    q = torch.linalg.solve_triangular(chol, j, upper=False)      # C^{-1} J = Q0^T, (..., d, N)
    return (q * q).sum(-2)


def coherence(j: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """mu = (N/d) max_c l_c per frame (1: uniform leverage)."""
    lev = leverage_scores(j, chol)
    return lev.amax(-1) * (j.shape[-1] / j.shape[-2])


def residual_triple(p_rows: torch.Tensor, f_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, y, r2) with ||f - P g||^2 = ||y - R g||^2 + r2 for all g; R is (d, d), zero-padded when
    P has fewer rows than columns. ``p_rows`` (..., q, d), ``f_rows`` (..., q)."""
    q, d = p_rows.shape[-2:]
    qm, r = torch.linalg.qr(p_rows, mode="reduced")           # (..., q, s), (..., s, d), s = min(q, d)
    y = (qm.transpose(-1, -2) @ f_rows.unsqueeze(-1)).squeeze(-1)
    r2 = ((f_rows - (qm @ y.unsqueeze(-1)).squeeze(-1)) ** 2).sum(-1)
    if r.shape[-2] < d:
        pad = d - r.shape[-2]
        r = torch.cat([r, r.new_zeros(*r.shape[:-2], pad, d)], dim=-2)
        y = torch.cat([y, y.new_zeros(*y.shape[:-1], pad)], dim=-1)
    return r, y, r2


def full_triple(j: torch.Tensor, f: torch.Tensor, chol: torch.Tensor | None = None):
    """(R, y, r2) of L_x: R = C^{-1}, y = C^{-1} J f, r2 = ||f||^2 - |y|^2 (also returns J f)."""
    chol = gram_cholesky(j) if chol is None else chol
    jf = (j @ f.unsqueeze(-1)).squeeze(-1)
    return (*jf_triple(jf, f, chol), jf)


def jf_triple(jf: torch.Tensor, f: torch.Tensor, chol: torch.Tensor):
    """:func:`full_triple` from J f and the Cholesky factor C of J J^T (J itself not needed)."""
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device).expand_as(chol)
    r = torch.linalg.solve_triangular(chol, eye, upper=False)
    y = (r @ jf.unsqueeze(-1)).squeeze(-1)
    r2 = ((f * f).sum(-1) - (y * y).sum(-1)).clamp_min(0.0)
    return r, y, r2


def residual_loss(g: torch.Tensor, r: torch.Tensor, y: torch.Tensor, r2: torch.Tensor | None,
                  weight: float = 1.0) -> torch.Tensor:
    """Per-frame weight * (||y - R g||^2 + r2), shape (batch,); ``r2=None`` leaves out the constant."""
    res = y - (r.to(g.dtype) @ g.unsqueeze(-1)).squeeze(-1)
    sq = (res * res).sum(-1)
    return weight * (sq if r2 is None else sq + r2.to(g.dtype))


def loss_lz(g: torch.Tensor, jf: torch.Tensor) -> torch.Tensor:
    """Per-frame ||J f - g||^2."""
    return ((jf.to(g.dtype) - g) ** 2).sum(-1)


def batch_loss(kind: str, g: torch.Tensor, batch: dict, p: float, constant: bool = True) -> torch.Tensor:
    """Mean over the batch of L_z, L_x or L_x,p from the encoded arrays of the batch.

    ``constant=False`` drops the theta-independent r2 terms: same gradients, same ordering of
    models, but relative changes (a plateau scheduler's threshold, loss curves) then measure the
    part of the loss the model can reduce.
    """
    if kind == "lz":
        return loss_lz(g, batch["jf"]).mean()
    if kind in ("lx", "lxp"):
        r2 = batch[f"{kind}_r2"] if constant else None
        return residual_loss(g, batch[f"{kind}_R"], batch[f"{kind}_y"], r2, 1.0 / p if kind == "lxp" else 1.0).mean()
    raise ValueError(f"unknown loss {kind!r}")


#: The encoded arrays each loss reads.
LOSS_ARRAYS = {"lz": ("jf",), "lx": ("lx_R", "lx_y", "lx_r2"), "lxp": ("lxp_R", "lxp_y", "lxp_r2")}
#: The per-frame target whose statistics normalise the model output (an estimate of J f).
TARGET_ARRAY = {"lz": "jf", "lx": "jf", "lxp": "jf_est"}
