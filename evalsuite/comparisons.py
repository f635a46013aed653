"""Accuracies and paired differences of conditions, from prediction rows.

Rows carry `item`, `frames` (F), `condition`, `pred` (option index, None for a failed extraction),
`answer` and optionally `error` (an item that could not be evaluated, e.g. an undecodable video).
For each F only items with an error-free row in *every* condition enter the statistics, so every
difference is paired over the same items. Accuracies use the offline `accuracy_ci` metric and
differences the `paired_gain` metric (bootstrap CI + exact McNemar), both seeded.

A task names its contrasts: vCoT has `gain` = vcot - base and `caption_gain` = caption - base; the
perturbation task `shuffle` has drops such as `drop_text` = vcot - text (positive: accuracy lost).

Generate scoring (rows with an `extraction`) can fail to read an answer. Per condition it adds
`failed_<cond>` (the share of failed extractions) and `random_fill_<cond>` (accuracy with each failure
scored 1/n_options, the expectation of a uniform guess: what evaluations that fill unreadable answers
with a random option, as VLMEvalKit does, report on average), each with its bootstrap CI; `acc_<cond>`
is then the "strict" accuracy (a failure counts wrong) and the gains compare strict accuracies. Loglik
scoring always picks an option: it has no failures and neither key, strict = random-fill = `acc_<cond>`.
"""

from __future__ import annotations

from functools import lru_cache

from evalsuite.stats import accuracy_ci, random_fill_accuracy_ci

FAILED = -1  # a failed extraction: never equal to a reference in 0..4, so it counts as wrong


@lru_cache(maxsize=None)
def _metric(name: str):
    from evalsuite.metrics import load_metric

    return load_metric(name)


def _vectors(rows: list[dict], f: int, conditions: tuple[str, ...]) -> tuple[list[str], dict[str, list[int]], list[int]]:
    by_cond: dict[str, dict[str, dict]] = {c: {} for c in conditions}
    errored = set()
    for r in rows:
        if r["frames"] != f or r["condition"] not in by_cond:
            continue
        if r.get("error"):
            errored.add(r["item"])
        by_cond[r["condition"]][r["item"]] = r
    first = by_cond[conditions[0]]
    items = [i for i in first if i not in errored and all(i in by_cond[c] for c in conditions)]
    preds = {c: [FAILED if by_cond[c][i]["pred"] is None else int(by_cond[c][i]["pred"]) for i in items]
             for c in conditions}
    refs = [int(first[i]["answer"]) for i in items]
    return items, preds, refs


def summarize(rows: list[dict], frames: tuple[int, ...], conditions: tuple[str, ...],
              contrasts: dict[str, tuple[str, str]], *, n_boot: int, seed: int, n_options: int = 5) -> dict:
    """{f"f{F}": {"n_items", "acc_<cond>": {...}, "<contrast>": {...}}}, and for generate scoring
    "failed_<cond>" and "random_fill_<cond>" (`n_options` options per item: a failure scores 1/n_options)."""
    generated = any(r.get("extraction") for r in rows)
    out = {}
    for f in frames:
        items, preds, refs = _vectors(rows, f, conditions)
        block: dict = {"n_items": len(items)}
        if not items:
            out[f"f{f}"] = block
            continue
        for c in conditions:
            m = _metric("accuracy_ci").compute(predictions=preds[c], references=refs, n_boot=n_boot, seed=seed)
            block[f"acc_{c}"] = {"value": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}
            if generated:
                block.update(_failures(c, preds[c], refs, n_options, n_boot=n_boot, seed=seed))
        for name, (a, b) in contrasts.items():
            m = _metric("paired_gain").compute(predictions1=preds[a], predictions2=preds[b], references=refs,
                                               n_boot=n_boot, seed=seed)
            block[name] = {"value": m["gain"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"],
                           "p_value": m["p_value"], "discordant": m["discordant"]}
        out[f"f{f}"] = block
    return out


def _failures(condition: str, preds: list[int], refs: list[int], n_options: int, *, n_boot: int,
              seed: int) -> dict:
    """`failed_<cond>` (share of failed extractions) and `random_fill_<cond>`, with bootstrap CIs seeded as
    the accuracies are (the same items are resampled for all three)."""
    failed = [int(p == FAILED) for p in preds]
    correct = [int(p == r) for p, r in zip(preds, refs)]
    rate = accuracy_ci(failed, n_boot=n_boot, seed=seed)
    fill = random_fill_accuracy_ci(correct, failed, n_options, n_boot=n_boot, seed=seed)
    return {f"failed_{condition}": {"value": rate.value, "ci_low": rate.ci_low, "ci_high": rate.ci_high,
                                    "n": rate.n, "count": sum(failed)},
            f"random_fill_{condition}": {"value": fill.value, "ci_low": fill.ci_low, "ci_high": fill.ci_high,
                                         "n": fill.n}}


def flatten(task: str, summary: dict) -> dict[str, float]:
    """MLflow metric names that line up across checkpoints: `vcot/f5/acc_base`, `vcot/f5/gain_p`, ..."""
    flat = {}
    for fkey, block in summary.items():
        prefix = f"{task}/{fkey}"
        flat[f"{prefix}/n"] = float(block["n_items"])
        for name, est in block.items():
            if not isinstance(est, dict):
                continue
            flat[f"{prefix}/{name}"] = float(est["value"])
            for extra, suffix in (("ci_low", "_ci_low"), ("ci_high", "_ci_high"), ("p_value", "_p")):
                if extra in est:
                    flat[f"{prefix}/{name}{suffix}"] = float(est[extra])
    return flat


def headline(summary: dict) -> str:
    """`f5 (n=200): base 0.440 caption 0.450 vcot 0.514  gain +0.074 [+0.030, +0.120] p=0.002 | f10 ...`."""
    parts = []
    for fkey, block in sorted(summary.items(), key=lambda kv: int(kv[0].removeprefix("f"))):
        accs = " ".join(f"{k.removeprefix('acc_')} {v['value']:.3f}" for k, v in block.items() if k.startswith("acc_"))
        gain = block.get("gain")
        g = f"  gain {gain['value']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}] p={gain['p_value']:.3g}" \
            if gain else ""
        parts.append(f"{fkey} (n={block['n_items']}): {accs}{g}")
    return " | ".join(parts)
