"""``hpcsur scale JOB.toml --ranks 1,2,4 --mode strong|weak [--stages generate,train-ae] [--slurm] [--output DIR]``.

Runs generation and a short ``train-ae`` at each rank count (each point from its own derived spec,
with its own store / run folder), fits the scaling model of :mod:`hpcsur.ops.scale` to the
measured times and extrapolates the efficiency to more ranks. Writes ``scaling.json``,
``scaling.csv`` and ``scaling.png`` under ``--output`` (default ``runs/<job>/scale-<mode>``) and
prints a table. Run it as one process: it launches ``mpiexec`` (or submits Slurm jobs) itself.
"""


def add_arguments(parser):
    from hpcsur.learn.config import BACKENDS

    parser.add_argument("job", help="job spec (TOML); train-ae needs an [autoencoder] table")
    parser.add_argument("--ranks", required=True, help="comma-separated rank / worker counts, e.g. 1,2,4")
    parser.add_argument("--mode", required=True, help="strong (same problem) or weak (work grows with the ranks)")
    parser.add_argument("--stages", default="generate,train-ae",
                        help="comma-separated: generate, train-ae (alias train); default both")
    parser.add_argument("--weak-dim", default="auto",
                        help="weak scaling over the ensemble (trajectories x P) or the domain (system size x P); "
                             "auto: domain when [parallel] grid has > 1 rank, else ensemble")
    parser.add_argument("--epochs", default="2", help="train-ae epochs per point (default 2; the first "
                                                             "is not timed when there are two or more)")
    parser.add_argument("--extrapolate", default="8,64,512", help="rank counts to predict with the fitted model")
    parser.add_argument("--backend", choices=BACKENDS, help="override [train] backend for the training points")
    parser.add_argument("--slurm", action="store_true", help="one sbatch job per point instead of local processes")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (or sbatch scripts); run nothing")
    parser.add_argument("--output", help="output folder (default runs/<job>/scale-<mode>)")
    parser.add_argument("--force", action="store_true", help="remove point folders of an earlier run in --output")


def run(args):
    import os
    import sys

    from hpcsur.errors import InputError
    from hpcsur.log import env_size
    from hpcsur.ops import scale
    from hpcsur.ops.jobspec import load_job

    if env_size() > 1:
        raise InputError("run hpcsur scale as one process (not under mpiexec/srun): it launches the ranks itself")
    ranks = scale.parse_counts(args.ranks, "--ranks")
    mode = scale.parse_mode(args.mode)
    stages = scale.parse_stages(args.stages)
    weak_dim = scale.parse_weak_dim(args.weak_dim)
    extrapolate = scale.parse_counts(args.extrapolate, "--extrapolate")
    epochs = scale.parse_positive(args.epochs, "--epochs")
    spec = load_job(args.job)
    out_dir = args.output or os.path.join(spec.run_dir, f"scale-{mode}")
    plan = scale.plan_scale(spec, ranks, mode, stages, out_dir, weak_dim=weak_dim, epochs=epochs,
                            extrapolate=extrapolate, backend=args.backend)
    if args.dry_run:
        print(scale.dry_run_text(plan, args.slurm, os.getcwd()))
        return 0
    try:
        report = scale.run_scale(plan, use_slurm=args.slurm, force=args.force)
    except scale.PointFailed as exc:
        print(f"hpcsur scale: error: {exc}", file=sys.stderr)
        return 1
    print(report["table"])
    print(f"\nwrote {report['files']['json']}, {report['files']['csv']}, {report['files']['png']}")
    return 0
