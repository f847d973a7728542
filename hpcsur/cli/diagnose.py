"""``hpcsur diagnose JOB.toml [--frames N]``: how the trained autoencoder looks to the latent losses.

Prints (and writes to ``<run_dir>/autoencoder/diagnostics.json``) the condition number of J J^T, the
coherence of J (how unevenly the coordinates share its row space), how strongly the leverage follows
the input scaling 1/sigma_c, and -- once encoded -- the label noise of the partial labels: the
numbers that predict whether L_x,p will learn from a uniform sample of coordinates.
"""


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) with an [autoencoder] table")
    parser.add_argument("--frames", type=int, default=2000, help="training frames to compute J on (default 2000)")


def run(args):
    import json

    from hpcsur.errors import InputError
    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job

    if args.frames < 2:
        raise InputError(f"--frames {args.frames} is out of range; allowed: --frames >= 2")
    out = stages.diagnose(load_job(args.job), args.frames)
    print(json.dumps(out, indent=1))
    return 0
