"""The size scan (paper Fig. 4): the crossing of e_tol read off a curve, and `hpcsur results --size-scan` on a real
two-member campaign of tiny Predator-Prey jobs (each member run end to end)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsur.ops.size_scan import crossing, read_crossings

HPCSUR = str(Path(sys.executable).parent / "hpcsur")

SCAN = """
[system]
kind = "predator_prey"
n = 10
[simulation]
trajectories = 8
dt = 0.01
steps = 190
save_every = 10
seed = 5
[labels]
p = 0.2
full = true
[store]
path = "{root}/store/scan"
[output]
dir = "{root}/runs/scan"
results = "{root}/results"
[split]
validation = 1
test = 2
[autoencoder]
latent_dim = 4
hidden = [8]
epochs = 2
batch = 32
[latent]
hidden = [8]
losses = ["lz", "lxp"]
equivalent_data = {{ lz = [20, 60], lxp = [4, 8] }}
seeds = [1, 2]
epochs = 3
batch = 8
[evaluate]
substeps = 2
[campaign]
zip = true
[campaign.sweep]
"system.n" = [10, 20]
"labels.p" = [0.2, 0.1]
"""


def test_crossing_reads_the_first_set_below_and_interpolates_in_log_log():
    points = [(800, 1e-3), (100, 1e-2), (400, 2e-3), (200, 4e-3)]          # unsorted on purpose
    got = crossing(points, 3e-3)
    assert got["first_below"] == 400
    expected = 200 * (3e-3 / 4e-3) ** (math.log(400 / 200) / math.log(2e-3 / 4e-3))
    assert got["interpolated"] == pytest.approx(expected, rel=1e-12) and 200 < got["interpolated"] < 400
    assert crossing([(10, 1.0), (20, 0.5)], 3e-3) == {"first_below": None, "interpolated": None, "more_than": 20}
    assert crossing([], 3e-3) == {"first_below": None, "interpolated": None, "more_than": None}
    assert crossing([(10, 1e-3), (20, 5e-4)], 3e-3) == {"first_below": 10, "interpolated": 10, "upper_bound": True}
    assert got["upper_bound"] is False


def test_looser_reading_gives_the_ratio_of_computations_at_an_equal_error():
    point = lambda c, e, d: {"force_computations": c, "e_abs": {"mean": e}, "seed_disagreement": {"mean": d}}
    curves = {"lz": [point(1e6, 5e-2, 1e-2), point(4e6, 5e-3, 2e-3)],
              "lxp": [point(1e4, 2e-2, 5e-3), point(4e4, 8e-3, 4e-3), point(1e5, 6e-3, 1e-3)]}
    got = read_crossings(curves, 1e-2)
    lz, lxp = crossing([(1e6, 5e-2), (4e6, 5e-3)], 1e-2), crossing([(1e4, 2e-2), (4e4, 8e-3), (1e5, 6e-3)], 1e-2)
    assert got["needed"] == {"lz": lz, "lxp": lxp} and got["lz_over_lxp"] == pytest.approx(lz["interpolated"]
                                                                                            / lxp["interpolated"])
    assert 1e6 < lz["interpolated"] < 4e6 and 1e4 < lxp["interpolated"] < 4e4
    paper_metric = got["needed_paper_metric"]
    assert paper_metric["lxp"]["first_below"] == 1e4 and paper_metric["lz"]["first_below"] == 4e6
    assert got["lz_over_lxp_is"] == "exact"
    assert read_crossings(curves, 3e-3)["lz_over_lxp"] is None    # L_z never reaches it: no ratio
    assert read_crossings(curves, 2.5e-2)["lz_over_lxp_is"] == "lower bound"   # L_x,p starts below: needs at most 1e4


@pytest.mark.mpi
def test_size_scan_of_a_real_campaign(tmp_path):
    from hpcsur.ops.campaign.members import plan_members
    from hpcsur.ops.jobspec import dump_job, load_job

    scan = tmp_path / "scan.toml"
    scan.write_text(SCAN.format(root=tmp_path))
    res = subprocess.run([HPCSUR, "results", "--size-scan", str(scan)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "no member of the scan is evaluated yet" in res.stderr
    members = plan_members(load_job(scan))
    for member in members:
        path = tmp_path / f"{member.name}.toml"
        path.write_text(dump_job(member.spec))
        run = subprocess.run([HPCSUR, "run", str(path), "--ranks", "1", "--workers", "1"], capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = subprocess.run([HPCSUR, "results", "--size-scan", str(scan)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "results" / "scan.json").read_text())
    assert (tmp_path / "results" / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    assert [s["blocks"] for s in out["sizes"]] == [10, 20] and out["tolerance"] == 3e-3 and out["kind"] == "size-scan"
    for size, member in zip(out["sizes"], members):
        report = json.loads(Path(member.run_dir, "report.json").read_text())
        k = round(member.spec.labels.p * size["blocks"])
        for row in report["rows"]:
            point = next(p for p in size["curves"][row["loss"]] if p["equivalent_data"] == row["equivalent_data"])
            per_frame = size["blocks"] if row["loss"] == "lz" else k
            assert point["force_computations"] == row["train_frames"] * per_frame
            assert point["e_abs"]["mean"] == pytest.approx(row["e_abs"]["mean"], rel=1e-12)
            assert point["seed_disagreement"]["mean"] == row["seed_disagreement"]["e_abs"]["mean"] > 0
        for loss, points in size["curves"].items():
            assert size["needed"][loss] == crossing([(p["force_computations"], p["e_abs"]["mean"]) for p in points],
                                                    3e-3)
            assert size["needed_paper_metric"][loss] == crossing(
                [(p["force_computations"], p["seed_disagreement"]["mean"]) for p in points], 3e-3)
        assert len(size["curves"]["lz"]) == 2 and len(size["curves"]["lxp"]) == 2
        assert out["looser_tolerances"] == [1e-2]
        assert size["needed_looser"]["0.01"] == json.loads(json.dumps(read_crossings(size["curves"], 1e-2)))
