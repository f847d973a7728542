"""Evaluation: latent RK4 rollouts against the encoded ground truth, errors, report and plots.

For each test trajectory the true latent path z(t_n) = phi(x(t_n)) is read from the encoded store;
the model is integrated from z(t_0) with classical RK4 at dt = (t_1 - t_0) / substeps and compared
at the stored times on the observable coordinates z* (the first n_obs entries of z):

    e_sq  = mean over trajectories of  sum_n |z*_pred(t_n) - z*(t_n)|^2 / sum_n |z*(t_n)|^2   (paper Eq. 43)
    e_abs = mean over trajectories of  sum_n |z*_pred(t_n) - z*(t_n)|   / sum_n |z*(t_n)|     (reference code)

Per loss the errors are summarised over seeds as mean, sample std (ddof = 1, paper Table 2) and
population std (Table 1 / the AC and LJ scripts). A rollout that blows up scores +inf.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from hpcsur.learn.data import Split
from hpcsur.learn.latent import rk4_rollout
from hpcsur.store import open_dataset


def trajectory_errors(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-trajectory (e_sq, e_abs); arrays (frames, trajectories, n_obs)."""
    diff = np.linalg.norm(pred - true, axis=-1)
    norm = np.linalg.norm(true, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        e_sq = (diff ** 2).sum(0) / (norm ** 2).sum(0)
        e_abs = diff.sum(0) / norm.sum(0)
    bad = ~np.all(np.isfinite(pred), axis=(0, 2))
    e_sq[bad] = np.inf
    e_abs[bad] = np.inf
    return e_sq, e_abs


def summarise(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "std_population": float(a.std()), "values": [float(v) for v in a]}


def test_paths(encoded: str, split: Split, trajectories: int | None, frames: int | None):
    """(t, z) of the test trajectories: t (F,), z (F, T, d)."""
    dataset = open_dataset(encoded)
    trajs = list(split.trajectories("test"))[: trajectories or None]
    F = dataset.frames_per_traj if frames is None else min(frames, dataset.frames_per_traj)
    z = np.stack([dataset.frames(t, 0, F, ["z"])["z"] for t in trajs], axis=1)
    t = dataset.frames(trajs[0], 0, F, ["t"])["t"]
    return t, z, trajs


def rollout(model, z_true: np.ndarray, t: np.ndarray, substeps: int) -> np.ndarray:
    """RK4 from z_true[0] over the stored times; returns (F, T, d) float64."""
    frame_dt = float(t[1] - t[0])
    with torch.no_grad():
        model = model.double()
        z0 = torch.from_numpy(z_true[0])
        path = rk4_rollout(model, z0, frame_dt / substeps, (len(t) - 1) * substeps, every=substeps)
    return path.numpy()


def plot_observables(path: Path, t, z_true, predictions: dict, names, n_traj: int = 3) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_obs = len(names)
    shown = min(n_traj, z_true.shape[1])
    fig, axes = plt.subplots(n_obs, shown, figsize=(4.2 * shown, 2.8 * n_obs), squeeze=False)
    for i in range(n_obs):
        for j in range(shown):
            ax = axes[i][j]
            ax.plot(t, z_true[:, j, i], "k-", lw=2, label="truth (encoded)")
            for label, pred in predictions.items():
                ax.plot(t, pred[:, j, i], "--", lw=1.3, label=label)
            ax.set_xlabel("t")
            ax.set_ylabel(names[i])
            if i == 0:
                ax.set_title(f"test trajectory {j}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, curves: dict[str, list[dict]]) -> None:
    """Training (solid) and validation (dashed) loss per epoch; one panel per loss, whose scales
    differ (L_x and L_x,p without their theta-independent residual r2)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({label.split("-s")[0] for label in curves})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.6 * max(len(kinds), 1), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, rows in curves.items():
            if not rows or label.split("-s")[0] != kind:
                continue
            epochs = [r["epoch"] for r in rows]
            line, = ax.semilogy(epochs, [r["train"] for r in rows], lw=1, label=f"{label} train")
            ax.semilogy(epochs, [r["val"] for r in rows], "--", lw=1, color=line.get_color(), label=f"{label} val")
        ax.set_title({"lz": "L_z", "lx": "L_x", "lxp": "L_x,p"}.get(kind, kind))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(path: Path, table: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = list(table)
    means = [table[k]["e_sq"]["mean"] for k in labels]
    stds = [table[k]["e_sq"]["std"] for k in labels]
    ax.bar(labels, means, yerr=stds, capsize=4, color=["#777", "#3a7", "#37a"][: len(labels)])
    ax.set_yscale("log")
    ax.set_ylabel("mean relative error (Eq. 43)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_or_none(x: float):
    return x if math.isfinite(x) else None


def write_report(path: Path, report: dict) -> None:
    def clean(o):
        if isinstance(o, float):
            return finite_or_none(o)
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(report), indent=1))
    tmp.replace(path)


def evaluate_run(encoded: str, run_dir: Path, split_cfg, latent_cfg, eval_cfg, losses=None, seeds=None) -> dict:
    """Roll out every trained (loss, seed) model on the test trajectories; write report.json and plots."""
    import csv

    from hpcsur.learn.data import split_of
    from hpcsur.learn.stages import load_latent, run_name, training_frames

    run_dir = Path(run_dir)
    dataset = open_dataset(encoded)
    attrs = dataset.attrs
    split = split_of(dataset, split_cfg.validation, split_cfg.test)
    n_obs = int(attrs["n_obs"])
    names = list(attrs.get("observables") or [f"z{i}" for i in range(n_obs)])
    t, z_true, trajs = test_paths(encoded, split, eval_cfg.trajectories, eval_cfg.frames)
    losses = list(losses or latent_cfg.losses)
    seeds = list(seeds if seeds is not None else latent_cfg.seeds)
    available = split.frames("train")[1]
    runs, table, shown, curves = [], {}, {}, {}
    for loss in losses:
        k = training_frames(loss, latent_cfg, float(attrs["p_eff"]), available)
        per_seed_sq, per_seed_abs = [], []
        for seed in seeds:
            model = load_latent(attrs, run_dir, latent_cfg, loss, seed, k)
            pred = rollout(model, z_true, t, eval_cfg.substeps)
            e_sq, e_abs = trajectory_errors(pred[..., :n_obs], z_true[..., :n_obs])
            per_seed_sq.append(float(np.mean(e_sq)))
            per_seed_abs.append(float(np.mean(e_abs)))
            runs.append({"loss": loss, "seed": seed, "train_frames": k, "equivalent_data": latent_cfg.equivalent_data,
                         "e_sq": per_seed_sq[-1], "e_abs": per_seed_abs[-1]})
            if seed == seeds[0]:
                shown[f"{loss} (seed {seed})"] = pred[..., :n_obs]
            curve_file = run_dir / "latent" / run_name(loss, seed) / "curve.csv"
            if curve_file.exists():
                with open(curve_file) as fh:
                    curves[run_name(loss, seed)] = [{k_: float(v) for k_, v in row.items()} for row in csv.DictReader(fh)]
        table[loss] = {"train_frames": k, "e_sq": summarise(per_seed_sq), "e_abs": summarise(per_seed_abs)}
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    files = {"observables": plots / "observables.png", "loss_curves": plots / "loss_curves.png",
             "errors": plots / "errors.png"}
    plot_observables(files["observables"], t, z_true[..., :n_obs], shown, names[:n_obs])
    plot_curves(files["loss_curves"], curves)
    plot_errors(files["errors"], table)
    report = {"encoded": str(encoded), "test_trajectories": trajs, "frames": len(t), "substeps": eval_cfg.substeps,
              "p_eff": float(attrs["p_eff"]), "equivalent_data": latent_cfg.equivalent_data, "model": latent_cfg.model,
              "table": table, "runs": runs, "plots": {k: str(v) for k, v in files.items()}}
    write_report(run_dir / "report.json", report)
    return report
