"""The report's figures (matplotlib, headless): gains, perturbation drops, I-RAVEN per configuration.

Each function returns the PNG it wrote, or None when no checkpoint has that task's results. Error
bars are the 95% CIs of metrics.json; every figure has a title, axis labels and a legend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KIND_COLOURS = {"image": "#d1495b", "video": "#00798c", "base": "#7a7a7a"}


def _fkeys(block: dict) -> list[str]:
    return sorted((k for k in block if k.startswith("f") and k[1:].isdigit()), key=lambda k: int(k[1:]))


def _bars(ax, groups: list[str], series: dict[str, list], colours: dict[str, str] | None = None):
    """Grouped bars with CI whiskers; series[label] = [estimate dict or None per group]."""
    width = 0.8 / max(1, len(series))
    for i, (label, ests) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        vals = [100 * e["value"] if e else 0.0 for e in ests]
        lo = [100 * (e["value"] - e["ci_low"]) if e else 0.0 for e in ests]
        hi = [100 * (e["ci_high"] - e["value"]) if e else 0.0 for e in ests]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=label,
               color=(colours or {}).get(label), edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)


def _series(rows, values) -> tuple[dict, dict]:
    """One bar series per checkpoint (`values(c)` gives its estimates) and its colour by run kind."""
    labels = {f"{c.name} ({c.kind})": c for c in rows}
    return ({k: values(c) for k, c in labels.items()}, {k: KIND_COLOURS.get(c.kind) for k, c in labels.items()})


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gains(ckpts, out_dir: Path) -> Path | None:
    rows = [c for c in ckpts if "vcot" in c.metrics]
    if not rows:
        return None
    fks = sorted({k for c in rows for k in _fkeys(c.metrics["vcot"]["metrics"])}, key=lambda k: int(k[1:]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(fks) * len(rows)), 4.2))
    series, colours = _series(rows, lambda c: [c.metrics["vcot"]["metrics"].get(k, {}).get("gain") for k in fks])
    _bars(ax, [f"F = {k[1:]} frames" for k in fks], series, colours)
    ax.set_title("vCoT gain (accuracy with transitional infills - frames only)")
    ax.set_ylabel("gain in accuracy points (95% CI)")
    ax.set_xlabel("frames sampled per video")
    ax.legend(title="checkpoint", fontsize=8)
    return _save(fig, out_dir / "vcot_gain.png")


def plot_shuffle(ckpts, out_dir: Path) -> Path | None:
    rows = [c for c in ckpts if "shuffle" in c.metrics]
    if not rows:
        return None
    fks = sorted({k for c in rows for k in _fkeys(c.metrics["shuffle"]["metrics"])}, key=lambda k: int(k[1:]))
    fig, axes = plt.subplots(1, len(fks), figsize=(5.5 * len(fks), 4.2), squeeze=False)
    for ax, fk in zip(axes[0], fks):
        series, colours = _series(rows, lambda c, fk=fk: [c.metrics["shuffle"]["metrics"].get(fk, {}).get(f"drop_{p}")
                                                          for p in ("text", "visual", "words")])
        _bars(ax, ["text (other video's infills)", "visual (other video's frames)", "words shuffled"], series, colours)
        ax.set_title(f"Change from vCoT under perturbation, F = {fk[1:]}")
        ax.set_ylabel("accuracy change in points (95% CI)")
        ax.set_xlabel("perturbation")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(title="checkpoint", fontsize=8)
    return _save(fig, out_dir / "perturbation_drops.png")


def plot_iraven(ckpts, out_dir: Path) -> Path | None:
    rows = [c for c in ckpts if "iraven" in c.metrics]
    if not rows:
        return None
    configs = sorted({k for c in rows for k in c.metrics["iraven"]["metrics"].get("per_config", {})})
    short = [k.replace("_center_single", "_cs").replace("distribute_", "dist_").replace("in_", "in-") for k in configs]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(configs) + 2), 4.4))
    series, colours = _series(rows, lambda c: [c.metrics["iraven"]["metrics"].get("per_config", {}).get(k)
                                               for k in configs])
    _bars(ax, short, series, colours)
    ax.axhline(12.5, color="grey", linestyle="--", linewidth=1, label="chance (12.5%)")
    ax.set_title("I-RAVEN accuracy per configuration")
    ax.set_ylabel("accuracy in % (95% CI)")
    ax.set_xlabel("configuration")
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "iraven_per_config.png")
