"""Small helpers shared by the subcommands."""


def stop_to_exit_code(fn) -> int:
    """Run a training stage; a stop signal (checkpoint written) becomes exit code 75 (EX_TEMPFAIL)."""
    import sys

    from hpcsur.learn.train import EXIT_REQUEUE, StopRequested

    try:
        fn()
    except StopRequested as stop:
        print(f"{stop}; checkpoint written, resume with --resume", file=sys.stderr)
        return EXIT_REQUEUE
    return 0
