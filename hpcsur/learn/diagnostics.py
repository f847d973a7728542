"""What an encoding looks like to the latent losses: conditioning, leverage, label noise.

Why these numbers: L_x,p sees the latent tangent space only through the rows (J^+)_I of the chosen
coordinates. When a few coordinates carry most of J's row space (high *leverage* l_c =
J_c^T (J J^T)^{-1} J_c on few c; *coherence* mu = (N/d) max_c l_c >> 1), a uniform sample of
coordinates estimates it poorly, the per-frame least-squares target of L_x,p is noisy, and a latent
model trained on fixed index sets fits that noise. ``label_noise`` measures the result directly.
"""
from __future__ import annotations

import numpy as np
import torch

from hpcsur.learn.autoencoder import tangent_penalty
from hpcsur.learn.data import pieces
from hpcsur.learn.losses import gram_cholesky, leverage_scores
from hpcsur.store import open_dataset


def jacobian_diagnostics(ae, chunks, x_std: np.ndarray | None = None) -> dict:
    """kappa(J J^T), coherence and the per-coordinate mean leverage of the encoder ``ae`` on the frames of
    ``chunks`` (an iterable of (B, N) arrays, float64; one chunk's J, B x d x N, is what it holds at a time).
    With the per-coordinate standard deviations ``x_std`` of the data, also the correlation over
    coordinates of log leverage with log(1/sigma_c): close to 1 when input scaling by 1/sigma_c is what
    concentrates the leverage on the quiet coordinates."""
    ae = ae.double().eval()
    kappa, tangent, coherence, lev_sum, frames = [], [], [], None, 0
    for x in chunks:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        with torch.enable_grad():
            j = ae.jacobian(xt).detach()
        lam = torch.linalg.eigvalsh(j @ j.transpose(-1, -2))
        lev = leverage_scores(j, gram_cholesky(j))                          # (B, N)
        d, n = j.shape[-2:]
        with torch.no_grad():
            tangent.append(tangent_penalty(ae, ae.encode(xt), j))
        kappa.append(lam[:, -1] / lam[:, 0])
        coherence.append(lev.amax(-1) * n / d)
        lev_sum = lev.sum(0) if lev_sum is None else lev_sum + lev.sum(0)
        frames += x.shape[0]
        del j, lev
    kappa, tangent, coherence = (torch.cat(v).numpy() for v in (kappa, tangent, coherence))
    mean_lev = (lev_sum / frames).numpy()
    out = {"frames": frames, "N": int(n), "d": int(d),
           "kappa": {"mean": float(kappa.mean()), "max": float(kappa.max())},
           "decoder_tangent_residual": {"mean": float(tangent.mean()), "max": float(tangent.max())},
           "coherence": {"mean": float(coherence.mean()), "max": float(coherence.max())},
           "leverage_max_over_mean": float(mean_lev.max() / (d / n))}
    if x_std is not None:
        keep = (x_std > 0) & (mean_lev > 0)
        out["corr_log_leverage_log_inv_sigma"] = float(np.corrcoef(np.log(mean_lev[keep]),
                                                                   -np.log(x_std[keep]))[0, 1])
    return out


def encoding_diagnostics(encoded: str, frame_range: tuple[int, int]) -> dict:
    """What the encoding looks like to the latent losses, over the frames ``[g0, g1)``:

    * ``kappa``: cond(J J^T) (mean, max); ``coherence``: (N/d) max_c leverage_c (mean, max);
    * ``label_noise`` per draw (full labels only): eta = sum ||y - R J f||^2 / sum ||R (J f - mean J f)||^2
      with (R, y) the L_x,p triple -- the L_x,p loss of the exact latent velocity J f relative to the
      variation a model has to learn: the share of the partial-label signal that is sampling noise;
    * ``tangent_residual`` (full labels only): sum |f - J^+ J f|^2 / sum |f|^2, the share of the force
      outside the encoder's row space. The noise of L_x,p is exactly this residual seen through the
      sampled rows (y - R J f = Q^T (f - J^+ J f)_I), so it is what makes partial labels noisy; L_z,
      which sees only J f, is blind to it.
    """
    dataset = open_dataset(encoded)
    names = [n for n in ("kappa", "coherence", "jf", "lxp_R", "lxp_y", "lx_y", "lx_r2") if n in dataset.schema.arrays()]
    blocks = []
    cuts = dataset.attrs.get("kept_frames")   # only the frames in use ([split] observable_floor)
    for s, piece in sorted(pieces(frame_range, dataset.schema.frames_per_shard, cuts,
                                  dataset.schema.frames_per_traj).items()):
        arrays = dataset.shard(s, names)
        blocks.append({k: v[piece.rows] for k, v in arrays.items()})
    cat = {k: np.concatenate([b[k] for b in blocks]) for k in names}
    out = {"frames": sum(len(b[names[0]]) for b in blocks) if names else frame_range[1] - frame_range[0]}
    for name in ("kappa", "coherence"):
        if name in cat:
            out[name] = {"mean": float(np.mean(cat[name])), "max": float(np.max(cat[name]))}
    labelled = np.isfinite(cat["jf"]).all(-1) if "jf" in cat else None   # [labels] full_every: frames with f
    if labelled is not None and labelled.any():
        cat.update({k: cat[k][labelled] for k in ("jf", "lxp_R", "lxp_y", "lx_y", "lx_r2")})
        out["labelled_frames"] = int(labelled.sum())
        jf = cat["jf"]
        noise = []
        for draw in range(cat["lxp_R"].shape[1]):
            r, y = cat["lxp_R"][:, draw], cat["lxp_y"][:, draw]
            resid = y - np.einsum("fij,fj->fi", r, jf)
            signal = np.einsum("fij,fj->fi", r, jf - jf.mean(0))
            noise.append(float((resid ** 2).sum() / (signal ** 2).sum()))
        out["label_noise"] = noise
        # the share of |f|^2 outside the encoder's tangent space row(J): r2 of L_x = |f - J^+ J f|^2
        out["tangent_residual"] = float(cat["lx_r2"].mean() / (cat["lx_r2"] + (cat["lx_y"] ** 2).sum(-1)).mean())
    return out
