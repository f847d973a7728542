"""Job specs: one TOML file per experiment, validated into typed, frozen dataclasses.

A job spec has one table per pipeline concern::

    [system]      kind = "lennard_jones"  # plus that system's parameters
    [simulation]  trajectories, dt, steps, save_every, seed
    [initial]     the initial-condition distribution (per system kind)
    [labels]      p (fraction of blocks with computed forces), full (also store all forces)
    [store]       path of the zarr store, optional frames_per_shard
    [parallel]    optional rank grid
    [output]      run folder for everything after generation (default runs/<job name>)
    [split] [autoencoder] [latent] [train] [evaluate]   learning (see hpcsur.learn.config)
    [slurm]       batch resources and environment set-up for ``hpcsur submit``

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
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hpcsur.errors import InputError
from hpcsur.config import build, field, to_table
from hpcsur.learn.config import Autoencoder, Evaluate, Latent, Split, Train

SYSTEM_KINDS = ("lennard_jones", "allen_cahn", "predator_prey")


# ----------------------------------------------------------------------------- system parameters
@dataclass(frozen=True)
class LennardJonesSystem:
    """LJ fluid in a periodic box; ``n_atoms`` at ``density`` (box side = (n/rho)^(1/3))."""

    lattice: str = field("random", choices=("random", "fcc"),
                         doc="random placement + relaxation (paper) or an fcc lattice (n = 4 k^3)")
    n_atoms: int = field(800, ge=2)
    density: float = field(0.8, gt=0.0, le=1.5)
    rcut: float = field(2.5, gt=0.0)
    skin: float = field(0.3, ge=0.0)
    epsilon: float = field(1.0, gt=0.0)
    sigma: float = field(1.0, gt=0.0)
    mass: float = field(1.0, gt=0.0)
    shift: bool = field(False)
    placement_seed: int = field(34141, ge=0, doc="seed of the random placement (the paper reuses one)")

    def validate(self, where: str) -> None:
        if self.lattice == "fcc":
            k = round((self.n_atoms / 4) ** (1 / 3))
            if 4 * k ** 3 != self.n_atoms:
                raise InputError(f"{where} n_atoms = {self.n_atoms} is not 4*k^3 as an fcc lattice needs "
                                 f"(e.g. {4 * k ** 3} or {4 * (k + 1) ** 3})")
        side = (self.n_atoms / self.density) ** (1 / 3)
        if side < 2 * (self.rcut + self.skin):
            raise InputError(f"{where} box side {side:.3g} (from n_atoms and density) is shorter than "
                             f"2*(rcut + skin) = {2 * (self.rcut + self.skin):.3g}; use more atoms")


@dataclass(frozen=True)
class AllenCahnSystem:
    """Allen-Cahn on the unit square, n x n cell-centred grid."""

    n: int = field(200, ge=3)
    epsilon: float = field(0.012007, gt=0.0)


@dataclass(frozen=True)
class PredatorPreySystem:
    """1-D predator-prey reaction-diffusion, n cells."""

    n: int = field(50, ge=3)
    a: float = field(3.0, gt=0.0)
    b: float = field(0.4, gt=0.0)
    D: float = field(0.0, ge=0.0)
    laplacian_scale: str = field("reference", choices=("reference", "physical"))


SYSTEM_PARAMS = {"lennard_jones": LennardJonesSystem, "allen_cahn": AllenCahnSystem,
                 "predator_prey": PredatorPreySystem}
SPATIAL_DIMS = {"lennard_jones": 3, "allen_cahn": 2, "predator_prey": 1}
DEFAULT_INTEGRATOR = {"lennard_jones": "verlet", "allen_cahn": "rk4", "predator_prey": "euler"}
INTEGRATORS = {"lennard_jones": ("verlet",), "allen_cahn": ("rk4", "euler"),
               "predator_prey": ("euler", "rk4")}


# ----------------------------------------------------------------------------- initial conditions
@dataclass(frozen=True)
class Distribution:
    """A scalar initial-condition parameter: a constant, or ``{uniform = [lo, hi]}``."""

    low: float
    high: float

    @staticmethod
    def parse(value: Any, where: str) -> "Distribution":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Distribution(float(value), float(value))
        if isinstance(value, dict) and set(value) == {"uniform"}:
            bounds = value["uniform"]
            if (isinstance(bounds, list) and len(bounds) == 2
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    and bounds[0] <= bounds[1]):
                return Distribution(float(bounds[0]), float(bounds[1]))
        raise InputError(f"{where} = {value!r} is not a distribution; write a number or "
                         "{ uniform = [low, high] } with low <= high")

    def sample(self, u: float) -> float:
        """Map a uniform variate ``u`` in [0, 1) to the distribution."""
        return self.low + (self.high - self.low) * u

    def to_toml(self):
        return self.low if self.low == self.high else {"uniform": [self.low, self.high]}


INITIAL_PARAMS = {
    # name: (default distribution, allowed range of every sample)
    "lennard_jones": {"temperature": ((0.5, 1.5), (0.0, None))},
    "allen_cahn": {"r1": ((0.3, 0.4), (0.0, 0.5)), "r2": ((0.1, 0.15), (0.0, 0.5))},
    "predator_prey": {"s": ((0.0, 0.2), (0.0, None)), "c": ((0.4, 0.6), (0.0, 1.0))},
}


def _parse_initial(kind: str, table: Any, where: str) -> dict[str, Distribution]:
    table = table or {}
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table")
    allowed = INITIAL_PARAMS[kind]
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


@dataclass(frozen=True)
class Store:
    path: str = field(doc="zarr store directory; relative paths are relative to the job file's project")
    frames_per_shard: Optional[int] = field(None, ge=1)
    target_shard_mb: float = field(64.0, gt=0.0)


@dataclass(frozen=True)
class Parallel:
    grid: Optional[list[int]] = field(None, ge=1, doc="rank grid, one entry per spatial dimension")


@dataclass(frozen=True)
class Output:
    dir: str = field("", doc="run folder (spec, checkpoints, encoded store, report, plots); "
                             "default runs/<job name>")


_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


@dataclass(frozen=True)
class Slurm:
    """Resources of every sbatch script ``hpcsur submit`` renders (values are shell-quoted)."""

    partition: Optional[str] = field(None)
    account: Optional[str] = field(None)
    nodes: int = field(1, ge=1)
    ntasks_per_node: int = field(2, ge=1)
    cpus_per_task: int = field(1, ge=1)
    time: str = field("01:00:00", doc="wall-clock limit: MM, HH:MM:SS or D-HH:MM:SS")
    mem: Optional[str] = field(None, doc="e.g. 4G; default: the partition's")
    launcher: str = field("mpiexec", choices=("mpiexec", "srun"))
    signal_seconds: int = field(90, ge=1, doc="SIGUSR1 this many seconds before the time limit")
    requeue: bool = field(True)
    setup: list[str] = field([], doc="shell lines run before each stage (module load ..., source ...)")

    def validate(self, where: str) -> None:
        if not _SLURM_TIME.match(self.time):
            raise InputError(f"{where} time = {self.time!r} is not a Slurm time; allowed: MM, HH:MM:SS or D-HH:MM:SS")


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
    latent: Optional[Latent] = None
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    slurm: Slurm = Slurm()
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
        return DEFAULT_INTEGRATOR[self.kind] if chosen == "default" else chosen

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

    def data_hash(self) -> str:
        """A hash of everything that determines the generated data (not the store path)."""
        everything = self.to_dict()  # not the store path, rank grid or learning: the data alone
        tables = {name: everything[name] for name in DATA_SECTIONS if name in everything}
        return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]


DATA_SECTIONS = ("system", "simulation", "initial", "labels")
#: Optional sections: table name -> dataclass (None in JobSpec when absent, unless it has defaults).
OPTIONAL_SECTIONS = {"output": Output, "split": Split, "autoencoder": Autoencoder, "latent": Latent,
                     "train": Train, "evaluate": Evaluate, "slurm": Slurm}
SECTIONS = DATA_SECTIONS + ("store", "parallel") + tuple(OPTIONAL_SECTIONS)


def parse_job(tables: dict, source: str = "<job>", name: str | None = None) -> JobSpec:
    """Validate parsed TOML ``tables`` into a :class:`JobSpec`."""
    unknown = sorted(set(tables) - set(SECTIONS))
    if unknown:
        raise InputError(f"{source}: unknown table [{unknown[0]}]; allowed tables: " + ", ".join(SECTIONS))
    system_table = dict(tables.get("system") or {})
    kind = system_table.pop("kind", None)
    if kind is None:
        raise InputError(f"{source}: [system] missing required key 'kind'; choose one of: " + ", ".join(SYSTEM_KINDS))
    if kind not in SYSTEM_KINDS:
        raise InputError(f"{source}: [system] kind = {kind!r} is not allowed; choose one of: " + ", ".join(SYSTEM_KINDS))
    for section in ("simulation", "labels", "store"):
        if section not in tables:
            raise InputError(f"{source}: missing table [{section}]")
    system = build(SYSTEM_PARAMS[kind], system_table, f"{source}: [system]")
    simulation = build(Simulation, tables["simulation"], f"{source}: [simulation]")
    if simulation.integrator not in ("default",) + INTEGRATORS[kind]:
        raise InputError(f"{source}: [simulation] integrator = {simulation.integrator!r} is not allowed for "
                         f"{kind}; choose one of: " + ", ".join(("default",) + INTEGRATORS[kind]))
    initial = _parse_initial(kind, tables.get("initial"), f"{source}: [initial]")
    labels = build(Labels, tables["labels"], f"{source}: [labels]")
    store = build(Store, tables["store"], f"{source}: [store]")
    parallel = build(Parallel, tables.get("parallel"), f"{source}: [parallel]")
    if parallel.grid is not None and len(parallel.grid) != SPATIAL_DIMS[kind]:
        raise InputError(f"{source}: [parallel] grid = {parallel.grid} has {len(parallel.grid)} entries; "
                         f"{kind} needs {SPATIAL_DIMS[kind]}")
    optional = {section: build(cls, tables[section], f"{source}: [{section}]")
                for section, cls in OPTIONAL_SECTIONS.items() if section in tables}
    spec = JobSpec(name=name or Path(source).stem, kind=kind, system=system, simulation=simulation,
                   initial=initial, labels=labels, store=store, parallel=parallel, source=source, **optional)
    _check_learning(spec)
    return spec


def _check_learning(spec: JobSpec) -> None:
    """Cross-section rules of the learning tables (each one line, before anything runs)."""
    src = spec.source
    n_traj = spec.simulation.trajectories
    learning = spec.autoencoder is not None or spec.latent is not None
    if learning and spec.split.validation + spec.split.test >= n_traj:
        raise InputError(f"{src}: [split] validation + test = {spec.split.validation + spec.split.test} leaves "
                         f"no training trajectory of {n_traj}; allowed: validation + test < {n_traj}")
    n_obs = {"lennard_jones": 1, "allen_cahn": 1, "predator_prey": 2}[spec.kind]
    if spec.autoencoder is not None and spec.autoencoder.latent_dim <= n_obs:
        raise InputError(f"{src}: [autoencoder] latent_dim = {spec.autoencoder.latent_dim} is out of range; "
                         f"allowed: latent_dim > {n_obs} (the {n_obs} observable(s) plus at least one closure variable)")
    if spec.latent is not None:
        if "lz" in spec.latent.losses or "lx" in spec.latent.losses:
            if not spec.labels.full:
                raise InputError(f"{src}: [latent] losses = {spec.latent.losses!r} need all forces; set [labels] "
                                 "full = true or use losses = [\"lxp\"]")


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job spec file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: job spec file not found")
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    return parse_job(tables, source=str(path), name=path.stem)


def dump_job(spec: JobSpec) -> str:
    """The resolved spec as TOML text."""
    import tomli_w

    return tomli_w.dumps(spec.to_dict())


def with_store_path(spec: JobSpec, path: str) -> JobSpec:
    """A copy of ``spec`` writing to another store path (``--output``)."""
    return dataclasses.replace(spec, store=dataclasses.replace(spec.store, path=path))
