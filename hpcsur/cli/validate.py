"""``hpcsur validate JOB.toml [--ranks R]``: check a job spec, print the pre-flight estimate (store size,
memory per rank, generation time) and the spec resolved (defaults filled in)."""
from hpcsur.ops.jobspec import dump_job, load_job


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks the estimate assumes (default 2)")


def run(args):
    from hpcsur.errors import InputError
    from hpcsur.ops.preflight import check_fits, check_path, estimate

    if args.ranks < 1:
        raise InputError(f"--ranks {args.ranks} is out of range; allowed: --ranks >= 1")
    spec = load_job(args.job)
    check_path(spec)
    print(f"# {args.job}: valid ({spec.kind}, data hash {spec.data_hash()})")
    for line in estimate(spec, args.ranks).lines():
        print(f"# {line}")
    try:
        check_fits(spec, args.ranks)
    except InputError as err:
        print(f"# warning: does not fit this machine: {str(err).split(': ', 1)[1]}")
    print(dump_job(spec), end="")
    return 0
