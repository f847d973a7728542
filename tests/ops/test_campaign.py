"""``hpcsur campaign`` / ``hpcsur monitor`` end to end on a real LocalCluster: a predator-prey sweep of
three members (real subprocess launches, real zarr stores, the real Bokeh dashboard), re-run as a
no-op, a campaign whose driver is killed with SIGKILL and then resumed, and bad ``[campaign]`` input.

Every campaign runs in its own folder (relative store paths), so the stores of two campaigns of the
same spec can be compared array by array.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from hpcsur.errors import InputError
from hpcsur.ops.campaign import (campaign_points, human_bytes, member_command, member_env, plan_members,
                                 resolve_settings, MemberTask)
from hpcsur.ops.jobspec import Campaign, load_job
from hpcsur.store import completed_shards, info, open_dataset, verify

pytestmark = pytest.mark.dask

HPCSUR = str(Path(sys.executable).parent / "hpcsur")
ARRAYS = ("x", "idx", "f_partial", "f_full", "phi", "t", "step", "traj")

# 3 members (prey level c swept), 2 trajectories x 20 frames each, 2 shards per trajectory.
SWEEP = """
[system]
kind = "predator_prey"
n = 50
[simulation]
trajectories = 2
dt = 0.01
steps = 190
save_every = 10
seed = 3
integrator = "euler"
[labels]
p = 0.2
full = true
[store]
path = "storage/pp"
frames_per_shard = 10
[output]
dir = "runs/pp"
[campaign]
{extra}
"""
THREE_POINTS = 'sweep = {"initial.c" = [0.45, 0.5, 0.55]}\ndashboard = "127.0.0.1:0"\n'
N_MEMBERS, SHARDS, FRAMES = 3, 4, 40


def write_job(folder: Path, extra: str = "", text: str = SWEEP, sweep: bool = True) -> Path:
    """``pp.toml`` in ``folder``: the 3-point sweep (dashboard on any free port) plus ``extra``."""
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "pp.toml"
    job.write_text(text.format(extra=(THREE_POINTS if sweep else "") + extra))
    return job


def hpcsur_here(folder: Path, monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The real ``hpcsur`` entry point, in this process (fast), run from ``folder``."""
    from hpcsur.cli.main import main

    monkeypatch.chdir(folder)
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def hpcsur(folder: Path, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([HPCSUR, *map(str, args)], cwd=folder, capture_output=True, text=True, timeout=timeout)


def stores(folder: Path) -> list[Path]:
    return [folder / f"storage/pp-{i}" for i in range(N_MEMBERS)]


def load(path) -> dict:
    ds = open_dataset(path)
    got = ds.global_frames(0, ds.n_frames)
    return {k: np.asarray(got[k]) for k in ARRAYS}


def files_state(folder: Path) -> dict:
    """path -> (size, mtime_ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def records(store: Path) -> dict:
    """The completion records of a store, by file name, with their content."""
    folder = store / "progress"
    return {p.name: p.read_text() for p in folder.glob("shard-*.json")} if folder.is_dir() else {}


def monitor_rows(text: str) -> dict:
    """``hpcsur monitor --once`` table rows by member name: point, task, store, shards, frames, bytes."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and re.fullmatch(r"pp-\d+|total", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


def check_monitor_matches_stores(folder: Path, text: str) -> None:
    """Every member row shows exactly what its store says (shards, frames, bytes on disk)."""
    rows = monitor_rows(text)
    done_frames = 0
    for i, store in enumerate(stores(folder)):
        point, task, state, shards, frames, size = rows[f"pp-{i}"]
        if (store / "zarr.json").exists():
            got = info(store)
            assert shards == f"{got['shards_complete']}/{got['shards_total']}", (i, text)
            assert frames == f"{got['frames_complete']}/{FRAMES}", (i, text)
            assert size == human_bytes(got["bytes_on_disk"]), (i, text)
            done_frames += got["frames_complete"]
        else:
            assert frames == f"0/{FRAMES}", (i, text)
    assert rows["total"][4].startswith(f"{done_frames}/{N_MEMBERS * FRAMES} "), text


# ----------------------------------------------------------------------------- pure parts
def test_sweep_points_product_and_zip():
    both = {"initial.c": [1, 2], "system.a": [3, 4]}
    assert campaign_points(Campaign(sweep=both)) == [
        {"initial.c": 1, "system.a": 3}, {"initial.c": 1, "system.a": 4},
        {"initial.c": 2, "system.a": 3}, {"initial.c": 2, "system.a": 4}]
    assert campaign_points(Campaign(sweep=both, zip=True)) == [
        {"initial.c": 1, "system.a": 3}, {"initial.c": 2, "system.a": 4}]
    nested = Campaign(sweep={"initial": {"c": [1, 2]}})  # [campaign.sweep.initial] c = [...]
    assert campaign_points(nested) == [{"initial.c": 1}, {"initial.c": 2}]
    assert campaign_points(Campaign()) == [{}]


def test_members_are_derived_specs_with_own_store_seed_and_no_campaign(tmp_path):
    spec = load_job(write_job(tmp_path, "members = 2"))
    members = plan_members(spec)
    assert [(m.index, m.point, m.replica) for m in members] == [(i, i // 2, i % 2) for i in range(6)]
    assert [m.spec.initial["c"].low for m in members] == [0.45, 0.45, 0.5, 0.5, 0.55, 0.55]
    assert [m.spec.simulation.seed for m in members] == [3 + i for i in range(6)]
    assert [m.store for m in members] == [f"storage/pp-{i}" for i in range(6)]
    assert len({m.spec.data_hash() for m in members}) == 6
    assert all(m.spec.campaign is None for m in members)


def test_member_command_and_environment():
    task = MemberTask(0, "pp-0", "", "runs/pp-0/pp-0.toml", "runs/pp-0", "generate", 3, "/x")
    assert member_command(task, "py", "/bin/mpiexec") == [
        "/bin/mpiexec", "-n", "3", "py", "-m", "hpcsur.cli.main", "generate", "runs/pp-0/pp-0.toml",
        "--resume", "--no-progress"]
    single = MemberTask(0, "pp-0", "", "a.toml", "runs/pp-0", "all", 1, "/x")
    assert member_command(single, "py") == ["py", "-m", "hpcsur.cli.main", "run", "a.toml", "--ranks", "1"]
    parent = {"PATH": "/bin", "PMI_RANK": "2", "PMI_FD": "7", "HYDI_CONTROL_FD": "9", "MPI_LOCALRANKID": "2",
              "OMPI_COMM_WORLD_RANK": "2", "OMPI_MCA_btl": "self"}
    assert member_env(parent) == {"PATH": "/bin", "OMPI_MCA_btl": "self", "UCX_NET_DEVICES": "lo",
                                  "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo"}
    assert member_env({"UCX_NET_DEVICES": "ib0"})["UCX_NET_DEVICES"] == "ib0"   # a user's choice stands
    in_slurm = member_env({"SLURM_JOB_ID": "5"})
    assert in_slurm["HYDRA_LAUNCHER"] == "fork" and in_slurm["HYDRA_RMK"] == "user"
    assert member_env({"SLURM_JOB_ID": "5", "HYDRA_LAUNCHER": "ssh"})["HYDRA_LAUNCHER"] == "ssh"


def test_settings_command_line_overrides(tmp_path):
    spec = load_job(write_job(tmp_path, "workers = 3"))
    s = resolve_settings(spec, dashboard="localhost:0", workers=1)
    assert (s.scheduler, s.workers, s.dashboard) == ("local", 1, "127.0.0.1:0")
    assert resolve_settings(spec, dashboard="off").dashboard is None
    with pytest.raises(InputError, match="--dashboard = '0.0.0.0:8787' is not allowed"):
        resolve_settings(spec, dashboard="0.0.0.0:8787")
    with pytest.raises(InputError, match="--scheduler = 'pbs' is not allowed"):
        resolve_settings(spec, scheduler="pbs")
    assert resolve_settings(spec).members is None
    assert resolve_settings(spec, members="0, 2").members == {0, 2}
    assert resolve_settings(spec, members="0-1,1").members == {0, 1}


def test_only_the_chosen_members_run(tmp_path):
    job = write_job(tmp_path)
    dry = hpcsur(tmp_path, "campaign", job.name, "--members", "1", "--dry-run")
    assert dry.returncode == 0 and "3 members, 1 to run" in dry.stdout, dry.stdout + dry.stderr
    assert dry.stdout.count("skip (not chosen)") == 2 and not (tmp_path / "storage").exists()
    res = hpcsur(tmp_path, "campaign", job.name, "--members", "1", "--dashboard", "off")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "storage").iterdir()) == ["pp-1"] and verify(stores(tmp_path)[1]).ok
    state = json.loads((tmp_path / "runs/pp/campaign.json").read_text())
    assert [r["status"] for r in state["members"]] == ["not chosen", "ok", "not chosen"]
    assert (state["totals"]["members"], state["totals"]["members_done"]) == (1, 1)
    assert re.search(rf"campaign pp: 1/1 members, {FRAMES}/{FRAMES} frames \(100%\)", res.stderr), res.stderr
    again = hpcsur(tmp_path, "campaign", job.name, "--members", "1")
    assert again.returncode == 0 and "the 1 chosen of the 3 members complete; nothing to do" in again.stderr


# ----------------------------------------------------------------------------- bad input
BAD = [
    ('sweep = {"initial.temp" = [1.0]}', "sweep key 'initial.temp': [initial] has no key 'temp'"),
    ('sweep = {"system.alpha" = [1.0]}', "sweep key 'system.alpha': [system] has no key 'alpha'"),
    ('sweep = {"store.path" = ["a"]}', "sweep key 'store.path': table [store] cannot be swept"),
    ('sweep = {"initial.c" = []}', "is not a non-empty list of values"),
    ("members = 0", "[campaign] members = 0 is out of range; allowed: 1 <= members"),
    ('sweep = {"initial.c" = [0.4, 0.5], "system.a" = [3.0]}\nzip = true', "zip = true needs sweep lists of one length"),
    ('sweep = {"labels.p" = [0.2, 1.5]}', "[member 1]: [labels] p = 1.5 is out of range"),
    ('dashboard = "0.0.0.0:8787"', "dashboard = '0.0.0.0:8787' is not allowed"),
    ("ranks_per_member = 0", "ranks_per_member = 0 is out of range"),
    ('scheduler = "pbs"', "scheduler = 'pbs' is not allowed"),
    ("colour = 1", "[campaign] unknown key 'colour'"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_campaign_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, extra, message):
    job = write_job(tmp_path, extra, sweep=False)
    code, out, err = hpcsur_here(tmp_path, monkeypatch, capsys, "campaign", job.name)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pp.toml"]


def test_bad_options_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    job = write_job(tmp_path)
    for args, message in [(("--dashboard", "0.0.0.0:1"), "--dashboard = '0.0.0.0:1' is not allowed"),
                          (("--stages", "train"), "--stages = 'train' is not allowed"),
                          (("--workers", "0"), "--workers = 0 is out of range"),
                          (("--members", "1-3"), "--members = '1-3': '1-3' is out of range; allowed: indices 0 .. 2"),
                          (("--members", "2-1"), "ranges low-high with low <= high"),
                          (("--members", "one"), "'one' is not an index or a range like 0-2"),
                          (("--stages", "all"), "missing table [autoencoder] (needed by hpcsur campaign --stages all)")]:
        code, out, err = hpcsur_here(tmp_path, monkeypatch, capsys, "campaign", job.name, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pp.toml"]


def test_bad_input_from_the_command_line_and_mpi_without_enough_ranks(tmp_path):
    job = write_job(tmp_path, "members = 0")
    res = hpcsur(tmp_path, "campaign", job.name)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "hpcsur campaign: error: pp.toml: [campaign] members = 0 is out of range; allowed: 1 <= members"], res.stderr
    job = write_job(tmp_path)
    res = hpcsur(tmp_path, "campaign", job.name, "--scheduler", "mpi")  # 1 rank: no room for dask-mpi
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--scheduler mpi needs mpiexec -n 3 or more" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pp.toml"]


def test_slurm_dry_run_renders_the_worker_job_script_and_writes_nothing(tmp_path):
    job = write_job(tmp_path, "ranks_per_member = 2\n[slurm]\npartition = \"debug\"\ntime = \"00:20:00\"\n"
                              "setup = [\"module load mpi\"]")
    res = hpcsur(tmp_path, "campaign", job.name, "--scheduler", "slurm", "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for line in ("#SBATCH -p debug", "#SBATCH -n 1", "#SBATCH --cpus-per-task=2", "#SBATCH -t 00:20:00",
                 "module load mpi", f"cd {tmp_path}"):
        assert line in out, out
    assert "#SBATCH --mem" not in out  # [slurm] mem unset: the partition's default
    assert re.search(r"distributed.cli.dask_worker \S+ .*--nthreads 1", out), out
    assert out.count("mpiexec -n 2") == N_MEMBERS and out.count("generate runs/pp-") == N_MEMBERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pp.toml"]


# ----------------------------------------------------------------------------- real campaigns
@pytest.fixture(scope="module")
def campaign_a(tmp_path_factory):
    """The sweep run once to completion: 1 worker, 2 ranks per member (mpiexec -n 2)."""
    folder = tmp_path_factory.mktemp("campaign_a")
    job = write_job(folder, "ranks_per_member = 2\nworkers = 1")
    res = hpcsur(folder, "campaign", job.name, "--interval", "0.5")
    assert res.returncode == 0, res.stdout + res.stderr
    return folder, job, res


def test_sweep_completes_distinct_verified_stores_and_rerun_is_a_noop(campaign_a):
    folder, job, res = campaign_a
    spec = load_job(job)
    members = plan_members(spec)
    data = []
    for m, store in zip(members, stores(folder)):
        got = info(store)
        assert (got["shards_complete"], got["shards_total"], got["frames_complete"]) == (SHARDS, SHARDS, FRAMES)
        assert verify(store).ok
        member_toml = folder / m.spec_path  # the resolved member spec the task ran
        assert load_job(member_toml).data_hash() == m.spec.data_hash()
        assert json.loads((store / "zarr.json").read_text())["attributes"]["data_hash"] == m.spec.data_hash()
        data.append(load(store))
    for a in range(N_MEMBERS):  # every member is its own experiment
        for b in range(a):
            assert not np.array_equal(data[a]["x"], data[b]["x"])
    state = json.loads((folder / "runs/pp/campaign.json").read_text())
    assert state["state"] == "finished" and [r["status"] for r in state["members"]] == ["ok"] * N_MEMBERS
    assert state["totals"]["frames_done"] == N_MEMBERS * FRAMES
    assert re.search(rf"campaign pp: {N_MEMBERS}/{N_MEMBERS} members, {N_MEMBERS * FRAMES}/{N_MEMBERS * FRAMES} "
                     r"frames \(100%\), [\d.]+ frames/s", res.stderr), res.stderr
    assert all(re.search(rf"^pp-{i}\s+c=\S+\s+ok\s+{SHARDS}/{SHARDS}\s", res.stderr, re.M) for i in range(N_MEMBERS))

    before = files_state(folder / "storage")
    again = hpcsur(folder, "campaign", job.name)
    assert again.returncode == 0, again.stderr
    assert "all 3 members complete; nothing to do" in again.stderr
    assert files_state(folder / "storage") == before  # not a byte rewritten
    state = json.loads((folder / "runs/pp/campaign.json").read_text())
    assert [r["status"] for r in state["members"]] == ["skipped"] * N_MEMBERS

    mon = hpcsur(folder, "monitor", job.name, "--once")
    assert mon.returncode == 0, mon.stderr
    assert mon.stdout.startswith("campaign pp: finished")
    check_monitor_matches_stores(folder, mon.stdout)
    assert monitor_rows(mon.stdout)["total"][2] == f"{N_MEMBERS} complete"


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _running_state(folder: Path):
    try:
        state = json.loads((folder / "runs/pp/campaign.json").read_text())
    except FileNotFoundError:
        return None
    return state if state.get("state") == "running" else None


def _processes_in(folder: Path) -> list[psutil.Process]:
    """Processes working in ``folder`` (the driver, its dask workers and member commands)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.cwd() == str(folder):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _check_dashboard(url: str, driver: psutil.Process) -> None:
    """The real Bokeh dashboard (not the bokeh-missing stub), on 127.0.0.1 only."""
    assert url.startswith("http://127.0.0.1:") and url.endswith("/status"), url
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    with direct.open(url, timeout=30) as r:
        body = r.read().decode()
        assert r.status == 200
    assert "Dask Diagnostic UI" in body and "bokeh" in body.lower() and len(body) > 2000, body[:300]
    assert "Dask needs bokeh" not in body  # the stub served when bokeh is missing (181 bytes, status 200)
    port = int(url.split(":")[2].split("/")[0])
    listening = []
    for p in [driver] + driver.children():  # scheduler + nannies, and the worker processes (not the members)
        try:
            listening += [(p.pid, c.laddr) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert len({pid for pid, _ in listening}) >= 2, listening  # the driver and the worker processes
    assert all(addr.ip == "127.0.0.1" for _, addr in listening), listening
    assert (driver.pid, port) in [(pid, addr.port) for pid, addr in listening]
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in others:  # the dashboard port answers on no other interface
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=5).close()


def test_killed_campaign_resumes_to_the_same_data_and_the_dashboard_is_real(campaign_a, tmp_path):
    folder = tmp_path / "b"
    job = write_job(folder, "workers = 2")  # 2 workers x 1 rank (campaign_a: 1 worker x 2 ranks)
    driver = subprocess.Popen([HPCSUR, "campaign", job.name, "--interval", "0.5"], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = _wait(lambda: _running_state(folder), 120, "the campaign to start")
        assert state["pid"] == driver.pid
        _check_dashboard(state["dashboard"], psutil.Process(driver.pid))
        _wait(lambda: any(completed_shards(s) for s in stores(folder)), 120, "a first complete shard")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)

    # no orphan: the LocalCluster workers and their member commands die with the driver
    gone = _wait(lambda: not _processes_in(folder) or None, 60, "the campaign's processes to end")
    assert gone
    killed = {s: records(s) for s in stores(folder)}
    n_done = sum(len(r) for r in killed.values())
    assert 0 < n_done < N_MEMBERS * SHARDS, "the kill must land mid-campaign"

    mon = hpcsur(folder, "monitor", job.name, "--once")
    assert mon.returncode == 0, mon.stderr
    assert mon.stdout.startswith("campaign pp: interrupted (driver gone)"), mon.stdout
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/status$", mon.stdout, re.M), mon.stdout
    check_monitor_matches_stores(folder, mon.stdout)

    res = hpcsur(folder, "campaign", job.name, "--interval", "0.5")
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads((folder / "runs/pp/campaign.json").read_text())
    for i, store in enumerate(stores(folder)):
        status = state["members"][i]["status"]
        assert status == ("skipped" if len(killed[store]) == SHARDS else "ok"), (i, status)
        assert verify(store).ok
        now = records(store)
        assert len(now) == SHARDS
        assert {k: now[k] for k in killed[store]} == killed[store]  # resumed, not restarted
        a, b = load(stores(campaign_a[0])[i]), load(store)
        for name in ARRAYS:  # nothing lost or duplicated: identical to the uninterrupted campaign
            assert np.array_equal(a[name], b[name]), (i, name)

    mon = hpcsur(folder, "monitor", job.name, "--once")
    assert mon.stdout.startswith("campaign pp: finished"), mon.stdout
    check_monitor_matches_stores(folder, mon.stdout)


def test_store_from_another_spec_is_refused_before_anything_runs(campaign_a, tmp_path):
    shutil.copytree(stores(campaign_a[0])[1], tmp_path / "storage/pp-1")
    job = write_job(tmp_path, text=SWEEP.replace("seed = 3", "seed = 4"))  # data hash differs
    res = hpcsur(tmp_path, "campaign", job.name)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "store storage/pp-1 was generated from a different spec" in res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "storage/pp-0").exists()


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster answers (see slurm/local)")
def test_slurm_campaign_of_one_member(tmp_path):
    """One member on one SLURMCluster worker job of the local Slurm cluster."""
    job = write_job(tmp_path, 'workers = 1\n[slurm]\nmem = "1G"\ntime = "00:10:00"', sweep=False)
    driver = subprocess.Popen([HPCSUR, "campaign", job.name, "--scheduler", "slurm"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        driver.terminate()  # SIGTERM: the driver closes its SLURMCluster, which cancels the worker job
        out, _ = driver.communicate(timeout=60)
        queue = subprocess.run(["squeue"], capture_output=True, text=True, timeout=10).stdout
        pytest.fail(f"the Slurm campaign did not finish in 300 s (worker job never started?)\n{out}\n{queue}")
    assert driver.returncode == 0, out
    got = info(tmp_path / "storage/pp-0")
    assert got["shards_complete"] == got["shards_total"] and verify(tmp_path / "storage/pp-0").ok
    state = json.loads((tmp_path / "runs/pp/campaign.json").read_text())
    assert state["scheduler"] == "slurm" and state["members"][0]["status"] == "ok"
    assert list((tmp_path / "runs/pp/slurm-workers").glob("hpcsur-pp-*.err"))  # the worker ran as a Slurm job


LEARNING = """
[split]
validation = 1
test = 1
[autoencoder]
latent_dim = 4
hidden = [8]
epochs = 2
batch = 16
[latent]
hidden = [8]
losses = ["lxp"]
equivalent_data = 4
seeds = [1]
epochs = 3000
batch = 4
[train]
workers = 1
"""


def test_sigterm_to_a_whole_pipeline_campaign_leaves_no_process_and_it_resumes(tmp_path):
    """SIGTERM to the driver of `campaign --stages all` stops the members' `hpcsur run` *and* the stage
    each of them is running (no orphan training or evaluation), and a rerun finishes every member."""
    job = write_job(tmp_path, 'sweep = {"initial.c" = [0.45, 0.55]}\nworkers = 2', sweep=False)
    job.write_text(job.read_text().replace("trajectories = 2", "trajectories = 4") + LEARNING)
    driver = subprocess.Popen([HPCSUR, "campaign", job.name, "--stages", "all", "--interval", "0.5"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: list(tmp_path.glob("runs/pp-*/latent/*/curve.csv")), 240, "a member to train its latent model")
    finally:
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=120)
    assert _wait(lambda: not _processes_in(tmp_path) or None, 60, "every campaign process to end"), out
    res = hpcsur(tmp_path, "campaign", job.name, "--stages", "all", "--interval", "0.5", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for i in range(2):
        assert (tmp_path / f"runs/pp-{i}/report.json").exists()
