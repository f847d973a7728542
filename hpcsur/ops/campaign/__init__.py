"""Campaigns: ensembles and parameter sweeps of one job spec, run as dask tasks.

A job spec's ``[campaign]`` table (:class:`hpcsur.ops.jobspec.Campaign`) names an ensemble size
(``members``), a parameter sweep (``sweep``, Cartesian product or ``zip``-ped) and the resources of
each member (``ranks_per_member``). Member ``i`` is :func:`hpcsur.ops.ensemble.member_spec`: the base
spec with the sweep point applied and its own seed, store (``<store>-i``) and run folder
(``<run_dir>-i``), so members never share a store and run independently.

Each member is one dask task. The task writes the member's resolved spec to
``<member run folder>/<member name>.toml`` and runs the stage as a subprocess::

    [mpiexec -n ranks_per_member] python -m hpcsur.cli.main generate <member>.toml --resume --no-progress

(``--stages all``: ``hpcsur run <member>.toml --ranks ranks_per_member``, the whole pipeline,
which starts its own ranks and resumes finished stages itself). Output goes to ``<member run folder>/campaign-<stage>.log``. A dask worker has one thread,
so it runs one member at a time; a member's ranks are processes of its own.

Resume
------
Before submitting anything the driver reads every member's store: a complete store whose data hash
matches is skipped, a partial one is continued (``generate --resume`` rewrites exactly the shards
without a completion record), and a store written from a different spec is an error, reported
before anything runs. So re-running a finished campaign is a no-op, and re-running an interrupted
one loses and duplicates nothing. The member subprocess is armed with ``PR_SET_PDEATHSIG``
(Linux): if its dask worker dies -- for instance because the driver was killed, which takes its
LocalCluster workers with it -- the generator gets SIGTERM instead of running on orphaned and
holding its store's lock.

Schedulers
----------
``local`` (default)
    A ``LocalCluster`` of worker *processes* with one thread each; scheduler, workers and the
    dashboard listen on 127.0.0.1 only. ``workers = 0`` means ``cores // ranks_per_member``.
``slurm``
    dask-jobqueue ``SLURMCluster``: every dask worker is one Slurm job of one task with
    ``--cpus-per-task = ranks_per_member`` (partition, account, time, mem and set-up lines from
    ``[slurm]``), and ``workers`` jobs are requested (0: one per member to run). Inside the job a
    member's ``mpiexec`` starts its ranks on the job's node (``HYDRA_LAUNCHER=fork``). The scheduler
    runs in the driver and binds to 127.0.0.1 unless ``[campaign] interface`` names the interface
    the compute nodes reach it on (e.g. ``ib0``). ``hpcsur campaign JOB --scheduler slurm --dry-run``
    prints the job script without submitting anything.
``mpi``
    dask-mpi inside an MPI job: ``mpiexec -n R hpcsur campaign JOB --scheduler mpi`` with R >= 3;
    rank 0 is the scheduler, rank 1 the driver (it prints progress and writes the state file),
    ranks 2.. are the R - 2 workers. Everything stays on the loopback interface
    (``initialize(interface="lo")``), so all ranks must share one node.
``tcp://HOST:PORT``
    An already running scheduler; its workers must see the same file system and working folder.

The driver prints a progress line (members done / total, frames, frames/s, read from the stores)
and, at the end, a summary table. ``<run_dir>/campaign.json`` holds the state: written when the
cluster is up (dashboard URL, scheduler, driver pid), updated as members finish, final summary at
the end. ``hpcsur monitor`` (:mod:`hpcsur.ops.monitor`) reads it together with the stores.
"""
from hpcsur.ops.campaign.members import (  # noqa: F401
    Member,
    MemberProgress,
    MemberTask,
    STAGES,
    STATE_FILE,
    Settings,
    campaign_points,
    default_workers,
    guarded,
    member_command,
    member_env,
    member_progress,
    member_task,
    plan_members,
    resolve_settings,
    run_member,
)
from hpcsur.ops.campaign.clusters import (  # noqa: F401
    ClusterInfo,
    mpi_finish,
    mpi_initialize,
    open_client,
    render_slurm_script,
    slurm_job_kwargs,
    slurm_log_dir,
    terminate_on_sigterm,
)
from hpcsur.ops.campaign.driver import (  # noqa: F401
    check_result,
    describe_plan,
    human_bytes,
    member_record,
    point_text,
    prepare,
    progress_line,
    run_campaign,
    state_path,
    summary_table,
)
