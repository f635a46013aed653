"""The comparison a researcher reads: `CKPT_DIR/report.md`, `report/*.png` and `report/metrics.csv`.

    python -m evalsuite report ckpt/          (also the last step of `python -m evalsuite all`)

Sections: the vCoT table in the paper's layout (model, F, base, caption, vCoT, gain, each with its
95% CI), with how each checkpoint was evaluated (protocol, scoring, infills) and, for generate scoring,
the extraction failure rate with "strict" and "random-fill" accuracy per condition; for each matched
pair of training runs, the key contrast gain(image run) - gain(video run) as a paired bootstrap over the
same items, with the scale-match audit of what each run consumed side by side (refused, with the
settings that differ, when the two were evaluated differently: `evaluation_differences`); the
perturbation drops; I-RAVEN per configuration with chance and position bias. Every
number comes from the checkpoints' `eval/<task>/metrics.json` and `predictions.jsonl` and their
`run.json`; the report is also logged as artifacts of a "comparison" MLflow run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from data_recipes.files import atomic_write_text
from evalsuite.stats import contrast_of_differences

AUDIT = ("samples", "images", "text_tokens", "supervised_tokens", "visual_tokens")


def _pct(e: dict | None) -> str:
    if not e:
        return ""
    if "ci_low" not in e:  # recorded without an interval (failure rates before they had one)
        return f"{100 * e['value']:.1f}"
    return f"{100 * e['value']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def _pts(e: dict | None) -> str:
    if not e:
        return ""
    p = f", p={e['p_value']:.2g}" if e.get("p_value") is not None else ""
    return f"{100 * e['value']:+.1f} [{100 * e['ci_low']:+.1f}, {100 * e['ci_high']:+.1f}]{p}"


def _fkeys(block: dict) -> list[str]:
    return sorted((k for k in block if k.startswith("f") and k[1:].isdigit()), key=lambda k: int(k[1:]))


class Checkpoint:
    """One evaluated checkpoint: its name, training info (run.json) and per-task results."""

    def __init__(self, root: Path, path: Path):
        self.path, self.name = path, str(path.relative_to(root)) or path.name
        run = path / "run.json"
        self.run = json.loads(run.read_text()) if run.exists() else {}
        self.metrics, self.rows = {}, {}
        for task_dir in sorted((path / "eval").glob("*")):
            m = task_dir / "metrics.json"
            if m.exists():
                self.metrics[task_dir.name] = json.loads(m.read_text())

    @property
    def kind(self) -> str:
        return self.run.get("kind") or ("adapter" if self.run else "base")

    def predictions(self, task: str) -> list[dict]:
        if task not in self.rows:
            f = self.path / "eval" / task / "predictions.jsonl"
            self.rows[task] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
        return self.rows[task]


def discover(root: Path) -> list[Checkpoint]:
    dirs = sorted({p.parents[2] for p in root.rglob("eval/*/metrics.json")})
    return [Checkpoint(root, d) for d in dirs]


def matched_pairs(ckpts: list[Checkpoint]) -> list[tuple[Checkpoint, Checkpoint]]:
    """(image run, video run) pairs: a run whose run.json says it was matched to another one here."""
    by_path = {c.path.resolve(): c for c in ckpts}
    pairs = []
    for c in ckpts:
        ref = ((c.run.get("match") or {}).get("reference") or {}).get("checkpoint")
        other = by_path.get(Path(ref).resolve()) if ref else None
        if other is not None:
            pairs.append((c, other) if c.kind == "image" or other.kind != "image" else (other, c))
    return pairs


def _correct(c: Checkpoint, f: int, condition: str) -> dict[str, int]:
    return {r["item"]: int(bool(r.get("correct"))) for r in c.predictions("vcot")
            if r["frames"] == f and r["condition"] == condition and not r.get("error")}


# --- how a checkpoint was evaluated ------------------------------------------------------------------
ITEM_SET = ("benchmark", "limit", "frames", "seed", "data")
"""Settings that pick the evaluated items: two evaluations pair item by item only when these agree."""
NORMS = {"sum": "total log-likelihood", "mean": "log-likelihood per token", "chars": "log-likelihood per character"}


def _loglik_norm(settings: dict) -> str | None:
    """The loglik normalisation of an evaluation; None for generate scoring (it does not apply). An
    evaluation that did not record one summed the option's log-probabilities (the only way before the flag)."""
    return settings.get("loglik_norm", "sum") if settings.get("scoring") == "loglik" else None


def compared_settings(settings: dict) -> dict:
    """The settings of a vcot evaluation that must agree for two checkpoints' gains to be contrasted.

    `protocol` missing means `custom` (evaluations before presets); `loglik_norm` counts for loglik scoring
    only. `video_input` and `max_pixels` are deliberately absent: an image run and a video run may feed
    frames differently by design (the report says how each did). The recorded `item_set` digest, when
    both evaluations have one, checks the items themselves."""
    out = {"protocol": settings.get("protocol", "custom"), "scoring": settings.get("scoring"),
           "loglik_norm": _loglik_norm(settings), "infills": settings.get("infills")}
    out |= {k: settings.get(k) for k in ITEM_SET}
    if "item_set" in settings:
        out["item_set"] = settings["item_set"]
    return out


def evaluation_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(setting, value in a, value in b) for every compared setting in which two vcot evaluations differ."""
    ca, cb = compared_settings(a), compared_settings(b)
    return [(k, ca.get(k), cb.get(k)) for k in dict.fromkeys([*ca, *cb])
            if (k != "item_set" or k in ca and k in cb) and ca.get(k) != cb.get(k)]


def _show(value, setting: str = "") -> str:
    if value is None:
        return "not used (generate scoring)" if setting == "loglik_norm" else "not set"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _scoring(settings: dict) -> str:
    norm = _loglik_norm(settings)
    if not norm:
        return f"`{settings.get('scoring')}`"
    unrecorded = "" if "loglik_norm" in settings else ": evaluated before --loglik-norm"
    return f"`{settings.get('scoring')}` ({NORMS.get(norm, norm)}{unrecorded})"


def evaluated_as(settings: dict) -> str:
    """`benchmark `egoschema`, protocol `paper`, scoring `generate`, infills `...``: one evaluation's setup."""
    return (f"benchmark `{settings.get('benchmark')}`, protocol `{settings.get('protocol', 'custom')}`, "
            f"scoring {_scoring(settings)}, infills `{settings.get('infills')}`")


def gain_contrast(img: Checkpoint, vid: Checkpoint, f: int, seed: int = 0) -> dict | None:
    """gain(image) - gain(video) at F, paired over the items both evaluated in both conditions."""
    vecs = [_correct(img, f, "vcot"), _correct(img, f, "base"), _correct(vid, f, "vcot"), _correct(vid, f, "base")]
    items = sorted(set.intersection(*(set(v) for v in vecs)))
    if not items:
        return None
    a1, b1, a2, b2 = ([v[i] for i in items] for v in vecs)
    return contrast_of_differences(a1, b1, a2, b2, seed=seed).to_dict()


_SHOWN = {"vcot": "vCoT"}


def _names(conditions: list[str]) -> str:
    names = [_SHOWN.get(c, c) for c in conditions]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def frames_fed(settings: dict) -> str:
    """How one evaluation fed its frames, from its settings (video_input per condition, max_pixels).

    Evaluations made before these were recorded fed every frame as an image, at its rendered or decoded size."""
    paths = settings.get("video_input") or {}
    native = [c for c, p in paths.items() if p == "native"]
    parts = [f"{_names(native)} as one clip through the family's video path (native)"] if native else []
    if not native:
        parts.append("every frame as an image")
    elif len(native) < len(paths):
        parts.append(f"{_names([c for c in paths if c not in native])} as images")
    budget = settings.get("max_pixels")
    size = (f"at most {budget:,} pixels per frame (aspect kept)" if budget
            else "no max_pixels (frames as rendered or decoded)")
    return ", ".join(parts) + "; " + size


def frames_line(ckpts: list[Checkpoint], task: str) -> str:
    """One line: how each checkpoint's evaluation of `task` fed its frames (once when all agree)."""
    fed = {c.name: frames_fed(c.metrics[task].get("settings", {})) for c in ckpts if task in c.metrics}
    if len(set(fed.values())) == 1:
        return f"Frames fed: {next(iter(fed.values()))}."
    return "Frames fed: " + "; ".join(f"`{name}`: {how}" for name, how in fed.items()) + "."


# --- sections ------------------------------------------------------------------------------------
def vcot_section(ckpts: list[Checkpoint]) -> list[str]:
    rows = [c for c in ckpts if "vcot" in c.metrics]
    if not rows:
        return ["No checkpoint has vCoT results yet."]
    setups = {c.name: evaluated_as(c.metrics["vcot"].get("settings", {})) for c in rows}
    if len(set(setups.values())) == 1:
        setup = [f"Evaluated with {next(iter(setups.values()))}."]
    else:
        setup = ["The checkpoints were evaluated differently: compare their rows with care.", "",
                 *[f"- `{name}`: {how}" for name, how in setups.items()]]
    generated = [c for c in rows if c.metrics["vcot"].get("settings", {}).get("scoring") == "generate"]
    strict = "" if not generated else (" With generate scoring base, caption and vCoT are strict accuracies: an "
                                       "answer that no rule or judge maps to an option counts wrong (failure rates "
                                       "and random-fill accuracy below).")
    out = [*setup, "", "Accuracy in % with bootstrap 95% CI; gain = vCoT - base in points (paired bootstrap CI, "
           f"exact McNemar p). Chance is 20%.{strict}", "", frames_line(rows, "vcot"), "",
           "| model | kind | F | n | base | caption | vCoT | gain |", "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        m = c.metrics["vcot"]["metrics"]
        for fk in _fkeys(m):
            b = m[fk]
            out.append(f"| {c.name} | {c.kind} | {fk[1:]} | {b.get('n_items', '')} | {_pct(b.get('acc_base'))} | "
                       f"{_pct(b.get('acc_caption'))} | {_pct(b.get('acc_vcot'))} | {_pts(b.get('gain'))} |")
    return out + ["", *extraction_lines(rows, "vcot")]


def extraction_lines(rows: list[Checkpoint], task: str) -> list[str]:
    """Per condition: failure rate, strict and random-fill accuracy of generate scoring; what loglik has instead."""
    out = []
    generated = [c for c in rows if c.metrics[task].get("settings", {}).get("scoring") == "generate"]
    loglik = [c for c in rows if c not in generated]
    if generated:
        out += ["Answer extraction (generate scoring), in % with bootstrap 95% CI: **failed**, the share of answers "
                "that no rule or judge could map to one option (an answer naming two letters is a failure); "
                "**strict** accuracy counts them wrong; **random-fill** accuracy scores each as 1/5, the expected "
                "accuracy of a uniform guess, which is what evaluations that fill an unmatched answer with a random "
                "option (VLMEvalKit) report on average: put that column beside such tables.", "",
                "| model | F | condition | failed | strict | random-fill |", "|---|---|---|---|---|---|"]
        for c in generated:
            m = c.metrics[task]["metrics"]
            for fk in _fkeys(m):
                b = m[fk]
                for cond in (k.removeprefix("acc_") for k in b if k.startswith("acc_")):
                    failed = b.get(f"failed_{cond}")
                    count = f" ({failed['count']}/{failed['n']})" if failed and "count" in failed else ""
                    out.append(f"| {c.name} | {fk[1:]} | {_SHOWN.get(cond, cond)} | {_pct(failed)}{count} | "
                               f"{_pct(b.get(f'acc_{cond}'))} | {_pct(b.get(f'random_fill_{cond}'))} |")
        out.append("")
    if loglik:
        names = ", ".join(f"`{c.name}`" for c in loglik)
        out += [f"{names}: loglik scoring picks an option for every prompt, so there are no extraction failures: "
                "strict and random-fill accuracy are both the accuracy in the table above.", ""]
    return out


def pairs_section(pairs) -> tuple[list[str], dict]:
    if not pairs:
        return ["No matched pair of training runs (a run.json with `match.reference.checkpoint`) here."], {}
    out, metrics = [], {}
    for img, vid in pairs:
        m = img.run["match"]
        out += [f"### {img.name} (image) vs {vid.name} (video)", "",
                f"{img.name} was stopped at {vid.name}'s consumption of **{m['unit']}** "
                f"(target {m['target']:,}, achieved {m['achieved']:,}, relative error {m['rel_error']:.2%}).", "",
                f"| consumed | {img.name} | {vid.name} | ratio |", "|---|---|---|---|"]
        for u in AUDIT:
            a, b = img.run.get("consumed", {}).get(u), vid.run.get("consumed", {}).get(u)
            ratio = f"{a / b:.3f}" if a is not None and b else ""
            out.append(f"| {u} | {a if a is not None else ''} | {b if b is not None else ''} | {ratio} |")
        out.append("")
        if "vcot" in img.metrics and "vcot" in vid.metrics:
            differ = evaluation_differences(img.metrics["vcot"].get("settings", {}),
                                            vid.metrics["vcot"].get("settings", {}))
            if differ:
                out += ["**No contrast**: the two checkpoints' vCoT evaluations differ in "
                        + ", ".join(f"`{k}`" for k, _, _ in differ)
                        + ", so gain(image) - gain(video) would mix the training difference with the evaluation "
                        "difference. Evaluate both with the same settings to contrast them.", "",
                        f"| setting | {img.name} | {vid.name} |", "|---|---|---|",
                        *[f"| {k} | {_show(a, k)} | {_show(b, k)} |" for k, a, b in differ], ""]
                continue
        out += ["| F | gain image | gain video | gain(image) - gain(video) |", "|---|---|---|---|"]
        for fk in _fkeys(img.metrics.get("vcot", {}).get("metrics", {})):
            f = int(fk[1:])
            c = gain_contrast(img, vid, f)
            gi = img.metrics["vcot"]["metrics"][fk].get("gain")
            gv = vid.metrics.get("vcot", {}).get("metrics", {}).get(fk, {}).get("gain")
            out.append(f"| {f} | {_pts(gi)} | {_pts(gv)} | {_pts(c)} |")
            if c:
                key = f"contrast/{img.name}_vs_{vid.name}/f{f}"
                metrics.update({f"{key}/value": c["value"], f"{key}/ci_low": c["ci_low"], f"{key}/ci_high": c["ci_high"]})
        out.append("")
    return out, metrics


def shuffle_section(ckpts: list[Checkpoint]) -> list[str]:
    rows = [c for c in ckpts if "shuffle" in c.metrics]
    if not rows:
        return ["No checkpoint has perturbation results yet."]
    out = ["Accuracy under each perturbation of the vCoT input and the drop from vCoT (points, paired CI, "
           "McNemar p). text = another video's infills; visual = another video's frames; words = the words "
           "of each infill shuffled.", "", frames_line(rows, "shuffle"), "",
           "| model | F | vCoT | text | drop text | visual | drop visual | words | drop words |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        m = c.metrics["shuffle"]["metrics"]
        for fk in _fkeys(m):
            b = m[fk]
            cells = [_pct(b.get("acc_vcot"))]
            for p in ("text", "visual", "words"):
                cells += [_pct(b.get(f"acc_{p}")), _pts(b.get(f"drop_{p}"))]
            out.append(f"| {c.name} | {fk[1:]} | " + " | ".join(cells) + " |")
    return out


def iraven_section(ckpts: list[Checkpoint]) -> list[str]:
    rows = [c for c in ckpts if "iraven" in c.metrics]
    if not rows:
        return ["No checkpoint has I-RAVEN results yet."]
    configs = sorted({k for c in rows for k in c.metrics["iraven"]["metrics"].get("per_config", {})})
    out = ["Accuracy in % (95% CI) per configuration; chance is 12.5%. Position bias = share of answers "
           "on the most often predicted letter (12.5% when unbiased).", "",
           "| model | average | " + " | ".join(configs) + " | position bias |",
           "|---|---|" + "---|" * len(configs) + "---|"]
    for c in rows:
        m = c.metrics["iraven"]["metrics"]
        per = m.get("per_config", {})
        bias = m.get("position_bias")
        bias_s = f"{100 * (bias['value'] if isinstance(bias, dict) else bias):.1f}" if bias is not None else ""
        out.append(f"| {c.name} | {_pct(m.get('acc'))} | " + " | ".join(_pct(per.get(k)) for k in configs)
                   + f" | {bias_s} |")
    return out


def metrics_csv(ckpts: list[Checkpoint]) -> str:
    """Every estimate of every task and checkpoint, one row each."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["checkpoint", "kind", "task", "metric", "value", "ci_low", "ci_high", "n", "p_value"])

    def walk(prefix: str, node, c: Checkpoint, task: str):
        if isinstance(node, dict) and "value" in node and not isinstance(node["value"], dict):
            w.writerow([c.name, c.kind, task, prefix, node["value"], node.get("ci_low", ""), node.get("ci_high", ""),
                        node.get("n", ""), node.get("p_value", "")])
        elif isinstance(node, dict):
            for k, v in sorted(node.items()):
                walk(f"{prefix}/{k}" if prefix else k, v, c, task)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            w.writerow([c.name, c.kind, task, prefix, node, "", "", "", ""])

    for c in ckpts:
        for task, m in c.metrics.items():
            walk("", m.get("metrics", {}), c, task)
    return buf.getvalue()


def write_report(ckpt_dir: str | os.PathLike, track: bool = True) -> Path:
    """Write report.md, report/*.png and report/metrics.csv under `ckpt_dir`; returns report.md."""
    from evalsuite.plots import plot_gains, plot_iraven, plot_shuffle

    root = Path(ckpt_dir).resolve()
    ckpts = discover(root)
    pairs = matched_pairs(ckpts)
    pair_lines, contrast_metrics = pairs_section(pairs)
    fig_dir = root / "report"
    fig_dir.mkdir(exist_ok=True)
    figures = [f for f in (plot_gains(ckpts, fig_dir), plot_shuffle(ckpts, fig_dir), plot_iraven(ckpts, fig_dir)) if f]
    lines = [f"# Evaluation report: {root.name}", "",
             f"{len(ckpts)} checkpoint(s): " + ", ".join(f"`{c.name}` ({c.kind})" for c in ckpts), "",
             "## vCoT on long-form video QA", "", *vcot_section(ckpts), "",
             "## Image run vs video run, scale-matched", "", *pair_lines, "",
             "## Robustness to perturbations", "", *shuffle_section(ckpts), "",
             "## I-RAVEN transfer", "", *iraven_section(ckpts), "",
             "## Figures", "", *[f"![{f.stem}](report/{f.name})" for f in figures], "",
             "Every metric with its CI: [report/metrics.csv](report/metrics.csv)."]
    atomic_write_text(fig_dir / "metrics.csv", metrics_csv(ckpts))
    out = root / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    if track and ckpts:
        from evalsuite.tracking import log_comparison

        log_comparison(root, out, fig_dir, contrast_metrics, ckpts)
    return out


def summary_text(report: Path) -> str:
    """The vCoT table and the contrasts, for printing at the end of `all` and of `make demo`."""
    text = report.read_text()
    start = text.index("## vCoT")
    end = text.index("## Robustness")
    return text[start:end].strip()
