"""``mpiexec -n N hpcsur encode JOB.toml [--resume]``: encode every frame with the frozen autoencoder
(z, and the per-frame least-squares data of L_z, L_x, L_x,p) into ``<run_dir>/encoded``."""
import json


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) with an [autoencoder] table")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted encoding")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")


def run(args):
    from mpi4py import MPI

    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job

    spec = load_job(args.job)
    summary = stages.encode(spec, MPI.COMM_WORLD, resume=args.resume, progress=not args.no_progress)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps({"encoded": stages.encoded_path(spec), "frames": summary["frames_complete"],
                          "shards": summary["n_complete"]}))
    return 0
