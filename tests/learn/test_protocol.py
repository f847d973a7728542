"""The training protocol: what the learning-rate scheduler watches, which model is kept, per-seed
index draws, and the force-cost ledger."""
import csv
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import HPCSUR, PP_JOB, write_job
from hpcsur import store as zstore
from hpcsur.errors import InputError
from hpcsur.learn.distributed import init_backend
from hpcsur.learn.data import split_of
from hpcsur.learn.rollout import rollout_many, trajectory_errors
from hpcsur.learn.rollout import test_paths as read_test_paths   # (not a pytest test)
from hpcsur.learn.stages import latent_model, latent_runs, run_meta
from hpcsur.learn.train import BEST, CHECKPOINT, FitConfig, fit, load_checkpoint, load_snapshots
from hpcsur.ops.jobspec import load_job
from hpcsur.ops.stage_table import encoded_path


class Targets:
    """A data source of scalar targets: `steps` batches per epoch of one target each."""

    def __init__(self, target: float, steps: int = 4):
        self.target, self.n = target, steps

    def steps(self, epoch):
        return self.n

    def batches(self, epoch, skip=0):
        for _ in range(skip, self.n):
            yield {"t": torch.full((8,), self.target)}

    def all_frames(self):
        yield {"t": torch.full((8,), self.target)}


class Quadratic(torch.nn.Module):
    """loss = mean (w - t)^2: training pulls w from 5 towards 0, so the validation loss against t = 10
    rises every epoch while the training loss falls."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(5.0, dtype=torch.float64))

    def forward(self, batch):
        return ((self.w - batch["t"].double()) ** 2).mean(), {}


def train_toy(tmp_path, **protocol):
    torch.manual_seed(0)
    module = Quadratic()
    config = FitConfig(epochs=8, lr=0.05, patience=1, factor=0.5, checkpoint_minutes=0, snapshot_every=2, score_every=2,
                       **protocol)
    summary = fit(module, Targets(0.0), Targets(10.0), init_backend("none"), tmp_path, config, {"toy": 1},
                  show_progress=False, scorer=lambda m: abs(float(m.w.detach()) - 4.1))
    curve = load_checkpoint(tmp_path / CHECKPOINT, {"toy": 1})["curve"]
    best = load_checkpoint(tmp_path / BEST, {"toy": 1})["model"]["w"]
    return summary, curve, float(best)


def test_the_scheduler_watches_what_schedule_on_names(tmp_path):
    _, on_train, _ = train_toy(tmp_path / "train", schedule_on="train", select="last")
    _, on_val, _ = train_toy(tmp_path / "val", schedule_on="val", select="last")
    _, fixed, _ = train_toy(tmp_path / "none", schedule_on="none", select="last")
    assert [r["lr"] for r in fixed] == [0.05] * 8
    assert [r["lr"] for r in on_train] == [0.05] * 8          # the training loss improves every epoch
    assert on_val[-1]["lr"] < 0.05 / 4                       # the validation loss never does
    assert all(np.isnan(r["val"]) for r in on_train) and all(np.isfinite(r["val"]) for r in on_val)


def test_the_kept_model_is_the_one_select_names(tmp_path):
    summary, curve, last = train_toy(tmp_path / "last", schedule_on="none", select="last")
    final = float(load_checkpoint(tmp_path / "last" / CHECKPOINT, {"toy": 1})["model"]["w"])
    assert last == final and summary["best_epoch"] == 7
    summary, curve, by_val = train_toy(tmp_path / "val", schedule_on="none", select="val_loss")
    assert summary["best_epoch"] == 0 and by_val > final    # the earliest epoch is closest to the validation target
    summary, curve, by_score = train_toy(tmp_path / "score", schedule_on="none", select="score")
    scored = [(r["score"], r["epoch"]) for r in curve if np.isfinite(r["score"])]
    assert [e for _, e in scored] == [1, 3, 5, 7] and min(scored)[1] == summary["best_epoch"]
    assert by_score not in (last, by_val)
    # snapshots every 2 epochs, the last one being the final model
    snaps = load_snapshots(tmp_path / "score", {"toy": 1})
    assert [e for e, _ in snaps] == [2, 4, 6, 8] and float(snaps[-1][1]["w"]) == final


def test_a_foreign_snapshot_is_refused(tmp_path):
    train_toy(tmp_path, schedule_on="none", select="last")
    with pytest.raises(InputError, match="was written for toy"):
        load_snapshots(tmp_path, {"toy": 2})


def test_bad_protocol_values_are_one_line():
    with pytest.raises(InputError, match="schedule_on = 'sometimes' is not allowed"):
        FitConfig(epochs=1, lr=1.0, schedule_on="sometimes")


@pytest.mark.parametrize("edit,message", [
    ("epochs = 2\nbatch = 16", "[latent] schedule_on = 'often' is not allowed"),
    ("seeds = [1]", "[latent] equivalent_data = [60, 60]: give lz at least one size (an integer >= 1), each once"),
    ("seeds = [1]#table", "[latent] equivalent_data has key 'lx', which is not in losses"),
    ("seeds = [1]#missing", "[latent] equivalent_data = {'lz': 60}: give lxp at least one size"),
    ("seeds = [1]#lr", "[latent] lr.lxp = None is not allowed; give a number > 0.0 for every loss"),
    ("seeds = [1]#batch", "[latent] batch.lz = 0 is not allowed; give an integer >= 1 for every loss"),
    ("seeds = [1]#shared", "[latent] activation = 'gelu' is not allowed with model = \"onsagernet_shared\""),
    ("hidden = [8]", "[latent] forcing = true is allowed only with model = \"onsagernet\""),
    ("draws = 2", "[labels] draws = 0 is out of range"),
    ("lambda_cond = 1e-6", "[autoencoder] recipe = 'paper' is not allowed"),
    ("lambda_cond = 1e-6#scale", "[autoencoder] observable_scale has 1 factor(s); allowed: one per observable of "
                                 "predator_prey (2: u_mean, v_mean)"),
    ("lambda_cond = 1e-6#negative", "[autoencoder] observable_scale"),
])
def test_bad_protocol_specs_are_one_line(pp_store, tmp_path, edit, message):
    folder, store = pp_store
    text = PP_JOB.format(store=store, run=tmp_path / "run", hidden=8)
    replacement = {"epochs = 2\nbatch = 16": "epochs = 2\nbatch = 16\nschedule_on = \"often\"",
                   "seeds = [1]": "seeds = [1]\nequivalent_data = [60, 60]",
                   "seeds = [1]#table": "seeds = [1]\nequivalent_data = { lz = 60, lxp = 12, lx = 3 }",
                   "seeds = [1]#missing": "seeds = [1]\nequivalent_data = { lz = 60 }",
                   "seeds = [1]#lr": "seeds = [1]\nequivalent_data = 60\nlr = { lz = 1e-3 }",
                   "seeds = [1]#batch": "seeds = [1]\nequivalent_data = 60\nbatch_ = { lz = 0, lxp = 16 }",
                   "seeds = [1]#shared": "seeds = [1]\nequivalent_data = 60\nmodel = \"onsagernet_shared\"\n"
                                         "activation = \"gelu\"",
                   "hidden = [8]": "hidden = [8]\nmodel = \"onsagernet_ref\"\nforcing = true",
                   "draws = 2": "draws = 0",
                   "lambda_cond = 1e-6": "lambda_cond = 1e-6\nrecipe = \"paper\"",
                   "lambda_cond = 1e-6#scale": "lambda_cond = 1e-6\nobservable_scale = [20.0]",
                   "lambda_cond = 1e-6#negative": "lambda_cond = 1e-6\nobservable_scale = [20.0, -1.0]"}[edit]
    if edit.startswith("seeds = [1]"):
        text = text.replace("equivalent_data = 60\n", "")
    job = tmp_path / "bad.toml"
    text = text.replace(edit.split("#")[0], replacement, 1)
    if edit.endswith("#batch"):
        text = text.replace("batch = 16\n", "").replace("batch_ =", "batch =")
    job.write_text(text)
    res = subprocess.run([HPCSUR, "validate", str(job)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_each_draw_is_its_own_index_set_with_its_own_labels(pp_store):
    """The store holds 2 independent index sets per frame, each labelled with the exact forces there."""
    from hpcsur.parallel.sampling import index_set

    folder, store = pp_store
    ds = zstore.open_dataset(store)
    arrays = ds.global_frames(0, 60, ["idx", "f_partial", "f_full", "traj"])
    idx, fp, ff = arrays["idx"], arrays["f_partial"], arrays["f_full"]
    assert idx.shape[1:] == (2, 5) and fp.shape[1:] == (2, 5, 2)
    assert np.mean(np.any(idx[:, 0] != idx[:, 1], axis=1)) > 0.9
    n = ds.attrs["layout"]["n_blocks"]
    for g in range(60):
        for draw in range(2):
            cells = idx[g, draw]
            assert np.array_equal(fp[g, draw], np.stack([ff[g][cells], ff[g][n + cells]], axis=1))
            frame = g % ds.frames_per_traj
            assert np.array_equal(cells, index_set(ds.attrs["seed"], int(arrays["traj"][g]), frame, n, 5, draw))


def test_seeds_train_on_their_own_draw_and_validation_free_protocols_cost_no_validation_forces(pp_store, tmp_path):
    folder, store = pp_store
    run = tmp_path / "run"
    text = PP_JOB.format(store=store, run=run, hidden=8).replace("seeds = [1]", "seeds = [1, 2]")
    text = text.replace("epochs = 2\nbatch = 16", "epochs = 4\nbatch = 16\nschedule_on = \"train\"\n"
                        "select = \"val_rollout\"\nselect_every = 2\nsnapshot_every = 2")
    text = text.replace("[output]\n", f"[output]\nresults = \"{tmp_path / 'results'}\"\n")
    job = tmp_path / "proto.toml"
    job.write_text(text)
    for stage in (["train-ae"], ["encode"], ["train-latent", "--loss", "lxp"]):
        res = subprocess.run([HPCSUR, *stage, str(job), "--no-progress", *(["--backend", "none"] if stage[0] != "encode" else [])],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    draws = {}
    for seed in (1, 2):
        folder = run / "latent" / f"lxp-e60-s{seed}"
        meta = torch.load(folder / BEST, weights_only=True)["meta"]
        draws[seed] = meta["draw"]
        done = json.loads((folder / "done.json").read_text())
        with open(folder / "curve.csv") as fh:
            rows = list(csv.DictReader(fh))
        scores = {int(r["epoch"]): float(r["score"]) for r in rows if r["score"] != "nan"}
        assert sorted(scores) == [1, 3] and done["select"] == "score"
        assert done["best_epoch"] == min(scores, key=scores.get)
    assert draws == {1: 1, 2: 0}
    res = subprocess.run([HPCSUR, "evaluate", str(job), "--loss", "lxp"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "results").exists()   # a partial evaluation makes no results claim
    row = json.loads((run / "report.json").read_text())["rows"][0]
    assert row["force_evaluations"] == {"per_frame": 10, "train_frames": 240, "train": 2400,
                                        "validation_frames": 0, "validation": 0, "total": 2400}
    assert [p["epoch"] for p in row["curve"]] == [2, 4]
    # each scored row is kept (run/evaluate/<loss>-e<size>.npz, keyed by the models' weights and the test set): a
    # stopped or repeated evaluate reuses it, the same numbers ...
    cache = run / "evaluate" / "lxp-e60.npz"
    assert cache.exists()
    again = subprocess.run([HPCSUR, "evaluate", str(job), "--loss", "lxp"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "lxp e60: scored before with the same models" in again.stderr, again.stderr
    assert json.loads((run / "report.json").read_text())["rows"][0] == row
    cache.write_bytes(cache.read_bytes()[:-40])          # a damaged row file is scored again, never trusted
    damaged = subprocess.run([HPCSUR, "evaluate", str(job), "--loss", "lxp"], capture_output=True, text=True,
                             timeout=300)
    assert damaged.returncode == 0 and "is unreadable" in damaged.stderr, damaged.stderr
    assert json.loads((run / "report.json").read_text())["rows"][0] == row
    # ... and the snapshots of the error-vs-epoch curves on fewer test trajectories are other rollouts: rescored,
    # the scored models' errors unchanged (always on every test trajectory), the curves on the first one only
    job.write_text(text + "[evaluate]\nsnapshot_trajectories = 1\n")
    subset = subprocess.run([HPCSUR, "evaluate", str(job), "--loss", "lxp"], capture_output=True, text=True,
                            timeout=300)
    assert subset.returncode == 0 and "scored before" not in subset.stderr, subset.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["snapshot_trajectories"] == 1 and report["rows"][0]["e_abs"] == row["e_abs"]
    spec = load_job(job)
    encoded = encoded_path(spec)
    dataset = zstore.open_dataset(encoded)
    attrs = dataset.attrs
    split = split_of(dataset, 1, 2, attrs.get("kept_frames"))
    t, z_true, _ = read_test_paths(encoded, split, None, None)
    first = next(r for r in latent_runs(spec.latent, attrs, split, ["lxp"], None, None) if r.seed == 1)
    snaps = load_snapshots(run / "latent" / first.name, run_meta(attrs, spec.latent, first))
    n_obs = int(attrs["n_obs"])
    for (epoch, state), point in zip(snaps, report["runs"][0]["snapshots"]):
        pred = rollout_many([latent_model(attrs, spec.latent, state)], z_true[:, :1], t, spec.evaluate.substeps)[0]
        assert point["epoch"] == epoch
        assert point["e_abs"] == pytest.approx(float(np.mean(trajectory_errors(pred[..., :n_obs],
                                                                              z_true[:, :1, :n_obs])[1])), rel=1e-12)
