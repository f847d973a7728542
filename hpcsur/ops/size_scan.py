"""The size scan (paper Fig. 4): force computations needed to reach an error tolerance, per system size and loss.

Each member of a size-scan campaign (``jobs/lj_scan.toml``: one system size per member) is evaluated like any job;
its ``report.json`` gives, per (loss, training size), the test error ``e_abs`` over seeds. The force computations
of a training set are its frames times the atoms (blocks) whose forces each frame needs: all n for L_z, k = p n
for L_x,p -- the paper's "configurations x atoms". The computations needed to reach ``e_tol`` are read off each
curve two ways:

* ``first_below``: the smallest training set whose mean error is below e_tol (the paper's reading of its runs);
* ``interpolated``: log-log interpolation between the last set above e_tol and the first below it; where the
  smallest set is already below (``upper_bound``), it is that set's computations, an upper bound on what is needed.

Either is None when no training set of the scan reaches e_tol; then ``more_than`` gives the largest set tried, a
lower bound on what is needed (fig4.png marks it with an upward triangle). Each is read twice: on ``e_abs`` against
the truth (``needed``), and on the error against the last seed's prediction (``needed_paper_metric``): the reference's
``test()`` scores every fold against the last fold's rollout, and the paper's Fig. 4 values are the first training
sizes whose mean of that number is below 3e-3 (method notes, section 2.5). Where a scan cannot train far enough to
reach e_tol (fewer training sets on fewer cores), the same readings at looser tolerances (``LOOSER_TOLERANCES``,
``needed_looser``) still compare the two losses at an equal error: ``lz_over_lxp`` is the ratio of their
interpolated computations, the paper's argument (L_z's cost grows with n, L_x,p's does not).
``hpcsur results --size-scan JOB`` writes ``results/<job>.json`` and ``results/fig4.png`` from the members' reports.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec, state_layout
from hpcsur.ops.paper import FIG4, FIG4_TOLERANCE
from hpcsur.ops.results import SIZE_SCAN
from hpcsur.parallel.sampling import n_chosen

LOOSER_TOLERANCES = (1e-2,)   # read as well as e_tol: an equal error both losses reach on a short scan


def crossing(points: list[tuple[float, float]], tol: float) -> dict:
    """Force computations needed to reach ``tol`` on the curve ``points`` = [(computations, mean error)]; where no
    point is below ``tol``, ``more_than``: the largest computations tried (a lower bound; None for no points)."""
    pts = sorted(points)
    first = next((i for i, (_, e) in enumerate(pts) if e < tol), None)
    if first is None:
        return {"first_below": None, "interpolated": None, "more_than": pts[-1][0] if pts else None}
    out = {"first_below": pts[first][0], "interpolated": pts[first][0], "upper_bound": first == 0}
    if first > 0:
        (c0, e0), (c1, e1) = pts[first - 1], pts[first]
        if e0 > tol and c1 > c0:
            s = (math.log(tol) - math.log(e0)) / (math.log(e1) - math.log(e0))
            out["interpolated"] = math.exp(math.log(c0) + s * (math.log(c1) - math.log(c0)))
    return out


def labelled_blocks(spec: JobSpec, loss: str) -> int:
    """Atoms (blocks) with computed forces per frame for ``loss``: all of them for L_z / L_x, k = p n for L_x,p."""
    _, n = state_layout(spec)
    return n_chosen(spec.labels.p, n) if loss == "lxp" else n


def member_curves(spec: JobSpec, report: dict) -> dict[str, list[dict]]:
    """Per loss, the points (training size, force computations, error over seeds) of one member's report."""
    curves: dict[str, list[dict]] = {}
    for row in report["rows"]:
        per_frame = labelled_blocks(spec, row["loss"])
        curves.setdefault(row["loss"], []).append({
            "equivalent_data": row["equivalent_data"], "train_frames": row["train_frames"],
            "force_computations": row["train_frames"] * per_frame, "e_abs": row["e_abs"],
            "seed_disagreement": (row.get("seed_disagreement") or {}).get("e_abs")})
    for points in curves.values():
        points.sort(key=lambda p: p["force_computations"])
    return curves


def read_crossings(curves: dict[str, list[dict]], tol: float) -> dict:
    """Computations needed to reach ``tol`` per loss, against the truth and on the paper's metric, and the ratio
    L_z / L_x,p of the interpolated ones where both curves reach ``tol`` against the truth; ``lz_over_lxp_is``
    says whether that ratio is exact or, where a curve starts below ``tol``, a lower or upper bound."""
    needed = {loss: crossing([(p["force_computations"], p["e_abs"]["mean"]) for p in pts], tol)
              for loss, pts in curves.items()}
    paper_metric = {loss: crossing([(p["force_computations"], p["seed_disagreement"]["mean"]) for p in pts
                                    if p["seed_disagreement"]], tol) for loss, pts in curves.items()}
    lz, lxp = (needed.get(loss, {}) for loss in ("lz", "lxp"))
    ratio = bound = None
    if lz.get("interpolated") and lxp.get("interpolated"):
        ratio = lz["interpolated"] / lxp["interpolated"]
        bound = {(False, False): "exact", (False, True): "lower bound", (True, False): "upper bound",
                 (True, True): "unknown"}[(lz["upper_bound"], lxp["upper_bound"])]
    return {"needed": needed, "needed_paper_metric": paper_metric, "lz_over_lxp": ratio, "lz_over_lxp_is": bound}


def scan_results(spec: JobSpec, tol: float = FIG4_TOLERANCE, looser: tuple[float, ...] = LOOSER_TOLERANCES) -> dict:
    """The scan of a campaign: per member (system size) its curves and crossings, next to the paper's."""
    from hpcsur.ops.campaign.members import plan_members
    from hpcsur.provenance import stamp

    looser = [t for t in looser if t > tol]
    sizes = []
    for member in plan_members(spec):
        _, n = state_layout(member.spec)
        report_path = Path(member.run_dir) / "report.json"
        entry = {"member": member.index, "job": member.name, "blocks": n, "p": member.spec.labels.p,
                 "report": str(report_path), "paper": FIG4.get(n)}
        if not report_path.is_file():
            sizes.append({**entry, "status": "not evaluated"})
            continue
        curves = member_curves(member.spec, json.loads(report_path.read_text()))
        sizes.append({**entry, "status": "evaluated", "curves": curves, **read_crossings(curves, tol),
                      "needed_looser": {f"{t:g}": read_crossings(curves, t) for t in looser}})
    if not any(s["status"] == "evaluated" for s in sizes):
        raise InputError(f"{spec.source}: no member of the scan is evaluated yet (no report.json in "
                         f"{', '.join(s['report'] for s in sizes)}); run the campaign first")
    return {"kind": SIZE_SCAN, "job": spec.name, "spec": spec.source, "spec_hash": spec.spec_hash(), "code": stamp(),
            "tolerance": tol, "looser_tolerances": looser,
            "metric": "e_abs (the reference code's metric), mean over seeds",
            "paper_metric": "e_abs of every seed but the last against the last seed's rollout (the reference's test() "
                            "as written), mean: needed_paper_metric",
            "force_computations": "training frames x atoms with forces per frame (n for lz, k = p n for lxp)",
            "sizes": sizes}


def plot_fig4(path: Path, scan: dict) -> None:
    """Left: error vs force computations per size and loss; middle: computations needed vs size (ours, paper);
    right: the ratio L_z / L_x,p of computations at an equal error vs size (ours at each tolerance, the paper's)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, ratio) = plt.subplots(1, 3, figsize=(19, 5.6), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    styles = {"lz": "o-", "lx": "s-", "lxp": "^-"}
    done = [s for s in scan["sizes"] if s["status"] == "evaluated"]
    for s in done:
        for loss, pts in s["curves"].items():
            means, stds = [p["e_abs"]["mean"] for p in pts], [p["e_abs"]["std"] or 0.0 for p in pts]
            below = [min(sd, 0.9 * m) for m, sd in zip(means, stds)]     # a log axis has no room below zero
            left.errorbar([p["force_computations"] for p in pts], means, yerr=[below, stds],
                          fmt=styles.get(loss, "o-"), ms=4, capsize=2, label=f"{loss}, {s['blocks']} atoms")
    left.axhline(scan["tolerance"], color="k", lw=0.8, ls=":")
    left.set(xscale="log", yscale="log", xlabel="force computations (frames x atoms)", ylabel="test error e_abs")
    left.legend(fontsize=7)
    for loss, colour in (("lz", "C0"), ("lxp", "C1")):
        for key, fmt, fill, label in (("needed", "o-", colour, "vs truth"),
                                      ("needed_paper_metric", "s:", "none", "vs last seed")):
            read = [(s["blocks"], s[key].get(loss, {})) for s in done]
            reached = [(n, c["first_below"]) for n, c in read if c.get("first_below")]
            if reached:
                right.plot(*zip(*reached), fmt, color=colour, mfc=fill, label=f"{loss} (hpcsur, {label})")
            beyond = [(n, c["more_than"]) for n, c in read if c.get("more_than")]   # not reached: a lower bound
            if beyond:
                right.plot(*zip(*beyond), "^", color=colour, mfc=fill, ms=8,
                           label=f"{loss} (hpcsur, {label}): not reached, more than")
        paper = sorted((n, v[loss]) for n, v in FIG4.items())
        right.plot(*zip(*paper), "x--", color=colour, alpha=0.6, label=f"{loss} (paper)")
    right.set(xscale="log", yscale="log", xlabel="atoms", ylabel=f"force computations to e < {scan['tolerance']:g}")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)   # below: no point hidden
    for i, tol in enumerate([scan["tolerance"], *scan.get("looser_tolerances", [])]):
        reads = [(s["blocks"], s if tol == scan["tolerance"] else s["needed_looser"][f"{tol:g}"]) for s in done]
        for marker, kinds in (("o-", ("exact",)), ("^", ("lower bound",)), ("v", ("upper bound",))):
            pts = [(n, r["lz_over_lxp"]) for n, r in reads if r.get("lz_over_lxp_is") in kinds]
            if pts:
                ratio.plot(*zip(*pts), marker, color=f"C{i + 2}", label=f"hpcsur, e < {tol:g}"
                           + ("" if marker == "o-" else f" ({kinds[0]})"))
    paper = sorted((n, v["lz"] / v["lxp"]) for n, v in FIG4.items())
    ratio.plot(*zip(*paper), "x--", color="k", alpha=0.6, label=f"paper, e < {scan['tolerance']:g}")
    ratio.set(xscale="log", yscale="log", xlabel="atoms", ylabel="L_z / L_x,p force computations at equal error")
    ratio.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scan(spec: JobSpec, folder: str = "results", tol: float = FIG4_TOLERANCE) -> tuple[Path, Path]:
    """Write ``<folder>/<job>.json`` and ``<folder>/fig4.png``."""
    from hpcsur.learn.evaluate import write_report

    scan = scan_results(spec, tol)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path, plot = out / f"{spec.name}.json", out / "fig4.png"
    plot_fig4(plot, scan)
    scan["plot"] = plot.name
    write_report(path, scan)
    return path, plot
