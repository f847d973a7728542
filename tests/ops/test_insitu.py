"""In-situ encoding ([insitu]): generate encodes every frame with another job's frozen autoencoder and stores no
states. Its arrays equal generate -> encode on the same frames, kill -9 mid-run then resume gives the same store,
the latent stages run on it, and bad set-ups are one line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcsur.store import info, open_dataset, verify
from test_generate import kill_a_rank_after_the_first_shard

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")
HPCSUR = str(BIN / "hpcsur")

JOB = """
[system]
kind = "predator_prey"
n = {n}
[simulation]
trajectories = 8
dt = 0.01
steps = 190
save_every = 10
seed = 11
[labels]
p = 0.25
full = true
draws = 2
[store]
path = "{store}"
frames_per_shard = 5
[output]
dir = "{run}"
results = "{run}/results"
[split]
validation = 1
test = 1
[autoencoder]
latent_dim = 4
hidden = [16]
epochs = 2
batch = 32
[latent]
hidden = [8]
losses = ["lz", "lxp"]
equivalent_data = 20
seeds = [1]
epochs = 2
batch = 16
[evaluate]
substeps = 2
{insitu}"""


def cli(*args, timeout=600, mpi=0):
    cmd = ([MPIEXEC, "-n", str(mpi)] if mpi else []) + [HPCSUR, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def one_error_line(res) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def write(folder: Path, name: str, n=20, insitu="") -> Path:
    job = folder / f"{name}.toml"
    job.write_text(JOB.format(n=n, store=folder / f"{name}_store", run=folder / f"{name}_run", insitu=insitu))
    return job


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A stored job with its autoencoder trained and its store encoded, and the in-situ job that uses it."""
    root = tmp_path_factory.mktemp("insitu")
    home = write(root, "home")
    res = cli("run", home, "--ranks", "2", "--workers", "1", "--stages", "generate,train-ae,encode")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    insitu = write(root, "insitu", insitu=f'[insitu]\nautoencoder = "{home}"\n')
    return root, home, insitu


def arrays(path) -> dict:
    ds = open_dataset(path)
    return {k: np.asarray(v) for k, v in ds.global_frames(0, ds.n_frames).items()}


@pytest.mark.mpi
def test_in_situ_store_equals_generate_then_encode_and_holds_no_states(jobs):
    root, home, insitu = jobs
    res = cli("generate", insitu, "--no-progress", mpi=2)
    assert res.returncode == 0, res.stderr
    got = arrays(root / "insitu_store")
    encoded = arrays(root / "home_run" / "encoded")
    trajectories = arrays(root / "home_store")
    assert "x" not in got and "f_full" not in got and "f_partial" not in got
    assert set(got) == set(encoded) | {"idx"}
    for name, value in encoded.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-13, err_msg=name)
    np.testing.assert_array_equal(got["idx"], trajectories["idx"])
    attrs, home_attrs = open_dataset(root / "insitu_store").attrs, open_dataset(root / "home_run" / "encoded").attrs
    assert attrs["autoencoder"] == home_attrs["autoencoder"] and attrs["source"] == "in situ"
    assert verify(str(root / "insitu_store")).ok


@pytest.mark.mpi
def test_kill9_mid_run_then_resume_gives_the_same_store(jobs, tmp_path):
    root, _, insitu = jobs
    reference = root / "insitu_store"
    if not (reference / "progress").exists() or not info(str(reference))["consolidated"]:
        assert cli("generate", insitu, "--no-progress", mpi=2).returncode == 0
    out = tmp_path / "killed-insitu-store"
    cmd = [MPIEXEC, "-n", "2", HPCSUR, "generate", str(insitu), "--output", str(out), "--no-progress"]
    returncode = kill_a_rank_after_the_first_shard(cmd, out)
    done_before = len(list((out / "progress").glob("shard-*.json")))
    assert returncode != 0 and 1 <= done_before < 32, done_before
    res = cli("generate", insitu, "--output", out, "--no-progress", "--resume", mpi=2)
    assert res.returncode == 0, res.stderr
    a, b = arrays(reference), arrays(out)
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name
    assert verify(str(out)).ok


@pytest.mark.mpi
def test_the_latent_stages_run_on_the_in_situ_store(jobs):
    root, _, insitu = jobs
    res = cli("run", insitu, "--ranks", "2", "--workers", "1")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for stage in ("train-latent", "evaluate"):
        assert f"[run] {stage}: exit 0" in res.stdout
    for stage in ("train-ae", "encode"):
        assert f"[run] {stage}: complete, skipped" in res.stdout
    assert (root / "insitu_run" / "report.json").exists()
    assert (root / "insitu_run" / "latent" / "lxp-e20-s1" / "done.json").exists()
    # what the whole result cost: this job's stages and the stored job's that trained the autoencoder
    import json
    results = json.loads((root / "insitu_run" / "results" / "insitu.json").read_text())
    for row in results["rows"]:                  # the fields against J f on the test trajectory's 20 frames
        assert row["velocity_error"]["frames"] == 20 and row["velocity_error"]["closure_median"]["mean"] > 0
    clock = results["wall_time"]
    assert clock["stages"]["train-latent"]["finished"] and clock["stages"]["train-latent"]["seconds"] > 0
    home_clock = clock["autoencoder_job"]
    assert home_clock["job"] == "home" and home_clock["store"]["frames"] == 160
    assert {"generate", "train-ae", "encode"} <= set(home_clock["stages"])
    assert home_clock["generate_labels_per_second"] == pytest.approx(
        160 * 2 * 5 / home_clock["stages"]["generate"]["seconds"])      # frames x draws x |I| = 5 of 20 blocks


@pytest.mark.mpi
def test_diagnose_an_in_situ_job_from_its_encoding_and_its_home_jobs_states(jobs):
    """The in-situ store holds the frames of generate -> encode, so its label noise is the stored job's; the
    Jacobian is looked at on the home job's stored states. Label noise recomputed here from the arrays."""
    import json
    root, home, insitu = jobs
    if not (root / "insitu_store" / "progress").exists() or not info(str(root / "insitu_store"))["consolidated"]:
        assert cli("generate", insitu, "--no-progress", mpi=2).returncode == 0
    reports = []
    for job in (home, insitu):
        res = cli("diagnose", job, "--frames", "6")
        assert res.returncode == 0, res.stderr[-2000:]
        reports.append(json.loads(res.stdout))
    ours, theirs = reports[1], reports[0]
    assert ours["jacobian"]["on_store"] == str(root / "home_store")
    assert ours["jacobian"]["kappa"] == pytest.approx(theirs["jacobian"]["kappa"], rel=1e-12)
    assert (root / "insitu_run" / "autoencoder" / "diagnostics.json").exists()
    enc = ours["encoding"]
    assert enc["label_noise"] == pytest.approx(theirs["encoding"]["label_noise"], rel=1e-9)
    assert enc["tangent_residual"] == pytest.approx(theirs["encoding"]["tangent_residual"], rel=1e-9)
    # eta = sum |y - R J f|^2 / sum |R (J f - mean J f)|^2 per draw, over the training frames of the
    # largest latent run (equivalent_data = 20: the first 20 frames of the training trajectories)
    a = arrays(root / "insitu_store")
    first = slice(0, enc["frames"])
    jf, lxp_r, lxp_y = a["jf"][first], a["lxp_R"][first], a["lxp_y"][first]
    for draw, eta in enumerate(enc["label_noise"]):
        r, y = lxp_r[:, draw], lxp_y[:, draw]
        resid = y - np.einsum("fij,fj->fi", r, jf)
        signal = np.einsum("fij,fj->fi", r, jf - jf.mean(0))
        assert eta == pytest.approx((resid ** 2).sum() / (signal ** 2).sum(), rel=1e-9)
    assert 0 < enc["tangent_residual"] < 1 and len(enc["label_noise"]) == 2


def test_bad_in_situ_set_ups_are_one_line(jobs, tmp_path):
    root, home, _ = jobs
    other_system = write(tmp_path, "other", n=22, insitu=f'[insitu]\nautoencoder = "{home}"\n')
    line = one_error_line(cli("generate", other_system, "--no-progress"))
    assert "[system] n = 22 here but 20 there" in line
    untrained = write(tmp_path, "untrained")
    pending = write(tmp_path, "pending", insitu=f'[insitu]\nautoencoder = "{untrained}"\n')
    assert "its autoencoder is not trained" in one_error_line(cli("generate", pending, "--no-progress"))
    missing = write(tmp_path, "missing", insitu=f'[insitu]\nautoencoder = "{tmp_path / "nope.toml"}"\n')
    assert "job spec file not found" in one_error_line(cli("generate", missing, "--no-progress"))
    insitu = write(tmp_path, "again", insitu=f'[insitu]\nautoencoder = "{home}"\n')
    assert "is an in-situ job" in one_error_line(cli("train-ae", insitu))
    bare = tmp_path / "bare.toml"
    bare.write_text(insitu.read_text().split("[autoencoder]")[0] + f'[insitu]\nautoencoder = "{home}"\n')
    assert "[insitu] needs this job's [autoencoder] table" in one_error_line(cli("validate", bare))
    assert not (tmp_path / "other_store").exists() and not (tmp_path / "pending_store").exists()


def test_the_time_estimate_counts_the_encoding_and_the_full_labels(tmp_path):
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.preflight import estimate
    home = load_job(write(tmp_path, "home"))
    insitu = load_job(write(tmp_path, "insitu", insitu=f'[insitu]\nautoencoder = "{tmp_path / "home.toml"}"\n'))
    stored, encoded = estimate(home, 2), estimate(insitu, 2)
    assert stored.encode_seconds == 0 and encoded.encode_seconds > 0
    # the same simulation and labels; the in-situ job also encodes every frame (8 trajectories x 20 frames)
    assert encoded.generate_seconds - stored.generate_seconds == pytest.approx(encoded.encode_seconds)
    assert "of which in-situ encoding" in encoded.lines()[-1] and "encoding" not in stored.lines()[-1]
    unlabelled = write(tmp_path, "nofull")            # no full-force labels: one force evaluation fewer a frame
    unlabelled.write_text(unlabelled.read_text().replace("full = true", "full = false")
                           .replace('losses = ["lz", "lxp"]', 'losses = ["lxp"]'))
    assert estimate(load_job(unlabelled), 2).generate_seconds < stored.generate_seconds
