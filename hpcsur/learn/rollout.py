"""Latent rollouts and their errors against the encoded ground truth (used by training's validation
rollouts and by the evaluate stage).

For each trajectory the true latent path z(t_n) = phi(x(t_n)) is read from the encoded store; a model is
integrated from z(t_0) with classical RK4 at dt = (t_1 - t_0) / substeps and compared at the stored times on
the observable coordinates z* (the first n_obs entries of z):

    e_sq  = sum_n |z*_pred(t_n) - z*(t_n)|^2 / sum_n |z*(t_n)|^2   (paper Eq. 43)
    e_abs = sum_n |z*_pred(t_n) - z*(t_n)|   / sum_n |z*(t_n)|     (reference code)

A rollout that blows up scores +inf.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from hpcsur.learn.data import Split
from hpcsur.learn.latent import rk4_rollout, stack_models
from hpcsur.store import open_dataset


def trajectory_errors(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-trajectory (e_sq, e_abs); arrays (frames, trajectories, n_obs). Frames whose truth is NaN (out of use
    under ``[split] observable_floor``: the encoded store holds NaN there) are not scored."""
    scored = np.all(np.isfinite(true), axis=-1)
    diff = np.where(scored, np.linalg.norm(np.where(scored[..., None], pred - true, 0.0), axis=-1), 0.0)
    norm = np.where(scored, np.linalg.norm(np.where(scored[..., None], true, 0.0), axis=-1), 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        e_sq = (diff ** 2).sum(0) / (norm ** 2).sum(0)
        e_abs = diff.sum(0) / norm.sum(0)
    bad = ~np.all(np.isfinite(pred) | ~scored[..., None], axis=(0, 2))
    e_sq[bad] = np.inf
    e_abs[bad] = np.inf
    return e_sq, e_abs



def trajectory_paths(encoded: str, trajs: list[int], frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(t, z) of trajectories ``trajs``: t (F,), z (F, T, d)."""
    dataset = open_dataset(encoded)
    F = dataset.frames_per_traj if frames is None else min(frames, dataset.frames_per_traj)
    z = np.stack([dataset.frames(t, 0, F, ["z"])["z"] for t in trajs], axis=1)
    return dataset.frames(trajs[0], 0, F, ["t"])["t"], z



def test_paths(encoded: str, split: Split, trajectories: int | None, frames: int | None):
    """(t, z, trajectory ids) of the test trajectories: t (F,), z (F, T, d)."""
    trajs = list(split.trajectories("test"))[: trajectories or None]
    t, z = trajectory_paths(encoded, trajs, frames)
    return t, z, trajs



def rollout_many(models: list, z_true: np.ndarray, t: np.ndarray, substeps: int, progress=None) -> np.ndarray:
    """RK4 rollouts of K models of one architecture at once (:func:`stack_models`), each from
    z_true[0] over the stored times; returns (K, F, T, d) float64. ``progress`` counts trajectory steps
    (K T per RK4 step)."""
    frame_dt = float(t[1] - t[0])
    with torch.no_grad():
        stacked = stack_models([m.double().eval() for m in models])
        z0 = torch.from_numpy(z_true[0]).expand(len(models), *z_true.shape[1:]).contiguous()
        path = rk4_rollout(stacked, z0, frame_dt / substeps, (len(t) - 1) * substeps, every=substeps,
                           progress=progress)
    return path.transpose(0, 1).numpy()



def rollout(model, z_true: np.ndarray, t: np.ndarray, substeps: int) -> np.ndarray:
    """RK4 from z_true[0] over the stored times in float64 (on a copy: the model itself, possibly
    in training, keeps its dtype); returns (F, T, d)."""
    frame_dt = float(t[1] - t[0])
    with torch.no_grad():
        model = copy.deepcopy(model).double()
        z0 = torch.from_numpy(z_true[0])
        path = rk4_rollout(model, z0, frame_dt / substeps, (len(t) - 1) * substeps, every=substeps)
    return path.numpy()
