"""The training stages: ``train-ae`` (closure autoencoder) and ``train-latent`` (g_theta per loss and seed).

Run folder layout (``run_dir``)::

    autoencoder/  checkpoint.pt  best.pt  curve.csv  done.json  normalisation.npz
    encoded/      the encoded dataset (hpcsur.learn.encode)
    latent/<loss>-e<equivalent data>-s<seed>/  checkpoint.pt  best.pt  curve.csv  done.json  snapshots/

Both stages stream from a store (:class:`hpcsur.learn.data.BatchStream`), average gradients over
the backend's workers and resume from checkpoints (:func:`hpcsur.learn.train.fit`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpcsur.errors import InputError
from hpcsur.learn import config as cfg
from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder, autoencoder_loss
from hpcsur.learn.data import (BatchStream, frame_moments, frame_sums, moments_from_sums, safe_std, split_of,
                               store_cuts)
from hpcsur.learn.latent import LatentDynamics, LatentShape
from hpcsur.learn.losses import LOSS_ARRAYS, TARGET_ARRAY, RankDeficientJacobian, batch_loss
from hpcsur.learn.observables import observable_from_attrs
from hpcsur.learn.train import DONE, FitConfig, fit, load_best, write_json_atomic
from hpcsur.store import open_dataset

log = logging.getLogger("hpcsur.learn")


class AutoencoderLoss(nn.Module):
    """forward(batch) = (L_AE, parts) for the frames ``batch["x"]``."""

    def __init__(self, model: ClosureAutoencoder, lambda_cond: float, cond_rows: str, lambda_coherence: float = 0.0,
                 lambda_tangent: float = 0.0):
        super().__init__()
        self.model, self.lambda_cond, self.cond_rows = model, lambda_cond, cond_rows
        self.lambda_coherence, self.lambda_tangent = lambda_coherence, lambda_tangent

    def forward(self, batch):
        try:
            return autoencoder_loss(self.model, batch["x"], self.lambda_cond, self.cond_rows, self.lambda_coherence,
                                    self.lambda_tangent)
        except RankDeficientJacobian as err:
            where = (f"trajectory {int(batch['traj'][err.row])}, step {int(batch['step'][err.row])}"
                     if "traj" in batch and "step" in batch else f"row {err.row} of a batch")
            raise err.at(where, "train-ae") from None


class LatentLoss(nn.Module):
    """forward(batch) = (L_z | L_x | L_x,p, parts) of g = model(z) against the encoded arrays; with
    ``constant=False`` without the theta-independent residual r2 (same gradients; the curves and
    a validation-loss schedule then see only what g can reduce)."""

    def __init__(self, model: LatentDynamics, kind: str, p: float, constant: bool = False):
        super().__init__()
        self.model, self.kind, self.p, self.constant = model, kind, p, constant

    def forward(self, batch):
        return batch_loss(self.kind, self.model(batch["z"]), batch, self.p, constant=self.constant), {}


def use_threads(train: cfg.Train) -> None:
    """Pin torch's intra-op threads: several workers per node each using every core would thrash."""
    torch.set_num_threads(train.threads)


# ----------------------------------------------------------------------------- autoencoder
def autoencoder_meta(shape: AutoencoderShape, source_hash: str, ae: cfg.Autoencoder) -> dict:
    shape_dict = {**asdict(shape), "hidden": list(shape.hidden), "observable_scale": list(shape.observable_scale)}
    if not shape.observable_scale:
        del shape_dict["observable_scale"]
    meta = {"kind": "autoencoder", "shape": shape_dict,
            "source": source_hash, "lambda_cond": ae.lambda_cond, "cond_rows": ae.cond_rows}
    # options beyond the recipe's defaults are recorded only when used (older checkpoints stay valid)
    if ae.normalise != "auto":
        meta["scaling"] = ae.scaling
    if ae.lambda_coherence > 0:
        meta["lambda_coherence"] = ae.lambda_coherence
    if ae.lambda_tangent > 0:
        meta["lambda_tangent"] = ae.lambda_tangent
    return meta


def autoencoder_shape(store_attrs: dict, ae: cfg.Autoencoder) -> AutoencoderShape:
    n_state = int(store_attrs["layout"]["block_size"]) * int(store_attrs["layout"]["n_blocks"])
    n_obs = len(store_attrs.get("observables", [])) or 1
    if ae.latent_dim <= n_obs:
        raise InputError(f"[autoencoder] latent_dim = {ae.latent_dim} is out of range; allowed: latent_dim > "
                         f"{n_obs} (the observables plus at least one closure variable)")
    scale = tuple(float(s) for s in (ae.observable_scale or ()))
    if scale and len(scale) != n_obs:
        raise InputError(f"[autoencoder] observable_scale has {len(scale)} factor(s); allowed: one per observable "
                         f"({n_obs}: {', '.join(store_attrs.get('observables', []))})")
    return AutoencoderShape(n_state, n_obs, ae.latent_dim, tuple(ae.hidden), ae.activation, ae.recipe, scale)


def field_std(x_std: np.ndarray, n_fields: int) -> np.ndarray:
    """One scale per field: the RMS of the coordinates' standard deviations over each of the
    state's ``n_fields`` contiguous fields (so no quiet coordinate is amplified by 1/sigma_c)."""
    per_field = x_std.reshape(n_fields, -1)
    return np.repeat(np.sqrt((per_field ** 2).mean(-1)), per_field.shape[1])


def normalisation_stats(x_mean, x_std, obs_mean, obs_std, scaling: str, n_fields: int) -> dict:
    """The autoencoder's buffers from the training moments, for each input scaling:

    * ``coordinate``: x' = (x - mu_c) / sigma_c, z*' = (z* - mu*) / sigma*;
    * ``field``: as coordinate, with one sigma per field (:func:`field_std`);
    * ``centre``: x' = x - m_f, m_f the mean over the coordinates of field f (a constant per field, as the
      reference's box centred on 0), no scaling; the observables enter the decoder raw."""
    if scaling == "centre":
        n = len(x_mean)
        return {"x_mean": np.repeat(np.asarray(x_mean).reshape(n_fields, -1).mean(-1), n // n_fields),
                "x_std": np.ones(n), "obs_mean": np.zeros(len(obs_mean)), "obs_std": np.ones(len(obs_std))}
    x_std = field_std(x_std, n_fields) if scaling == "field" else x_std
    return {"x_mean": x_mean, "x_std": safe_std(x_std), "obs_mean": obs_mean, "obs_std": safe_std(obs_std)}


def _normalisation(store: str, train_range, out_dir: Path, backend, scaling: str, n_fields: int,
                   cuts=None) -> dict:
    """x statistics (per coordinate, or one scale per field) and observable statistics of the training frames,
    cached in normalisation.npz. Every worker sums its share of the shards and the sums are added up (one pass
    over the store split among the workers; no worker waits in a collective while another reads it all)."""
    cache = out_dir / "normalisation.npz"
    stats = None
    if backend.rank == 0 and cache.exists() and str(np.load(cache).get("scaling", "coordinate")) == scaling:
        stats = {k: v for k, v in np.load(cache).items() if k != "scaling"}
    stats = backend.broadcast_object(stats, root=0)
    if stats is not None:
        return stats

    def moments(name):
        shift, total, total2, count = frame_sums(store, name, train_range, cuts=cuts,
                                                 part=(backend.rank, backend.size))
        summed = backend.allreduce(torch.as_tensor(np.concatenate([total, total2, [count]])), op="sum").numpy()
        n = len(total)
        return moments_from_sums(shift, summed[:n], summed[n:2 * n], int(round(summed[-1])))[:2]

    (x_mean, x_std), (o_mean, o_std) = moments("x"), moments("phi")
    stats = normalisation_stats(x_mean, x_std, o_mean, o_std, scaling, n_fields)
    if backend.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, scaling=scaling, **stats)
    return stats


def build_autoencoder(store_attrs: dict, ae: cfg.Autoencoder) -> ClosureAutoencoder:
    return ClosureAutoencoder(autoencoder_shape(store_attrs, ae), observable_from_attrs(store_attrs))


def train_autoencoder(store: str, run_dir: Path, split: cfg.Split, ae: cfg.Autoencoder, train: cfg.Train,
                      backend, resume: bool = False, show_progress: bool = True) -> dict:
    """Train the closure autoencoder on the training trajectories of ``store``."""
    from hpcsur.learn.distributed import scaled_lr

    use_threads(train)
    dataset = open_dataset(store)
    sp = split_of(dataset, split.validation, split.test, store_cuts(dataset, split.observable_floor))
    g0, g1 = sp.frames("train")
    if ae.max_train_frames is not None:
        g1 = sp.first_kept("train", min(ae.max_train_frames, sp.kept("train")))[1]
    out = Path(run_dir) / "autoencoder"
    torch.manual_seed(ae.seed)
    model = build_autoencoder(dataset.attrs, ae)
    if ae.scaling != "none":
        n_fields = len(dataset.attrs["layout"]["fields"])
        stats = _normalisation(store, (g0, g1), out, backend, ae.scaling, n_fields, sp.cuts)
        # the store's phi is unscaled, z* = s phi*: its statistics scale with s (centre leaves the observables raw)
        scale = np.asarray(model.shape.observable_scale or 1.0) if ae.scaling != "centre" else 1.0
        model.set_normalisation(**{**stats, "obs_mean": stats["obs_mean"] * scale, "obs_std": stats["obs_std"] * scale})
    meta = autoencoder_meta(model.shape, dataset.attrs["spec_hash"], ae)
    common = dict(rank=backend.rank, size=backend.size, seed=ae.seed, memory_mb=train.memory_mb,
                  shuffle_buffer=train.shuffle_buffer, prefetch=train.prefetch, loader_workers=train.loader_workers)
    names = ["x", "traj", "step"]   # traj, step: to name a frame the loss cannot use
    train_stream = BatchStream(store, names, (g0, g1), ae.batch, cuts=sp.cuts, **common)
    val_stream = BatchStream(store, names, sp.frames("validation"), ae.batch, training=False, cuts=sp.cuts, **common)
    protocol = (dict(optimizer="adam", betas=(0.9, 0.95), schedule_on="none", select="last")
                if ae.recipe == "reference" else dict(optimizer="adamw_amsgrad", schedule_on="val", select="val_loss"))
    config = FitConfig(epochs=ae.epochs, lr=scaled_lr(ae.lr, backend.size, train.lr_scaling),
                       weight_decay=ae.weight_decay, patience=max(2, ae.epochs // 5), factor=0.5,
                       checkpoint_minutes=train.checkpoint_minutes, seed=ae.seed, **protocol)
    log.info("train-ae: %d training frames (%s), %d validation, d = %d, %d worker(s) [%s], %s",
             train_stream.n_frames, "streaming" if train_stream.streaming else "in memory",
             val_stream.n_frames, ae.latent_dim, backend.size, backend.name, out)
    return fit(AutoencoderLoss(model, ae.lambda_cond, ae.cond_rows, ae.lambda_coherence, ae.lambda_tangent),
               train_stream, val_stream, backend, out,
               config, meta, resume=resume, label="train-ae", show_progress=show_progress)


def load_autoencoder(store: str, run_dir: Path, ae: cfg.Autoencoder) -> ClosureAutoencoder:
    """The trained autoencoder (its best epoch) of a run."""
    dataset = open_dataset(store)
    model = build_autoencoder(dataset.attrs, ae)
    state = load_best(Path(run_dir) / "autoencoder", autoencoder_meta(model.shape, dataset.attrs["spec_hash"], ae))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model


# ----------------------------------------------------------------------------- latent models
def latent_shape(latent: cfg.Latent, d: int) -> LatentShape:
    return LatentShape(latent.model, d, tuple(latent.hidden), latent.activation, latent.forcing)


def latent_meta(shape: LatentShape, loss: str, seed: int, n_train: int, encoded_attrs: dict, draw: int = 0) -> dict:
    return {"kind": "latent", "shape": shape.to_dict(), "loss": loss, "seed": seed, "train_frames": n_train,
            "draw": draw, "autoencoder": encoded_attrs["autoencoder"]}


def training_frames(loss: str, equivalent_data: int, p_eff: float, available: int, batch: int,
                    where: str = "[latent]") -> int:
    """K: equivalent_data configurations for L_z / L_x, equivalent_data / p for L_x,p (equal force cost)."""
    k = equivalent_data if loss in ("lz", "lx") else int(round(equivalent_data / p_eff))
    if k > available:
        raise InputError(f"{where} equivalent_data = {equivalent_data} needs {k} training frames for "
                         f"{loss} (p = {p_eff:.4g}), but only {available} exist; lower equivalent_data or "
                         "generate more trajectories")
    if k < batch:
        raise InputError(f"{where} equivalent_data = {equivalent_data} gives {k} training frames for "
                         f"{loss}, fewer than batch = {batch}")
    return k


@dataclass(frozen=True)
class LatentRun:
    """One latent model: its loss, equivalent-data size, seed, training frames K, index-set draw, and the stride r
    of its training frames (L_z / L_x under ``[labels] full_every = r``: trajectory frames 0, r, 2r, ...)."""

    loss: str
    size: int
    seed: int
    frames: int
    draw: int
    stride: int = 1

    @property
    def name(self) -> str:
        return run_name(self.loss, self.size, self.seed)


def run_name(loss: str, size: int, seed: int) -> str:
    return f"{loss}-e{size}-s{seed}"


def latent_runs(latent: cfg.Latent, attrs: dict, split, losses=None, seeds=None, sizes=None) -> list[LatentRun]:
    """Every (loss, size, seed) model of a spec, in training order (one-line error if one cannot be
    trained from the data). Seed s trains on index-set draw s mod draws; L_z and L_x train on the frames
    with all forces (every ``full_every``-th frame of a trajectory when the store budgets them)."""
    p_eff, draws = float(attrs["p_eff"]), int(attrs.get("draws", 1))
    full_every = int(attrs.get("full_every") or 1)
    runs = []
    for loss, size, seed in latent.models():
        if (losses and loss not in losses) or (sizes and size not in sizes) or (seeds is not None and seed not in seeds):
            continue
        stride = full_every if loss in ("lz", "lx") else 1
        runs.append(LatentRun(loss, size, seed, training_frames(loss, size, p_eff, split.kept("train", stride),
                                                                latent.for_loss("batch", loss)),
                              seed % draws if loss == "lxp" else 0, stride))
    return runs


def validation_scorer(encoded: str, split, substeps: int, n_obs: int):
    """scorer(model) = mean over the validation trajectories of the observables' rollout error
    (the reference code's non-squared metric); needs encoded states only, no forces."""
    from hpcsur.learn.rollout import rollout, trajectory_errors, trajectory_paths

    t, z_true = trajectory_paths(encoded, list(split.trajectories("validation")))

    def score(model) -> float:
        pred = rollout(model, z_true, t, substeps)
        return float(np.mean(trajectory_errors(pred[..., :n_obs], z_true[..., :n_obs])[1]))
    return score


def train_latent(encoded: str, run_dir: Path, split: cfg.Split, latent: cfg.Latent, train: cfg.Train, backend,
                 losses=None, seeds=None, resume: bool = False, show_progress: bool = True,
                 substeps: int = 10, sizes=None, record=None) -> list[dict]:
    """Train one latent model per (loss, size, seed); finished runs are skipped when resuming.
    ``record(run)`` gives the provenance written to ``<run folder>/inputs.json`` as the run starts."""
    from hpcsur.learn.distributed import scaled_lr

    use_threads(train)
    dataset = open_dataset(encoded)
    sp = split_of(dataset, split.validation, split.test, dataset.attrs.get("kept_frames"))
    for loss in losses or latent.losses:
        missing = [a for a in LOSS_ARRAYS[loss] if a not in dataset.schema.arrays()]
        if missing:
            raise InputError(f"store {encoded}: loss {loss} needs array {missing[0]!r}, which this store lacks "
                             "(generate with [labels] full = true for lz / lx)")
    runs = latent_runs(latent, dataset.attrs, sp, losses, seeds, sizes)
    scorer = (validation_scorer(encoded, sp, substeps, int(dataset.attrs["n_obs"]))
              if latent.select == "val_rollout" else None)
    summaries = []
    for run in runs:
        out = Path(run_dir) / "latent" / run.name
        if resume and (out / DONE).exists():
            log.info("train-latent %s: already finished", run.name)
            continue
        if not resume and (out / "checkpoint.pt").exists():
            raise InputError(f"{out}: a training run exists; pass --resume to continue or finish it")
        if record is not None and backend.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"inputs": record(run)}, out / "inputs.json")
        summaries.append(_train_one(dataset, encoded, out, sp, latent, train, backend, run, float(dataset.attrs["p_eff"]),
                                    scaled_lr(latent.for_loss("lr", run.loss), backend.size, train.lr_scaling), resume,
                                    show_progress,
                                    scorer))
    return summaries


def latent_statistics(encoded: str, loss: str, frame_range, draw: int = 0, cuts=None, stride: int = 1) -> dict:
    z_mean, z_std, _ = frame_moments(encoded, "z", frame_range, cuts=cuts, stride=stride)
    t_mean, t_std, _ = frame_moments(encoded, TARGET_ARRAY[loss], frame_range, draw, cuts=cuts, stride=stride)
    return {"z_mean": z_mean, "z_std": safe_std(z_std), "t_mean": t_mean, "t_std": safe_std(t_std)}


PROTOCOL_SELECT = {"last": "last", "val_loss": "val_loss", "val_rollout": "score"}


def _train_one(dataset, encoded, out, sp, latent, train, backend, run: LatentRun, p_eff, lr, resume, show_progress,
               scorer):
    shape = latent_shape(latent, int(dataset.attrs["latent_dim"]))
    torch.manual_seed(run.seed)
    model = LatentDynamics(shape)
    frames = sp.first_kept("train", run.frames, run.stride)   # the first K training frames in use
    model.set_normalisation(**latent_statistics(encoded, run.loss, frames, run.draw, sp.cuts, run.stride))
    names = ["z", *LOSS_ARRAYS[run.loss]]
    common = dict(rank=backend.rank, size=backend.size, seed=run.seed, memory_mb=train.memory_mb,
                  shuffle_buffer=train.shuffle_buffer, prefetch=train.prefetch, loader_workers=train.loader_workers,
                  draw=run.draw)
    batch = latent.for_loss("batch", run.loss)
    train_stream = BatchStream(encoded, names, frames, batch, cuts=sp.cuts, stride=run.stride, **common)
    config = FitConfig(epochs=latent.for_loss("epochs", run.loss), lr=lr, weight_decay=latent.weight_decay,
                       patience=latent.patience_for(run.loss),
                       factor=latent.factor, min_lr=latent.for_loss("min_lr", run.loss),
                       checkpoint_minutes=train.checkpoint_minutes,
                       seed=run.seed, schedule_on=latent.schedule_on, select=PROTOCOL_SELECT[latent.select],
                       score_every=latent.select_every, snapshot_every=latent.snapshot_every)
    val_stream = (BatchStream(encoded, names, sp.frames("validation"), batch, training=False, cuts=sp.cuts,
                              **common)
                  if config.needs_validation_loss else None)
    log.info("train-latent %s: %s on %d frames (draw %d), %d worker(s) [%s], schedule on %s, select %s", run.name,
             latent.model, run.frames, run.draw, backend.size, backend.name, latent.schedule_on, latent.select)
    # The reference code's plateau scheduler watches the training loss with its constant part (the
    # residual r2 of L_x / L_x,p); with schedule_on = "val" the curves and the scheduler see only
    # the part of the loss the model can reduce.
    loss_module = LatentLoss(model, run.loss, p_eff, constant=latent.schedule_on == "train")
    return fit(loss_module, train_stream, val_stream, backend, out, config,
               latent_meta(shape, run.loss, run.seed, run.frames, dataset.attrs, run.draw), resume=resume,
               label=f"train-latent {run.name}", show_progress=show_progress, scorer=scorer,
               model_of=lambda m: m.model)


def latent_model(encoded_attrs: dict, latent: cfg.Latent, state: dict) -> LatentDynamics:
    """A latent model with the parameters of ``state`` (a LatentLoss or LatentDynamics state dict)."""
    model = LatentDynamics(latent_shape(latent, int(encoded_attrs["latent_dim"])))
    model.load_state_dict({k_.removeprefix("model."): v for k_, v in state.items()})
    return model.eval()


def run_meta(encoded_attrs: dict, latent: cfg.Latent, run: LatentRun) -> dict:
    return latent_meta(latent_shape(latent, int(encoded_attrs["latent_dim"])), run.loss, run.seed, run.frames,
                       encoded_attrs, run.draw)


def load_latent(encoded_attrs: dict, run_dir: Path, latent: cfg.Latent, run: LatentRun) -> LatentDynamics:
    """The selected model of a finished run."""
    state = load_best(Path(run_dir) / "latent" / run.name, run_meta(encoded_attrs, latent, run))
    return latent_model(encoded_attrs, latent, state)
