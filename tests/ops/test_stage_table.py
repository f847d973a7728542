"""One table of stages, one launcher builder and one --stages grammar for run, submit, scale and campaign."""
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsur.errors import InputError
from hpcsur.ops import campaign, pipeline, slurm, stage_table
from hpcsur.ops.stage_table import ORDER, PIPELINE, STAGES, parse_stages, stage_command

HPCSUR = str(Path(sys.executable).parent / "hpcsur")
ROOT = Path(__file__).resolve().parents[2]


def test_the_grammar():
    assert parse_stages("generate,verify , train-ae") == ("generate", "verify", "train-ae")
    assert parse_stages(",".join(PIPELINE), PIPELINE) == PIPELINE
    for text, words in [("", "give a comma-separated list"), ("generate,,encode", "give a comma-separated list"),
                        ("generate,bogus", "unknown stage 'bogus'; choose from: generate, verify"),
                        ("encode,encode", "names a stage twice"), ("encode,generate", "out of order"),
                        ("verify", "unknown stage 'verify'; choose from: generate, train-ae")]:
        with pytest.raises(InputError, match=words):
            parse_stages(text, PIPELINE if text == "verify" else ORDER)


def test_command_lines_follow_the_table():
    hp = ["hpcsur"]
    assert stage_command("generate", "j.toml", 4, 2, hpcsur=hp, mpiexec="mpx") == \
        ["mpx", "-n", "4", "hpcsur", "generate", "j.toml", "--resume"]
    assert stage_command("train-ae", "j.toml", 4, 2, backend="ddp", hpcsur=hp, mpiexec="mpx") == \
        ["mpx", "-n", "2", "hpcsur", "train-ae", "j.toml", "--resume", "--backend", "ddp"]
    assert stage_command("train-latent", "j.toml", 4, 1, backend="ddp", hpcsur=hp) == \
        ["hpcsur", "train-latent", "j.toml", "--resume", "--backend", "ddp"]
    assert stage_command("evaluate", "j.toml", 4, 2, backend="ddp", hpcsur=hp) == ["hpcsur", "evaluate", "j.toml"]
    assert stage_command("verify", "j.toml", 4, 2, store_path="st", hpcsur=hp) == ["hpcsur", "store", "verify", "st"]
    # the front ends use the same table
    assert pipeline.STAGES == PIPELINE and slurm.STAGES is STAGES and slurm.ORDER == ORDER
    assert pipeline.stage_command("j.toml", "encode", 3, 1)[1:3] == ["-n", "3"]
    task = campaign.MemberTask(0, "m", "", "m.toml", "run", "generate", 2, ".")
    assert campaign.member_command(task, "py", "mpx") == ["mpx", "-n", "2", "py", "-m", "hpcsur.cli.main",
                                                          "generate", "m.toml", "--resume", "--no-progress"]


@pytest.mark.parametrize("argv", [["run", "--stages"], ["submit", "--dry-run", "--stages"],
                                  ["scale", "--ranks", "1", "--mode", "strong", "--stages"]])
def test_every_front_end_speaks_the_same_grammar(argv):
    job = str(ROOT / "jobs" / "predator_prey.toml")
    res = subprocess.run([HPCSUR, argv[0], job, *argv[1:], "train-ae,generate"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "is out of order; stages run in the order generate" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
