"""``hpcsur demo``: the main job end to end on the embedded default (see hpcsur.ops.demo)."""


def add_arguments(parser):
    parser.add_argument("--workdir", default="runs/demo", help="where the demo writes its store and report")


def run(args):
    from hpcsur.ops.demo import run_demo

    return run_demo(args.workdir)
