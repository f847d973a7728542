"""The encode stage: with the autoencoder frozen, turn every stored frame into what the latent
losses need (see :mod:`hpcsur.learn.losses` for the equations), and write it to an *encoded*
dataset with the same frames and shards as its source.

Per frame, in float64: z = phi(x); J = phi'(x) (reverse mode); C = chol(J J^T); kappa(J J^T) and
the coherence of J (:func:`hpcsur.learn.losses.coherence`); the rows
(J^+)_I = J_I^T (J J^T)^{-1} of the chosen coordinates (I's blocks, m coordinates each) and their
least-squares triple (R, y, r2) for L_x,p; the unbiased estimate (n/k) J_I f_I of J f (it sets the
output scale of models trained without full forces); and with full labels J f (L_z) and the
triple of L_x. The N x d pseudo-inverse is never formed and J is never factorised by an SVD.

Parallel over MPI ranks by shard: shard s is encoded and written by rank s % size only (the
store's one-writer rule), so any number of ranks gives the same bytes. Completion records make
``--resume`` redo only unfinished shards.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch.func import jacfwd, vmap

from hpcsur import store as zstore
from hpcsur.errors import InputError
from hpcsur.learn.autoencoder import ClosureAutoencoder, factored_gram
from hpcsur.learn.data import store_cuts
from hpcsur.learn.losses import RankDeficientJacobian, check_rank, jf_triple, leverage_scores, pinv_rows, residual_triple
from hpcsur.log import Progress
from hpcsur.systems.base import Layout

log = logging.getLogger("hpcsur.encode")

#: Frames whose Jacobians are held at once are capped at this many bytes.
JACOBIAN_BYTES = 64 * 2 ** 20


def layout_of(attrs: dict) -> Layout:
    lay = attrs["layout"]
    return Layout(int(lay["block_size"]), int(lay["n_blocks"]), tuple(lay["fields"]))


class DenseJacobian:
    """J (B, d, N) held as a matrix: the reference for :class:`FactoredJacobian` (any encoder)."""

    def __init__(self, j: torch.Tensor):
        self.j = j

    def gram(self) -> torch.Tensor:
        return self.j @ self.j.transpose(-1, -2)

    def columns(self, cols: torch.Tensor) -> torch.Tensor:
        """J's columns ``cols`` (B, q) of each frame, (B, d, q)."""
        return torch.gather(self.j, -1, cols.unsqueeze(-2).expand(*self.j.shape[:-1], cols.shape[-1]))

    def matvec(self, f: torch.Tensor) -> torch.Tensor:
        """J f per frame, (B, d)."""
        return (self.j @ f.unsqueeze(-1)).squeeze(-1)

    def leverage(self, chol: torch.Tensor) -> torch.Tensor:
        """l_c = |(C^{-1} J)_c|^2 with C C^T = J J^T (:func:`hpcsur.learn.losses.leverage_scores`), (B, N)."""
        return leverage_scores(self.j, chol)


class FactoredJacobian:
    """J = [grad phi*; A W] of a batch without forming it (:meth:`ClosureAutoencoder.closure_factors`): A (B, d - n_obs,
    h) per frame, W = W_1 / sigma (h, N) and W W^T shared by every frame of the frozen encoder. Per frame the Gram
    matrix costs O(d h^2 + n_obs h N), J's columns at I O(d h |I|), J f O(h N); only :meth:`leverage` (the leverage
    scores) costs O(d h N), the price of one J, in cache-sized blocks."""

    def __init__(self, j_obs: torch.Tensor, a: torch.Tensor, w: torch.Tensor, wwt: torch.Tensor):
        self.j_obs, self.a, self.w, self.wwt = j_obs, a, w, wwt

    def gram(self) -> torch.Tensor:
        return factored_gram(self.j_obs, self.a, self.w, self.wwt)

    def columns(self, cols: torch.Tensor) -> torch.Tensor:
        jo = torch.gather(self.j_obs, -1, cols.unsqueeze(-2).expand(*self.j_obs.shape[:-1], cols.shape[-1]))
        w_cols = self.w.transpose(0, 1)[cols]                                      # (B, q, h)
        return torch.cat([jo, self.a @ w_cols.transpose(-1, -2)], dim=-2)

    def matvec(self, f: torch.Tensor) -> torch.Tensor:
        obs = (self.j_obs @ f.unsqueeze(-1)).squeeze(-1)
        return torch.cat([obs, (self.a @ (f @ self.w.transpose(0, 1)).unsqueeze(-1)).squeeze(-1)], dim=-1)

    def leverage(self, chol: torch.Tensor, block: int = 8192) -> torch.Tensor:
        """l_c = |(C^{-1} J)_c|^2 = |B1 grad phi*_c + B2 W_c|^2 with B1 = the observables' columns of C^{-1} and
        B2 = (its closure columns) A, in blocks of ``block`` coordinates (the d x N product is never held), (B, N)."""
        k = self.j_obs.shape[-2]
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device).expand_as(chol)
        c_inv = torch.linalg.solve_triangular(chol, eye, upper=False)            # (B, d, d)
        b1, b2 = c_inv[..., :k], c_inv[..., k:] @ self.a                           # (B, d, k), (B, d, h)
        n = self.w.shape[-1]
        out = self.w.new_empty(self.a.shape[0], n)
        for c0 in range(0, n, block):
            c1 = min(c0 + block, n)
            q = b1 @ self.j_obs[..., c0:c1] + b2 @ self.w[:, c0:c1]
            out[:, c0:c1] = (q * q).sum(-2)
        return out


def jacobian_of(ae: ClosureAutoencoder, x: torch.Tensor, shared: dict, factored: bool = True):
    """J of a batch: factored where the encoder allows it (W and W W^T computed once per call, in ``shared``),
    else dense."""
    with torch.enable_grad():
        factors = ae.closure_factors(x, shared.get("w")) if factored else None
        if factors is None:
            return DenseJacobian(ae.jacobian(x).detach())
        a, w = factors
        if "w" not in shared:
            shared["w"] = w.detach()
            shared["wwt"] = (shared["w"] @ shared["w"].transpose(0, 1)).detach()
        return FactoredJacobian(ae.observable_jacobian(x).detach(), a.detach(), shared["w"], shared["wwt"])


def encode_block(ae: ClosureAutoencoder, layout: Layout, x: np.ndarray, idx: np.ndarray, f_partial: np.ndarray,
                 f_full: np.ndarray | None = None, right_inverse: str = "pinv",
                 factored: bool = True) -> dict[str, np.ndarray]:
    """The encoded arrays of a block of frames (float64 throughout). ``idx`` is (frames, draws, k),
    ``f_partial`` (frames, draws, k, m); the partial-label outputs keep the draw axis.

    ``right_inverse`` is the N x d matrix P(x) that maps a latent velocity g to the microscopic one
    in L_x = |f - P g|^2 and L_x,p = (1/p) |f_I - P_I g|^2: ``pinv``, the Moore-Penrose inverse
    J^+ = J^T (J J^T)^{-1} of the paper, or ``decoder``, the decoder's Jacobian psi'(phi(x)) -- also a
    right inverse of J wherever phi(psi(z)) = z, and one whose columns span the data manifold's
    tangent space, in which the dynamics moves (``hpcsur diagnose`` measures how much of f each
    leaves outside; that residual is what makes partial labels noisy).

    J is never formed where the encoder factors (:class:`FactoredJacobian`, ``factored``): J J^T, J's columns at
    I and J f come from A and W, and only the leverage scores cost one J's worth of arithmetic."""
    frames, n_state = x.shape
    d = ae.shape.latent_dim
    draws, k = idx.shape[1:]
    scale = layout.n_blocks / k  # 1/p with p = k/n exactly
    chunk = max(1, JACOBIAN_BYTES // (8 * d * n_state))
    out = {name: [] for name in ("z", "lxp_R", "lxp_y", "lxp_r2", "jf_est", "kappa", "coherence")}
    if f_full is not None:
        out.update({name: [] for name in ("jf", "lx_R", "lx_y", "lx_r2")})
    shared: dict = {}
    with torch.no_grad():
        for a in range(0, frames, chunk):
            b = min(a + chunk, frames)
            xt = torch.from_numpy(np.ascontiguousarray(x[a:b], dtype=np.float64))
            z = ae.encode(xt)
            jac = jacobian_of(ae, xt, shared, factored)
            gram = jac.gram()
            try:
                kappa = check_rank(gram)     # cond(J J^T); names a rank-deficient frame
            except RankDeficientJacobian as err:
                err.row += a                 # the frame's row in the whole block
                raise
            chol = torch.linalg.cholesky(gram)
            tangent = vmap(jacfwd(ae.decode))(z) if right_inverse == "decoder" else None   # (B, N, d)
            per_draw = {name: [] for name in ("lxp_R", "lxp_y", "lxp_r2", "jf_est")}
            for draw in range(draws):
                cols = torch.from_numpy(np.stack([layout.coordinates(i).reshape(-1) for i in idx[a:b, draw]]))
                f_i = torch.from_numpy(np.ascontiguousarray(f_partial[a:b, draw], dtype=np.float64).reshape(b - a, -1))
                j_i = jac.columns(cols)                                                  # (B, d, km)
                rows = (pinv_rows(j_i, chol) if tangent is None                         # (J^+)_I
                        else torch.gather(tangent, -2, cols.unsqueeze(-1).expand(b - a, cols.shape[-1], d)))
                r, y, r2 = residual_triple(rows, f_i)
                for name, value in (("lxp_R", r), ("lxp_y", y), ("lxp_r2", r2),
                                    ("jf_est", scale * (j_i @ f_i.unsqueeze(-1)).squeeze(-1))):
                    per_draw[name].append(value)
            out["z"].append(z)
            out["kappa"].append(kappa)
            out["coherence"].append(jac.leverage(chol).amax(-1) * (n_state / d))      # (N/d) max_c l_c
            for name, values in per_draw.items():
                out[name].append(torch.stack(values, dim=1))
            if f_full is not None:
                f = torch.from_numpy(np.ascontiguousarray(f_full[a:b], dtype=np.float64))
                jf = jac.matvec(f)
                r_x, y_x, r2_x = (jf_triple(jf, f, chol) if tangent is None else residual_triple(tangent, f))
                out["jf"].append(jf)
                out["lx_R"].append(r_x)
                out["lx_y"].append(y_x)
                out["lx_r2"].append(r2_x)
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def _encode_kept(schema, keep: int, encode) -> dict[str, np.ndarray]:
    """``encode(keep)`` for a shard's first ``keep`` frames, the others NaN (the frames out of use)."""
    S = schema.frames_per_shard
    if keep == S:
        return encode(S)
    specs = {name: spec for name, spec in schema.arrays().items() if name not in ("t", "traj")}
    out = {name: np.full((S, *spec.frame_shape), np.nan) for name, spec in specs.items()}
    if keep > 0:
        for name, values in encode(keep).items():
            out[name][:keep] = values
    return out


def model_digest(state_dict: dict) -> str:
    """A short hash of a model's parameters and buffers (ties an encoding to its autoencoder)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_store(source: str, target: str, ae: ClosureAutoencoder, comm, resume: bool = False,
                 show_progress: bool = True, right_inverse: str = "pinv", observable_floor: float | None = None) -> dict:
    """Encode every frame of ``source`` into ``target`` (all ranks of ``comm`` call this). With
    ``observable_floor`` only the frames in use (:func:`hpcsur.learn.data.observable_cuts`) are encoded; the rest
    are stored as NaN, which training never reads and evaluation does not score, and the cuts are recorded in
    the store's attributes (``observable_floor``, ``kept_frames``)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    ae = ae.double().eval()
    src = zstore.open_dataset(source)
    missing = src.schema.n_shards - len(src.completed_shards())
    if missing:
        raise InputError(f"store {source}: {missing} shard(s) incomplete; finish `hpcsur generate --resume` first")
    digest = model_digest(ae.state_dict())
    attrs = {key: src.attrs[key] for key in zstore.REQUIRED_ATTRS}
    attrs.update({"source": str(Path(source).resolve()), "source_spec_hash": src.attrs["spec_hash"],
                  "autoencoder": digest, "latent_dim": ae.shape.latent_dim, "n_obs": ae.shape.n_obs,
                  "observables": src.attrs.get("observables", []), "k": src.schema.k, "draws": src.schema.draws,
                  "p_eff": src.schema.k / int(src.attrs["layout"]["n_blocks"]), "right_inverse": right_inverse,
                  "full_every": src.attrs.get("full_every"),    # [labels] full_every: J f is NaN between those frames
                  "full_phases": src.attrs.get("full_phases")})
    if ae.shape.observable_scale:                           # z* = s phi*: plots and exports show phi* itself
        attrs["observable_scale"] = list(ae.shape.observable_scale)
    cuts = store_cuts(src, observable_floor)
    if cuts is not None:
        attrs.update({"observable_floor": observable_floor, "kept_frames": list(cuts)})
    schema = src.schema.encoded(ae.shape.latent_dim)
    error, lock = None, None
    if rank == 0:
        try:
            lock = zstore.acquire_lock(target)
            if zstore.exists(target) and not resume:
                raise InputError(f"{target}: an encoded store already exists; pass --resume to continue it")
            zstore.create_dataset(target, schema, attrs, resume=True)
        except InputError as err:
            error = str(err)
            if lock is not None:
                lock.release()
    error = comm.bcast(error, root=0)
    if error:
        if "cannot resume" in error:
            error += " (it was encoded with another autoencoder or source; remove it to re-encode)"
        raise InputError(error)
    comm.Barrier()
    layout = layout_of(src.attrs)
    writer = zstore.ShardWriter(target, rank, size)
    todo = writer.todo()
    total = comm.allreduce(len(todo))
    progress = Progress(total * schema.frames_per_shard, unit="frames", label="encode",
                        enabled=show_progress and rank == 0)
    names = ["x", "idx", "f_partial", "t", "traj", "step"] + (["f_full"] if schema.full_labels else [])
    S, F = schema.frames_per_shard, schema.frames_per_traj
    for s in todo:
        block = src.shard(s, names)
        traj, offset = divmod(s * S, F)
        keep = S if cuts is None else min(max(cuts[traj] - offset, 0), S)
        try:
            encoded = _encode_kept(schema, keep, lambda k: encode_block(
                ae, layout, block["x"][:k], block["idx"][:k], block["f_partial"][:k],
                None if block.get("f_full") is None else block["f_full"][:k], right_inverse))
        except RankDeficientJacobian as err:
            raise err.at(f"trajectory {int(block['traj'][err.row])}, step {int(block['step'][err.row])} "
                         f"(t = {float(block['t'][err.row]):.6g}, shard {s})", "encode") from None
        writer.write(s, {"t": block["t"], "traj": block["traj"], **encoded})
        progress.update(schema.frames_per_shard * size)
    progress.close()
    comm.Barrier()
    summary = None
    if rank == 0:
        summary = zstore.consolidate(target)
        lock.release()
    return comm.bcast(summary, root=0)
