"""``hpcsur monitor JOB.toml [--once] [--interval S]``: a campaign's progress, read from its stores.

Prints the dashboard URL recorded by the running campaign and, per member, shards and frames
complete and bytes on disk (from the stores, not from dask), with totals and the frame rate.
Without ``--once`` it repeats every ``--interval`` seconds until the campaign is no longer running.
"""


def add_arguments(parser):
    parser.add_argument("job", help="the campaign's job spec (TOML)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between snapshots (default 5)")


def run(args):
    from hpcsur.errors import InputError
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.monitor import watch

    if not args.interval > 0:
        raise InputError(f"--interval = {args.interval} is out of range; allowed: 0 < interval")
    return watch(load_job(args.job), interval=args.interval, once=args.once)
