"""The ``hpcsur`` command: one entry point, one module per subcommand.

Bad input (:class:`hpcsur.errors.InputError`) is reported as one line on stderr with exit code 2,
before anything is written.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hpcsur.errors import EXIT_ENVIRONMENT, EXIT_INPUT, DataError, EnvironmentProblem, InputError

# subcommand -> (module under hpcsur.cli, one-line help)
COMMANDS = {
    "generate": ("generate", "simulate trajectories and write partial labels to a sharded zarr store (use under mpiexec)"),
    "store": ("store", "inspect a store: info, verify"),
    "validate": ("validate", "check a job spec and print it with defaults filled in"),
    "train-ae": ("train_ae", "train the closure autoencoder (data-parallel under mpiexec/srun/torchrun)"),
    "encode": ("encode", "encode every frame with the frozen autoencoder (use under mpiexec)"),
    "train-latent": ("train_latent", "train latent ODE models with L_z / L_x / L_x,p (data-parallel)"),
    "evaluate": ("evaluate", "latent RK4 rollouts vs ground truth: report.json, plots and results/<job>.json"),
    "export": ("export", "one trained model as one file: encoder, decoder, latent model and what they need"),
    "predict": ("predict", "roll an exported surrogate out from microscopic states (.npy/.npz or STORE:TRAJ)"),
    "diagnose": ("diagnose", "encoder diagnostics: conditioning, leverage coherence, label noise of the partial labels"),
    "results": ("results", "the table of results files (results/*.json); --readme regenerates the README's"),
    "run": ("run", "the whole chain generate -> train-ae -> encode -> train-latent -> evaluate, resuming"),
    "demo": ("demo", "run the main demo end to end on the embedded default"),
    "submit": ("submit", "submit the pipeline's stages as a chain of Slurm batch jobs (arrays for --ensemble)"),
    "status": ("status", "the Slurm state of a submitted job's stages and its store's progress"),
    "campaign": ("campaign", "run a job's ensemble / parameter sweep ([campaign]) as dask tasks"),
    "monitor": ("monitor", "show a campaign's progress (from its stores) and its dashboard URL"),
    "scale": ("scale", "strong / weak scaling of generate and train-ae over rank counts: table, plot, extrapolation"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcsur", description=__doc__.splitlines()[0])
    from hpcsur import __version__

    parser.add_argument("--version", action="version", version=f"hpcsur {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"hpcsur.cli.{module}")
        sp = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    from hpcsur.log import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args._run(args) or 0)
    except DataError as err:
        # raised by the rank that read (or computed on) the bad data, alone: it reports, the others stop
        print(f"hpcsur {args.command}: error{_rank_tag()}: {err}", file=sys.stderr)
        _abort_other_ranks(quiet=True, code=EXIT_INPUT)
        return EXIT_INPUT
    except InputError as err:
        if _mpi_rank() == 0:  # under mpiexec every rank raises the same error: report it once
            print(f"hpcsur {args.command}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `hpcsur validate job.toml | head`: the reader left, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (EnvironmentProblem, OSError) as err:
        text = str(err) if isinstance(err, EnvironmentProblem) else _os_error_line(err)
        print(f"hpcsur {args.command}: environment error{_rank_tag()}: {text}", file=sys.stderr)
        _abort_other_ranks(quiet=True)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print(f"hpcsur {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        _abort_other_ranks()
        raise


def _os_error_line(err: OSError) -> str:
    """An operating-system error as one line: what failed and on which file."""
    what = err.strerror or type(err).__name__
    files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    return f"{what}: {files}" if files else f"{what} ({err})"


def _rank_tag() -> str:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized() or mpi.COMM_WORLD.Get_size() == 1:
        return ""
    return f" (rank {mpi.COMM_WORLD.Get_rank()})"


def _mpi_rank() -> int:
    """This process's rank: in COMM_WORLD, else from the launcher's environment (a torch.distributed
    or Horovod stage under mpiexec / srun / torchrun may fail before MPI is initialised), else 0."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        from hpcsur.log import env_rank

        return env_rank()
    return mpi.COMM_WORLD.Get_rank()


def _abort_other_ranks(quiet: bool = False, code: int | None = None) -> None:
    """An error on one rank must not leave the others blocked in MPI forever."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        if not quiet:
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(code if code is not None else EXIT_ENVIRONMENT if quiet else 1)


if __name__ == "__main__":
    sys.exit(main())
