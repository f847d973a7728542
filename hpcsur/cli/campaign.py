"""``hpcsur campaign JOB.toml``: the job's ensemble / parameter sweep (``[campaign]``) as dask tasks.

Every member is the job with the sweep point applied and its own seed, store (``<store>-i``) and
run folder; each runs as one dask task (``[mpiexec -n ranks_per_member] hpcsur generate
<member>.toml --resume``). Re-running skips complete members and resumes partial ones.

  hpcsur campaign jobs/lj_scan.toml                         # LocalCluster on 127.0.0.1
  hpcsur campaign jobs/lj_scan.toml --dry-run               # list the members and their commands
  hpcsur campaign jobs/lj_scan.toml --members 0-2 --stages all    # only members 0, 1, 2, each end to end
  hpcsur campaign jobs/lj_scan.toml --scheduler slurm --dry-run   # ... and the Slurm worker job script
  mpiexec -n 4 hpcsur campaign jobs/lj_scan.toml --scheduler mpi  # dask-mpi: 2 workers
  hpcsur monitor jobs/lj_scan.toml                          # progress from the stores, dashboard URL

Progress goes to stderr, the final summary table too; the state and summary are in
``<run_dir>/campaign.json``. Exit code 0 when every member is complete, 1 when one failed, 2 for
bad input (nothing written).
"""
import argparse


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("job", help="job spec (TOML) with a [campaign] table (without one: a campaign of one member)")
    parser.add_argument("--scheduler", help="local (default), slurm, mpi, or the address tcp://HOST:PORT of a "
                                            "running scheduler; overrides [campaign] scheduler")
    parser.add_argument("--workers", type=int, help="dask workers (overrides [campaign] workers)")
    parser.add_argument("--dashboard", help="127.0.0.1:PORT (0: any free port) or off (overrides [campaign] dashboard)")
    parser.add_argument("--stages", default="generate", help="generate (default) or all (hpcsur run per member)")
    parser.add_argument("--members", help="run only these members: indices and ranges, e.g. 0-2,5 (default all)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between progress lines (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="validate, list the members (and the Slurm job "
                                                               "script with --scheduler slurm); write nothing")


def run(args):
    from hpcsur.ops.campaign import (mpi_finish, mpi_initialize, prepare, resolve_settings, run_campaign,
                                     terminate_on_sigterm)
    from hpcsur.ops.jobspec import load_job

    spec = load_job(args.job)
    settings = resolve_settings(spec, scheduler=args.scheduler, workers=args.workers, dashboard=args.dashboard,
                                stages=args.stages, members=args.members)
    prepared = prepare(spec, settings)  # every check, on every rank, before anything is started or written
    if args.dry_run:
        return run_campaign(spec, settings, dry_run=True, prepared=prepared)
    if settings.scheduler != "mpi":
        terminate_on_sigterm()
        return run_campaign(spec, settings, interval=args.interval, prepared=prepared)
    if not mpi_initialize(settings):
        return 0  # scheduler or worker rank: the driver has finished
    import logging

    logging.getLogger("hpcsur").setLevel(args.log_level)  # the driver is rank 1; it reports
    try:
        return run_campaign(spec, settings, interval=args.interval, prepared=prepared)
    finally:
        mpi_finish()
