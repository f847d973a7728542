"""The paper's published errors (Chen & Li), to stand next to ours in every results file.

The numbers live with their system kind (:attr:`hpcsur.systems.registry.SystemKind.published`, from the
team's method notes, ``shared/reference/method.md`` section 3). All of them are the reference code's
metric: per test trajectory sum_n |z*_pred - z*| / sum_n |z*| (non-squared norms; our ``e_abs``),
averaged over test trajectories, then mean and spread over repeats. Keys: loss, p (None for L_z / L_x),
equivalent data K p, model family.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from hpcsur.systems import registry


@dataclass(frozen=True)
class PaperValue:
    mean: float
    std: Optional[float]      # None where the paper gives only a mean
    std_kind: str             # "sample" (ddof 1), "population" or "" (none given)
    repeats: int
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


#: Where our model names map to the paper's model families.
FAMILY = {"onsagernet": "onsagernet", "onsagernet_ref": "onsagernet", "onsagernet_shared": "onsagernet",
          "mlp": "mlp", "gfinn": "gfinn"}


def paper_value(system: str, loss: str, p: float, equivalent_data: int, model: str) -> Optional[PaperValue]:
    """The paper's number for a row of ours, or None where the paper has none."""
    key_p = None if loss in ("lz", "lx") else round(p, 6)
    value = registry.get(system).published.get((loss, key_p, equivalent_data, FAMILY.get(model, model)))
    return None if value is None else PaperValue(*value)


def paper_notes(system: str) -> Optional[str]:
    """What the paper's numbers for ``system`` leave out or do differently, or None."""
    return registry.get(system).published_notes or None


#: Fig. 4: force computations (configurations x atoms with forces) the paper needed to reach e_tol = 3e-3 with
#: OnsagerNet, by system size (atoms); hard-coded in the reference's plot.ipynb; L_x,p labels 50 atoms a frame.
FIG4_TOLERANCE = 3e-3
FIG4 = {800: {"lz": 1500 * 800, "lxp": 2250 * 50}, 2700: {"lz": 750 * 2700, "lxp": 1750 * 50},
        6400: {"lz": 750 * 6400, "lxp": 2000 * 50}, 21600: {"lz": 500 * 21600, "lxp": 1250 * 50}}
