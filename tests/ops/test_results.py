"""Results claims: the paper's numbers beside ours, the README table generated from results/*.json."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import load_job
from hpcsur.ops.paper import paper_value
from hpcsur.ops.results import (BEGIN, END, SIZE_SCAN, build_results, load_results, markdown_table, markers,
                                 results_files, update_readme)

ROOT = Path(__file__).resolve().parents[2]
HPCSUR = str(Path(sys.executable).parent / "hpcsur")


def stat(mean, std=0.0):
    return {"mean": mean, "std": std, "std_population": std, "values": [mean]}


def fake_report(rows):
    return {"test_trajectories": list(range(100)), "substeps": 10, "rows": [
        {"loss": loss, "equivalent_data": n, "train_frames": n if loss != "lxp" else 5 * n, "p": p,
         "force_evaluations": {"per_frame": 20 if loss == "lxp" else 100, "train_frames": n, "train": 100 * n,
                               "validation_frames": 0, "validation": 0, "total": 100 * n},
         "e_abs": stat(e), "e_sq": stat(e * e), "seconds": [1.0], "curve": []} for loss, n, p, e in rows]}


def test_results_carry_protocol_commit_ledger_and_the_papers_numbers():
    spec = load_job(ROOT / "jobs" / "predator_prey_paper.toml")
    res = build_results(spec, fake_report([("lz", 3000, 1.0, 2e-3), ("lxp", 3000, 0.2, 1e-3), ("lx", 999, 1.0, 1e-3)]))
    assert res["protocol"]["schedule_on"] == "train" and res["protocol"]["select"] == "last"
    assert res["protocol"]["latent_model"] == "onsagernet_ref" and res["protocol"]["autoencoder"]["recipe"] == "reference"
    assert res["protocol"]["epochs"] == 2000 and res["protocol"]["seeds"] == [1, 2, 3]
    assert res["spec_hash"] == spec.spec_hash() and len(res["spec_hash"]) == 16
    paper = [r["paper"] for r in res["rows"]]
    assert paper[0]["mean"] == 3.19e-3 and paper[1]["mean"] == 1.34e-3 and paper[2] is None
    assert res["code"]["commit"] is None or len(res["code"]["commit"]) == 40


def test_paper_values_are_keyed_by_p_and_model_family():
    assert paper_value("predator_prey", "lxp", 0.2, 600, "onsagernet").mean == 4.00e-3
    assert paper_value("predator_prey", "lxp", 0.25, 600, "onsagernet").mean == 3.50e-3
    assert paper_value("lennard_jones", "lz", 1.0, 1250, "gfinn").mean == 1.28e-2
    assert paper_value("predator_prey", "lxp", 0.3, 600, "onsagernet") is None


def test_the_readme_block_is_replaced_and_a_missing_block_is_one_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\ntail\n")
    assert update_readme(readme, "| new |") and readme.read_text() == f"intro\n{BEGIN}\n| new |\n{END}\ntail\n"
    assert not update_readme(readme, "| new |")
    (tmp_path / "plain.md").write_text("no block")
    with pytest.raises(InputError, match="no generated results block"):
        update_readme(tmp_path / "plain.md", "x")


def test_the_readme_table_is_the_one_the_results_files_give():
    """The numbers in the README come from results/*.json, not from a hand."""
    files = results_files(ROOT / "results")
    text = (ROOT / "README.md").read_text()
    if not files:
        assert BEGIN not in text
        return
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown_table(load_results(files)).strip(), "run `hpcsur results --readme README.md`"
    ablations = results_files(ROOT / "results" / "ablations")
    begin, end = markers("ablations")
    if ablations:
        block = text.split(begin, 1)[1].split(end, 1)[0].strip()
        assert block == markdown_table(load_results(ablations), "results/ablations").strip(), \
            "run `hpcsur results --readme README.md`"


def test_size_scan_files_stay_out_of_the_results_table(tmp_path):
    (tmp_path / "scan.json").write_text(json.dumps({"kind": SIZE_SCAN, "sizes": []}))
    (tmp_path / "job.json").write_text(json.dumps({"rows": [], "protocol": {}}))
    (tmp_path / "broken.json").write_text("{")
    assert results_files(tmp_path) == [str(tmp_path / "broken.json"), str(tmp_path / "job.json")]
    with pytest.raises(InputError, match="broken.json: not a readable results file"):
        load_results(results_files(tmp_path))


def test_results_cli_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    res = subprocess.run([HPCSUR, "results", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not an hpcsur results file" in res.stderr
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe")
    res = subprocess.run([HPCSUR, "results", str(tmp_path / "junk.json")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not a readable results file" in res.stderr


def test_an_environment_failure_is_one_line_with_its_own_exit_code(monkeypatch, capsys, tmp_path):
    """An operating-system error (here: disk full while writing results) is not bad input: exit 3."""
    import errno

    from hpcsur.cli.main import main
    from hpcsur.ops import results

    spec = load_job(ROOT / "jobs" / "predator_prey_paper.toml")
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps(build_results(spec, fake_report([("lz", 3000, 1.0, 2e-3)]))))
    assert main(["results", str(claim)]) == 0

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/README.md")

    monkeypatch.setattr(results, "markdown_table", full)
    capsys.readouterr()
    code = main(["results", str(claim)])
    err = capsys.readouterr().err
    assert code == 3 and err.strip() == "hpcsur results: environment error: No space left on device: /data/README.md"
