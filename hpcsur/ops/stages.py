"""Job spec -> learning stages: the glue between a validated spec and :mod:`hpcsur.learn`.

Every stage saves the resolved spec next to its outputs (``<run_dir>/spec.toml``), checks the
sections it needs (one error line naming the missing table), and reports on rank 0 only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hpcsur.errors import InputError
from hpcsur.ops import provenance
from hpcsur.ops.jobspec import JobSpec, dump_job
from hpcsur.ops.stage_table import encoded_path  # noqa: F401  (also for the CLI)

log = logging.getLogger("hpcsur.stages")


def save_resolved_spec(spec: JobSpec, rank: int = 0) -> Path:
    """Write the resolved spec (defaults filled in) to ``<run_dir>/spec.toml`` (rank 0)."""
    path = Path(spec.run_dir) / "spec.toml"
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".spec.toml.tmp")
        tmp.write_text(dump_job(spec))
        tmp.replace(path)
    return path


def _store_complete(path: str) -> None:
    from hpcsur import store

    done = store.progress(path)
    if not done.exists:
        raise InputError(f"store {path}: does not exist; run `hpcsur generate` first")
    if not done.complete:
        raise InputError(f"store {path}: {done.missing} shard(s) incomplete; run `hpcsur generate --resume` first")


def _not_in_situ(spec: JobSpec, stage: str) -> None:
    if spec.insitu is not None:
        raise InputError(f"{stage}: {spec.source} is an in-situ job: its generate encodes every frame with the "
                         f"autoencoder of {spec.insitu.autoencoder} (`hpcsur train-ae {spec.insitu.autoencoder}` "
                         "trains it) and stores no states")


def _backend(spec: JobSpec, name: str | None):
    from hpcsur.learn.distributed import init_backend

    return init_backend(name or spec.train.backend)


def train_ae(spec: JobSpec, resume: bool = False, backend: str | None = None, progress: bool = True) -> dict:
    from hpcsur.learn.stages import train_autoencoder

    ae = spec.require("autoencoder", "train-ae")
    _not_in_situ(spec, "train-ae")
    _store_complete(spec.store.path)
    out = Path(spec.run_dir) / "autoencoder"
    if not resume and (out / "checkpoint.pt").exists():
        raise InputError(f"{out}: an autoencoder run exists; pass --resume to continue or finish it")
    provenance.refuse_if_stale(spec, "train-ae")
    b = _backend(spec, backend)
    try:
        save_resolved_spec(spec, b.rank)
        if b.rank == 0:
            provenance.record_stage(spec, "train-ae")
        return train_autoencoder(spec.store.path, Path(spec.run_dir), spec.split, ae, spec.train, b,
                                 resume=resume, show_progress=progress)
    finally:
        b.shutdown()


def encode(spec: JobSpec, comm, resume: bool = False, progress: bool = True) -> dict:
    from hpcsur.learn.encode import encode_store
    from hpcsur.learn.stages import load_autoencoder, use_threads

    ae = spec.require("autoencoder", "encode")
    _not_in_situ(spec, "encode")
    _store_complete(spec.store.path)
    provenance.refuse_if_stale(spec, "train-ae")
    provenance.refuse_if_stale(spec, "encode")
    use_threads(spec.train)
    save_resolved_spec(spec, comm.Get_rank())
    if comm.Get_rank() == 0:
        provenance.record_stage(spec, "encode")
    model = load_autoencoder(spec.store.path, Path(spec.run_dir), ae)
    return encode_store(spec.store.path, encoded_path(spec), model, comm, resume=resume, show_progress=progress,
                        right_inverse=ae.right_inverse, observable_floor=spec.split.observable_floor)


def train_latent(spec: JobSpec, losses=None, seeds=None, resume: bool = False, backend: str | None = None,
                 progress: bool = True, sizes=None) -> list[dict]:
    from hpcsur import store
    from hpcsur.learn.stages import train_latent as fit_latent

    latent = spec.require("latent", "train-latent")
    if not store.exists(encoded_path(spec)):
        raise InputError(f"store {encoded_path(spec)}: does not exist; run `hpcsur encode` first")
    for stage in ("encode", "train-latent"):
        provenance.refuse_if_stale(spec, stage)
    b = _backend(spec, backend)
    try:
        save_resolved_spec(spec, b.rank)
        return fit_latent(encoded_path(spec), Path(spec.run_dir), spec.split, latent, spec.train, b,
                          losses=losses, seeds=seeds, resume=resume, show_progress=progress,
                          substeps=spec.evaluate.substeps, sizes=sizes,
                          record=lambda run: provenance.run_inputs(spec, run.loss, run.size, run.seed))
    finally:
        b.shutdown()


def evaluate(spec: JobSpec, losses=None, seeds=None) -> dict:
    """Score every trained model; write report.json, the plots and the results claim (only for a
    complete evaluation: all losses, sizes and seeds of the spec)."""
    import torch

    from hpcsur import store

    from hpcsur.learn.evaluate import evaluate_run
    from hpcsur.ops.results import write_results

    latent = spec.require("latent", "evaluate")
    spec.require("autoencoder", "evaluate")
    torch.set_num_threads(spec.evaluate.threads or len(os.sched_getaffinity(0)))   # it runs alone
    if not store.exists(encoded_path(spec)):
        raise InputError(f"store {encoded_path(spec)}: does not exist; run `hpcsur encode` first")
    for stage in ("encode", "train-latent"):
        provenance.refuse_if_stale(spec, stage)
    save_resolved_spec(spec)
    provenance.record_stage(spec, "evaluate")
    report = evaluate_run(encoded_path(spec), Path(spec.run_dir), spec.split, latent, spec.evaluate,
                          losses=losses, seeds=seeds)
    if losses is None and seeds is None:
        report["results"] = str(write_results(spec, report))
    return report


JACOBIAN_CHUNK_BYTES = 256 << 20    # diagnose: the encoder Jacobians (float64) it holds at a time


def diagnose(spec: JobSpec, frames: int = 2000) -> dict:
    """Encoder diagnostics of a job's trained autoencoder (:mod:`hpcsur.learn.diagnostics`) on
    ``frames`` training frames spread evenly over the training trajectories, and of its encoding
    over the frames its largest latent run trains on; written to <run_dir>/autoencoder/diagnostics.json.

    An in-situ job stores no states: its autoencoder's Jacobian is looked at on the stored frames of the
    job that trained it ([insitu] autoencoder), and the encoding on the in-situ store (label noise and the
    force share outside row(J) need frames with all forces: ``[labels] full = true``, ``full_every``)."""
    import json

    import numpy as np

    from hpcsur import store
    from hpcsur.learn.data import frame_moments, split_of, store_cuts
    from hpcsur.learn.diagnostics import encoding_diagnostics, jacobian_diagnostics
    from hpcsur.learn.stages import latent_runs, load_autoencoder, use_threads

    ae = spec.require("autoencoder", "diagnose")
    if spec.insitu is not None:
        from hpcsur.ops.insitu import autoencoder_job
        home = autoencoder_job(spec)
    else:
        home = spec
    _store_complete(home.store.path)
    use_threads(spec.train)
    dataset = store.open_dataset(home.store.path)
    split = split_of(dataset, home.split.validation, home.split.test, store_cuts(dataset, home.split.observable_floor))
    g0, g1 = split.frames("train")
    F = dataset.frames_per_traj
    in_use = np.concatenate([np.arange(t * F, t * F + (F if split.cuts is None else split.cuts[t]))
                             for t in split.trajectories("train")])
    picks = in_use[np.unique(np.linspace(0, in_use.size - 1, min(frames, in_use.size)).astype(np.int64))]
    per_chunk = max(1, JACOBIAN_CHUNK_BYTES // (8 * ae.latent_dim * dataset.schema.n_state))

    def chunks():                                          # J of per_chunk frames at a time: memory bounded in N
        for c in range(0, picks.size, per_chunk):
            yield np.stack([dataset.global_frames(int(g), int(g) + 1, ["x"])["x"][0] for g in picks[c:c + per_chunk]])

    _, x_std, _ = frame_moments(home.store.path, "x", (g0, g1), cuts=split.cuts)
    out = {"job": spec.name, "autoencoder": {"recipe": ae.recipe, "scaling": ae.scaling,
                                             "lambda_cond": ae.lambda_cond, "lambda_coherence": ae.lambda_coherence,
                                             "lambda_tangent": ae.lambda_tangent},
           "jacobian": jacobian_diagnostics(load_autoencoder(home.store.path, Path(home.run_dir), ae), chunks(), x_std)}
    if spec.insitu is not None:
        out["jacobian"]["on_store"] = home.store.path
    if spec.latent is not None and store.exists(encoded_path(spec)):
        _store_complete(encoded_path(spec))
        enc = store.open_dataset(encoded_path(spec))
        enc_split = split_of(enc, spec.split.validation, spec.split.test, enc.attrs.get("kept_frames"))
        runs = latent_runs(spec.latent, enc.attrs, enc_split)
        out["encoding"] = encoding_diagnostics(encoded_path(spec),
                                               enc_split.first_kept("train", max(r.frames for r in runs)))
    path = Path(spec.run_dir) / "autoencoder" / "diagnostics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    out["file"] = str(path)
    return out


def format_table(report: dict) -> str:
    """The errors of a report as a small text table (mean ± sample std over seeds) with the force
    evaluations each model was trained (and validated) on."""
    lines = [f"{'loss':<6} {'equiv.':>7} {'frames':>7} {'force evals':>12} {'e (code, non-squared)':>24} "
             f"{'e (Eq. 43, squared)':>24}  seeds", "-" * 96]
    for row in report["rows"]:
        sq, ab = row["e_sq"], row["e_abs"]
        lines.append(f"{row['loss']:<6} {row['equivalent_data']:>7} {row['train_frames']:>7} "
                     f"{row['force_evaluations']['total']:>12,} {_pm(ab):>24} {_pm(sq):>24}  {len(sq['values'])}")
    return "\n".join(lines)


def _pm(stat: dict) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "diverged"
    return f"{mean:.3e} ± {std:.1e}"
