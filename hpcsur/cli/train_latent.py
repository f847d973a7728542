"""``hpcsur train-latent JOB.toml [--loss lz|lx|lxp] [--seed N] [--size K] [--resume] [--backend B]``.

Trains one latent model per (loss, equivalent-data size, seed) of the ``[latent]`` table (or only
those selected), on equal equivalent data: K configurations for L_z / L_x, K/p for L_x,p. Data-parallel under
``mpiexec -n W`` / ``srun`` / ``torchrun``; SIGTERM / SIGUSR1 checkpoint and exit 75.
"""
from hpcsur.learn.config import BACKENDS, LOSSES


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) with a [latent] table")
    parser.add_argument("--loss", choices=LOSSES, action="append", help="train only this loss (repeatable)")
    parser.add_argument("--seed", type=int, action="append", help="train only this seed (repeatable)")
    parser.add_argument("--size", type=int, action="append",
                        help="train only this [latent] equivalent_data size (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs, skip finished ones")
    parser.add_argument("--backend", choices=BACKENDS, help="override [train] backend")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")


def run(args):
    from hpcsur.cli.common import stop_to_exit_code
    from hpcsur.errors import InputError
    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job

    spec = load_job(args.job)
    latent = spec.require("latent", "train-latent")
    for loss in args.loss or []:
        if loss not in latent.losses:
            raise InputError(f"--loss {loss}: not in [latent] losses = {latent.losses}")
    for seed in args.seed or []:
        if seed not in latent.seeds:
            raise InputError(f"--seed {seed}: not in [latent] seeds = {latent.seeds}")
    for size in args.size or []:
        if size not in latent.sizes:
            raise InputError(f"--size {size}: not in [latent] equivalent_data = {latent.equivalent_data}")
    return stop_to_exit_code(lambda: stages.train_latent(spec, losses=args.loss, seeds=args.seed, resume=args.resume,
                                                         backend=args.backend, progress=not args.no_progress,
                                                         sizes=args.size))
