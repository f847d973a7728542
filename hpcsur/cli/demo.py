"""``hpcsur demo``: the main job end to end on the embedded default (see hpcsur.ops.demo)."""


def add_arguments(parser):
    parser.add_argument("--job", default="jobs/predator_prey.toml", help="the job to run end to end")
    parser.add_argument("--fresh", action="store_true", help="remove the job's store and run folder first")


def run(args):
    from hpcsur.ops.demo import run_demo

    return run_demo(args.job, fresh=args.fresh)
