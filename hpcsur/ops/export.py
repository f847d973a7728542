"""``hpcsur export`` and ``hpcsur predict``: a job's trained model as one file, and its use on new states.

:func:`export_surrogate` picks one trained latent model of a job (its loss, size and seed), puts it with the job's
autoencoder into a :class:`hpcsur.learn.surrogate.Surrogate` together with the facts it needs (the system, its
parameters and layout, the observables, the data's frame interval and the evaluation's RK4 substeps) and where it
came from (job, hashes, commit, the model's evaluation numbers), and writes it. :func:`predict` rolls a surrogate
out from microscopic states given as ``.npy`` / ``.npz`` files or ``STORE:TRAJ[:FRAME]`` and writes the latent
trajectories and the observables (``.npz`` or ``.zarr``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcsur import store as zstore
from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec
from hpcsur.ops.stage_table import encoded_path
from hpcsur.provenance import stamp


def choose_run(spec: JobSpec, loss: str | None, seed: int | None, size: int | None):
    """The (loss, size, seed) to export: the given ones, else L_x,p when trained (the product's loss), the first
    seed and the largest size of that loss."""
    latent = spec.require("latent", "export")
    loss = loss or ("lxp" if "lxp" in latent.losses else latent.losses[0])
    if loss not in latent.losses:
        raise InputError(f"--loss {loss}: not in [latent] losses = {latent.losses}")
    sizes = latent.sizes_for(loss)
    size = max(sizes) if size is None else size
    if size not in sizes:
        raise InputError(f"--size {size}: not an equivalent_data size of {loss} ({sizes})")
    seed = latent.seeds[0] if seed is None else seed
    if seed not in latent.seeds:
        raise InputError(f"--seed {seed}: not in [latent] seeds = {latent.seeds}")
    return loss, size, seed


def export_surrogate(spec: JobSpec, output: str | Path, loss: str | None = None, seed: int | None = None,
                     size: int | None = None) -> Path:
    """Write the export of one trained model of ``spec`` to ``output``; returns the path."""
    from hpcsur.learn.data import split_of
    from hpcsur.learn.stages import latent_runs, load_autoencoder, load_latent
    from hpcsur.learn.surrogate import FORMAT, VERSION, Surrogate

    loss, size, seed = choose_run(spec, loss, seed, size)
    encoded = encoded_path(spec)
    if not zstore.exists(encoded):
        raise InputError(f"{encoded}: no encoded store; run the job (`hpcsur run {spec.source}`) first")
    dataset = zstore.open_dataset(encoded)
    attrs = dataset.attrs
    split = split_of(dataset, spec.split.validation, spec.split.test, attrs.get("kept_frames"))
    run = next(r for r in latent_runs(spec.latent, attrs, split, [loss], [seed], [size]))
    run_dir = Path(spec.run_dir)
    if not (run_dir / "latent" / run.name / "done.json").exists():
        raise InputError(f"{run_dir / 'latent' / run.name}: this model has not finished training; run "
                         f"`hpcsur run {spec.source}` first")
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    scored = next((r for r in report.get("runs", []) if (r["loss"], r["equivalent_data"], r["seed"]) ==
                   (loss, size, seed)), None)
    if scored is None:
        raise InputError(f"{report_path}: has no evaluation of {run.name}; run `hpcsur evaluate {spec.source}` first")
    source = zstore.open_dataset(spec.store.path).attrs if zstore.exists(spec.store.path) else attrs
    home = spec                                   # whose run folder holds the autoencoder
    if spec.insitu is not None:
        from hpcsur.ops.insitu import autoencoder_job

        home = autoencoder_job(spec)
    autoencoder = load_autoencoder(home.store.path, Path(home.run_dir), home.autoencoder)
    latent = load_latent(attrs, run_dir, spec.latent, run)
    t = dataset.frames(0, 0, 2, ["t"])["t"]
    manifest = {
        "format": FORMAT, "version": VERSION, "system": spec.kind, "params": source.get("params", {}),
        "observable_attrs": {"system": source["system"], "params": source.get("params", {}),
                             "layout": source.get("layout", {})},
        "observables": list(attrs.get("observables") or []), "layout": source.get("layout", {}),
        "frame_dt": float(t[1] - t[0]), "substeps": int(spec.evaluate.substeps),
        "autoencoder": {**autoencoder.shape.__dict__, "hidden": list(autoencoder.shape.hidden)},
        "latent": latent.shape.to_dict(),
        "source": {"job": spec.name, "spec": spec.source, "spec_hash": spec.spec_hash(),
                   "data_hash": spec.data_hash(), "code": stamp(), "loss": loss, "equivalent_data": size,
                   "seed": seed, "train_frames": run.frames, "right_inverse": attrs.get("right_inverse", "pinv")},
        "evaluation": {"e_abs": scored["e_abs"], "e_sq": scored["e_sq"], "test_trajectories":
                       report.get("test_trajectories"), "frames": report.get("frames"),
                       "substeps": report.get("substeps")},
    }
    return Surrogate(autoencoder, latent, manifest).save(output)


# ----------------------------------------------------------------------------- predict
def read_states(text: str) -> tuple[np.ndarray, list[str]]:
    """Initial states from ``text``: an ``.npy`` / ``.npz`` file (one state (N,) or many (B, N); an npz's array
    ``x`` or its only array), or ``STORE:TRAJ[:FRAME]`` (frame 0 by default) of a trajectory store. Returns
    (states (B, N), a label per state)."""
    path = Path(text)
    if path.suffix in (".npy", ".npz") and path.is_file():
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InputError(f"--initial {text}: not a plain numpy array file ({err})") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = loaded.files
                if "x" not in names and len(names) != 1:
                    raise InputError(f"--initial {text}: holds arrays {names}; name the states 'x' or keep one array")
                states = np.array(loaded["x" if "x" in names else names[0]])
        else:
            states = np.asarray(loaded)
        states = np.atleast_2d(states) if states.ndim == 1 else states
        return states, [f"{path.name}[{i}]" for i in range(len(states))]
    store, _, rest = text.partition(":") if ":" in text and not Path(text).exists() else (text, "", "")
    parts = rest.split(":") if rest else []
    if not parts or len(parts) > 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise InputError(f"--initial {text}: give an .npy / .npz file or STORE:TRAJ[:FRAME]")
    if not zstore.exists(store):
        raise InputError(f"--initial {text}: {store} is not a store")
    dataset = zstore.open_dataset(store)
    if "x" not in dataset.schema.arrays():
        raise InputError(f"--initial {text}: {store} holds no microscopic states (an encoded store?)")
    traj, frame = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    if not 0 <= traj < dataset.n_traj:
        raise InputError(f"--initial {text}: trajectory {traj} is out of range; allowed: 0 <= TRAJ < {dataset.n_traj}")
    if not 0 <= frame < dataset.frames_per_traj:
        raise InputError(f"--initial {text}: frame {frame} is out of range; allowed: 0 <= FRAME < "
                         f"{dataset.frames_per_traj}")
    x = dataset.frames(traj, frame, frame + 1, ["x"])["x"]
    return np.asarray(x, dtype=np.float64), [f"traj {traj} frame {frame}"]


def prediction_times(total: float, every: float) -> np.ndarray:
    """0, every, 2 every, ... up to ``total`` (and ``total`` itself when it is not a multiple)."""
    if not (np.isfinite(total) and total > 0):
        raise InputError(f"--time {total!r} is not allowed; give a time > 0")
    n = int(np.floor(total / every + 1e-9))
    times = every * np.arange(n + 1)
    return times if abs(times[-1] - total) <= 1e-9 * total else np.append(times, total)


def write_prediction(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> Path:
    """``.npz`` (numpy) or ``.zarr`` (a zarr v3 group, one array each); written to a temporary name first."""
    path = Path(path)
    if path.suffix not in (".npz", ".zarr"):
        raise InputError(f"--output {path}: give a file name ending in .npz or .zarr")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, **arrays, attrs=np.array(json.dumps(attrs)))
        tmp.replace(path)
        return path
    import shutil

    import zarr

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, value in arrays.items():
        group.create_array(name, data=np.ascontiguousarray(value))
    group.attrs.update(attrs)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def plot_prediction(path: Path, times: np.ndarray, obs: np.ndarray, names: list[str], labels: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[0][i]
        for b, label in enumerate(labels[:8]):
            ax.plot(times, obs[:, b, i], lw=1.4, label=label)
        ax.set_xlabel("t")
        ax.set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
