"""Job specs: one TOML file per experiment, validated into typed, frozen dataclasses.

A job spec has one table per pipeline concern::

    [system]      kind = "<a registered system kind>"  # plus that kind's parameters
    [simulation]  trajectories, dt, steps, save_every, seed
    [initial]     the initial-condition distribution (per system kind)

The ``[system]`` and ``[initial]`` tables are the schema of the kind's
:class:`hpcsur.systems.registry.SystemKind` (its ``params`` dataclass and ``initial`` ranges).
    [labels]      p (fraction of blocks with computed forces), full (also store all forces)
    [store]       path of the zarr store, optional frames_per_shard
    [parallel]    optional rank grid
    [output]      run folder for everything after generation (default runs/<job name>)
    [insitu]      encode while generating with another job's trained autoencoder; store no states
    [split] [autoencoder] [latent] [train] [evaluate]   learning (see hpcsur.learn.config)
    [slurm]       batch resources and environment set-up for ``hpcsur submit``
    [campaign]    ensemble size, parameter sweep and dask resources for ``hpcsur campaign``

Only [system], [simulation], [labels] and [store] are required; a stage that needs another
section (e.g. train-ae needs [autoencoder]) says so in one line before it starts.

Every field is typed and range-checked, unknown keys are rejected, and each mistake is reported
as one line naming the file, table, key and allowed range. :func:`load_job` reads and validates a
file; :func:`dump_job` writes the resolved spec (defaults filled in) next to a run's outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hpcsur.errors import InputError
from hpcsur.config import build, field, to_table
from hpcsur.learn.config import Autoencoder, Evaluate, Latent, Split, Train
from hpcsur.systems import registry

# ----------------------------------------------------------------------------- initial conditions
@dataclass(frozen=True)
class Distribution:
    """A scalar initial-condition parameter: a constant, or ``{uniform = [lo, hi]}``."""

    low: float
    high: float

    @staticmethod
    def parse(value: Any, where: str) -> "Distribution":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return Distribution(float(value), float(value))
        if isinstance(value, dict) and set(value) == {"uniform"}:
            bounds = value["uniform"]
            if (isinstance(bounds, list) and len(bounds) == 2
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
                            for b in bounds)
                    and bounds[0] <= bounds[1]):
                return Distribution(float(bounds[0]), float(bounds[1]))
        raise InputError(f"{where} = {value!r} is not a distribution; write a finite number or "
                         "{ uniform = [low, high] } with finite low <= high")

    def sample(self, u: float) -> float:
        """Map a uniform variate ``u`` in [0, 1) to the distribution."""
        return self.low + (self.high - self.low) * u

    def to_toml(self):
        return self.low if self.low == self.high else {"uniform": [self.low, self.high]}


def _parse_initial(kind: str, table: Any, where: str) -> dict[str, Distribution]:
    table = table or {}
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table")
    allowed = {name: (p.default, p.allowed) for name, p in registry.get(kind).initial.items()}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InputError(f"{where} unknown key {unknown[0]!r} for system {kind!r}; allowed keys: "
                         + ", ".join(sorted(allowed)))
    out = {}
    for name, (default, (lo, hi)) in allowed.items():
        dist = Distribution.parse(table[name], f"{where} {name}") if name in table else Distribution(*default)
        if dist.low < lo or (hi is not None and dist.high > hi):
            raise InputError(f"{where} {name} = {dist.to_toml()!r} is out of range; allowed: "
                             f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else ""))
        out[name] = dist
    return out


# ----------------------------------------------------------------------------- other sections
@dataclass(frozen=True)
class Simulation:
    trajectories: int = field(ge=1)
    dt: float = field(gt=0.0)
    steps: int = field(ge=1)
    save_every: int = field(1, ge=1)
    seed: int = field(0, ge=0)
    integrator: str = field("default", choices=("default", "verlet", "rk4", "euler"))

    def validate(self, where: str) -> None:
        if self.save_every > self.steps:
            raise InputError(f"{where} save_every = {self.save_every} is out of range; allowed: "
                             f"1 <= save_every <= steps ({self.steps})")

    @property
    def frames_per_trajectory(self) -> int:
        """Stored frames per trajectory: steps 0, save_every, ..., <= steps."""
        return self.steps // self.save_every + 1


@dataclass(frozen=True)
class Labels:
    p: float = field(gt=0.0, le=1.0, doc="fraction of blocks whose forces are computed")
    full: bool = field(False, doc="also store the forces on all blocks (L_z / L_x baselines)")
    full_every: Optional[int] = field(None, ge=1, doc="with full = true, compute all forces only on every full_every-th "
                                                      "frame of each training trajectory (frames o, o + r, o + 2r, ... "
                                                      "with the phase o of full_phase) and on every validation frame -- "
                                                      "the frames L_z / L_x train and validate on; f_full is NaN "
                                                      "elsewhere (default: every frame)")
    full_phase: str = field("random", choices=("random", "zero"),
                            doc="with full_every = r, the first labelled frame o of each training trajectory: random "
                                "(drawn from 0 .. r-1 per trajectory, seeded by [simulation] seed, so the labelled "
                                "frames of the trajectories together cover every time, as a random sample of frames "
                                "does) or zero (frames 0, r, 2r, ... of every trajectory: the same few times)")
    draws: int = field(1, ge=1, le=64, doc="independent index sets per frame; latent seed s trains on draw s mod draws "
                                           "(the labelling cost grows with draws x |I|, never with N)")
    precision: str = field("float64", choices=("float64", "float32"),
                           doc="stored precision of the states and forces (half the disk in float32); the physics "
                               "runs in float64 either way, and a resumed float32 trajectory restarts from its "
                               "initial state so that it stays bit-identical")

    def __post_init__(self):
        if self.full_every is None:     # no budget, no phase: a spec without one stays what it was (LATE_DEFAULTS)
            object.__setattr__(self, "full_phase", "zero")

    def validate(self, where: str) -> None:
        if self.full_every is not None and not self.full:
            raise InputError(f"{where} full_every = {self.full_every} needs full = true (it budgets the full labels)")


@dataclass(frozen=True)
class Store:
    path: str = field(doc="zarr store directory; relative paths are relative to the job file's project")
    frames_per_shard: Optional[int] = field(None, ge=1)
    target_shard_mb: float = field(64.0, gt=0.0)

    def validate(self, where: str) -> None:
        if not self.path.strip() or Path(self.path).expanduser() in (Path("."), Path("..")) or self.path.strip() == "/":
            raise InputError(f"{where} path = {self.path!r} is not allowed; name a folder of its own for the store "
                             "(e.g. \"storage/my_job\"), not the current folder or the root")
        if any(ord(ch) < 32 for ch in self.path):
            raise InputError(f"{where} path = {self.path!r} contains a control character")


@dataclass(frozen=True)
class Parallel:
    grid: Optional[list[int]] = field(None, ge=1, doc="rank grid, one entry per spatial dimension")


@dataclass(frozen=True)
class Output:
    dir: str = field("", doc="run folder (spec, checkpoints, encoded store, report, plots); "
                             "default runs/<job name>")
    results: str = field("results", doc="folder of the results claim <job name>.json the evaluate stage writes")


@dataclass(frozen=True)
class InSitu:
    autoencoder: str = field(doc="the job spec whose trained autoencoder (frozen) encodes every frame as it is "
                                 "generated: [store] path then holds the encoding (z, the least-squares triples, "
                                 "the index sets), never the states; its [system] and [autoencoder] must be this "
                                 "job's")


_DASHBOARD = re.compile(r"^(127\.0\.0\.1|localhost):(\d{1,5})$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx)://[^\s/]+:\d{1,5}$")
#: Tables a campaign may sweep ([store] and [output] are per member automatically).
SWEEPABLE = ("system", "simulation", "initial", "labels", "parallel",
             "split", "autoencoder", "latent", "train", "evaluate")


@dataclass(frozen=True)
class Campaign:
    """An ensemble / parameter sweep run as dask tasks by ``hpcsur campaign`` (hpcsur.ops.campaign).

    The sweep points are the Cartesian product of the ``sweep`` lists (keys sorted), or, with
    ``zip = true``, the lists paired element-wise (all of one length; e.g. ``system.n_atoms`` with
    the ``labels.p`` that keeps 50 atoms per frame). Every point is run ``members`` times; member
    ``i = point * members + replica`` is :func:`hpcsur.ops.ensemble.member_spec` of the point,
    with its own seed (``seed + i`` unless swept), store (``<store>-i``) and run folder.
    Sweep keys are ``"table.key"`` strings; ``[campaign.sweep.table]`` sub-tables work too.
    """

    members: int = field(1, ge=1, doc="runs of every sweep point, each with its own seed")
    sweep: dict = field({}, doc='dotted key -> list of values, e.g. {"initial.temperature" = [0.5, 1.0]}')
    zip: bool = field(False, doc="pair the sweep lists element-wise instead of their Cartesian product")
    ranks_per_member: int = field(1, ge=1, doc="MPI ranks of each member (mpiexec -n)")
    workers: int = field(0, ge=0, doc="dask workers, one member at a time each; 0: cores // ranks_per_member "
                                      "(local), one Slurm job per member (slurm)")
    scheduler: str = field("local", doc="local | slurm | mpi | tcp://HOST:PORT of a running scheduler")
    dashboard: str = field("127.0.0.1:8787", doc="127.0.0.1:PORT (0: any free port) or off; never other interfaces")
    interface: Optional[str] = field(None, doc="slurm: network interface of scheduler and workers (e.g. ib0); "
                                               "default 127.0.0.1, i.e. Slurm nodes on this machine")

    @property
    def flat_sweep(self) -> dict[str, Any]:
        """The sweep as ``{"table.key": values}`` (sub-tables flattened one level)."""
        out = {}
        for key, value in self.sweep.items():
            if isinstance(value, dict) and "." not in key:
                out.update({f"{key}.{name}": v for name, v in value.items()})
            else:
                out[key] = value
        return out

    def validate(self, where: str) -> None:
        for key, values in self.flat_sweep.items():
            table, _, name = key.partition(".")
            if not name or "." in name:
                raise InputError(f"{where} sweep key {key!r} is not <table>.<key>, e.g. \"initial.temperature\"")
            if table not in SWEEPABLE:
                raise InputError(f"{where} sweep key {key!r}: table [{table}] cannot be swept; allowed tables: "
                                 + ", ".join(SWEEPABLE))
            if not isinstance(values, list) or not values:
                raise InputError(f"{where} sweep {key!r} = {values!r} is not a non-empty list of values")
        lengths = {key: len(v) for key, v in self.flat_sweep.items()}
        if self.zip and len(set(lengths.values())) > 1:
            raise InputError(f"{where} zip = true needs sweep lists of one length; got "
                             + ", ".join(f"{k}: {n}" for k, n in sorted(lengths.items())))
        check_scheduler(self.scheduler, f"{where} scheduler")
        check_dashboard(self.dashboard, f"{where} dashboard")


def check_scheduler(value: str, where: str) -> None:
    """A campaign scheduler is local, slurm, mpi or the address of a running scheduler."""
    if value not in ("local", "slurm", "mpi") and not _ADDRESS.match(value):
        raise InputError(f"{where} = {value!r} is not allowed; choose local, slurm, mpi or a scheduler "
                         "address tcp://HOST:PORT")


def check_dashboard(value: str, where: str) -> None:
    """A dashboard address must be ``127.0.0.1:PORT`` / ``localhost:PORT`` or ``off`` (one error line)."""
    m = _DASHBOARD.match(value)
    if value != "off" and (m is None or int(m.group(2)) > 65535):
        raise InputError(f"{where} = {value!r} is not allowed; use 127.0.0.1:PORT (PORT 0-65535, 0: any free "
                         "port) or off; the dashboard is never exposed beyond this machine (use an ssh tunnel)")


def _check_campaign(spec: "JobSpec") -> None:
    """Every sweep key must name a field of its table for this system kind (one line, before anything runs)."""
    if spec.campaign is None:
        return
    fields_of = {"system": registry.get(spec.kind).params, "simulation": Simulation, "labels": Labels,
                 "parallel": Parallel, **OPTIONAL_SECTIONS}
    for key in spec.campaign.flat_sweep:
        table, _, name = key.partition(".")
        allowed = (set(registry.get(spec.kind).initial) if table == "initial"
                   else {f.name for f in dataclasses.fields(fields_of[table])})
        if name not in allowed:
            raise InputError(f"{spec.source}: [campaign] sweep key {key!r}: [{table}] has no key {name!r}"
                             f"{' for ' + spec.kind if table in ('system', 'initial') else ''}; allowed keys: "
                             + ", ".join(sorted(allowed)))


_SLURM_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
#: Partition, account and QOS names: letters, digits and ``_ . + -`` (a comma separates partitions).
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
_SLURM_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=.+)?$")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds in a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS), None if malformed.

    Fields may exceed their clock range (``90`` or ``00:90:00`` minutes), as ``sbatch`` accepts.
    """
    m = _SLURM_TIME.match(text)
    if not m:
        return None
    days, dh, dm, ds, mins, ms, hs = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        return ((days * 24 + dh) * 60 + (dm or 0)) * 60 + (ds or 0)
    if hs is not None:    # H:M:S
        return (mins * 60 + ms) * 60 + hs
    return mins * 60 + (ms or 0)  # M or M:S


def _no_control(value: str, where: str) -> None:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InputError(f"{where} = {value!r} contains a control character (newline, tab, ...); "
                         "it would break the batch script's #SBATCH lines")


@dataclass(frozen=True)
class Slurm:
    """Resources and environment of the sbatch scripts ``hpcsur submit`` renders (see slurm/README.md).

    MPI stages (generate, encode) get ``nodes`` x ``ntasks_per_node`` tasks, the training stages
    ``[train] workers`` tasks of ``[train] threads`` CPUs, single-process stages (evaluate) one task
    with the CPUs of one node's tasks. ``setup`` lines
    are the user's own shell code, run verbatim before each stage; every other value is checked
    here (names, sizes, times) and quoted when rendered, so it can never inject shell code.
    """

    partition: Optional[str] = field(None, doc="partition(s), comma-separated; default: the cluster's")
    account: Optional[str] = field(None)
    qos: Optional[str] = field(None)
    nodes: int = field(1, ge=1)
    ntasks_per_node: int = field(2, ge=1)
    cpus_per_task: int = field(1, ge=1)
    time: str = field("01:00:00", doc="wall-clock limit of each stage: MM, HH:MM:SS, D-HH or D-HH:MM:SS")
    mem: Optional[str] = field(None, doc="memory per node, e.g. 4G; default: the partition's")
    launcher: str = field("mpiexec", choices=("mpiexec", "srun"),
                          doc="how MPI stages start their ranks: the MPI's own mpiexec inside the "
                              "allocation, or srun --mpi=<mpi>")
    mpi: str = field("pmi2", choices=("pmi2", "pmix", "pmix_v3", "pmix_v4", "pmix_v5", "cray_shasta", "none"),
                     doc="srun --mpi plugin for launcher = srun: pmi2 for MPICH (pip mpich), pmix for Open MPI")
    mpiexec: str = field("", doc="the mpiexec command for launcher = mpiexec; default: the one installed "
                                 "next to hpcsur (the venv's MPICH)")
    signal_seconds: int = field(90, ge=1, le=65535,
                                doc="SIGUSR1 this many seconds before the time limit: the stage stops, the "
                                    "job requeues itself and resumes (Slurm may signal up to 60 s early)")
    requeue: bool = field(True, doc="requeue a stage stopped by the time-limit signal or a node failure")
    options: list[str] = field([], doc="extra sbatch options, e.g. [\"--constraint=cpu\", \"--gres=gpu:1\"]")
    setup: list[str] = field([], doc="shell lines run before each stage (module load ..., source ...)")

    @property
    def time_seconds(self) -> int:
        """The time limit in seconds (validated)."""
        return slurm_time_seconds(self.time) or 0

    def validate(self, where: str) -> None:
        seconds = slurm_time_seconds(self.time)
        if seconds is None:
            raise InputError(f"{where} time = {self.time!r} is not a Slurm time; allowed: MM, MM:SS, HH:MM:SS, "
                             "D-HH, D-HH:MM or D-HH:MM:SS")
        if seconds < 60:
            raise InputError(f"{where} time = {self.time!r} is out of range; allowed: at least 1 minute "
                             "(Slurm counts whole minutes; 0 would mean no limit)")
        if self.signal_seconds >= seconds:
            raise InputError(f"{where} signal_seconds = {self.signal_seconds} is out of range; allowed: "
                             f"signal_seconds < time ({self.time} = {seconds} s)")
        for name in ("partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and not _SLURM_NAME.match(value):
                raise InputError(f"{where} {name} = {value!r} is not a Slurm name; allowed: letters, digits "
                                 "and _ . + - (commas between several partitions)")
        if self.mem is not None and not _SLURM_MEM.match(self.mem):
            raise InputError(f"{where} mem = {self.mem!r} is not a Slurm memory size; allowed: an integer "
                             "with an optional unit K, M, G or T (e.g. 4G)")
        _no_control(self.mpiexec, f"{where} mpiexec")
        for option in self.options:
            _no_control(option, f"{where} options")
            if not _SLURM_OPTION.match(option):
                raise InputError(f"{where} options: {option!r} is not a long sbatch option; write e.g. "
                                 "\"--constraint=cpu\"")
        for line in self.setup:
            if "\0" in line:
                raise InputError(f"{where} setup: {line!r} contains a NUL character")


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec (see the module docstring)."""

    name: str
    kind: str
    system: Any
    simulation: Simulation
    initial: dict
    labels: Labels
    store: Store
    parallel: Parallel
    output: Output = Output()
    split: Split = Split()
    autoencoder: Optional[Autoencoder] = None
    insitu: Optional[InSitu] = None
    latent: Optional[Latent] = None
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    slurm: Slurm = Slurm()
    campaign: Optional[Campaign] = None
    source: str = ""

    @property
    def run_dir(self) -> str:
        """Where the stages after generation write: [output] dir, or runs/<job name>."""
        return self.output.dir or f"runs/{self.name}"

    def require(self, section: str, stage: str):
        """The optional section ``section``, or a one-line error naming the stage that needs it."""
        value = getattr(self, section)
        if value is None:
            raise InputError(f"{self.source}: missing table [{section}] (needed by {stage})")
        return value

    @property
    def integrator(self) -> str:
        chosen = self.simulation.integrator
        return registry.get(self.kind).default_integrator if chosen == "default" else chosen

    def to_dict(self) -> dict:
        """The resolved spec as TOML-ready tables (defaults filled in)."""
        return {
            "system": {"kind": self.kind, **to_table(self.system)},
            "simulation": to_table(self.simulation),
            "initial": {k: d.to_toml() for k, d in self.initial.items()},
            "labels": to_table(self.labels),
            "store": to_table(self.store),
            **({"parallel": to_table(self.parallel)} if self.parallel.grid else {}),
            **{name: to_table(getattr(self, name)) for name in OPTIONAL_SECTIONS
               if getattr(self, name) is not None},
        }

    def spec_hash(self) -> str:
        """A hash of the whole resolved spec (every table, defaults filled in)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def data_hash(self) -> str:
        """A hash of everything that determines the generated data (not the store path)."""
        everything = self.to_dict()  # not the store path, rank grid or learning: the data alone
        tables = {name: everything[name] for name in DATA_SECTIONS if name in everything}
        for key, default in LATE_DEFAULTS.items():
            table, name = key.split(".")
            if table in tables and name in tables[table] and tables[table][name] == default:
                tables[table] = {k: v for k, v in tables[table].items() if k != name}
        return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]


DATA_SECTIONS = ("system", "simulation", "initial", "labels")
#: Spec fields added after stores and run folders existed, with the default that reproduces what those hold: at
#: that default they are left out of the data hash and the stage provenance, so older stores and runs stay current.
LATE_DEFAULTS = {"labels.precision": "float64", "split.observable_floor": None, "labels.full_every": None,
                 "labels.full_phase": "zero",
                 "system.velocity_seed": None, "autoencoder.observable_scale": None}


def without_late_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without the :data:`LATE_DEFAULTS` fields that hold their default."""
    return {k: v for k, v in flat.items() if k not in LATE_DEFAULTS or v != LATE_DEFAULTS[k]}
#: Optional sections: table name -> dataclass (None in JobSpec when absent, unless it has defaults).
OPTIONAL_SECTIONS = {"output": Output, "split": Split, "autoencoder": Autoencoder, "insitu": InSitu, "latent": Latent,
                     "train": Train, "evaluate": Evaluate, "slurm": Slurm, "campaign": Campaign}
SECTIONS = DATA_SECTIONS + ("store", "parallel") + tuple(OPTIONAL_SECTIONS)


def parse_job(tables: dict, source: str = "<job>", name: str | None = None) -> JobSpec:
    """Validate parsed TOML ``tables`` into a :class:`JobSpec`."""
    unknown = sorted(set(tables) - set(SECTIONS))
    if unknown:
        raise InputError(f"{source}: unknown table [{unknown[0]}]; allowed tables: " + ", ".join(SECTIONS))
    system_table = dict(tables.get("system") or {})
    kind = system_table.pop("kind", None)
    if kind is None:
        raise InputError(f"{source}: [system] missing required key 'kind'; choose one of: "
                         + ", ".join(registry.names()))
    if not isinstance(kind, str) or kind not in registry.names():
        raise InputError(f"{source}: [system] kind = {kind!r} is not allowed; choose one of: "
                         + ", ".join(registry.names()))
    system_kind = registry.get(kind)
    for section in ("simulation", "labels", "store"):
        if section not in tables:
            raise InputError(f"{source}: missing table [{section}]")
    system = build(system_kind.params, system_table, f"{source}: [system]")
    simulation = build(Simulation, tables["simulation"], f"{source}: [simulation]")
    if simulation.integrator not in ("default",) + system_kind.integrators:
        raise InputError(f"{source}: [simulation] integrator = {simulation.integrator!r} is not allowed for "
                         f"{kind}; choose one of: " + ", ".join(("default",) + system_kind.integrators))
    initial = _parse_initial(kind, tables.get("initial"), f"{source}: [initial]")
    labels = build(Labels, tables["labels"], f"{source}: [labels]")
    store = build(Store, tables["store"], f"{source}: [store]")
    parallel = build(Parallel, tables.get("parallel"), f"{source}: [parallel]")
    if parallel.grid is not None and len(parallel.grid) != system_kind.spatial_dims:
        raise InputError(f"{source}: [parallel] grid = {parallel.grid} has {len(parallel.grid)} entries; "
                         f"{kind} needs {system_kind.spatial_dims}")
    optional = {section: build(cls, tables[section], f"{source}: [{section}]")
                for section, cls in OPTIONAL_SECTIONS.items() if section in tables}
    spec = JobSpec(name=name or Path(source).stem, kind=kind, system=system, simulation=simulation,
                   initial=initial, labels=labels, store=store, parallel=parallel, source=source, **optional)
    _check_learning(spec)
    _check_campaign(spec)
    return spec


def full_label_phases(spec: JobSpec) -> np.ndarray | None:
    """o_t per trajectory under ``[labels] full_every = r``: ``full_phase = "random"`` draws each from 0 .. r-1 (one
    stream seeded by [simulation] seed, independent of ranks), ``"zero"`` gives 0. None without ``full_every``."""
    stride = spec.labels.full_every
    if not spec.labels.full or stride is None:
        return None
    T = spec.simulation.trajectories
    if spec.labels.full_phase == "zero":
        return np.zeros(T, dtype=np.int64)
    return np.random.default_rng([spec.simulation.seed, 0xF0115]).integers(0, stride, size=T)


def full_label_frames(spec: JobSpec) -> np.ndarray | None:
    """Which frames get all forces under ``[labels] full_every = r``, as a (T, F) bool mask: frames o_t, o_t + r, ...
    of every training trajectory (:func:`full_label_phases`) and every validation frame (test frames are scored on
    observables and need no forces). None when ``full_every`` is not set: then every frame has them if
    ``full = true``, none otherwise."""
    phases = full_label_phases(spec)
    if phases is None:
        return None
    stride = spec.labels.full_every
    T, F = spec.simulation.trajectories, spec.simulation.frames_per_trajectory
    train = max(0, T - spec.split.validation - spec.split.test)
    mask = np.zeros((T, F), dtype=bool)
    for t in range(train):
        mask[t, phases[t]::stride] = True
    mask[train:min(T, train + spec.split.validation)] = True
    return mask


def count_full_labels(spec: JobSpec) -> int:
    """Frames whose forces are computed everywhere (the store's share of the force-cost ledger)."""
    mask = full_label_frames(spec)
    if mask is not None:
        return int(mask.sum())
    return spec.simulation.trajectories * spec.simulation.frames_per_trajectory if spec.labels.full else 0


def state_layout(spec: JobSpec) -> tuple[int, int]:
    """(m, n): coordinates per block and blocks of the state, from the parameters alone (no system is
    built, so absurd sizes can be refused before anything is allocated)."""
    return registry.get(spec.kind).state_layout(spec.system)


def state_size(spec: JobSpec) -> int:
    """N, the dimension of the microscopic state."""
    m, n = state_layout(spec)
    return m * n


def _check_learning(spec: JobSpec) -> None:
    """Cross-section rules of the learning tables (each one line, before anything runs)."""
    src = spec.source
    n_traj = spec.simulation.trajectories
    learning = spec.autoencoder is not None or spec.latent is not None
    if learning and spec.split.validation + spec.split.test >= n_traj:
        raise InputError(f"{src}: [split] validation + test = {spec.split.validation + spec.split.test} leaves "
                         f"no training trajectory of {n_traj}; allowed: validation + test < {n_traj}")
    n_obs = registry.get(spec.kind).n_observables
    n_state = state_size(spec)
    if spec.autoencoder is not None and not n_obs < spec.autoencoder.latent_dim <= n_state:
        raise InputError(f"{src}: [autoencoder] latent_dim = {spec.autoencoder.latent_dim} is out of range; "
                         f"allowed: {n_obs} < latent_dim <= {n_state} (the {n_obs} observable(s) plus at least one "
                         f"closure variable, at most the state dimension N = {n_state})")
    if spec.insitu is not None and spec.autoencoder is None:
        raise InputError(f"{src}: [insitu] needs this job's [autoencoder] table (a copy of the one in "
                         f"{spec.insitu.autoencoder}, which trains it)")
    scale = spec.autoencoder.observable_scale if spec.autoencoder is not None else None
    if scale is not None and len(scale) != n_obs:
        names = ", ".join(registry.get(spec.kind).observable_names)
        raise InputError(f"{src}: [autoencoder] observable_scale has {len(scale)} factor(s); allowed: one per "
                         f"observable of {spec.kind} ({n_obs}: {names})")
    if spec.latent is not None:
        if "lz" in spec.latent.losses or "lx" in spec.latent.losses:
            if not spec.labels.full:
                raise InputError(f"{src}: [latent] losses = {spec.latent.losses!r} need all forces; set [labels] "
                                 "full = true or use losses = [\"lxp\"]")


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job spec file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a job spec file")
    if not path.is_file():
        raise InputError(f"{path}: job spec file not found")
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file in UTF-8 (byte {err.start}); a job spec is TOML text") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_job(tables, source=str(path), name=path.stem)


def dump_job(spec: JobSpec) -> str:
    """The resolved spec as TOML text."""
    import tomli_w

    return tomli_w.dumps(spec.to_dict())


def with_store_path(spec: JobSpec, path: str) -> JobSpec:
    """A copy of ``spec`` writing to another store path (``--output``), checked like [store] path."""
    store = dataclasses.replace(spec.store, path=path)
    store.validate("--output")
    return dataclasses.replace(spec, store=store)
