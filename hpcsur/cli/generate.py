"""``mpiexec -n N hpcsur generate JOB.toml [--output PATH] [--resume] [--force]``.

Simulates the job's trajectories over the MPI ranks, computes forces on the chosen blocks only,
and writes everything to a sharded zarr store. ``--resume`` continues an interrupted store. Before
anything is written the store path is checked and the pre-flight estimate enforced (the store must
fit the free disk, the ranks this node's memory; ``--force`` skips the estimate).
"""
import argparse
import json
import sys

from hpcsur.ops.jobspec import load_job, with_store_path


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML)")
    parser.add_argument("--output", help="store path (overrides [store] path)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted store")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.add_argument("--force", action="store_true",
                        help="start even when the pre-flight estimate says the store or the ranks do not fit here")
    # test hook: abort the whole job after this rank wrote K shards (simulates a crash)
    parser.add_argument("--stop-after-shards", type=_positive_int, default=None, help=argparse.SUPPRESS)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def run(args):
    from mpi4py import MPI

    from hpcsur.ops.generate import generate

    comm = MPI.COMM_WORLD
    spec = load_job(args.job)  # every rank validates: bad specs fail before anything is written
    if args.output is not None:
        spec = with_store_path(spec, args.output)
    summary = generate(spec, comm, resume=args.resume, show_progress=not args.no_progress,
                       stop_after_shards=args.stop_after_shards, force=args.force)
    if comm.Get_rank() == 0:
        print(json.dumps({"store": spec.store.path, **{k: summary[k] for k in summary if k != "shards"}}),
              file=sys.stdout)
    return 0
