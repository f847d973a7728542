"""``hpcsur status JOB.toml [--json]``: the Slurm state of each submitted stage and the store's progress.

States come from ``scontrol show job`` (finished jobs stay there for MinJobAge), then from the
``jobcomp/filetxt`` log where the cluster keeps one (there is no sacct without slurmdbd).
"""
import json
import os


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) that was submitted with `hpcsur submit`")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    from hpcsur.ops import slurm
    from hpcsur.ops.jobspec import load_job

    report = slurm.status(load_job(args.job), os.getcwd())
    print(json.dumps(report, indent=1) if args.json else slurm.format_status(report))
    return 0
