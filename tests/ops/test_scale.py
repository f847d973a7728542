"""`hpcsur scale`: real strong / weak studies of a tiny Predator-Prey job (generate + a 1-epoch train-ae at
1 and 2 ranks), the model fit on synthetic timings, bad input, the Slurm path (rendered, and submitted to
the local cluster). Timings are reported, never asserted: only structure and invariants are checked."""
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsur.cli.main import main
from hpcsur.errors import InputError
from hpcsur.ops import scale
from hpcsur.ops.jobspec import parse_job

HPCSUR = str(Path(sys.executable).parent / "hpcsur")

JOB = """
[system]
kind = "predator_prey"
n = 20
[simulation]
trajectories = 4
dt = 0.01
steps = 290
save_every = 10
seed = 3
[labels]
p = 0.25
[store]
path = "{root}/unused-store"
frames_per_shard = 30
[output]
dir = "{root}/run"
[split]
validation = 1
test = 1
[autoencoder]
latent_dim = 4
hidden = [8]
epochs = 5
batch = 16
{extra}
"""


def write_job(tmp_path, extra=""):
    job = tmp_path / "tiny.toml"
    job.write_text(JOB.format(root=tmp_path, extra=extra))
    return job


def run_cli(*args, timeout=300):
    return subprocess.run([HPCSUR, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def check_outputs(out: Path, mode: str) -> dict:
    report = json.loads((out / "scaling.json").read_text())
    assert report["mode"] == mode and report["ranks"] == [1, 2]
    assert report["stages"] == ["generate", "train-ae"]
    rows = report["rows"]
    assert [(r["stage"], r["ranks"]) for r in rows] == [("generate", 1), ("generate", 2), ("train-ae", 1),
                                                        ("train-ae", 2)]
    for r in rows:
        for key in ("time_s", "wall_s", "throughput", "speedup", "efficiency", "model_time_s", "model_efficiency"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["wall_s"] >= r["time_s"] and r["startup_s"] >= 0
        assert r["throughput"] == pytest.approx(r["work"] / r["time_s"])
    for stage in ("generate", "train-ae"):
        first, second = [r for r in rows if r["stage"] == stage]
        assert first["speedup"] == pytest.approx(1.0) and first["efficiency"] == pytest.approx(1.0)
        assert second["efficiency"] == pytest.approx(second["speedup"] / 2)
    gen = [r for r in rows if r["stage"] == "generate"]
    assert all(r["labels_per_s"] == pytest.approx(r["throughput"] * 5) for r in gen)  # |I| = 0.25 * 20
    # every point ran from its own spec; generation points never share a store; training reads generate-p1's
    points = {p["name"]: p for p in report["points"]}
    assert set(points) == {"generate-p1", "generate-p2", "train-ae-p1", "train-ae-p2"}
    assert points["generate-p1"]["store"] != points["generate-p2"]["store"]
    assert points["train-ae-p1"]["store"] == points["train-ae-p2"]["store"] == points["generate-p1"]["store"]
    assert points["train-ae-p1"]["backend"] == "none" and points["train-ae-p2"]["backend"] in ("horovod", "ddp")
    for name in ("train-ae-p1", "train-ae-p2"):
        done = json.loads((Path(points[name]["directory"]) / "run" / "autoencoder" / "done.json").read_text())
        assert done["workers"] == points[name]["ranks"] and done["epochs"] == 1
    # the model: finite non-negative constants, each with its source; extrapolation to 8, 64, 512
    for stage, model in report["model"].items():
        assert set(model["constants"]) == set(model["sources"])
        assert all(math.isfinite(v) and v >= 0 for v in model["constants"].values())
    assert report["model"]["generate"]["sources"]["lambda"] == "prior (no data)"  # one rank per trajectory
    extra = report["extrapolation"]
    assert sorted({(e["stage"], e["ranks"]) for e in extra}) == [(s, p) for s in ("generate", "train-ae")
                                                                  for p in (8, 64, 512)]
    for e in extra:
        assert (e["efficiency"] is not None and math.isfinite(e["efficiency"]) and e["efficiency"] > 0) \
            or e["note"].startswith("not feasible")
    with open(out / "scaling.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["stage"], int(r["ranks"])) for r in table] == [(r["stage"], r["ranks"]) for r in rows]
    assert all(float(r["efficiency"]) > 0 for r in table)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


@pytest.mark.mpi
def test_strong_scaling_of_generate_and_train_ae(tmp_path, capsys):
    job = write_job(tmp_path)
    out = tmp_path / "strong"
    res = run_cli("scale", job, "--ranks", "1,2", "--mode", "strong", "--epochs", "1", "--output", out)
    assert res.returncode == 0, res.stdout + res.stderr
    report = check_outputs(out, "strong")
    points = {p["name"]: p for p in report["points"]}
    assert points["generate-p1"]["frames"] == points["generate-p2"]["frames"] == 4 * 30
    assert points["generate-p2"]["groups"] == 2 and points["generate-p2"]["grid"] == [1]
    assert points["train-ae-p1"]["frames"] == points["train-ae-p2"]["frames"] == 2 * 30
    # the printed table: one line per point, the extrapolation, the constants
    for stage, p in (("generate", 1), ("generate", 2), ("train-ae", 1), ("train-ae", 2)):
        assert any(line.split()[:2] == [stage, str(p)] for line in res.stdout.splitlines())
    assert "model extrapolation" in res.stdout and "model constants" in res.stdout
    assert not (tmp_path / "unused-store").exists()
    # a second study into the same folder would reuse its stores: refused, one line, exit 2
    code = main(["scale", str(job), "--ranks", "1,2", "--mode", "strong", "--stages", "generate", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--force" in err[0]


@pytest.mark.mpi
def test_weak_scaling_grows_the_work_with_the_ranks(tmp_path, capsys):
    job = write_job(tmp_path)
    out = tmp_path / "weak"
    # in-process (the launches are still real subprocesses): saves the driver's start-up
    code = main(["scale", str(job), "--ranks", "1,2", "--mode", "weak", "--epochs", "1", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "train-ae  2" in captured.out
    report = check_outputs(out, "weak")
    assert report["weak_dim"] == "ensemble"
    points = {p["name"]: p for p in report["points"]}
    assert points["generate-p2"]["frames"] == 2 * points["generate-p1"]["frames"] == 8 * 30
    assert "trajectories = 8" in Path(points["generate-p2"]["spec"]).read_text()
    assert points["train-ae-p2"]["frames"] == 2 * points["train-ae-p1"]["frames"] == 60
    rows = {(r["stage"], r["ranks"]): r for r in report["rows"]}
    for stage in ("generate", "train-ae"):  # P times the work really done (frames written, samples trained)
        assert rows[(stage, 2)]["work"] == 2 * rows[(stage, 1)]["work"]
    from hpcsur import store

    assert store.info(points["generate-p2"]["store"])["frames_complete"] == 240


# ----------------------------------------------------------------------------- the model (pure)
def ac_spec(grid=None, n=64, trajectories=4):
    tables = {"system": {"kind": "allen_cahn", "n": n},
              "simulation": {"trajectories": trajectories, "dt": 1e-5, "steps": 40, "save_every": 10},
              "labels": {"p": 0.1}, "store": {"path": "unused"}}
    if grid:
        tables["parallel"] = {"grid": list(grid)}
    return parse_job(tables, source="ac.toml", name="ac")


def test_fit_recovers_known_generation_constants():
    known = {"c": 2.0e-8, "lambda": 7.0e-6, "c_h": 3.0e-9, "t0": 0.4}
    terms = scale.generation_terms("allen_cahn")
    counts = []
    for grid in [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)]:
        spec = ac_spec(grid)
        counts.append(scale.generation_counts(spec, grid, ranks=grid[0] * grid[1]))
    assert len({round(c["halo"] / c["messages"], 6) for c in counts[1:]}) > 1  # halo and messages separable
    times = [sum(known[t.name] * c[scale.COUNT_OF[t.name]] for t in terms) for c in counts]
    fit = scale.fit_model(counts, times, terms)
    assert all(src == "fitted" for src in fit.sources.values()), fit.sources
    for name, value in known.items():
        assert fit.constants[name] == pytest.approx(value, rel=1e-6)
    assert fit.residual < 1e-9


def test_fit_recovers_known_training_constants():
    known = {"c_s": 3e-4, "alpha": 2e-5, "beta": 4e-9, "t0": 0.05}
    counts = [scale.training_counts(w, 3840 // (w * 32), 32, 600, 40_000) for w in (1, 2, 4, 8, 16)]
    times = [sum(known[t.name] * c[scale.COUNT_OF[t.name]] for t in scale.TRAINING_TERMS) for c in counts]
    fit = scale.fit_model(counts, times, scale.TRAINING_TERMS)
    assert all(src == "fitted" for src in fit.sources.values()), fit.sources
    for name, value in known.items():
        assert fit.constants[name] == pytest.approx(value, rel=1e-6)


def test_two_points_fit_what_they_can_and_keep_priors_for_the_rest():
    terms = scale.generation_terms("allen_cahn")
    # ensemble parallelism: no communication at all -> c and t0 from two points, exactly
    counts = [scale.generation_counts(ac_spec(), (1, 1), ranks=p) for p in (1, 2)]
    times = [3e-8 * c["compute"] + 0.7 for c in counts]
    fit = scale.fit_model(counts, times, terms)
    assert fit.constants["c"] == pytest.approx(3e-8) and fit.constants["t0"] == pytest.approx(0.7)
    assert fit.sources["lambda"] == fit.sources["c_h"] == "prior (no data)"
    # a decomposed second point: c and the communication scale (ratio of the priors), t0 at its prior 0
    counts = [scale.generation_counts(ac_spec((1, 1)), (1, 1), 1), scale.generation_counts(ac_spec((2, 1)), (2, 1), 2)]
    times = [counts[0]["compute"] * 3e-8, counts[1]["compute"] * 3e-8
             + 4 * (scale.PRIOR_LATENCY * counts[1]["messages"] + scale.PRIOR_VALUE_GRID * counts[1]["halo"])]
    fit = scale.fit_model(counts, times, terms)
    assert fit.constants["c"] == pytest.approx(3e-8)
    assert fit.constants["lambda"] == pytest.approx(4 * scale.PRIOR_LATENCY)
    assert fit.constants["c_h"] == pytest.approx(4 * scale.PRIOR_VALUE_GRID)
    assert fit.sources["lambda"] == "fitted (scale of prior)" and fit.sources["t0"] == "prior"
    # beyond the node, communication never costs less than the network priors
    assert scale.fit_model(counts, [counts[0]["compute"] * 3e-8, counts[1]["compute"] * 3e-8], terms) \
        .extrapolation_constants()["lambda"] == scale.PRIOR_LATENCY


def test_counts_follow_surface_and_volume():
    one = scale.generation_counts(ac_spec(n=128), (1, 1), 1)
    four = scale.generation_counts(ac_spec((2, 2), n=128), (2, 2), 4)
    assert one["halo"] == one["messages"] == 0
    assert four["compute"] == one["compute"] / 4            # owned volume
    big = scale.generation_counts(ac_spec((2, 2), n=256), (2, 2), 4)
    assert big["compute"] == 4 * four["compute"]
    assert 1.9 < big["halo"] / four["halo"] < 4             # surface-like (plus the gathered state)
    assert scale.lj_ghosts(32000, 0.8442, 2.8, (1, 1, 1)) == 0
    assert scale.lj_ghosts(32000, 0.8442, 2.8, (2, 1, 1)) == pytest.approx(2 * 2.8 * 0.8442 * (32000 / 0.8442) ** (2 / 3))


def test_weak_points_grow_the_work_without_running_anything(tmp_path):
    spec = parse_job({"system": {"kind": "predator_prey", "n": 20},
                      "simulation": {"trajectories": 4, "dt": 0.01, "steps": 20, "save_every": 10},
                      "labels": {"p": 0.25}, "store": {"path": "unused"}}, source="pp.toml", name="pp")
    out = tmp_path / "out"
    domain = scale.plan_scale(spec, (1, 2, 4), "weak", ("generate",), str(out), weak_dim="domain")
    assert [(p.ranks, p.grid, p.groups, p.spec.system.n, p.sites, p.work) for p in domain.points] == [
        (1, (1,), 1, 20, 20, 12), (2, (2,), 1, 40, 40, 12), (4, (4,), 1, 80, 80, 12)]
    ensemble = scale.plan_scale(spec, (1, 2, 4), "weak", ("generate",), str(out))
    assert ensemble.weak_dim == "ensemble"
    assert [(p.grid, p.groups, p.spec.simulation.trajectories, p.work) for p in ensemble.points] == [
        ((1,), 1, 4, 12), ((1,), 2, 8, 24), ((1,), 4, 16, 48)]
    assert len({p.spec.store.path for p in ensemble.points}) == 3  # never a shared store
    ac = ac_spec((2, 1))
    auto = scale.plan_scale(ac, (2, 8), "weak", ("generate",), str(out))
    assert auto.weak_dim == "domain"
    assert [(p.grid, p.spec.system.n) for p in auto.points] == [((2, 1), 64), ((4, 2), 128)]
    assert not out.exists()


def test_efficiency_definitions():
    assert scale.efficiency(100, 5.0, 2, 100, 10.0, 1) == (2.0, 1.0)   # strong, perfect
    assert scale.efficiency(200, 10.0, 2, 100, 10.0, 1) == (2.0, 1.0)  # weak, perfect
    assert scale.efficiency(200, 20.0, 2, 100, 10.0, 1)[1] == 0.5


# ----------------------------------------------------------------------------- bad input
def test_input_parsing():
    assert scale.parse_counts("4,1,2") == (1, 2, 4)
    assert scale.parse_stages("generate, train-ae") == ("generate", "train-ae")
    for bad in ("0,2", "1,x", "", "1,,2", "-1", "2,2", "1.5"):
        with pytest.raises(InputError):
            scale.parse_counts(bad)
    with pytest.raises(InputError):
        scale.parse_mode("medium")
    with pytest.raises(InputError):
        scale.parse_stages("generate,evaluate")
    with pytest.raises(InputError, match="perfect square"):
        scale.weak_overrides(ac_spec(), "domain", scale.Fraction(2))
    assert scale.weak_overrides(ac_spec(), "domain", scale.Fraction(4)) == {"system.n": 128, "parallel.grid": [2, 2]}
    assert scale.default_dims(12, 2) == (4, 3) and scale.default_dims(8, 3) == (2, 2, 2)


@pytest.mark.parametrize("args, extra, message", [
    (["--ranks", "0,2", "--mode", "strong"], "", "not a positive integer"),
    (["--ranks", "1,two", "--mode", "strong"], "", "not a positive integer"),
    (["--ranks", "1,2", "--mode", "medium"], "", "not a scaling mode"),
    (["--ranks", "1,2", "--mode", "weak", "--epochs", "2,3"], "", "--epochs '2,3' is not a positive integer"),
    (["--ranks", "1,2", "--mode", "strong", "--stages", "generate,evaluate"], "", "unknown stage"),
    (["--ranks", "1,2", "--mode", "strong"], "[parallel]\ngrid = [2]", "does not divide 1 ranks"),
    (["--ranks", "1,8", "--mode", "strong", "--stages", "generate"], "[parallel]\ngrid = [1]", "would idle"),
    (["--ranks", "2,3", "--mode", "weak", "--weak-dim", "domain"], "", "whole number"),
    (["--ranks", "1,8", "--mode", "strong", "--stages", "train-ae"], "", "without"),
], ids=["zero", "word", "mode", "epochs", "stage", "grid", "idle-groups", "weak-domain", "too-many-workers"])
def test_bad_input_is_one_line_and_runs_nothing(tmp_path, capsys, args, extra, message):
    text = JOB.format(root=tmp_path, extra="")
    if extra:
        text = text.replace("[split]", extra + "\n[split]")
    job = tmp_path / "tiny.toml"
    job.write_text(text)
    out = tmp_path / "out"
    code = main(["scale", str(job), *args, "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("hpcsur scale: error: ") and message in err[0], err
    assert not out.exists() and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- Slurm
def test_slurm_dry_run_renders_one_chained_job_per_point(tmp_path, capsys):
    job = write_job(tmp_path)
    out = tmp_path / "out"
    code = main(["scale", str(job), "--ranks", "1,2", "--mode", "strong", "--slurm", "--dry-run", "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    scripts = [line for line in text.splitlines() if line.startswith("# ==== ")]
    assert [Path(s.split()[2]).parent.name for s in scripts] == ["generate-p1", "generate-p2", "train-ae-p1",
                                                                 "train-ae-p2"]
    assert "--dependency" not in scripts[0] and "afterany:<job generate-p1>" in scripts[1]
    assert "afterok:<job generate-p1>" in scripts[2] and "afterany:<job train-ae-p1>" in scripts[3]
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --ntasks=2" in text
    assert text.count("#!/bin/bash") == 4
    assert not out.exists()


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and any(s.strip("*~#") in ("idle", "mix", "alloc") for s in res.stdout.split())


@pytest.mark.slurm
@pytest.mark.mpi
def test_slurm_runs_one_job_per_point(tmp_path):
    if not _cluster_up():
        pytest.skip("no Slurm cluster (start the local one: slurm/local/start.sh)")
    job = write_job(tmp_path)
    out = tmp_path / "slurm"
    res = subprocess.run([HPCSUR, "scale", str(job), "--ranks", "1,2", "--mode", "strong", "--stages", "generate",
                          "--slurm", "--output", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((out / "scaling.json").read_text())
    assert report["launcher"] == "slurm"
    assert [(r["stage"], r["ranks"]) for r in report["rows"]] == [("generate", 1), ("generate", 2)]
    ids = [p["job_id"] for p in report["points"]]
    assert len(set(ids)) == 2 and all(i.isdigit() for i in ids)
    for p in report["points"]:
        log = Path(p["directory"]) / f"generate-{p['job_id']}.out"
        assert "exited with status 0" in log.read_text()
        (record,) = [json.loads(line) for line in
                     (Path(p["directory"]) / f"generate-{p['job_id']}.timing.jsonl").read_text().splitlines()]
        assert record["status"] == 0 and record["end"] >= record["start"]
        assert "#SBATCH --ntasks-per-node=%d" % p["ranks"] in (Path(p["directory"]) / "generate.sbatch").read_text()
    for r in report["rows"]:
        assert math.isfinite(r["efficiency"]) and r["efficiency"] > 0 and r["wall_s"] >= 0
