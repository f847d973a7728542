"""The learning sections of a job spec, as typed frozen dataclasses.

They live in ``learn`` (not ``ops``) so the learning code can take them without importing the
operations room; :mod:`hpcsur.ops.jobspec` builds them from TOML with :func:`hpcsur.config.build`.

::

    [split]        validation = 2; test = 8            # trajectories held out (the last ones)
    [autoencoder]  latent_dim = 4; hidden = [32, 32]; lambda_cond = 1e-6; epochs = 10
    [latent]       model = "onsagernet"; losses = ["lz", "lxp"]; equivalent_data = 2400; seeds = [1, 2, 3]
    [train]        backend = "auto"; workers = 2; lr_scaling = "none"; memory_mb = 512
    [evaluate]     substeps = 10
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hpcsur.config import field
from hpcsur.errors import InputError

ACTIVATIONS = ("softplus", "tanh", "relu", "gelu", "silu", "relu2")
MODELS = ("mlp", "onsagernet", "onsagernet_ref", "onsagernet_shared", "gfinn")
LOSSES = ("lz", "lx", "lxp")
RECIPES = ("hpcsur", "reference")
SCHEDULE_ON = ("train", "val", "none")
SELECT = ("last", "val_loss", "val_rollout")
BACKENDS = ("auto", "horovod", "ddp", "none")


@dataclass(frozen=True)
class Split:
    """Which trajectories train, select and test: the last ``test`` trajectories are the test set,
    the ``validation`` before them select models (early stopping, best epoch), the rest train."""

    validation: int = field(2, ge=1, doc="trajectories used for model selection")
    test: int = field(8, ge=1, doc="trajectories held out for evaluation")
    observable_floor: Optional[float] = field(
        None, gt=0.0, lt=1.0, doc="use each trajectory's frames only up to the first whose first observable, divided "
                                  "by its largest magnitude on that trajectory, is at or below this (the reference's "
                                  "Allen-Cahn rule 1e-4: the torus has vanished); for training, validation and scoring")


@dataclass(frozen=True)
class Autoencoder:
    """Closure autoencoder: encoder phi = (phi*, phi_hat), decoder psi; L_AE = L_rec + lambda L_cond."""

    latent_dim: int = field(ge=1, doc="d = number of observables + closure variables")
    hidden: list[int] = field([32, 32], ge=1, doc="hidden widths of the encoder MLP (the decoder mirrors them)")
    activation: str = field("softplus", choices=ACTIVATIONS)
    lambda_cond: float = field(1e-6, ge=0.0, doc="weight of the condition-number loss L_cond")
    cond_rows: str = field("all", choices=("all", "closure"),
                           doc="rows of J in kappa(J J^T): all of phi, or the closure part only (LJ)")
    recipe: str = field("hpcsur", choices=RECIPES,
                        doc="hpcsur: inputs and decoded observables normalised by training statistics, "
                            "AdamW (amsgrad) with ReduceLROnPlateau, best validation epoch kept; "
                            "reference: the reference code's recipe -- raw inputs, Adam with betas "
                            "(0.9, 0.95) and coupled L2 weight decay, constant learning rate, last epoch "
                            "kept, torch's default biases")
    normalise: str = field("auto", choices=("auto", "coordinate", "field", "centre", "none"),
                           doc="input scaling: per coordinate (x - mu_c) / sigma_c, per field (one sigma for each "
                               "of the state's fields, e.g. u and v), centre (raw inputs less one mean per field, "
                               "as the reference's box centred on 0), or none; auto: coordinate for the hpcsur "
                               "recipe, none for the reference's")
    lambda_coherence: float = field(0.0, ge=0.0, doc="weight of the leverage-coherence penalty L_coh (0: off)")
    lambda_tangent: float = field(0.0, ge=0.0, doc="weight of the tangent-alignment penalty L_tan: the decoder's "
                                                   "tangent space inside the encoder's row space (0: off)")
    observable_scale: Optional[list[float]] = field(None, gt=0.0,
                                                    doc="one factor per observable: z* = s phi*(x) (the reference's "
                                                        "LJ stores 20 T). It weighs the observables' rows against the "
                                                        "closure rows in the latent losses' squared errors; relative "
                                                        "errors of z* are unchanged")
    right_inverse: str = field("pinv", choices=("pinv", "decoder"),
                               doc="the right inverse P of J in L_x = |f - P g|^2 and L_x,p (used by encode): the "
                                   "paper's Moore-Penrose J^+, or the decoder's Jacobian psi'(z), which spans the "
                                   "data manifold's tangent space")

    @property
    def scaling(self) -> str:
        """The input scaling in effect (``normalise`` with auto resolved)."""
        if self.normalise != "auto":
            return self.normalise
        return "none" if self.recipe == "reference" else "coordinate"
    epochs: int = field(10, ge=1)
    batch: int = field(256, ge=1)
    lr: float = field(1e-3, gt=0.0)
    weight_decay: float = field(1e-4, ge=0.0)
    seed: int = field(42, ge=0)
    max_train_frames: Optional[int] = field(None, ge=1, doc="cap on training frames per epoch")


#: The [latent] protocol fields that may be a table per loss: (type, lower bound, strict).
PER_LOSS = {"epochs": (int, 1, False), "batch": (int, 1, False), "lr": (float, 0.0, True),
            "min_lr": (float, 0.0, False), "patience": (int, 1, False)}


@dataclass(frozen=True, kw_only=True)
class Latent:
    """Latent ODE model g_theta and the losses it is trained with.

    ``equivalent_data`` is K p, the number of *full-force-equivalent* configurations: L_z and L_x
    train on K = equivalent_data configurations, L_x,p on K = equivalent_data / p. A list trains
    every loss and seed at each size (a data-efficiency sweep, the paper's Table 2). A table gives
    each loss its own size(s), e.g. ``{ lz = 2500, lxp = 1600 }`` (a comparison at unequal force
    cost, as the reference code's Allen-Cahn counts; the ledger of each model shows what it cost).

    The *protocol*: ``schedule_on`` is what ReduceLROnPlateau watches (``train``: the epoch-mean
    training loss with its constant, as the reference code; ``val``: the validation loss, whose
    labels are force evaluations the ledger counts; ``none``: constant learning rate), ``select``
    which model is kept and scored (``last``; ``val_loss``; ``val_rollout``: the lowest
    observable error of latent RK4 rollouts on the validation trajectories, every ``select_every``
    epochs -- it needs encoded states only, no forces). ``snapshot_every`` saves the model for
    the error-vs-epoch curve of the evaluation (0: none).
    """

    model: str = field("onsagernet", choices=MODELS)
    hidden: list[int] = field([64, 64], ge=1)
    activation: str = field("tanh", choices=ACTIVATIONS)
    forcing: bool = field(False, doc="OnsagerNet: add a learned forcing term F(z)")
    losses: list[str] = field(["lz", "lxp"], choices=LOSSES)
    equivalent_data: int | list[int] | dict = field(ge=1, doc="configurations x p, a list of them, or a table "
                                                              "per loss (see the class docstring)")
    seeds: list[int] = field([1, 2, 3], ge=0)
    epochs: int | dict = field(200, ge=1, doc="epochs, or one per loss, e.g. { lz = 1000, lxp = 2000 }")
    batch: int | dict = field(256, ge=1, doc="batch per worker, or one per loss")
    lr: float | dict = field(5e-3, gt=0.0, doc="learning rate, or one per loss")
    weight_decay: float = field(0.0, ge=0.0)
    patience: int | dict = field(50, ge=1, doc="ReduceLROnPlateau patience (epochs), or one per loss, e.g. "
                                               "{ lz = 50, lx = 100, lxp = 100 } (the reference's)")
    factor: float = field(0.5, gt=0.0, lt=1.0)
    min_lr: float | dict = field(5e-6, ge=0.0, doc="the scheduler's floor, or one per loss")
    schedule_on: str = field("val", choices=SCHEDULE_ON, doc="what the learning-rate scheduler watches")
    select: str = field("val_loss", choices=SELECT, doc="which model is kept and scored")
    select_every: int = field(50, ge=1, doc="epochs between validation rollouts (select = val_rollout)")
    snapshot_every: int = field(100, ge=0, doc="epochs between saved models for error-vs-epoch curves (0: none)")

    def patience_for(self, loss: str) -> int:
        return self.for_loss("patience", loss)

    def for_loss(self, name: str, loss: str):
        """The value of protocol field ``name`` (epochs, batch, lr, min_lr, patience) for ``loss``: the field
        itself, or its entry when the spec gives a table per loss (the reference trains L_z and L_x,p with
        different batches, rates and epochs)."""
        value = getattr(self, name)
        return value[loss] if isinstance(value, dict) else value

    def sizes_for(self, loss: str) -> list[int]:
        """The equivalent-data sizes ``loss`` trains at."""
        value = self.equivalent_data.get(loss, []) if isinstance(self.equivalent_data, dict) else self.equivalent_data
        return list(value) if isinstance(value, list) else [value]

    @property
    def sizes(self) -> list[int]:
        """Every equivalent-data size of any loss, ascending."""
        return sorted({size for loss in self.losses for size in self.sizes_for(loss)})

    def models(self) -> list[tuple[str, int, int]]:
        """Every (loss, size, seed) latent model of the spec, in training order."""
        return [(loss, size, seed) for loss in self.losses for size in self.sizes_for(loss) for seed in self.seeds]

    def validate(self, where: str) -> None:
        if isinstance(self.equivalent_data, dict):
            unknown = sorted(set(self.equivalent_data) - set(self.losses))
            if unknown:
                raise InputError(f"{where} equivalent_data has key {unknown[0]!r}, which is not in losses = "
                                 f"{self.losses!r}; allowed keys: {', '.join(self.losses)}")
        for loss in self.losses:
            sizes = self.sizes_for(loss)
            if (not sizes or len(set(sizes)) != len(sizes)
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)):
                raise InputError(f"{where} equivalent_data = {self.equivalent_data!r}: give {loss} at least one "
                                 "size (an integer >= 1), each once")
        for name, (kind, low, strict) in PER_LOSS.items():
            value = getattr(self, name)
            if not isinstance(value, dict):
                continue
            unknown = sorted(set(value) - set(LOSSES))
            if unknown:
                raise InputError(f"{where} {name} has unknown key {unknown[0]!r}; allowed keys: {', '.join(LOSSES)}")
            for loss in self.losses:
                v = value.get(loss)
                ok = (not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int)
                      and (v > low if strict else v >= low))
                if not ok:
                    raise InputError(f"{where} {name}.{loss} = {v!r} is not allowed; give "
                                     f"{'a number' if kind is float else 'an integer'} {'>' if strict else '>='} {low} "
                                     f"for every loss in losses = {self.losses!r}")
        if self.model == "onsagernet_shared" and self.activation not in ("relu2", "tanh", "softplus", "relu"):
            raise InputError(f"{where} activation = {self.activation!r} is not allowed with model = "
                             "\"onsagernet_shared\" (its grad V needs a closed-form slope); choose relu2, tanh, "
                             "softplus or relu")
        if self.forcing and self.model != "onsagernet":
            raise InputError(f"{where} forcing = true is allowed only with model = \"onsagernet\", not {self.model!r}")
        if len(set(self.losses)) != len(self.losses) or not self.losses:
            raise InputError(f"{where} losses = {self.losses!r}: give each of lz, lx, lxp at most once, at least one")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise InputError(f"{where} seeds = {self.seeds!r}: give at least one seed, each once")


@dataclass(frozen=True)
class Train:
    """How training runs: data-parallel backend, workers, streaming and checkpoints."""

    backend: str = field("auto", choices=BACKENDS, doc="auto: Horovod when importable and launched by mpiexec/horovodrun, else "
                                                      "torch.distributed (Gloo/NCCL); none for one process")
    workers: int = field(2, ge=1, doc="data-parallel workers `hpcsur run` launches")
    lr_scaling: str = field("none", choices=("none", "linear", "sqrt"),
                            doc="scale the learning rate with the number of workers")
    memory_mb: float = field(1024.0, gt=0.0, doc="budget for frames held in memory per worker")
    shuffle_buffer: int = field(8192, ge=1, doc="frames in the shuffle buffer (bounded by memory_mb)")
    loader_workers: int = field(0, ge=0, doc="DataLoader processes per worker (spawned) for reading")
    prefetch: int = field(2, ge=1, doc="shards read ahead of the trainer")
    threads: int = field(1, ge=1, doc="torch intra-op threads per worker")
    checkpoint_minutes: float = field(5.0, ge=0.0, doc="checkpoint at the first epoch end this long after "
                                                       "the last (0: every epoch); always at a stop and the end")


@dataclass(frozen=True)
class Evaluate:
    """Latent RK4 rollouts from encoded initial states against the encoded test trajectories."""

    substeps: int = field(10, ge=1, doc="RK4 steps per stored frame interval")
    trajectories: Optional[int] = field(None, ge=1, doc="test trajectories to roll out (default: all)")
    frames: Optional[int] = field(None, ge=2, doc="frames per rollout (default: the whole trajectory)")
    snapshot_trajectories: Optional[int] = field(None, ge=1, doc="test trajectories the snapshots of the "
                                                 "error-vs-epoch curves are rolled out on (default: all); the "
                                                 "scored models always use every test trajectory")
    threads: Optional[int] = field(None, ge=1, doc="torch intra-op threads of the evaluate process (default: "
                                   "every core it may run on; it runs alone)")
