"""``hpcsur validate JOB.toml``: check a job spec, print it resolved (defaults filled in)."""
from hpcsur.ops.jobspec import dump_job, load_job


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML)")


def run(args):
    spec = load_job(args.job)
    print(f"# {args.job}: valid ({spec.kind}, data hash {spec.data_hash()})")
    print(dump_job(spec), end="")
    return 0
