"""``hpcsur submit JOB.toml [--stages S1,S2,...] [--ensemble N] [--dry-run]``.

Renders one sbatch script per stage from ``slurm/stage.sbatch`` and submits them as an ``afterok``
chain (with ``--ensemble N``: arrays of N tasks, task i = ensemble member i, chained ``aftercorr``).
Job ids are printed and recorded in ``<run_dir>/slurm/jobs.json``; ``hpcsur status JOB.toml``
reports them. ``--dry-run`` prints the scripts and writes and submits nothing.
Relative paths in the spec are relative to the current directory, as for the stages run by hand.
"""
import os

from hpcsur.ops import slurm


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML)")
    parser.add_argument("--stages", default=",".join(slurm.PIPELINE),
                        help="comma-separated stages in pipeline order, from: " + ", ".join(slurm.ORDER)
                             + f" (default: {','.join(slurm.PIPELINE)})")
    parser.add_argument("--ensemble", metavar="N", default=None,
                        help="submit every stage as an array of N tasks, task i running ensemble member i")
    parser.add_argument("--dry-run", action="store_true", help="print the scripts; write and submit nothing")


def run(args):
    from hpcsur.cli.main import COMMANDS
    from hpcsur.ops.jobspec import load_job

    stages = slurm.parse_stages(args.stages)
    ensemble = slurm.parse_ensemble(args.ensemble)
    spec = load_job(args.job)
    slurm.check_available(stages, COMMANDS)
    plan = slurm.plan_submission(spec, stages, workdir=os.getcwd(), template=slurm.load_template(),
                                 hpcsur=slurm.default_hpcsur(), mpiexec=slurm.default_mpiexec(spec),
                                 ensemble=ensemble)
    slurm.check_syntax(plan)
    if args.dry_run:
        for i, job in enumerate(plan.jobs):
            dep = f"  (sbatch --dependency={plan.dependency('<' + plan.jobs[i - 1].stage + ' job id>')})" if i else ""
            print(f"# ==== {job.script_path}{dep}")
            print(job.script)
        return 0
    slurm.check_not_active(plan)
    slurm.write_plan(plan)
    records = slurm.submit_plan(plan)
    jobs_file = slurm.record_submission(plan, records, os.path.abspath(args.job))
    for rec in records:
        extra = f"  array {rec['array']}" if rec["array"] else ""
        extra += f"  after {rec['dependency']}" if rec["dependency"] else ""
        print(f"{rec['stage']:<13} job {rec['job_id']}{extra}")
    print(f"recorded in {jobs_file}; follow with: hpcsur status {args.job}")
    return 0
