"""``hpcsur export JOB.toml [--loss L] [--seed S] [--size E] --output FILE``: one trained model as one file.

The file (see :mod:`hpcsur.learn.surrogate`) holds the encoder with its normalisation and analytic observables, the
decoder, the latent model, the system and its parameters, the observables' names, the data's time step, the spec
hash and commit, and the model's evaluation numbers; ``hpcsur predict`` and ``hpcsur.Surrogate`` load it without the
job spec or the store, and without running pickled code.
"""


def add_arguments(parser):
    parser.add_argument("job", help="job spec (TOML) whose pipeline has run through evaluate")
    parser.add_argument("--loss", choices=("lz", "lx", "lxp"), help="which loss's model (default lxp when trained)")
    parser.add_argument("--seed", type=int, help="which seed's model (default the first of [latent] seeds)")
    parser.add_argument("--size", type=int, help="which equivalent_data size (default the largest of that loss)")
    parser.add_argument("--output", required=True, help="the export file to write (e.g. model.hpcsur)")


def run(args):
    from hpcsur.ops.export import export_surrogate
    from hpcsur.ops.jobspec import load_job
    from hpcsur.learn.surrogate import Surrogate

    path = export_surrogate(load_job(args.job), args.output, args.loss, args.seed, args.size)
    s = Surrogate.load(path)
    ev = s.manifest["evaluation"]
    print(f"{path}: {s!r}; test error (code metric) {ev['e_abs']:.3g}, {path.stat().st_size:,} bytes")
    return 0
