"""`hpcsur export` / `hpcsur predict` / `hpcsur.Surrogate` on a tiny trained Predator-Prey job: the exported model
predicts what `evaluate` rolled out, batched equals one by one, loading runs no pickled code, bad input is one line."""
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from test_pipeline import JOB as PIPELINE_JOB

HPCSUR = str(Path(sys.executable).parent / "hpcsur")

JOB = PIPELINE_JOB.replace("[evaluate]\nsubsteps = 2", "[evaluate]\nsubsteps = 3")   # 14 trajectories: 12, 13 test


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([HPCSUR, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_error_line(res) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("surrogate")
    job = root / "tiny.toml"
    job.write_text(JOB.format(root=root))
    res = cli("run", job, "--ranks", "1", "--workers", "1", timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    export = root / "out" / "pp.hpcsur"
    res = cli("export", job, "--loss", "lxp", "--seed", "2", "--output", export)
    assert res.returncode == 0, res.stderr
    return root, job, export


def test_predict_from_another_folder_equals_the_evaluate_rollout(trained, tmp_path):
    """Export, then predict in a fresh process from another folder with only the export and the store: the
    observables equal those of evaluate's rollout of that model on that test trajectory (to 1e-6), and the
    export carries that model's evaluation numbers."""
    from hpcsur import store as zstore
    from hpcsur.learn.config import Latent
    from hpcsur.learn.rollout import rollout, trajectory_paths
    from hpcsur.learn.stages import LatentRun, load_latent
    from hpcsur.ops.jobspec import load_job

    root, job, export = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = elsewhere / "pred.npz"
    res = cli("predict", export, "--initial", f"{root / 'store'}:12", "--time", "2.9", "--output", out,
              "--plot", "pred.png", cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert "u_mean @ t=0" in res.stdout and (elsewhere / "pred.png").read_bytes()[:4] == b"\x89PNG"
    got = np.load(out)
    t, z_true = trajectory_paths(str(root / "run" / "encoded"), [12])
    np.testing.assert_allclose(got["t"], t, rtol=0, atol=1e-12)
    spec = load_job(job)
    encoded = zstore.open_dataset(root / "run" / "encoded")
    run = LatentRun("lxp", 60, 2, 240, 0)
    assert isinstance(spec.latent, Latent)
    model = load_latent(encoded.attrs, root / "run", spec.latent, run)
    expected = rollout(model, z_true, t, spec.evaluate.substeps)[..., :2]
    np.testing.assert_allclose(got["observables"], expected, rtol=0, atol=1e-6)
    report = json.loads((root / "run" / "report.json").read_text())
    scored = next(r for r in report["runs"] if (r["loss"], r["seed"]) == ("lxp", 2))
    with zipfile.ZipFile(export) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["evaluation"]["e_abs"] == scored["e_abs"] and manifest["source"]["seed"] == 2
    assert manifest["system"] == "predator_prey" and manifest["observables"] == ["u_mean", "v_mean"]
    assert manifest["frame_dt"] == pytest.approx(0.1) and manifest["substeps"] == 3


def test_batched_predict_equals_one_state_at_a_time_and_the_api_agrees(trained, tmp_path):
    from hpcsur import Surrogate
    from hpcsur import store as zstore

    root, _, export = trained
    source = zstore.open_dataset(root / "store")
    x = np.stack([source.frames(t, 0, 1, ["x"])["x"][0] for t in (12, 13, 3)])
    np.save(tmp_path / "three.npy", x)
    res = cli("predict", export, "--initial", tmp_path / "three.npy", "--time", "1.0", "--output",
              tmp_path / "three.zarr", "--decode")
    assert res.returncode == 0, res.stderr
    import zarr

    batched = zarr.open_group(str(tmp_path / "three.zarr"), mode="r")
    s = Surrogate.load(export)
    times = np.asarray(batched["t"][:])
    for b in range(3):
        alone = s.rollout(x[b], times)
        np.testing.assert_allclose(np.asarray(batched["z"][:])[:, b], alone, rtol=0, atol=1e-12)
    assert batched["x"].shape == (len(times), 3, 40)
    encoded = zstore.open_dataset(root / "run" / "encoded")
    z_stored = encoded.frames(12, 0, 3, ["z"])["z"]
    np.testing.assert_allclose(s.encode(source.frames(12, 0, 3, ["x"])["x"]), z_stored, rtol=0, atol=1e-10)
    assert s.observables(z_stored).shape == (3, 2) and s.decode(z_stored).shape == (3, 40)


def test_coarsest_step_keeps_the_tolerance_and_the_next_doubling_breaks_it(trained):
    """coarsest_step returns a 2^k multiple of the evaluation's step whose rollout, compared at its own steps with
    the evaluation-step one (recomputed here), deviates by what it says and at most rtol; one more doubling exceeds
    rtol; a tolerance the fine step itself meets trivially (huge) gives the largest step <= horizon."""
    from hpcsur import Surrogate
    from hpcsur import store as zstore
    from hpcsur.learn.surrogate import relative_deviation

    root, _, export = trained
    s = Surrogate.load(export)
    x0 = zstore.open_dataset(root / "store").frames(12, 0, 1, ["x"])["x"][0]
    horizon = 2.4
    fine = s.dt * np.arange(int(np.floor(horizon / s.dt + 1e-9)) + 1)
    reference = s.rollout(x0, fine, s.dt)
    gaps = {}
    for k in range(0, 8):
        dt = s.dt * 2 ** k
        if 2 ** k > len(fine) - 1:
            break
        z = s.rollout(x0, dt * np.arange((len(fine) - 1) // 2 ** k + 1), dt)
        gaps[k] = relative_deviation(z, reference[::2 ** k])
    assert gaps[0] == 0.0 and all(gaps[k] < gaps[k + 1] for k in range(1, len(gaps) - 1))
    rtol = float(np.sqrt(gaps[1] * gaps[2]))              # between the first two doublings
    dt, gap = s.coarsest_step(x0, horizon, rtol)
    assert dt == pytest.approx(2 * s.dt) and gap == pytest.approx(gaps[1], rel=1e-12) and gap <= rtol
    dt, gap = s.coarsest_step(x0, horizon, 1e9)
    assert dt == pytest.approx(s.dt * 2 ** max(gaps)) and dt <= horizon
    with pytest.raises(Exception, match="rtol"):
        s.coarsest_step(x0, horizon, -1.0)


def test_float32_surrogate_stays_close_to_float64_and_predict_auto_step(trained, tmp_path):
    """precision float32 runs the networks in float32 (outputs still float64 arrays) and stays within 1e-4 of the
    float64 rollout without being identical; `predict --dt auto --every E` prints the step it chose and its rollout
    equals the API's at that step; a bad --dt is one line."""
    from hpcsur import Surrogate
    from hpcsur import store as zstore
    from hpcsur.learn.surrogate import relative_deviation

    root, _, export = trained
    x0 = zstore.open_dataset(root / "store").frames(13, 0, 1, ["x"])["x"][0]
    s64, s32 = Surrogate.load(export), Surrogate.load(export, precision="float32")
    times = 0.1 * np.arange(21)
    z64, z32 = s64.rollout(x0, times), s32.rollout(x0, times)
    assert z32.dtype == np.float64 and str(next(s32.latent.parameters()).dtype) == "torch.float32"
    assert 0.0 < relative_deviation(z32, z64) < 1e-4
    np.save(tmp_path / "x0.npy", x0)
    res = cli("predict", export, "--initial", tmp_path / "x0.npy", "--time", "2.0", "--every", "0.4", "--dt", "auto",
              "--rtol", "1e-3", "--output", tmp_path / "auto.npz")
    assert res.returncode == 0, res.stderr
    chosen, _ = s64.coarsest_step(x0, 2.0, 1e-3)
    assert f"--dt auto: step {chosen:.6g}" in res.stdout
    got = np.load(tmp_path / "auto.npz")
    np.testing.assert_allclose(got["z"][:, 0], s64.rollout(x0, got["t"], chosen), rtol=0, atol=1e-12)
    assert "--dt 'fast' is not allowed" in one_error_line(
        cli("predict", export, "--initial", tmp_path / "x0.npy", "--time", "1", "--dt", "fast"))


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_an_export_runs_no_pickled_code(trained, tmp_path):
    """An export whose arrays hold a pickled object (whose unpickling would run a command) is refused in one
    line, and the command never runs."""
    _, _, export = trained
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.hpcsur"
    with zipfile.ZipFile(export) as archive:
        manifest = archive.read("manifest.json")
    buffer = io.BytesIO()
    np.savez(buffer, **{"latent.net.bad": np.array([_Planted(marker)], dtype=object)})
    with zipfile.ZipFile(planted, "w") as archive:
        archive.writestr("manifest.json", manifest)
        archive.writestr("arrays.npz", buffer.getvalue())
    res = cli("predict", planted, "--initial", tmp_path / "none.npy", "--time", "1")
    assert "arrays.npz is not plain arrays" in one_error_line(res)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["size", "nan", "not_export", "newer", "store_range", "time"])
def test_bad_predict_input_is_one_line(trained, tmp_path, case):
    root, _, export = trained
    state = np.full(40, 0.5)
    target, initial, time = export, tmp_path / "x.npy", "1"
    if case == "size":
        state = np.full(41, 0.5)
    if case == "nan":
        state[17] = np.nan
    np.save(tmp_path / "x.npy", state)
    if case == "not_export":
        target = tmp_path / "notes.txt"
        target.write_text("not a model")
    if case == "newer":
        target = tmp_path / "newer.hpcsur"
        with zipfile.ZipFile(export) as src, zipfile.ZipFile(target, "w") as dst:
            manifest = json.loads(src.read("manifest.json"))
            dst.writestr("manifest.json", json.dumps({**manifest, "version": 99}))
            dst.writestr("arrays.npz", src.read("arrays.npz"))
    if case == "store_range":
        initial = f"{root / 'store'}:14"
    if case == "time":
        time = "-1"
    line = one_error_line(cli("predict", target, "--initial", initial, "--time", time))
    expected = {"size": "a state of shape (1, 41) does not fit this surrogate (predator_prey, N = 40)",
                "nan": "state 0 has a non-finite value at coordinate 17",
                "not_export": "not an hpcsur export",
                "newer": "export format version 99 is newer than this hpcsur reads (1)",
                "store_range": "trajectory 14 is out of range; allowed: 0 <= TRAJ < 14",
                "time": "--time -1.0 is not allowed"}[case]
    assert expected in line and line.startswith("hpcsur predict: error: ")


def test_export_of_an_untrained_model_is_one_line(trained, tmp_path):
    root, job, _ = trained
    text = job.read_text().replace(f'dir = "{root}/run"', f'dir = "{tmp_path}/run"')
    other = tmp_path / "other.toml"
    other.write_text(text)
    line = one_error_line(cli("export", other, "--output", tmp_path / "x.hpcsur"))
    assert "no encoded store" in line and not (tmp_path / "x.hpcsur").exists()
    line = one_error_line(cli("export", job, "--seed", "7", "--output", tmp_path / "x.hpcsur"))
    assert "--seed 7: not in [latent] seeds = [1, 2]" in line
    line = one_error_line(cli("export", job, "--size", "61", "--output", tmp_path / "x.hpcsur"))
    assert "--size 61: not an equivalent_data size of lxp ([60])" in line
