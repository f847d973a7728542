"""``hpcsur train-ae JOB.toml [--resume] [--backend B]``: train the closure autoencoder.

Launch several data-parallel workers with ``mpiexec -n W``, ``srun`` or ``torchrun``. On SIGTERM or
SIGUSR1 every worker stops at the next step, a checkpoint is written and the exit code is 75
(resume with ``--resume``).
"""
from hpcsur.learn.config import BACKENDS


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) with an [autoencoder] table")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint (or skip if finished)")
    parser.add_argument("--backend", choices=BACKENDS, help="override [train] backend")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")


def run(args):
    from hpcsur.cli.common import stop_to_exit_code
    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job

    spec = load_job(args.job)
    return stop_to_exit_code(lambda: stages.train_ae(spec, resume=args.resume, backend=args.backend,
                                                     progress=not args.no_progress))
