"""Training with real launches: SIGTERM mid-epoch + resume equals an uninterrupted run (both
backends, 2 ranks), peak memory stays within the budget on a store larger than it, bad input."""
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HPCSUR, MPIEXEC, PP_JOB, write_job
from hpcsur import store as zstore

def workers_of(proc: subprocess.Popen) -> list:
    import psutil

    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "train-ae" in " ".join(p.cmdline()) and "hydra" not in p.name() and "mpiexec" not in p.name()]


def final_state(run: Path) -> dict:
    return torch.load(run / "autoencoder" / "checkpoint.pt", weights_only=False)


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["ddp", "horovod"])
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(pp_store, backend):
    if backend == "horovod":
        pytest.importorskip("horovod.torch", reason="horovod not built (make horovod)")
    folder, store = pp_store
    base = [MPIEXEC, "-n", "2", HPCSUR, "train-ae"]
    ref_job = write_job(folder, f"ref-{backend}", store, folder / f"ref-{backend}")
    subprocess.run(base + [str(ref_job), "--backend", backend, "--no-progress"], check=True, capture_output=True,
                   timeout=300)

    run = folder / f"cut-{backend}"
    job = write_job(folder, f"cut-{backend}", store, run)
    proc = subprocess.Popen(base + [str(job), "--backend", backend, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    curve = run / "autoencoder" / "curve.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if curve.exists() and len(curve.read_text().splitlines()) >= 2:  # epoch 0 finished
            break
        time.sleep(0.02)
    ranks = workers_of(proc)
    assert len(ranks) == 2, "both training ranks should be running"
    ranks[-1].send_signal(signal.SIGTERM)   # one rank only: the others must stop with it
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err
    assert "checkpoint written, resume with --resume" in err
    stopped = final_state(run)
    assert (stopped["epoch"], stopped["step"]) < (6, 0)

    resumed = subprocess.run(base + [str(job), "--backend", backend, "--resume", "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_state(folder / f"ref-{backend}")["model"], final_state(run)["model"]
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-10
    losses = [[(r["epoch"], r["train"], r["val"]) for r in final_state(d)["curve"]] for d in (folder / f"ref-{backend}", run)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from hpcsur.learn import config as cfg
    from hpcsur.learn.distributed import init_backend
    from hpcsur.learn.stages import train_autoencoder
    store, run, budget = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    backend = init_backend("none")
    ae = cfg.Autoencoder(latent_dim=3, hidden=[8], epochs=1, batch=32, lambda_cond=0.0)
    train = cfg.Train(memory_mb=budget, shuffle_buffer=100000, prefetch=1)
    # warm-up on the validation-sized problem so imports and kernels are not counted as data
    train_autoencoder(store, run / "warm", cfg.Split(validation=1, test=1), ae,
                      cfg.Train(memory_mb=4, shuffle_buffer=64, prefetch=1), backend, show_progress=False)
    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    with open("/proc/self/clear_refs", "w") as fh:   # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    base = status_kb("VmRSS")
    train_autoencoder(store, run / "real", cfg.Split(validation=1, test=1), ae, train, backend, show_progress=False)
    print(json.dumps({"growth_mb": (status_kb("VmHWM") - base) / 1024}))
""")

AC_JOB = """
[system]
kind = "allen_cahn"
n = 64
epsilon = 0.04
[simulation]
trajectories = 10
dt = 2e-5
steps = 399
seed = 1
integrator = "rk4"
[labels]
p = 0.05
[store]
path = "{store}"
frames_per_shard = 20
"""


@pytest.mark.mpi
def test_streaming_keeps_peak_memory_below_the_budget(tmp_path):
    """An AE epoch over 8 trajectories x 400 frames x 32 KB = 105 MB of states with a 24 MB budget:
    the peak RSS (VmHWM, reset before the run) grows by less than the budget; a budget that lets it
    cache grows by the data."""
    store = tmp_path / "ac"
    job = tmp_path / "ac.toml"
    job.write_text(AC_JOB.format(store=store))
    subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "generate", str(job), "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    train_bytes = 8 * 400 * 64 * 64 * 8 / 2 ** 20

    def growth(budget_mb: float) -> float:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(store), str(tmp_path / f"r{budget_mb}"),
                              str(budget_mb)], capture_output=True, text=True, timeout=300, check=True)
        import json
        return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]

    budget = 24.0
    assert train_bytes > 4 * budget
    streamed = growth(budget)
    assert streamed < budget, f"peak RSS grew by {streamed:.1f} MB with a {budget} MB budget"
    cached = growth(4 * train_bytes)       # the control: everything cached in memory
    assert cached > 0.9 * train_bytes, f"the measurement should see the cache ({cached:.1f} MB)"


def run_cli(*args, timeout=120):
    return subprocess.run([HPCSUR, *args], capture_output=True, text=True, timeout=timeout)


def test_checkpoint_from_another_model_is_one_clear_line(pp_store, tmp_path):
    folder, store = pp_store
    run = tmp_path / "run"
    job = write_job(tmp_path, "a", store, run, hidden=8)
    assert run_cli("train-ae", str(job), "--backend", "none", "--no-progress").returncode == 0
    enc = subprocess.run([HPCSUR, "encode", str(job), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert enc.returncode == 0, enc.stderr
    first = run_cli("train-latent", str(job), "--loss", "lxp", "--backend", "none", "--no-progress")
    assert first.returncode == 0, first.stderr
    (run / "latent" / "lxp-e60-s1" / "done.json").unlink()          # pretend it was interrupted
    other = write_job(tmp_path, "a", store, run, hidden=12)     # same run folder, another architecture
    res = run_cli("train-latent", str(other), "--loss", "lxp", "--backend", "none", "--resume", "--no-progress")
    assert res.returncode == 2                                  # the provenance record names the change ...
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "made from other spec fields (latent.hidden)" in errors[0], res.stderr
    (run / "latent" / "lxp-e60-s1" / "inputs.json").unlink()    # ... and without it (an older run) the checkpoint does
    res = run_cli("train-latent", str(other), "--loss", "lxp", "--backend", "none", "--resume", "--no-progress")
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "was written for shape" in errors[0], res.stderr


@pytest.mark.parametrize("edit,message", [
    ("latent_dim = 4", "latent_dim = 2 is out of range"),
    ("full = true", "need all forces"),
    ("workers = 2", "workers = 0 is out of range"),
])
def test_bad_learning_specs_are_one_line_before_anything_runs(pp_store, tmp_path, edit, message):
    folder, store = pp_store
    text = PP_JOB.format(store=store, run=tmp_path / "run", hidden=8)
    replacement = {"latent_dim = 4": "latent_dim = 2", "full = true": "full = false",
                   "workers = 2": "workers = 0"}[edit]
    job = tmp_path / "bad.toml"
    job.write_text(text.replace(edit, replacement))
    res = run_cli("train-ae", str(job))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_missing_labels_in_an_encoded_store_are_refused(pp_store, tmp_path):
    """A store generated without full forces cannot train L_z: one line, before training."""
    from hpcsur import store as zstore
    from hpcsur.errors import InputError
    from hpcsur.learn import config as cfg
    from hpcsur.learn.distributed import init_backend
    from hpcsur.learn.stages import train_latent

    folder, store = pp_store
    schema = zstore.open_dataset(store).schema.encoded(4)
    schema = type(schema)(**{**schema.to_dict(), "full_labels": False})
    enc = tmp_path / "enc"
    attrs = {k: zstore.open_dataset(store).attrs[k] for k in zstore.REQUIRED_ATTRS}
    zstore.create_dataset(enc, schema, {**attrs, "latent_dim": 4, "p_eff": 0.25, "autoencoder": "x"})
    with pytest.raises(InputError, match="loss lz needs array 'jf'"):
        train_latent(str(enc), tmp_path / "run", cfg.Split(validation=1, test=2),
                     cfg.Latent(equivalent_data=60, losses=["lz"]), cfg.Train(), init_backend("none"))


@pytest.mark.mpi
def test_damaged_shards_stop_train_ae_and_encode_with_one_line(pp_store, tmp_path):
    """Readers check every shard file against its completion record before using it: a flipped byte
    or a deleted chunk stops the stage with one line naming the shard and array, exit 2."""
    import shutil

    folder, store = pp_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    job = write_job(tmp_path, "dmg", copy, tmp_path / "run")
    assert run_cli("train-ae", str(job), "--backend", "none", "--no-progress").returncode == 0
    target = copy / "x" / "c" / "3" / "0"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    for stage, extra in (("encode", []), ("train-ae", ["--backend", "none"])):
        other = write_job(tmp_path, f"dmg-{stage}", copy, tmp_path / f"run-{stage}")
        if stage == "encode":
            shutil.copytree(tmp_path / "run" / "autoencoder", tmp_path / f"run-{stage}" / "autoencoder")
        res = run_cli(stage, str(other), *extra, "--no-progress")
        assert res.returncode == 2, res.stderr
        lines = [line for line in res.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and "shard 3 array 'x'" in lines[0] and "altered" in lines[0], res.stderr
        assert "Traceback" not in res.stderr
    (copy / "f_full" / "c" / "5" / "0").unlink()
    target.write_bytes(bytes(data[: len(data) // 2]))
    res = run_cli("train-ae", str(write_job(tmp_path, "dmg2", copy, tmp_path / "run2")), "--backend", "none")
    assert res.returncode == 2 and "shard 3 array 'x'" in res.stderr and "truncated" in res.stderr
    report = subprocess.run([HPCSUR, "store", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert report.returncode != 0 and "2 problem(s)" in report.stdout + report.stderr


class _Planted:
    """A pickle that runs a command when unpickled without restrictions."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(pp_store, tmp_path):
    folder, store = pp_store
    run = tmp_path / "run"
    (run / "autoencoder").mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"meta": {}, "payload": _Planted(marker)}, run / "autoencoder" / "checkpoint.pt")
    job = write_job(tmp_path, "planted", store, run)
    res = run_cli("train-ae", str(job), "--backend", "none", "--resume", "--no-progress")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "checkpoint.pt: unreadable" in lines[0] and "Traceback" not in res.stderr
    assert not marker.exists()


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["ddp", "none"])
def test_an_error_on_every_rank_is_printed_once(pp_store, tmp_path, backend):
    folder, store = pp_store
    job = write_job(tmp_path, "gone", tmp_path / "no-store", tmp_path / "run")
    res = subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "train-ae", str(job), "--backend", backend],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "does not exist; run `hpcsur generate` first" in errors[0], res.stderr


AC_VANISHING = """
[system]
kind = "allen_cahn"
n = 16
epsilon = 0.15
[simulation]
trajectories = 4
dt = 3.9e-4
steps = 2000
save_every = 50
seed = 1
[labels]
p = 0.25
full = false
[store]
path = "{root}/store"
[output]
dir = "{root}/run"
[split]
validation = 1
test = 1
[autoencoder]
latent_dim = 3
hidden = [8]
epochs = 2
batch = 32
lambda_cond = 1e-5
"""


def test_a_vanished_allen_cahn_torus_stops_train_ae_with_one_line(tmp_path):
    """Frames whose free energy has no gradient (the torus is gone) make J J^T singular: train-ae names the
    first such frame and its kappa in one line, exit 2, instead of a LinAlgError traceback."""
    job = tmp_path / "ac.toml"
    job.write_text(AC_VANISHING.format(root=tmp_path))
    assert run_cli("generate", str(job), "--no-progress").returncode == 0
    res = run_cli("train-ae", str(job), "--backend", "none", "--no-progress")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "rank-deficient at trajectory" in lines[0] and ", step " in lines[0] and "kappa(J J^T) = " in lines[0]


def test_with_the_observable_floor_a_vanishing_torus_job_runs_end_to_end(tmp_path):
    """[split] observable_floor = 1e-4 (the reference's Allen-Cahn rule): each trajectory is used until its torus
    has vanished; encode stores NaN past the cut and records the cuts; training, validation and the scored points
    use only the frames in use, so the whole pipeline runs where it would otherwise stop. With [labels]
    full_every = 3 as the paper job, J f exists exactly on frames o, o + 3, ... in use of the training trajectories
    and on the validation frames in use, and L_z (its own size, batch and rate per loss) trains on those."""
    from hpcsur.learn.data import observable_cuts

    spec = (AC_VANISHING.format(root=tmp_path)
            .replace("trajectories = 4", "trajectories = 6").replace("steps = 2000", "steps = 300")
            .replace("save_every = 50", "save_every = 5").replace("full = false", "full = true\nfull_every = 3")
            .replace("test = 1\n", "test = 1\nobservable_floor = 1e-4\n")
            + '[latent]\nmodel = "onsagernet_shared"\nhidden = [8, 8]\nactivation = "relu2"\nlosses = ["lz", "lxp"]\n'
              'equivalent_data = { lz = 9, lxp = 8 }\nseeds = [1]\nepochs = { lz = 3, lxp = 2 }\n'
              'batch = { lz = 4, lxp = 8 }\nlr = { lz = 5e-3, lxp = 1e-3 }\n[evaluate]\nsubsteps = 2\n')
    spec = spec.replace(f'dir = "{tmp_path}/run"', f'dir = "{tmp_path}/run"\nresults = "{tmp_path}/results"')
    job = tmp_path / "ac.toml"
    job.write_text(spec)
    res = run_cli("run", str(job), "--ranks", "1", "--workers", "1", timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    source, encoded = zstore.open_dataset(tmp_path / "store"), zstore.open_dataset(tmp_path / "run" / "encoded")
    phi = source.global_frames(0, source.n_frames, ["phi"])["phi"][:, 0].reshape(6, -1)
    cuts = observable_cuts(phi, 1e-4)
    assert encoded.attrs["kept_frames"] == list(cuts) and 0 < min(cuts) and max(cuts) < phi.shape[1]
    frame = np.arange(phi.shape[1])
    phases = encoded.attrs["full_phases"]
    assert phases == source.attrs["full_phases"] and all(0 <= o < 3 for o in phases)
    budget = sum(len(range(o, 61, 3)) for o in phases[:4]) + 61          # 4 training trajectories + 1 validation
    for t, cut in enumerate(cuts):
        got = encoded.frames(t, arrays=["z", "jf"])
        assert np.all(np.isfinite(got["z"][:cut])) and np.all(np.isnan(got["z"][cut:]))
        o = phases[t]                                                       # full_phase = "random"
        labelled = (frame < cut) & ((frame >= o) & ((frame - o) % 3 == 0) if t < 4 else (t == 4))   # 4 training,
        np.testing.assert_array_equal(np.isfinite(got["jf"]).all(-1), labelled, err_msg=f"trajectory {t}")   # 1 val.
    assert source.attrs["full_label_frames"] == budget and encoded.attrs["full_every"] == 3
    results = json.loads((tmp_path / "results" / "ac.json").read_text())
    assert {r["loss"] for r in results["rows"]} == {"lz", "lxp"}
    assert all(np.isfinite(r["e_abs"]["mean"]) for r in results["rows"])
    lz = next(r for r in results["rows"] if r["loss"] == "lz")
    assert lz["equivalent_data"] == 9 and lz["train_frames"] == 9
    assert lz["force_evaluations"]["validation_frames"] in (0, cuts[4])   # the validation trajectory's frames in use
    ledger = results["store"]     # what generate computed: partial labels everywhere, full ones on the budget
    k = source.schema.k
    assert ledger["full_label_frames"] == budget and ledger["partial_force_evaluations"] == 6 * 61 * k
    assert ledger["force_evaluations"] == 6 * 61 * k + budget * 256 and ledger["bytes_on_disk"] > 0
    assert ledger["labelled_sites"] == 6 * 61 * k
    # `hpcsur run` kept a wall-time ledger; evaluate writes the results, so it is not in them yet
    clock = results["wall_time"]
    assert list(clock["stages"]) == ["generate", "train-ae", "encode", "train-latent"]
    assert all(s["finished"] and s["attempts"] == 1 and s["seconds"] > 0 for s in clock["stages"].values())
    assert all(0 < s["cpu_seconds"] < 4 * s["seconds"] + 5 for s in clock["stages"].values())
    assert clock["generate_frames_per_second"] == pytest.approx(6 * 61 / clock["stages"]["generate"]["seconds"])
    assert (tmp_path / "results" / results["plots"]["observables"]).stat().st_size > 10_000
    curve = (tmp_path / "run" / "latent" / "lz-e9-s1" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,train,val,") and len(curve) == 1 + 3     # epochs = { lz = 3 }
    assert all(np.isfinite([float(v) for v in line.split(",")[1:3]]).all() for line in curve[1:])  # no NaN J f read
