"""``hpcsur predict FILE --initial STATES --time T [--dt DT] [--output OUT] [--decode] [--plot PNG]``.

Rolls the exported surrogate (``hpcsur export``) out from microscopic states -- an ``.npy`` / ``.npz`` of one state
(N,) or many (B, N), or ``STORE:TRAJ[:FRAME]`` of a trajectory store -- to time T, all states at once, and writes
the times, the latent trajectories and the observables (``--decode``: the reconstructed states too) to ``.npz`` or
``.zarr``, with a short table on stdout. Outputs are at the training data's frame interval (``--every`` to change),
RK4 at the evaluation's step unless ``--dt``: a step, or ``auto`` for the largest 2^k multiple of the evaluation's
step whose rollout of the first state stays within ``--rtol`` of the evaluation-step one (steps never exceed the
output interval, so pair it with ``--every``). ``--precision float32`` about halves the cost.
"""


def add_arguments(parser):
    parser.add_argument("export", help="an export file written by `hpcsur export`")
    parser.add_argument("--initial", required=True, help=".npy / .npz of states (N,) or (B, N), or STORE:TRAJ[:FRAME]")
    parser.add_argument("--time", type=float, required=True, help="how long to roll out (the data's time units)")
    parser.add_argument("--dt", help="RK4 step, or 'auto' (default: the evaluation's, frame interval / substeps)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="--dt auto: largest relative deviation from the evaluation-step rollout (default 1e-4)")
    parser.add_argument("--precision", default="float64", choices=["float64", "float32"],
                        help="arithmetic of the networks (default float64)")
    parser.add_argument("--every", type=float, help="time between outputs (default: the data's frame interval)")
    parser.add_argument("--output", help="write t, z, observables (and x with --decode) to this .npz or .zarr")
    parser.add_argument("--decode", action="store_true", help="also write the decoded microscopic states")
    parser.add_argument("--plot", help="write a PNG of the observables over time")
    parser.add_argument("--device", default="cpu", help="torch device for the networks (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the latent model is small, more threads only wait)")


def run(args):
    import numpy as np

    from hpcsur.errors import InputError
    from hpcsur.learn.surrogate import Surrogate
    from hpcsur.ops.export import plot_prediction, prediction_times, read_states, write_prediction

    import torch

    if args.threads < 1:
        raise InputError(f"--threads {args.threads} is out of range; allowed: --threads >= 1")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device here; use --device cpu")
    if args.output is None and args.decode:
        raise InputError("--decode needs --output (where to write the states)")
    s = Surrogate.load(args.export, device=args.device, precision=args.precision)
    states, labels = read_states(args.initial)
    every = s.frame_dt if args.every is None else args.every
    if not (np.isfinite(every) and every > 0):
        raise InputError(f"--every {args.every!r} is not allowed; give a time > 0")
    times = prediction_times(args.time, every)
    dt = step_from(args.dt, s, states, args.time, args.rtol)
    z = s.rollout(states, times, dt)                          # (F, B, d)
    obs = s.observables(z)
    names = s.observable_names
    arrays = {"t": times, "z": z, "observables": obs}
    if args.decode:
        arrays["x"] = s.decode(z)
    attrs = {"export": str(args.export), "initial": args.initial, "labels": labels, "observables": names,
             "dt": dt, "precision": args.precision, "source": s.manifest["source"]}
    if args.output:
        write_prediction(args.output, arrays, attrs)
    if args.plot:
        plot_prediction(args.plot, times, obs, names, labels)
    shown = sorted({0, len(times) // 2, len(times) - 1})
    head = f"{'state':<22}" + "".join(f"{name + ' @ t=' + format(times[i], '.4g'):>24}" for i in shown for name in names)
    print(head)
    for b, label in enumerate(labels[:20]):
        print(f"{label:<22}" + "".join(f"{obs[i, b, k]:>24.6g}" for i in shown for k in range(len(names))))
    if len(labels) > 20:
        print(f"... {len(labels) - 20} more states")
    for what, path in (("output", args.output), ("plot", args.plot)):
        if path:
            print(f"{what}: {path}")
    return 0


def step_from(text, surrogate, states, horizon: float, rtol: float) -> float:
    """--dt: None (the evaluation's step), a number > 0, or 'auto' (calibrated on the first state; printed)."""
    import numpy as np

    from hpcsur.errors import InputError

    if text is None:
        return surrogate.dt
    if text == "auto":
        first = np.asarray(states).reshape(-1, surrogate.n_state)[0]
        dt, gap = surrogate.coarsest_step(first, horizon, rtol)
        print(f"--dt auto: step {dt:.6g} = {dt / surrogate.dt:g} x the evaluation's, deviation {gap:.2e} "
              f"(<= --rtol {rtol:g}) on the first state")
        return dt
    try:
        dt = float(text)
    except ValueError:
        raise InputError(f"--dt {text!r} is not allowed; give a step > 0 or 'auto'") from None
    if not (np.isfinite(dt) and dt > 0):
        raise InputError(f"--dt {text!r} is not allowed; give a step > 0 or 'auto'")
    return dt
