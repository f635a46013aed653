"""The comparison report of every checkpoint under CKPT_DIR: `CKPT_DIR/report.md`.

    python -m evalsuite report ckpt/

This is the hook `python -m evalsuite all` calls last. It currently writes one markdown table of the
vCoT metrics per checkpoint and F from each `eval/vcot/metrics.json`; the image-vs-video contrast of
gains, the perturbation and I-RAVEN tables and the plots (`CKPT_DIR/report/*.png`) are to be added
here, reading the other tasks' metrics.json the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _pct(est: dict | None) -> str:
    return "" if est is None else f"{100 * est['value']:.1f}"


def _diff(est: dict | None) -> str:
    if est is None:
        return ""
    return f"{100 * est['value']:+.1f} [{100 * est['ci_low']:+.1f}, {100 * est['ci_high']:+.1f}]"


def _p(est: dict | None) -> str:
    return "" if est is None or est.get("p_value") is None else f"{est['p_value']:.3g}"


def collect(ckpt_dir: Path, task: str) -> list[tuple[str, dict]]:
    """(checkpoint name relative to ckpt_dir, metrics.json) of every checkpoint evaluated on `task`."""
    found = []
    for path in sorted(Path(ckpt_dir).rglob(f"eval/{task}/metrics.json")):
        ckpt = path.parents[2]
        found.append((str(ckpt.relative_to(ckpt_dir)) or ".", json.loads(path.read_text())))
    return found


def vcot_table(entries: list[tuple[str, dict]]) -> list[str]:
    lines = ["| checkpoint | kind | F | n | base | caption | vcot | gain [95% CI] | p | caption gain [95% CI] | p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in entries:
        ck = m.get("checkpoint", {})
        kind = ck.get("role", "")
        for fkey, block in sorted(m["metrics"].items(), key=lambda kv: int(kv[0].removeprefix("f"))):
            lines.append(
                f"| {name} | {kind} | {fkey.removeprefix('f')} | {block['n_items']} | {_pct(block.get('acc_base'))} | "
                f"{_pct(block.get('acc_caption'))} | {_pct(block.get('acc_vcot'))} | {_diff(block.get('gain'))} | "
                f"{_p(block.get('gain'))} | {_diff(block.get('caption_gain'))} | {_p(block.get('caption_gain'))} |")
    return lines


def write_report(ckpt_dir: str | os.PathLike) -> Path:
    """Write `ckpt_dir/report.md` from the metrics found under it; returns its path."""
    ckpt_dir = Path(ckpt_dir).resolve()
    entries = collect(ckpt_dir, "vcot")
    lines = [f"# Evaluation report: {ckpt_dir.name}", ""]
    if entries:
        s = entries[0][1]["settings"]
        lines += ["## vCoT", "",
                  f"Benchmark `{s.get('benchmark')}`, scoring `{s.get('scoring')}`, infills `{s.get('infills')}`. "
                  "Accuracies in %; gains are paired differences in points with a bootstrap 95% CI and an exact "
                  "McNemar p-value.", ""]
        lines += vcot_table(entries)
    else:
        lines.append("No evaluated checkpoints (no eval/vcot/metrics.json) under this directory.")
    out = ckpt_dir / "report.md"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out
