"""The report's figures (matplotlib, headless): the findings' contrasts, gains per item kind,
perturbation drops, I-RAVEN per configuration.

Each function returns the PNG it wrote, or None when there is nothing to draw. Error bars are the 95%
CIs of metrics.json (or of the report's paired contrasts); every figure has a title, axis labels and a
legend. Keys missing from older evaluations are drawn as empty bars.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_recipes.files import atomic_path  # noqa: E402
from evalsuite.comparisons import block_of, fkeys  # noqa: E402

KIND_COLOURS = {"image": "#d1495b", "video": "#00798c", "shuffled": "#edae49", "base": "#7a7a7a"}


def _bars(ax, groups: list[str], series: dict[str, list], colours: dict[str, str] | None = None):
    """Grouped bars with CI whiskers; series[label] = [estimate dict or None per group]."""
    width = 0.8 / max(1, len(series))
    for i, (label, ests) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ests = [e if isinstance(e, dict) and isinstance(e.get("value"), (int, float)) else None for e in ests]
        vals = [100 * e["value"] if e else 0.0 for e in ests]
        lo = [100 * (e["value"] - e.get("ci_low", e["value"])) if e else 0.0 for e in ests]
        hi = [100 * (e.get("ci_high", e["value"]) - e["value"]) if e else 0.0 for e in ests]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=label,
               color=(colours or {}).get(label), edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)


def _series(rows, values) -> tuple[dict, dict]:
    """One bar series per checkpoint (`values(c)` gives its estimates) and its colour by the run's role
    (image, video, the shuffled-frames control, base)."""
    labels = {f"{c.name} ({c.role})": c for c in rows}
    return ({k: values(c) for k, c in labels.items()}, {k: KIND_COLOURS.get(c.role) for k, c in labels.items()})


def _save(fig, path: Path) -> Path:
    """`fig` as a PNG at `path`, through `atomic_path`: a reader never sees half a PNG."""
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


ITEM_KINDS = ("overall", "static", "temporal")
VERDICT_COLOURS = {"supported": "#2e7d32", "contradicted": "#c62828", "inconclusive": "#7a7a7a",
                   "uninformative": "#b0b0b0"}


def _evaluated(ckpts, task: str) -> tuple[list, list[str]]:
    """The checkpoints that evaluated `task` and the F blocks ("f5", ...) any of them recorded, by F."""
    rows = [c for c in ckpts if task in c.metrics]
    return rows, fkeys({k for c in rows for k in c.metrics[task].get("metrics", {})})


def _kinds(rows, task: str) -> list[str]:
    """The item kinds any checkpoint recorded for `task`: overall, then static / temporal when present."""
    recorded = {k for c in rows for k in (c.metrics[task].get("metrics", {}).get("by_kind") or {})}
    return [k for k in ITEM_KINDS if k == "overall" or k in recorded]


def plot_gains(ckpts, out_dir: Path) -> Path | None:
    """vCoT gain per checkpoint and F, one panel per item kind."""
    rows, fks = _evaluated(ckpts, "vcot")
    if not fks:
        return None
    kinds = _kinds(rows, "vcot")
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(6, 1.6 * len(fks) * len(rows)) * len(kinds) ** 0.5 + 1, 4.2),
                             squeeze=False)
    for ax, items in zip(axes[0], kinds):
        series, colours = _series(rows, lambda c, items=items: [
            block_of(c.metrics["vcot"].get("metrics", {}), k, items).get("gain") for k in fks])
        _bars(ax, [f"F = {k[1:]} frames" for k in fks], series, colours)
        ax.set_title(f"vCoT gain, {items} items")
        ax.set_ylabel("vCoT - base in accuracy points (95% CI)")
        ax.set_xlabel("frames sampled per video")
    axes[0][0].legend(title="checkpoint", fontsize=8)  # the same series in every panel
    return _save(fig, out_dir / "vcot_gain.png")


def plot_shuffle(ckpts, out_dir: Path) -> Path | None:
    """Drops from vCoT under each perturbation, one panel per F (all items)."""
    rows, fks = _evaluated(ckpts, "shuffle")
    if not fks:
        return None
    perturbations = {"text": "text (other video's infills)", "visual": "visual (other video's frames)",
                     "words": "words shuffled", "order": "infill order shuffled"}
    fig, axes = plt.subplots(1, len(fks), figsize=(6.5 * len(fks), 4.2), squeeze=False)
    for ax, fk in zip(axes[0], fks):
        series, colours = _series(rows, lambda c, fk=fk: [c.metrics["shuffle"].get("metrics", {}).get(fk, {}).get(
            f"drop_{p}") for p in perturbations])
        _bars(ax, list(perturbations.values()), series, colours)
        ax.set_title(f"Change from vCoT under perturbation, F = {fk[1:]}")
        ax.set_ylabel("accuracy change in points (95% CI)")
        ax.set_xlabel("perturbation")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(title="checkpoint", fontsize=8)
    return _save(fig, out_dir / "perturbation_drops.png")


def plot_findings(rows: list[dict], out_dir: Path) -> Path | None:
    """The verdict rows' contrasts (`evalsuite.report.evaluation.verdicts`) as points with CIs, coloured by verdict;
    the paper's direction is to the right of 0."""
    rows = [r for r in rows if r.get("contrast") and "ci_low" in r["contrast"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, max(4.2, 0.45 * len(rows) + 1.6)))
    for y, r in enumerate(reversed(rows)):
        c = r["contrast"]
        err = [[100 * (c["value"] - c["ci_low"])], [100 * (c["ci_high"] - c["value"])]]
        ax.errorbar([100 * c["value"]], [y], xerr=err, fmt="o", capsize=3,
                    color=VERDICT_COLOURS.get(r["verdict"], "black"))
    labels = [f"{r['pair']}: {r['finding']}" + (f" F={r['frames']}" if r.get("frames") is not None else "")
              for r in reversed(rows)]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    for verdict, colour in VERDICT_COLOURS.items():
        if any(r["verdict"] == verdict for r in rows):
            ax.plot([], [], "o", color=colour, label=verdict)
    ax.set_title("The paper's findings: paired contrasts (positive = the paper's direction)")
    ax.set_xlabel("contrast in points (95% CI)")
    ax.set_ylabel("pair and finding")
    ax.legend(title="verdict", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_dir / "findings.png")


def plot_iraven(ckpts, out_dir: Path) -> Path | None:
    rows = [c for c in ckpts if "iraven" in c.metrics]
    if not rows:
        return None
    configs = sorted({k for c in rows for k in (c.metrics["iraven"].get("metrics", {}).get("per_config") or {})})
    short = [k.replace("_center_single", "_cs").replace("distribute_", "dist_").replace("in_", "in-") for k in configs]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(configs) + 2), 4.4))
    series, colours = _series(rows, lambda c: [(c.metrics["iraven"].get("metrics", {}).get("per_config") or {}).get(k)
                                               for k in configs])
    _bars(ax, short, series, colours)
    ax.axhline(12.5, color="grey", linestyle="--", linewidth=1, label="chance (12.5%)")
    ax.set_title("I-RAVEN accuracy per configuration")
    ax.set_ylabel("accuracy in % (95% CI)")
    ax.set_xlabel("configuration")
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "iraven_per_config.png")


def plot_vs_budget(panels: dict[str, dict[str, list]], unit: str, ylabel: str, title: str, path: Path,
                   colours: dict[str, str] | None = None, hline: float | None = None) -> Path | None:
    """One panel per key of `panels`, one line per series: `panels[panel][label]` = [(budget, estimate)]
    with `evalsuite.stats.Estimate`s in [0, 1], drawn in points against the budget in `unit`
    with CI error bars (log x when budgets span 4x or more); `hline` (points) is a reference line. The
    study report's figures (`evalsuite.report.study`)."""
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        xs_all = sorted({float(x) for points in series.values() for x, _ in points})
        logx = xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 4
        for i, (label, points) in enumerate(series.items()):
            points = sorted((float(x), e) for x, e in points if e is not None)
            step = i - (len(series) - 1) / 2  # keep overlapping error bars apart
            span = (xs_all[-1] - xs_all[0]) or xs_all[-1] or 1.0
            xs = [x * 1.03 ** step if logx else x + 0.012 * step * span for x, _ in points]
            vals = [100 * e.value for _, e in points]
            err = [[100 * (e.value - e.ci_low) for _, e in points], [100 * (e.ci_high - e.value) for _, e in points]]
            ax.errorbar(xs, vals, yerr=err, fmt="o-", capsize=3, label=label, color=(colours or {}).get(label))
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        if logx:
            ax.set_xscale("log")
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{x:,g}" for x in xs_all], fontsize=8)
        ax.minorticks_off()
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"budget ({unit})")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)

