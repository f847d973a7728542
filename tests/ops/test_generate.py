"""The generate stage end to end under real ``mpiexec``: rank invariance, resume after a crash,
the store lock, verify, and bad job specs (exit 2, one line, nothing written)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcsur.store import acquire_lock, info, open_dataset, verify

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")
HPCSUR = str(BIN / "hpcsur")
ARRAYS = ("x", "idx", "f_partial", "f_full", "phi", "t", "step", "traj")

PP = """
[system]
kind = "predator_prey"
n = {n}
[simulation]
trajectories = {trajectories}
dt = 0.01
steps = 140
save_every = 10
seed = 3
integrator = "euler"
[labels]
p = {p}
full = true
[store]
path = "unused"
frames_per_shard = 5
{parallel}
"""

AC = """
[system]
kind = "allen_cahn"
n = 24
[simulation]
trajectories = 2
dt = 1.7e-5
steps = 40
save_every = 10
seed = 5
integrator = "rk4"
[labels]
p = 0.1
full = true
[store]
path = "unused"
{parallel}
"""

LJ = """
[system]
kind = "lennard_jones"
lattice = "fcc"
n_atoms = 864
density = 0.8
shift = true
[simulation]
trajectories = 1
dt = 0.005
steps = 200
save_every = 100
seed = 1
[initial]
temperature = 1.0
[labels]
p = 0.0125
full = false
[store]
path = "unused"
{parallel}
"""


def pp_job(trajectories=4, n=50, p=0.2, grid=None):
    return PP.format(trajectories=trajectories, n=n, p=p, parallel=_parallel(grid))


def _parallel(grid):
    return "" if grid is None else f"[parallel]\ngrid = {list(grid)}\n"


def write_job(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / f"{name}.toml"
    job.write_text(text)
    return job


def generate(job, out, n=1, *extra, timeout=180, check=True):
    cmd = [MPIEXEC, "-n", str(n), HPCSUR, "generate", str(job), "--output", str(out), "--no-progress", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
    return res


def hpcsur(*args, timeout=60):
    return subprocess.run([HPCSUR, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def load(path) -> dict:
    ds = open_dataset(path)
    got = ds.global_frames(0, ds.n_frames)
    return {k: np.asarray(v) for k, v in got.items()}


def assert_identical(a, b, what=""):
    a, b = load(a), load(b)
    assert set(a) == set(b)
    for name in ARRAYS:
        if name in a:
            assert a[name].dtype == b[name].dtype, f"{what} {name}"
            assert np.array_equal(a[name], b[name]), f"{what}: array {name!r} differs"


def error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hpcsur generate: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- reference stores
@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """One-rank reference stores, shared by several tests (each is a CLI run of a few seconds)."""
    root = tmp_path_factory.mktemp("refs")
    out = {}
    out["pp"] = root / "pp"
    generate(write_job(root, "pp", pp_job()), out["pp"], 1)
    out["ac"] = root / "ac"
    generate(write_job(root, "ac", AC.format(parallel="")), out["ac"], 1)
    return out


# ----------------------------------------------------------------------------- 1. rank invariance
@pytest.mark.mpi
@pytest.mark.parametrize("n,grid", [(2, [2]), (4, [4]), (2, None)], ids=["grid2", "grid4", "ensemble2"])
def test_predator_prey_rank_invariant(refs, tmp_path, n, grid):
    out = tmp_path / "pp"
    generate(write_job(tmp_path, "pp", pp_job(grid=grid)), out, n)
    ref = load(refs["pp"])
    assert ref["f_full"].shape == (4 * 15, 100)
    assert ref["x"].shape == (4 * 15, 100)
    assert_identical(refs["pp"], out, f"predator_prey {n} ranks grid {grid}")


@pytest.mark.mpi
@pytest.mark.parametrize("n,grid", [(2, [2, 1]), (4, [2, 2])], ids=["grid2x1", "grid2x2"])
def test_allen_cahn_rank_invariant(refs, tmp_path, n, grid):
    out = tmp_path / "ac"
    generate(write_job(tmp_path, "ac", AC.format(parallel=_parallel(grid))), out, n)
    assert load(refs["ac"])["f_full"].shape == (2 * 5, 24 * 24)
    assert_identical(refs["ac"], out, f"allen_cahn {n} ranks grid {grid}")


@pytest.mark.mpi
def test_lennard_jones_rank_invariant(tmp_path):
    one, two = tmp_path / "lj1", tmp_path / "lj2"
    generate(write_job(tmp_path / "a", "lj", LJ.format(parallel="")), one, 1, timeout=300)
    generate(write_job(tmp_path / "b", "lj", LJ.format(parallel=_parallel([2, 1, 1]))), two, 2, timeout=300)
    a, b = load(one), load(two)
    n3 = 3 * 864  # x = (positions, velocities)
    assert a["x"].shape == (3, 2 * n3)
    assert np.abs(a["x"][2, :n3] - a["x"][0, :n3]).max() > 1e-2  # the atoms moved
    np.testing.assert_allclose(b["x"][2, :n3], a["x"][2, :n3], rtol=0, atol=1e-8)
    np.testing.assert_allclose(b["x"][2, n3:], a["x"][2, n3:], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(b["idx"], a["idx"])
    np.testing.assert_allclose(b["f_partial"], a["f_partial"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- 2. resume
def _rank_pids(marker: str) -> list[int]:
    """PIDs of python processes (the MPI ranks, not mpiexec) whose command line has ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and not any(a.endswith(b"mpiexec") or b"hydra" in a for a in argv[:1]):
            pids.append(int(entry.name))
    return pids


def kill_a_rank_after_the_first_shard(cmd: list[str], out: Path, timeout: float = 180) -> int:
    """Start ``cmd`` (an mpiexec generate writing ``out``), SIGKILL one rank as soon as a shard is complete;
    returns the launcher's exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not list((out / "progress").glob("shard-*.json")):
            assert proc.poll() is None, "run ended before any shard was written"
            assert time.monotonic() < deadline, f"no shard written within {timeout:.0f} s"
            time.sleep(0.01)
        pids = _rank_pids(str(out))
        assert pids, "no rank process found"
        os.kill(max(pids), signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode


def _check_complete(path, n_frames):
    summary = info(path)
    assert summary["completeness"] == 1.0 and summary["consolidated"]
    assert summary["frames_complete"] == summary["frames_total"] == n_frames
    report = verify(path)
    assert report.ok, str(report)


@pytest.mark.mpi
def test_resume_after_kill9_is_bit_identical(refs, tmp_path):
    job = write_job(tmp_path, "pp", pp_job())
    out = tmp_path / "killed-store-unique"
    cmd = [MPIEXEC, "-n", "2", HPCSUR, "generate", str(job), "--output", str(out), "--no-progress"]
    returncode = kill_a_rank_after_the_first_shard(cmd, out)
    done_before = len(list((out / "progress").glob("shard-*.json")))
    assert returncode != 0
    assert 1 <= done_before < 12, "the kill came too late to test resume"
    generate(job, out, 2, "--resume")
    assert_identical(refs["pp"], out, "resumed after kill -9")
    _check_complete(out, 4 * 15)


@pytest.mark.mpi
def test_resume_after_stop_is_bit_identical(refs, tmp_path):
    job = write_job(tmp_path, "pp", pp_job(grid=[2]))
    out = tmp_path / "stopped"
    res = generate(job, out, 2, "--stop-after-shards", "2", check=False)
    assert res.returncode != 0
    done = len(list((out / "progress").glob("shard-*.json")))
    assert 2 <= done < 12
    assert not (out / "manifest.json").exists()
    # resume on another rank layout (the data hash ignores [parallel]): 1 rank, no grid
    generate(write_job(tmp_path / "serial", "pp", pp_job()), out, 1, "--resume")
    assert_identical(refs["pp"], out, "resumed after --stop-after-shards")
    _check_complete(out, 4 * 15)


@pytest.mark.mpi
def test_float32_storage_rounds_float64_physics_and_resumes_bit_identical(refs, tmp_path):
    """[labels] precision = "float32": the stored states and forces are the float64 run's values rounded once
    (the physics stays float64: times, steps, index sets and observables are bit-identical to the float64
    store), the store is about half the size, and a stopped run resumes to the same bytes."""
    text = pp_job(grid=[2]).replace("full = true", 'full = true\nprecision = "float32"')
    job = write_job(tmp_path, "pp", text)
    out = tmp_path / "f32"
    res = generate(job, out, 2, "--stop-after-shards", "2", check=False)
    assert res.returncode != 0 and not (out / "manifest.json").exists()
    generate(job, out, 2, "--resume")
    f32, f64 = load(out), load(refs["pp"])
    for name in ("x", "f_partial", "f_full"):
        assert f32[name].dtype == np.float32 and f64[name].dtype == np.float64
        np.testing.assert_array_equal(f32[name], f64[name].astype(np.float32), err_msg=name)
    for name in ("phi", "t", "step", "idx", "traj"):
        np.testing.assert_array_equal(f32[name], f64[name], err_msg=name)
    x32, x64 = (open_dataset(path).schema.arrays()["x"].bytes_per_frame for path in (out, refs["pp"]))
    assert 2 * x32 == x64
    assert info(out)["bytes_on_disk"] < 0.8 * info(refs["pp"])["bytes_on_disk"]   # compressed: 0.73 here
    fresh = tmp_path / "fresh"
    generate(write_job(tmp_path / "serial", "pp", text.replace("[parallel]\ngrid = [2]\n", "")), fresh, 1)
    assert_identical(fresh, out, "float32 store resumed after a stop")


def test_full_label_phases_are_seeded_and_cover_every_time():
    """full_phase = "random": the phases are a pure function of [simulation] seed (any rank count computes the same
    mask), take every value 0 .. r-1 over many trajectories (so the labelled frames cover every time, not r-th
    ones only), and "zero" gives the grid 0, r, 2r, ... of every trajectory."""
    import tomllib

    from hpcsur.ops.jobspec import full_label_frames, full_label_phases, parse_job, without_late_defaults
    from hpcsur.ops.provenance import flatten

    tables = tomllib.loads(pp_job(trajectories=200).replace("full = true", "full = true\nfull_every = 5"))
    spec = parse_job(tables)
    phases = full_label_phases(spec)
    np.testing.assert_array_equal(phases, full_label_phases(parse_job(tables)))
    assert set(phases.tolist()) == set(range(5))
    tables["simulation"]["seed"] += 1
    assert not np.array_equal(full_label_phases(parse_job(tables)), phases)
    tables["labels"]["full_phase"] = "zero"
    mask = full_label_frames(parse_job(tables))
    plain = parse_job(tomllib.loads(pp_job()))          # no budget: no phase, and no change to the data's hash
    assert plain.labels.full_phase == "zero" and "full_phase" not in json.dumps(
        without_late_defaults(flatten(plain.to_dict())))
    assert not full_label_phases(parse_job(tables)).any() and mask[0, ::5].all() and not mask[0, 1::5].any()


def test_full_every_budgets_the_full_labels(refs, tmp_path):
    """[labels] full_every = r: all forces only on trajectory frames o, o + r, ... of the training trajectories and
    on every validation frame (NaN elsewhere, never computed); those frames equal the every-frame store's, every
    other array is bit-identical, the attributes count the labelled frames, and the store is smaller."""
    from hpcsur.ops.jobspec import full_label_frames, load_job

    text = pp_job().replace("full = true", "full = true\nfull_every = 4") + "[split]\nvalidation = 1\ntest = 1\n"
    job = write_job(tmp_path, "pp", text)
    out = tmp_path / "budget"
    generate(job, out, 2)
    got, ref = load(out), load(refs["pp"])
    mask = full_label_frames(load_job(job)).reshape(-1)
    attrs = open_dataset(out).attrs
    phases = attrs["full_phases"]           # full_phase = "random": one phase in 0 .. 3 per trajectory
    assert len(phases) == 4 and all(0 <= o < 4 for o in phases)
    expected = np.zeros((4, 15), dtype=bool)
    for t in (0, 1):                        # training trajectories 0, 1: every 4th frame from their phase
        expected[t, phases[t]::4] = True
    expected[2] = True                      # the validation trajectory: every frame; the test one: none
    np.testing.assert_array_equal(mask, expected.reshape(-1))
    np.testing.assert_array_equal(got["f_full"][mask], ref["f_full"][mask])
    assert np.isnan(got["f_full"][~mask]).all()
    for name in ("x", "idx", "f_partial", "phi", "t", "step", "traj"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert attrs["full_every"] == 4 and attrs["full_label_frames"] == int(expected.sum())
    assert info(out)["bytes_on_disk"] < info(refs["pp"])["bytes_on_disk"]
    res = hpcsur("validate", write_job(tmp_path / "bad", "pp", text.replace("full = true\n", "")))
    assert res.returncode == 2 and "full_every = 4 needs full = true" in res.stderr


# ----------------------------------------------------------------------------- 3. lock
@pytest.mark.mpi
def test_locked_store_is_refused(refs, tmp_path):
    job = write_job(tmp_path, "pp", pp_job())
    store = tmp_path / "store"
    shutil.copytree(refs["pp"], store)
    lock = acquire_lock(store)
    try:
        res = generate(job, store, 1, "--resume", check=False)
    finally:
        lock.release()
    assert res.returncode == 2, res.stderr
    line = error_line(res)
    assert "locked" in line and f"pid={os.getpid()}" in line


# ----------------------------------------------------------------------------- 4. verify
def test_verify_names_damaged_shards(refs, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(refs["pp"], store)
    assert hpcsur("store", "verify", store).returncode == 0
    truncated = store / "x" / "c" / "0" / "0"
    flipped = store / "f_partial" / "c" / "3" / "0" / "0" / "0"   # frame, draw, block, coordinate
    assert truncated.is_file() and flipped.is_file(), sorted(p for p in (store / "f_partial").rglob("*"))
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    res = hpcsur("store", "verify", store)
    assert res.returncode == 1, res.stdout
    assert "shard 0 array 'x'" in res.stdout and "truncated" in res.stdout
    report = verify(store)
    bad = {(p.shard, p.array, p.reason) for p in report.problems}
    assert bad == {(0, "x", "truncated"), (3, "f_partial", "altered")}


# ----------------------------------------------------------------------------- 5. bad specs
BAD_SPECS = {
    "unknown_key": (1, pp_job(trajectories=2).replace("seed = 3", "seed = 3\nsteps_per_frame = 2"),
                    "steps_per_frame"),
    "p_too_large": (1, pp_job(trajectories=2, p=1.5), "p = 1.5"),
    "p_zero": (1, pp_job(trajectories=2, p=0), "p = 0"),
    "steps_zero": (1, pp_job(trajectories=2).replace("steps = 140", "steps = 0"), "steps = 0"),
    "grid_not_dividing": (3, AC.format(parallel=_parallel([2, 1])), "grid = [2, 1]"),
    "grid_too_fine": (2, pp_job(trajectories=2, n=3, grid=[2]), "does not fit"),
    "grid_wrong_length": (1, pp_job(trajectories=2, grid=[1, 1]), "grid = [1, 1]"),
    # probes: a value that only fails later, and jobs that cannot fit (pre-flight, before writing)
    "infinite_temperature": (1, LJ.format(parallel="").replace("temperature = 1.0",
                                                               "temperature = { uniform = [0.5, inf] }"), "finite"),
    "lj_1e11_atoms": (1, LJ.format(parallel="").replace('lattice = "fcc"\nn_atoms = 864',
                                                        'lattice = "random"\nn_atoms = 100000000000'),
                      "the store needs 14.6 TB"),
    "pp_10M_trajectories": (1, pp_job(trajectories=10_000_000), "the store needs"),
    "pp_2e63_trajectories": (1, pp_job(trajectories=2 ** 63 - 1), "the store needs"),
    "latent_dim_above_N": (1, pp_job(trajectories=4) + "[split]\nvalidation = 1\ntest = 1\n[autoencoder]\nlatent_dim = 1000\n",
                           "latent_dim = 1000 is out of range; allowed: 2 < latent_dim <= 100"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_job_spec_exits_2_and_writes_nothing(tmp_path, case):
    n, text, needle = BAD_SPECS[case]
    job = write_job(tmp_path, "bad", text.replace('frames_per_shard = 5', '') if case == "grid_too_fine" else text)
    out = tmp_path / "out"
    res = generate(job, out, n, check=False, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    line = error_line(res)
    assert needle in line, line
    assert not out.exists(), f"{case}: the store path was created"


@pytest.mark.mpi
def test_existing_store_needs_resume(refs, tmp_path):
    job = write_job(tmp_path, "pp", pp_job())
    store = tmp_path / "store"
    shutil.copytree(refs["pp"], store)
    before = load(store)
    res = generate(job, store, 1, check=False, timeout=60)
    assert res.returncode == 2
    assert "--resume" in error_line(res)
    after = load(store)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("output,needle", [
    ("", "not allowed; name a folder of its own"),
    (".", "not allowed; name a folder of its own"),
    ("/dev/null/store", "is under /dev"),
    ("/proc/hpcsur", "is under /proc"),
    ("FILE", "is an existing file, not a folder"),
])
def test_unusable_store_paths_are_one_line_and_leave_nothing(tmp_path, monkeypatch, output, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    job = write_job(tmp_path, "pp", pp_job(trajectories=2))
    res = subprocess.run([HPCSUR, "generate", str(job), "--output", output, "--no-progress"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and needle in error_line(res), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "pp.toml"]     # no .lock, no skeleton


@pytest.mark.parametrize("content,needle", [
    (b"\xff\xfe[system]\x00\x01", "not a text file in UTF-8"),
    (bytes(range(256)), "not a text file in UTF-8"),
    (None, "is a folder, not a job spec file"),
])
def test_unreadable_spec_files_are_one_line(tmp_path, content, needle):
    path = tmp_path / "spec.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    res = hpcsur("validate", path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr


def test_store_verify_on_anything_is_one_line(refs, tmp_path):
    (tmp_path / "file").write_text("not a store")
    res = hpcsur("store", "verify", tmp_path / "file")
    assert res.returncode == 2 and "not a dataset (a file)" in res.stderr and "Traceback" not in res.stderr
    store = tmp_path / "store"
    shutil.copytree(refs["pp"], store)
    manifest = store / "manifest.json"
    manifest.write_text(manifest.read_text()[: len(manifest.read_text()) // 2])
    res = hpcsur("store", "verify", store)
    assert res.returncode == 2 and "manifest.json is unreadable" in res.stderr and "Traceback" not in res.stderr
