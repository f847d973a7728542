"""``hpcsur scale``: generation and training at several rank counts -> efficiency table, plot, extrapolation.

::

    hpcsur scale JOB.toml --ranks 1,2,4 --mode strong|weak [--stages generate,train-ae]
                 [--weak-dim auto|ensemble|domain] [--epochs 2] [--extrapolate 8,64,512]
                 [--slurm] [--dry-run] [--output DIR] [--force]

Points
------
One *point* is one stage at one rank count P, run as its own process group (``mpiexec -n P``,
exactly the command line of ``hpcsur run`` / ``hpcsur submit``) from its own derived job spec
(``<DIR>/points/<stage>-p<P>/<job>-<stage>-p<P>.toml``, built like :func:`hpcsur.ops.ensemble.member_spec`:
the base spec with a few fields replaced, its own store and run folder). No store is shared
between generation points. Every generation point gets an explicit ``[parallel] grid`` (the
grid ``hpcsur generate`` would choose, see :func:`point_grid`), so what ran is written down.
Point folders of an earlier study in the same DIR are refused (``--force`` removes them first).
A point that fails stops the study: exit 1, one line naming the point and its log.

* ``generate`` at P ranks: grid g (ranks per trajectory), G = P / g ensemble groups.
* ``train-ae`` at W workers (data-parallel, per-worker batch B as in ``[autoencoder] batch``):
  ``--epochs`` epochs (default 2; the first is not timed when there are two or more). All
  training points read one store, generated once at the smallest rank count (the smallest
  generation point's store when ``generate`` is measured too, else a set-up run that is not a
  point), read-only; each point has its own run folder.

Modes
-----
* **strong**: the same problem at every P.
* **weak**: the work grows with P: the point at P does ``P / P_min`` times the work of the
  smallest point.

  - ``generate``, ``--weak-dim ensemble``: trajectories x P / P_min (same grid per trajectory,
    more groups; every group simulates the same number of trajectories).
  - ``generate``, ``--weak-dim domain``: the system grows with the rank grid, so every rank keeps
    the same owned block: Predator-Prey ``n`` x f with the grid's axis x f; Allen-Cahn ``n`` x
    sqrt(f) with both grid axes x sqrt(f) (f must be a perfect square); Lennard-Jones ``n_atoms`` x
    f with every grid axis x cbrt(f) (f a perfect cube; the box side grows by cbrt(f)), f = P /
    P_min. ``auto`` (default) is ``domain`` when the spec has a ``[parallel] grid`` of more than
    one rank, else ``ensemble``.
  - ``train-ae``: training frames per epoch x W / W_max (``[autoencoder] max_train_frames``), so
    every worker sees the same number of samples per epoch and the largest point uses all
    training frames of the store; the validation set stays the same (it is split over workers).

What is measured
----------------
* generate: ``time_s`` = the stage's own ``elapsed_s`` (from its JSON summary: after the store is
  created, until the final barrier; no process start-up, imports or MPI initialisation),
  ``wall_s`` = the whole launch, ``startup_s`` = the difference; ``frames/s`` and ``labels/s``
  (|I| labelled blocks per frame) over ``time_s``.
* train-ae: ``time_s`` = seconds per epoch from ``curve.csv`` (median of the epochs after the
  first, else the first epoch; it includes the validation pass and the checkpoint),
  ``samples/s`` = global training samples per epoch (steps x B x W) / ``time_s``; ``done.json``
  must report W workers.
* speed-up = X(P) / X(P_min) with X the throughput in work units per second (training samples;
  generated frames x sites per frame, so that weak scaling over the domain, where frames stay and
  sites grow, counts its work); efficiency E = (X(P) / P) / (X(P_min) / P_min) (for strong scaling
  that is T(P_min) P_min / (P T(P)), for weak scaling T(P_min) / T(P)). The table's throughput
  column is frames/s (samples/s).
* the 1-minute load average before and after each point (the host may be shared: timings are
  reported, never asserted).

The model
---------
Per stage, the busiest rank's time is a sum of counted work items times per-item constants::

    T(P) = c * W(P) + c_h * H(P) + lambda * M(P) + t0

Generation (counts over the whole stage, for the busiest rank of a group of g ranks that
simulates ceil(T / G) trajectories of S steps and F frames):

* W = ceil(T/G) S a             a = owned sites per rank (grid cells or atoms; compute ~ volume;
                                c also absorbs the per-frame label and store-write work, which
                                divides over the ranks the same way)
* H = ceil(T/G) (S e h + F q)   halo values moved: h per exchange (surface: depth x face x fields,
                                per neighbour), e exchanges per step (1 for Euler and the deep-halo
                                Allen-Cahn RK4, 4 for RK4 with a one-cell halo, +1 per frame);
                                Lennard-Jones: 6 values per ghost atom and step (positions forward,
                                forces back), ghosts = rho [prod_cut (w + 2 r) prod_uncut w - w^3]
                                with sub-box sides w and r = rcut + skin; q = values gathered to the
                                shard writer per frame (state, labels, full labels) x (g - 1) / g
* M = ceil(T/G) (S m + F (g - 1) n_gather)   messages: m per step (2 per cut axis and exchange,
                                LJ 4 per cut axis + ceil(log2 g) for the rebuild-flag allreduce)
* t0                            time that does not shrink with P (set-up, JIT cache loads, the
                                last shard's fsync, waiting for the slowest group)

With g = 1 (ensemble parallelism) H = M = 0: generation is embarrassingly parallel up to
ceil(T / G) and t0.

Training (per epoch, W workers, per-worker batch B, steps s = floor(N / (W B)) for N training
frames, V validation frames, n_p parameter bytes (float32)):

* X = s B + V / (3 W)                     samples per worker (validation is forward only, ~1/3)
* M = s 3 ceil(log2 W) + 4 ceil(log2 W)   messages: per step the gradient allreduce (reduce-scatter +
                                          allgather, 2 log2 W rounds) and the stop-flag allreduce;
                                          per epoch loss, validation, checkpoint, barrier
* B_ = s 2 (W - 1) / W n_p                bytes: the bandwidth term of the allreduce
* T = c_s X + alpha M + beta B_ + t0

Fitting (:func:`fit_model`, pure): non-negative least squares of the measured times on the
counts. Columns with no data (e.g. communication when every point ran with g = 1) keep their
prior; when the points cannot separate all constants (two points and four unknowns, the usual
case on one node), the communication terms are fitted as one scale factor on their priors
(their ratio fixed by the priors), and if that is still too many unknowns, ``t0`` keeps its
prior (0). With two points the fit is exact, so everything that did not scale (on a shared host:
mostly waiting for a descheduled partner) lands in what the fit can move: t0 for ensemble
generation, the communication scale for decomposed generation and training. Every constant is reported with its source: ``fitted``, ``fitted (scale of prior)``
or ``prior``. Priors: lambda = alpha = 5 us per message (a cluster network; storage/README.md's
lambda), c_h = 5 ns per halo value for grid systems and 17 ns for LJ (0.1 us per ghost and step,
6 values), beta = 0.1 ns per byte (10 GB/s), t0 = 0.

Extrapolation (:func:`extrapolate`): the counts at P = 8, 64, 512 ... (same mode: the same problem,
or P / P_min times the work) times the constants, with every communication constant taken as
max(fitted, prior): beyond the measured node a message or a halo value never costs less than on
the network. A point whose problem cannot be split that far (fewer cells than ranks, fewer
trajectories than groups, less than a batch per worker) is reported as not feasible, with why.
Assumptions: a homogeneous system (equal work per owned site), one rank per core with its own
memory bandwidth, the network constants above, no I/O contention (the store scales with the
writers), and the allreduce algorithm above (Horovod's ring has 2 (W - 1) latency rounds instead).

Slurm (``--slurm``)
-------------------
Instead of local subprocesses, one batch job per point, rendered by :mod:`hpcsur.ops.slurm` from
``slurm/stage.sbatch`` (same quoting, same launcher): generation points get ``[slurm] nodes x
ntasks_per_node = P`` (one node while P <= ``ntasks_per_node``), training points ``--ntasks=W``.
The jobs are chained (``afterany``) so that no two points share the nodes, the training points
also wait ``afterok`` for the job that generates their store; every point must fit the cluster
(``sinfo``: total CPUs and CPUs per node). ``hpcsur scale`` waits for them (polling
``scontrol``), reads the stage summaries from the jobs' logs (``<point>/<stage>-<id>.out``; wall
time from the structured record the batch script writes per run, ``<stage>-<id>.timing.jsonl``) and
``done.json``, and writes the
same outputs. Ctrl-C cancels the jobs it submitted. ``--dry-run`` prints the scripts and
dependencies and writes and submits nothing (locally it prints the command lines).

Outputs (``--output DIR``, default ``runs/<job>/scale-<mode>``): ``scaling.json`` (everything),
``scaling.csv`` (one row per measured (stage, ranks)), ``scaling.png`` (efficiency vs ranks per
stage, measured and model) and the printed table.
"""
from fractions import Fraction  # noqa: F401  (re-exported for callers of the old module)

from hpcsur.parallel.grid import default_dims  # noqa: F401
from hpcsur.ops.scale.plan import (  # noqa: F401
    DEFAULT_EXTRAPOLATE,
    MODES,
    Point,
    STAGES,
    ScalePlan,
    UNITS,
    WEAK_DIMS,
    derive_spec,
    generation_point,
    measured_steps,
    parse_counts,
    parse_mode,
    parse_positive,
    parse_stages,
    parse_weak_dim,
    plan_scale,
    point_grid,
    resolve_weak_dim,
    training_frames,
    training_point,
    weak_overrides,
)
from hpcsur.ops.scale.model import (  # noqa: F401
    COUNT_OF,
    GROUP_ORDER,
    ModelFit,
    PRIOR_BYTE,
    PRIOR_LATENCY,
    PRIOR_VALUE_GRID,
    PRIOR_VALUE_LJ,
    TRAINING_TERMS,
    Term,
    autoencoder_parameter_bytes,
    efficiency,
    extrapolate,
    fit_model,
    generation_counts,
    generation_terms,
    grid_exchange,
    lj_ghosts,
    mlp_parameters,
    point_counts,
    training_counts,
)
from hpcsur.ops.scale.report import (  # noqa: F401
    CSV_FIELDS,
    build_rows,
    format_model,
    format_table,
    plot,
    write_outputs,
)
from hpcsur.ops.scale.run import (  # noqa: F401
    MODEL_EQUATIONS,
    PointFailed,
    check_fits_cluster,
    cluster_cpus,
    collect,
    dry_run_text,
    launch_command,
    point_dependency,
    prepare_output,
    render_point,
    run_local,
    run_scale,
    run_slurm,
    slurm_wall,
    write_point,
)
