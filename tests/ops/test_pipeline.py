"""`hpcsur run` end to end on a tiny Predator-Prey job: every stage, report, plots, and a resumed rerun."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HPCSUR = str(Path(sys.executable).parent / "hpcsur")

JOB = """
[system]
kind = "predator_prey"
n = 20
[simulation]
trajectories = 14
dt = 0.01
steps = 290
save_every = 10
seed = 7
[labels]
p = 0.25
full = true
[store]
path = "{root}/store"
[output]
dir = "{root}/run"
results = "{root}/results"
[split]
validation = 1
test = 2
[autoencoder]
latent_dim = 4
hidden = [16]
epochs = 2
batch = 32
[latent]
hidden = [8]
losses = ["lz", "lx", "lxp"]
equivalent_data = 60
seeds = [1, 2]
epochs = 3
batch = 16
[evaluate]
substeps = 2
"""


@pytest.mark.mpi
def test_run_chains_every_stage_and_resumes(tmp_path):
    job = tmp_path / "tiny.toml"
    job.write_text(JOB.format(root=tmp_path))
    first = subprocess.run([HPCSUR, "run", str(job), "--ranks", "2", "--workers", "2"], capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("generate", "train-ae", "encode", "train-latent", "evaluate"):
        assert f"[run] {stage}: exit 0" in first.stdout
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    rows = {r["loss"]: r for r in report["rows"]}
    assert set(rows) == {"lz", "lx", "lxp"}
    assert rows["lz"]["train_frames"] == 60 and rows["lxp"]["train_frames"] == 240
    # the ledger: L_z / L_x label all 40 coordinates of a frame, L_x,p 5 of 20 cells x 2 fields; the default
    # protocol (validation-loss schedule and selection) also spends the forces of the 1 x 30 validation frames
    assert rows["lz"]["force_evaluations"] == {"per_frame": 40, "train_frames": 60, "train": 2400,
                                               "validation_frames": 30, "validation": 1200, "total": 3600}
    assert rows["lxp"]["force_evaluations"]["train"] == 240 * 10 and rows["lxp"]["force_evaluations"]["validation"] == 30 * 10
    for row in report["runs"]:
        assert row["e_sq"] is not None and 0 < row["e_sq"] < 10
    assert len(report["runs"]) == 6
    for row in report["rows"]:                      # 2 seeds: seed 1 against seed 2's rollout
        assert len(row["seed_disagreement"]["per_seed"]) == 1 and row["seed_disagreement"]["e_abs"]["mean"] > 0
    # the 2 workers' normalisation (each summed its share of the shards) equals the serial moments
    from hpcsur.learn.data import frame_moments, split_of
    from hpcsur.store import open_dataset
    stats = np.load(run / "autoencoder" / "normalisation.npz")
    mean, std, _ = frame_moments(str(tmp_path / "store"), "x", split_of(open_dataset(str(tmp_path / "store")), 1, 2)
                                 .frames("train"))
    np.testing.assert_allclose(stats["x_mean"], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["x_std"], std, rtol=1e-12)
    for png in report["plots"].values():
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[latent]" in (run / "spec.toml").read_text()
    assert "e (Eq. 43, squared)" in first.stdout
    results = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert results["protocol"]["select"] == "val_loss" and results["protocol"]["epochs"] == 3
    assert [r["e_abs"] for r in results["rows"]] == [r["e_abs"] for r in report["rows"]]
    assert results["code"]["commit"] is None or len(results["code"]["commit"]) == 40

    again = subprocess.run([HPCSUR, "run", str(job)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for stage in ("generate", "train-ae", "encode", "train-latent", "evaluate"):
        assert f"[run] {stage}: complete, skipped" in again.stdout
    assert json.loads((run / "report.json").read_text())["rows"] == report["rows"]

    # a changed [autoencoder] makes train-ae and everything after it stale: --keep refuses in one line ...
    job.write_text(JOB.format(root=tmp_path).replace("hidden = [16]", "hidden = [12]"))
    kept = subprocess.run([HPCSUR, "run", str(job), "--keep"], capture_output=True, text=True, timeout=120)
    assert kept.returncode == 2 and kept.stderr.count("\n") == 1, kept.stderr
    assert "train-ae: its outputs were made from other spec fields (autoencoder.hidden)" in kept.stderr
    # ... and a plain run redoes exactly those stages, not generate
    redo = subprocess.run([HPCSUR, "run", str(job), "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert "[run] generate: complete, skipped" in redo.stdout
    assert "[run] train-ae: inputs changed (autoencoder.hidden): redoing it" in redo.stdout
    for stage in ("train-ae", "encode", "train-latent", "evaluate"):
        assert f"[run] {stage}: exit 0" in redo.stdout
    assert json.loads((run / "autoencoder" / "done.json").read_text())["label"] == "train-ae"
    # the wall-time ledger: the redone stages start over (one attempt each), generate keeps its first one
    from hpcsur.ops.wall_time import stage_wall_times
    clock = stage_wall_times(run)
    assert {s: c["attempts"] for s, c in clock.items()} == {"generate": 1, "train-ae": 1, "encode": 1,
                                                            "train-latent": 1, "evaluate": 1}
    record = json.loads((run / "provenance" / "train-ae.json").read_text())["inputs"]
    assert record["autoencoder.hidden"] == [12] and record["labels.p"] == 0.25
    # a stage run by itself refuses outputs made from other fields
    job.write_text(JOB.format(root=tmp_path).replace("hidden = [16]", "hidden = [12]").replace("epochs = 3", "epochs = 4"))
    alone = subprocess.run([HPCSUR, "evaluate", str(job)], capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "train-latent: the outputs in" in alone.stderr and "latent.epochs" in alone.stderr
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.slurm import stage_provenance

    assert stage_provenance(load_job(job)) == {"generate": "current", "train-ae": "current", "encode": "current",
                                               "train-latent": "stale: latent.epochs",
                                               "evaluate": "stale: latent.epochs"}


def test_run_rejects_an_unknown_stage(tmp_path):
    job = tmp_path / "tiny.toml"
    job.write_text(JOB.format(root=tmp_path))
    res = subprocess.run([HPCSUR, "run", str(job), "--stages", "generate,train"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "unknown stage 'train'; choose from: generate, train-ae" in res.stderr
    assert not (tmp_path / "store").exists()


def _alive_with(text: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.mpi
def test_sigterm_to_run_stops_every_stage_process_and_a_rerun_finishes(tmp_path):
    """SIGTERM to `hpcsur run` reaches mpiexec and every rank of the running stage (not just the
    driver), nothing is left running, the exit code says "resume me", and a rerun completes."""
    import signal
    import time

    job = tmp_path / "stop.toml"
    job.write_text(JOB.format(root=tmp_path).replace("epochs = 3", "epochs = 400"))
    proc = subprocess.Popen([HPCSUR, "run", str(job), "--ranks", "2", "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "run" / "latent").glob("*/curve.csv")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert len([p for p in _alive_with(str(job)) if p.pid != proc.pid]) >= 2   # mpiexec and the ranks
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, out + err
    assert "stopped by SIGTERM during train-latent" in err and "rerun `hpcsur run` to continue" in err
    time.sleep(0.5)
    assert _alive_with(str(job)) == []
    again = subprocess.run([HPCSUR, "run", str(job), "--ranks", "2", "--workers", "2"], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[run] train-latent: exit 0" in again.stdout and (tmp_path / "run" / "report.json").exists()
    # the wall-time ledger: train-latent ran twice (stopped with 75, then finished), its time is the sum
    from hpcsur.ops.wall_time import LEDGER, stage_wall_times
    attempts = [json.loads(line) for line in (tmp_path / "run" / LEDGER).read_text().splitlines()]
    latent = [a for a in attempts if a["stage"] == "train-latent"]
    assert [a["exit"] for a in latent] == [75, 0] and all(a["processes"] == 2 for a in latent)
    clock = stage_wall_times(tmp_path / "run")
    assert clock["train-latent"]["attempts"] == 2 and clock["train-latent"]["finished"]
    assert clock["train-latent"]["seconds"] == pytest.approx(sum(a["seconds"] for a in latent), abs=1e-2)
    assert clock["evaluate"]["attempts"] == 1 and clock["generate"]["attempts"] == 1


def test_the_wall_time_ledger_sums_attempts_and_skips_a_torn_line(tmp_path):
    from hpcsur.ops.wall_time import LEDGER, forget_stage, record_attempt, stage_wall_times
    record_attempt(tmp_path, "generate", 10.0, 19.5, 75, 2)
    record_attempt(tmp_path, "generate", 5.25, 10.0, 0, 2)
    record_attempt(tmp_path, "train-ae", 3.0, 5.0, 1, 2)
    with open(tmp_path / LEDGER, "a") as fh:
        fh.write('{"stage": "encode", "seco')                  # a crash mid-write
    clock = stage_wall_times(tmp_path)
    assert clock == {"generate": {"seconds": 15.25, "cpu_seconds": 29.5, "attempts": 2, "finished": True},
                     "train-ae": {"seconds": 3.0, "cpu_seconds": 5.0, "attempts": 1, "finished": False}}
    assert stage_wall_times(tmp_path / "none") == {}
    forget_stage(tmp_path, "generate")                          # redone: its time starts over (the torn line goes)
    assert stage_wall_times(tmp_path) == {"train-ae": {"seconds": 3.0, "cpu_seconds": 5.0, "attempts": 1,
                                                       "finished": False}}
    assert (tmp_path / LEDGER).read_text().count("\n") == 1


@pytest.mark.mpi
def test_local_mpi_stages_listen_on_loopback_only(tmp_path):
    """The ranks of a stage `hpcsur run` starts accept connections on 127.0.0.1 only (the host's
    external address is never used for a single-node job)."""
    from hpcsur.log import loopback_env

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, subprocess, sys\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "c.Barrier()\n"
        "out = subprocess.run(['ss', '-tlnpH'], capture_output=True, text=True).stdout\n"
        "mine = [l.split()[3] for l in out.splitlines() if f'pid={os.getpid()},' in l]\n"
        "print(c.Get_rank(), ' '.join(mine), flush=True)\n"
        "c.Barrier()\n")
    import os
    import shutil

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    res = subprocess.run([mpiexec, "-n", "2", sys.executable, str(probe)], capture_output=True, text=True,
                         timeout=120, env=loopback_env(os.environ))
    assert res.returncode == 0, res.stderr
    listening = [addr for line in res.stdout.splitlines() for addr in line.split()[1:]]
    own = [a for a in listening if not a.startswith("0.0.0.0:")]   # Hydra's inherited control socket aside
    assert own and all(a.startswith("127.0.0.1:") for a in own), res.stdout
