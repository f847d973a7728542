"""Evaluation: latent RK4 rollouts against the encoded ground truth (:mod:`hpcsur.learn.rollout`), errors,
report and plots.

For each test trajectory the true latent path z(t_n) = phi(x(t_n)) is read from the encoded store;
the model is integrated from z(t_0) with classical RK4 at dt = (t_1 - t_0) / substeps and compared
at the stored times on the observable coordinates z* (the first n_obs entries of z):

    e_sq  = mean over trajectories of  sum_n |z*_pred(t_n) - z*(t_n)|^2 / sum_n |z*(t_n)|^2   (paper Eq. 43)
    e_abs = mean over trajectories of  sum_n |z*_pred(t_n) - z*(t_n)|   / sum_n |z*(t_n)|     (reference code)

Per loss the errors are summarised over seeds as mean, sample std (ddof = 1, paper Table 2) and
population std (Table 1 / the AC and LJ scripts). A rollout that blows up scores +inf.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsur.learn.rollout import rollout_many, test_paths, trajectory_errors
from hpcsur.log import Progress
from hpcsur.store import open_dataset

log = logging.getLogger("hpcsur.evaluate")


def summarise(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "std_population": float(a.std()), "values": [float(v) for v in a]}


def scored_span(z_true: np.ndarray, traj: int) -> int:
    """Frames 0 .. n-1 of trajectory ``traj`` that are scored: up to its last frame with a finite truth (past it the
    trajectory is out of use under ``[split] observable_floor``, and its truth is NaN)."""
    finite = np.flatnonzero(np.all(np.isfinite(z_true[:, traj]), axis=-1))
    return int(finite[-1]) + 1 if finite.size else 0


def plot_observables(path: Path, t, z_true, predictions: dict, names, n_traj: int = 3) -> None:
    """Truth and each prediction of the observables on the first test trajectories, over the scored frames only
    (a rollout past a trajectory's last frame in use is not scored and not drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_obs = len(names)
    shown = min(n_traj, z_true.shape[1])
    fig, axes = plt.subplots(n_obs, shown, figsize=(4.2 * shown, 2.8 * n_obs), squeeze=False)
    for i in range(n_obs):
        for j in range(shown):
            ax = axes[i][j]
            n = scored_span(z_true, j)
            ax.plot(t[:n], z_true[:n, j, i], "k-", lw=2, label="truth (encoded)")
            for label, pred in predictions.items():
                ax.plot(t[:n], pred[:n, j, i], "--", lw=1.3, label=label)
            if n < len(t):
                ax.axvline(t[n - 1] if n else t[0], color="0.6", ls=":", lw=1)
                ax.text(0.98, 0.95, "out of use after the dotted line\n(observable_floor; not scored)",
                        transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.4")
            ax.set_xlabel("t")
            ax.set_ylabel(names[i])
            if i == 0:
                ax.set_title(f"test trajectory {j}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, curves: dict[str, list[dict]]) -> None:
    """Training (solid) and, where computed, validation (dashed) loss per epoch; one panel per
    loss, whose scales differ."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({label.split("-")[0] for label in curves})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.6 * max(len(kinds), 1), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, rows in curves.items():
            if not rows or label.split("-")[0] != kind:
                continue
            epochs = [r["epoch"] for r in rows]
            line, = ax.semilogy(epochs, [r["train"] for r in rows], lw=1, label=f"{label} train")
            if any(math.isfinite(r["val"]) for r in rows):
                ax.semilogy(epochs, [r["val"] for r in rows], "--", lw=1, color=line.get_color(), label=f"{label} val")
        ax.set_title({"lz": "L_z", "lx": "L_x", "lxp": "L_x,p"}.get(kind, kind))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(path: Path, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.5))
    labels = [row_label(r) for r in rows]
    means = [r["e_abs"]["mean"] for r in rows]
    stds = [r["e_abs"]["std"] for r in rows]
    colours = {"lz": "#777", "lx": "#3a7", "lxp": "#37a"}
    ax.bar(labels, means, yerr=stds, capsize=4, color=[colours.get(r["loss"], "#999") for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("relative error (code metric, non-squared)")
    ax.tick_params(axis="x", labelrotation=30 if len(rows) > 4 else 0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_error_curves(path: Path, rows: list[dict]) -> None:
    """Test error of the snapshots vs epoch, mean over seeds, one line per (loss, size)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        points = [(c["epoch"], c["e_abs"]["mean"]) for c in r.get("curve", []) if c["e_abs"]["mean"] is not None]
        if points:
            ax.semilogy(*zip(*points), "o-", ms=3, lw=1.2, label=row_label(r))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (code metric), mean over seeds")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row_label(row: dict) -> str:
    return f"{row['loss']} e{row['equivalent_data']}"


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


@dataclass
class Row:
    """One (loss, size) row to score: every seed's selected model and its snapshots."""

    members: list
    selected: list                 # one model per seed
    snapshots: list                # (seed index, epoch, model)
    key: str = ""                  # fingerprint of the models and the test set (the cache's key)
    cached: tuple | None = None    # (selected, points) scored before under that key

    @property
    def name(self) -> str:
        """<loss>-e<size>: the name of the row's cache file."""
        return f"{self.members[0].loss}-e{self.members[0].size}"

    def work(self, steps: int, trajectories: int, snapshot_trajectories: int) -> int:
        """Trajectory steps (one RK4 step of one model on one test trajectory) of the row's rollouts."""
        return steps * (len(self.selected) * trajectories + len(self.snapshots) * snapshot_trajectories)


def row_models(members, attrs, run_dir: Path, latent_cfg) -> Row:
    from hpcsur.learn.stages import latent_model, load_latent, run_meta
    from hpcsur.learn.train import load_snapshots

    selected, snapshots = [], []
    for i, run in enumerate(members):
        selected.append(load_latent(attrs, run_dir, latent_cfg, run))
        for epoch, state in load_snapshots(run_dir / "latent" / run.name, run_meta(attrs, latent_cfg, run)):
            snapshots.append((i, epoch, latent_model(attrs, latent_cfg, state)))
    return Row(members, selected, snapshots)


def fingerprint(models: list, z0: np.ndarray, t: np.ndarray, substeps: int, snapshot_trajectories: int) -> str:
    """sha256 of every model's weights and buffers, the initial states, the times and the step settings:
    a cached row is reused only for exactly the same rollouts."""
    h = hashlib.sha256()
    for model in models:
        for name, value in model.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().cpu().double().numpy().tobytes())
    for array in (z0, t):
        h.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    h.update(f"{substeps} {snapshot_trajectories}".encode())
    return h.hexdigest()


def read_row(path: Path, key: str):
    """The scores of a row evaluated before with the same fingerprint, else None."""
    if not path.exists():
        return None
    try:                                 # np.load never unpickles; the zip's CRC-32s catch a damaged file
        with np.load(path) as cached:
            if str(cached["key"]) != key:
                return None
            selected = [(float(q), float(a), pred) for q, a, pred in zip(cached["e_sq"], cached["e_abs"],
                                                                           cached["predictions"])]
            return selected, json.loads(str(cached["points"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("evaluate: %s is unreadable (%s); scoring the row again", path, err)
        return None


def write_row(path: Path, key: str, selected, points) -> None:
    """Keep a scored row (atomically: a stopped evaluate leaves either the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, key=key, e_sq=[e[0] for e in selected], e_abs=[e[1] for e in selected],
             predictions=np.stack([e[2] for e in selected]), points=json.dumps(points))
    tmp.replace(path)


def score_row(row: Row, z_true, t, substeps: int, n_obs: int, snapshot_trajectories: int, progress=None):
    """Every seed's selected model rolled out together on all test trajectories, and all their snapshots on the
    first ``snapshot_trajectories``: per seed (e_sq, e_abs, prediction of z*) of the selected model and the
    snapshots' [{epoch, e_sq, e_abs}]. ``progress`` counts trajectory steps."""
    members = row.members
    log.info("evaluate: %s e%s: %d seeds on %d test trajectories, %d snapshots on %d, %d RK4 steps",
             members[0].loss, members[0].size, len(row.selected), z_true.shape[1], len(row.snapshots),
             snapshot_trajectories, (len(t) - 1) * substeps)
    selected = []
    for pred in rollout_many(row.selected, z_true, t, substeps, progress):
        e_sq, e_abs = (float(np.mean(e)) for e in trajectory_errors(pred[..., :n_obs], z_true[..., :n_obs]))
        selected.append((e_sq, e_abs, pred[..., :n_obs]))
    points = [[] for _ in members]
    if row.snapshots:
        truth = z_true[:, :snapshot_trajectories]
        preds = rollout_many([m for _, _, m in row.snapshots], truth, t, substeps, progress)
        for (i, epoch, _), pred in zip(row.snapshots, preds):
            e_sq, e_abs = (float(np.mean(e)) for e in trajectory_errors(pred[..., :n_obs], truth[..., :n_obs]))
            points[i].append({"epoch": epoch, "e_sq": e_sq, "e_abs": e_abs})
    return selected, points


def seed_disagreement(predictions: list[np.ndarray], z_true: np.ndarray) -> dict | None:
    """e_abs of every seed's rollout against the *last* seed's, on the scored points of the truth: the reference
    code's ``test()`` as written (the method notes: it scores every fold against the last fold's prediction, not
    the truth). It measures how much the seeds agree, not how right they are; reported beside e_abs to read the
    paper's numbers by. None for fewer than two seeds."""
    if len(predictions) < 2:
        return None
    last = np.where(np.isfinite(z_true), predictions[-1], np.nan)
    per_seed = [float(np.mean(trajectory_errors(pred, last)[1])) for pred in predictions[:-1]]
    return {"against": "the last seed's prediction (the reference's test() as written)",
            "e_abs": summarise(per_seed), "per_seed": per_seed}


def velocity_error(models: list, z: np.ndarray, jf: np.ndarray, n_obs: int) -> dict | None:
    """How well each model's latent velocity field g(z) matches the exact one, J f, on frames (z, jf) that have all
    forces: per latent dimension k the relative rms error e_k = sqrt(mean_frames (g_k - (J f)_k)^2) / std(J f)_k,
    then per model the mean of e_k over the observables and the median over the closure dimensions, summarised
    over the models (seeds). None without such frames. Unlike the rollout error this does not depend on how the
    errors of a field compound along a trajectory, so it separates what a loss fits from how a rollout uses it."""
    import torch

    keep = np.isfinite(jf).all(-1) & np.isfinite(z).all(-1)
    if keep.sum() < 2:
        return None
    z, jf = z[keep], jf[keep]
    scale = jf.std(0, ddof=1)
    scale[scale == 0] = 1.0
    obs, closure = [], []
    with torch.no_grad():
        for model in models:
            g = model.double().eval()(torch.from_numpy(np.ascontiguousarray(z))).numpy()
            e = np.sqrt(((g - jf) ** 2).mean(0)) / scale
            obs.append(float(e[:n_obs].mean()))
            closure.append(float(np.median(e[n_obs:])) if e.size > n_obs else float("nan"))
    return {"frames": int(keep.sum()), "observables": summarise(obs), "closure_median": summarise(closure)}


def test_velocities(encoded: str, trajs: list[int], frames: int | None) -> np.ndarray | None:
    """J f of the test trajectories, (F, T, d) as :func:`hpcsur.learn.rollout.test_paths`' z, or None when the
    store has no J f."""
    dataset = open_dataset(encoded)
    if "jf" not in dataset.schema.arrays():
        return None
    F = dataset.frames_per_traj if frames is None else min(frames, dataset.frames_per_traj)
    return np.stack([dataset.frames(t, 0, F, ["jf"])["jf"] for t in trajs], axis=1)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _read_curve(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def force_evaluations(run, attrs: dict, latent_cfg, n_validation_frames: int) -> dict:
    """The force-cost ledger of one latent model: labelled coordinates x frames, for training and for
    the validation loss when the protocol uses it (rollout selection needs no forces)."""
    layout = attrs["layout"]
    n_state = int(layout["block_size"]) * int(layout["n_blocks"])
    per_frame = int(attrs["k"]) * int(layout["block_size"]) if run.loss == "lxp" else n_state
    uses_val = latent_cfg.schedule_on == "val" or latent_cfg.select == "val_loss"
    train, val = run.frames * per_frame, (n_validation_frames * per_frame if uses_val else 0)
    return {"per_frame": per_frame, "train_frames": run.frames, "train": train,
            "validation_frames": n_validation_frames if uses_val else 0, "validation": val, "total": train + val}


def _curve(per_seed: list[list[dict]]) -> list[dict]:
    """Mean over seeds of the snapshot errors at the epochs every seed has."""
    common = sorted(set.intersection(*[{p["epoch"] for p in pts} for pts in per_seed])) if per_seed else []
    out = []
    for epoch in common:
        at = [next(p for p in pts if p["epoch"] == epoch) for pts in per_seed]
        out.append({"epoch": epoch, "e_abs": summarise([p["e_abs"] for p in at]),
                    "e_sq": summarise([p["e_sq"] for p in at])})
    return out


def evaluate_run(encoded: str, run_dir: Path, split_cfg, latent_cfg, eval_cfg, losses=None, seeds=None,
                 sizes=None) -> dict:
    """Roll out every trained (loss, size, seed) model on the test trajectories, and every snapshot
    for the error-vs-epoch curves; write report.json and plots."""
    from hpcsur.learn.data import split_of
    from hpcsur.learn.diagnostics import encoding_diagnostics
    from hpcsur.learn.stages import latent_runs

    run_dir = Path(run_dir)
    dataset = open_dataset(encoded)
    attrs = dataset.attrs
    split = split_of(dataset, split_cfg.validation, split_cfg.test, attrs.get("kept_frames"))
    n_obs = int(attrs["n_obs"])
    names = list(attrs.get("observables") or [f"z{i}" for i in range(n_obs)])
    t, z_true, trajs = test_paths(encoded, split, eval_cfg.trajectories, eval_cfg.frames)
    jf_true = test_velocities(encoded, trajs, eval_cfg.frames)
    runs = latent_runs(latent_cfg, attrs, split, losses, seeds, sizes)
    n_val = split.kept("validation")
    groups: dict[tuple[str, int], list] = {}                          # (loss, size) -> its seeds' runs
    for run in runs:
        groups.setdefault((run.loss, run.size), []).append(run)
    rows, runs_out, shown, curves = [], [], {}, {}
    steps, n_test = (len(t) - 1) * eval_cfg.substeps, z_true.shape[1]
    n_snap = min(eval_cfg.snapshot_trajectories or n_test, n_test)
    cache_dir = run_dir / "evaluate"
    todo = [row_models(members, attrs, run_dir, latent_cfg) for members in groups.values()]
    for row in todo:
        row.key = fingerprint(row.selected + [m for _, _, m in row.snapshots], z_true[0], t, eval_cfg.substeps,
                              n_snap)
        row.cached = read_row(cache_dir / f"{row.name}.npz", row.key)
    progress = Progress(sum(row.work(steps, n_test, n_snap) for row in todo), unit="trajectory steps",
                        label="evaluate")
    progress.resumed(sum(row.work(steps, n_test, n_snap) for row in todo if row.cached is not None))
    for row in todo:
        members, loss, size = row.members, row.members[0].loss, row.members[0].size
        if row.cached is not None:
            log.info("evaluate: %s e%s: scored before with the same models and test set (%s)", loss, size,
                     cache_dir / f"{row.name}.npz")
            selected, points = row.cached
        else:
            selected, points = score_row(row, z_true, t, eval_cfg.substeps, n_obs, n_snap, progress)
            write_row(cache_dir / f"{row.name}.npz", row.key, selected, points)
        done = [_read_json(run_dir / "latent" / run.name / "done.json") for run in members]
        for run, (e_sq, e_abs, _), pts, info in zip(members, selected, points, done):
            runs_out.append({"loss": loss, "equivalent_data": size, "seed": run.seed, "draw": run.draw,
                             "train_frames": run.frames, "e_sq": e_sq, "e_abs": e_abs,
                             "selected_epoch": info.get("best_epoch"), "seconds": info.get("seconds"),
                             "code": info.get("code"), "snapshots": pts})
            curves[run.name] = _read_curve(run_dir / "latent" / run.name / "curve.csv")
        if loss not in {key.split(" ")[0] for key in shown}:  # one model per loss in the trajectory plot
            shown[f"{loss} e{size} (seed {members[0].seed})"] = selected[0][2]
        rows.append({"loss": loss, "equivalent_data": size, "train_frames": members[0].frames,
                     "p": float(attrs["p_eff"]) if loss == "lxp" else 1.0,
                     "trained_with": sorted({(i.get("code") or {}).get("commit") or "unknown" for i in done}),
                     "force_evaluations": force_evaluations(members[0], attrs, latent_cfg, n_val),
                     "e_abs": summarise([e[1] for e in selected]), "e_sq": summarise([e[0] for e in selected]),
                     "seed_disagreement": seed_disagreement([e[2] for e in selected], z_true[..., :n_obs]),
                     "velocity_error": None if jf_true is None else velocity_error(
                         row.selected, z_true.reshape(-1, z_true.shape[-1]), jf_true.reshape(-1, jf_true.shape[-1]),
                         n_obs),
                     "seconds": [i.get("seconds") for i in done], "curve": _curve([p for p in points if p])})
    progress.close()
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    files = {"observables": plots / "observables.png", "loss_curves": plots / "loss_curves.png",
             "errors": plots / "errors.png", "error_curves": plots / "error_curves.png"}
    scale = np.asarray(attrs.get("observable_scale") or 1.0)         # plot phi* = z* / s in its own units
    plot_observables(files["observables"], t, z_true[..., :n_obs] / scale,
                     {k: v / scale for k, v in shown.items()}, names[:n_obs])
    plot_curves(files["loss_curves"], curves)
    plot_errors(files["errors"], rows)
    plot_error_curves(files["error_curves"], rows)
    largest = max(r.frames for r in runs)
    report = {"encoded": str(encoded), "test_trajectories": trajs, "frames": len(t), "substeps": eval_cfg.substeps,
              "snapshot_trajectories": n_snap, "p_eff": float(attrs["p_eff"]), "model": latent_cfg.model,
              "rows": rows, "runs": runs_out,
              "autoencoder": encoding_diagnostics(encoded, split.first_kept("train", largest)),
              "plots": {k: str(v) for k, v in files.items()}}
    write_report(run_dir / "report.json", report)
    return report
