"""``hpcsur evaluate JOB.toml``: latent RK4 rollouts of every trained model against the encoded test
trajectories (and of every saved snapshot, for error-vs-epoch curves); writes ``<run_dir>/report.json``,
``<run_dir>/plots/*.png`` and the results claim ``<[output] results>/<job>.json``, and prints the table."""


def add_arguments(parser):
    from hpcsur.learn.config import LOSSES

    parser.add_argument("job", help="job spec (TOML) with a [latent] table")
    parser.add_argument("--loss", choices=LOSSES, action="append",
                        help="score only this loss (repeatable; no results file is written for a partial evaluation)")
    parser.add_argument("--resume", action="store_true", help="accepted for symmetry with the other stages")


def run(args):
    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job

    from hpcsur.errors import InputError

    spec = load_job(args.job)
    latent = spec.require("latent", "evaluate")
    for loss in args.loss or []:
        if loss not in latent.losses:
            raise InputError(f"--loss {loss}: not in [latent] losses = {latent.losses}")
    report = stages.evaluate(spec, losses=args.loss)
    print(stages.format_table(report))
    print(f"report: {report['plots']['observables'].rsplit('/plots/', 1)[0]}/report.json")
    if "results" in report:
        print(f"results: {report['results']}")
    for name, path in report["plots"].items():
        print(f"plot ({name}): {path}")
    return 0
