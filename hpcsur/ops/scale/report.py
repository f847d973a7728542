"""Scaling studies, the report: the efficiency table, its text and plots, and the files a study writes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hpcsur.ops.scale.model import ModelFit, efficiency
from hpcsur.ops.scale.plan import Point, STAGES


# ============================================================================ table (pure)
CSV_FIELDS = ("stage", "mode", "ranks", "grid", "groups", "work", "unit", "sites", "time_s", "wall_s", "startup_s",
              "throughput", "labels_per_s", "speedup", "efficiency", "model_time_s", "model_efficiency",
              "load_before", "load_after", "backend")


def build_rows(points: Sequence[Point], results: Mapping[str, dict], mode: str,
               fits: Mapping[str, ModelFit], counts: Mapping[str, dict]) -> list[dict]:
    """One row per measured (stage, ranks): times, throughput, speed-up, efficiency, the model's."""
    rows = []
    for stage in STAGES:
        mine = [p for p in points if p.stage == stage and p.measured]
        if not mine:
            continue
        ref = results[mine[0].name]
        ref_pred = fits[stage].predict(counts[mine[0].name]) if stage in fits else None
        ref_units = ref["work_done"] * mine[0].sites
        for p in mine:
            r = results[p.name]
            units = r["work_done"] * p.sites  # weak scaling over the domain: frames stay, sites grow
            speedup, eff = efficiency(units, r["time_s"], p.ranks, ref_units, ref["time_s"], mine[0].ranks)
            model_time = model_eff = None
            if stage in fits:
                model_time = fits[stage].predict(counts[p.name])
                model_eff = efficiency(units, model_time, p.ranks, ref_units, ref_pred,
                                       mine[0].ranks)[1] if model_time > 0 and ref_pred > 0 else None
            rows.append({
                "stage": stage, "mode": mode, "ranks": p.ranks,
                "grid": "x".join(map(str, p.grid)) if p.grid else "", "groups": p.groups if p.grid else "",
                "work": r["work_done"], "unit": p.unit, "sites": p.sites, "time_s": r["time_s"], "wall_s": r["wall_s"],
                "startup_s": r.get("startup_s"), "throughput": r["work_done"] / r["time_s"],
                "labels_per_s": r.get("labels_per_s"), "speedup": speedup, "efficiency": eff,
                "model_time_s": model_time, "model_efficiency": model_eff,
                "load_before": r["load_before"], "load_after": r["load_after"], "backend": r.get("backend", ""),
            })
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def format_table(rows: Sequence[Mapping], extrapolation: Sequence[Mapping] = ()) -> str:
    """The measured rows and the model's extrapolation as aligned text tables."""
    head = ("stage", "P", "grid", "groups", "work", "time_s", "startup_s", "throughput/s", "labels/s",
            "speed-up", "eff", "model_eff", "load")
    table = [head]
    for r in rows:
        work = int(r["work"]) if float(r["work"]).is_integer() else round(r["work"], 1)
        table.append((r["stage"], str(r["ranks"]), r["grid"] or "-", _fmt(r["groups"]), f"{work} {r['unit']}",
                      _fmt(r["time_s"]), _fmt(r["startup_s"]), _fmt(r["throughput"]), _fmt(r["labels_per_s"]),
                      _fmt(r["speedup"]), _fmt(r["efficiency"]), _fmt(r["model_efficiency"]),
                      f"{r['load_before']:.1f}/{r['load_after']:.1f}"))
    lines = _align(table)
    if extrapolation:
        lines += ["", "model extrapolation (communication constants >= network priors):"]
        lines += _align([("stage", "P", "grid", "predicted time_s", "eff", "note")] + [
            (e["stage"], str(e["ranks"]), e.get("grid") or "-", _fmt(e["time_s"]), _fmt(e["efficiency"]),
             e.get("note", "")) for e in extrapolation])
    return "\n".join(lines)


def format_model(fits: Mapping[str, "ModelFit"]) -> str:
    """The fitted constants, one stage per line, each with its unit and source."""
    lines = ["model constants (busiest rank):"]
    for stage, fit in fits.items():
        parts = [f"{t.name} = {fit.constants[t.name]:.3g} {t.unit} ({fit.sources[t.name]})" for t in fit.terms]
        lines.append(f"  {stage}: " + "; ".join(parts) + f"; fit residual {100 * fit.residual:.0f} %")
    return "\n".join(lines)


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


# ============================================================================ outputs (side effects)
def plot(path: Path, rows: Sequence[Mapping], extrapolation: Sequence[Mapping], mode: str) -> None:
    """Efficiency vs ranks per stage: measured (markers), the model at the measured and extrapolated ranks (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, stage in enumerate(STAGES):
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        color = f"C{i}"
        ax.plot([r["ranks"] for r in mine], [r["efficiency"] for r in mine], "o", color=color,
                label=f"{stage} measured")
        model = [(r["ranks"], r["model_efficiency"]) for r in mine if r["model_efficiency"] is not None]
        model += [(e["ranks"], e["efficiency"]) for e in extrapolation
                  if e["stage"] == stage and e["efficiency"] is not None]
        model.sort()
        if model:
            ax.plot([m[0] for m in model], [m[1] for m in model], "--", color=color, label=f"{stage} model")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks / workers P")
    ax.set_ylabel("efficiency")
    ax.set_ylim(bottom=0)
    ax.set_title(f"hpcsur scale ({mode} scaling)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir: Path, report: dict, rows: Sequence[Mapping]) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "scaling.json", "csv": out_dir / "scaling.csv", "png": out_dir / "scaling.png"}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    plot(files["png"], rows, report["extrapolation"], report["mode"])
    report["files"] = {k: str(v) for k, v in files.items()}
    tmp = files["json"].with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default))
    tmp.replace(files["json"])
    return report["files"]


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


