"""``hpcsur run JOB.toml [--ranks R] [--workers W] [--backend B] [--stages a,b] [--keep]``: generate ->
train-ae -> encode -> train-latent -> evaluate on this machine, skipping finished stages and redoing
those whose spec fields changed since their outputs were made (``--keep``: refuse instead)."""


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_arguments(parser):
    from hpcsur.learn.config import BACKENDS

    parser.add_argument("job", help="job spec (TOML) with [autoencoder] and [latent] tables")
    parser.add_argument("--ranks", type=_positive_int, default=2, help="MPI ranks for generate and encode (default 2)")
    parser.add_argument("--workers", type=_positive_int, help="training workers (default: [train] workers)")
    parser.add_argument("--backend", choices=BACKENDS, help="override [train] backend")
    parser.add_argument("--stages", help="comma-separated subset of: generate,train-ae,encode,train-latent,evaluate")
    parser.add_argument("--keep", action="store_true",
                        help="refuse (one line naming the changed fields) instead of redoing stages whose spec changed")


def run(args):
    from hpcsur.ops.jobspec import load_job
    from hpcsur.ops.pipeline import run_pipeline

    spec = load_job(args.job)
    from hpcsur.ops.stage_table import PIPELINE, parse_stages

    stages = list(parse_stages(args.stages, PIPELINE)) if args.stages is not None else None
    return run_pipeline(spec, args.job, ranks=args.ranks, workers=args.workers, backend=args.backend, stages=stages,
                        keep=args.keep)
