"""Accuracies and paired differences of conditions, from prediction rows.

Rows carry `item`, `frames` (F), `condition`, `pred` (option index, None for a failed extraction),
`answer` and optionally `error` (an item that could not be evaluated, e.g. an undecodable video).
For each F only items with an error-free row in *every* condition enter the statistics, so every
difference is paired over the same items. Accuracies use the offline `accuracy_ci` metric and
differences the `paired_gain` metric (bootstrap CI + exact McNemar), both seeded.

A task names its contrasts: vCoT has `gain` = vcot - base and `caption_gain` = caption - base; the
perturbation task `shuffle` has drops such as `drop_text` = vcot - text (positive: accuracy lost).

Rows may carry the item's `kind` (synthetic items: "static" or "temporal"; "all" or missing otherwise) and,
for temporal items, `reversed_answer` (the option the time-reversed clip would have). The summary then
repeats every block per kind under "by_kind", and counts how often a condition picks the reversed-clip
option (`reversed_pick_<cond>`): a model that reads the frames' order should pick it when the frames are
fed last to first, and not otherwise. A task may add its own entries beside the F blocks (vCoT: "floors");
`flatten` names them all for MLflow.

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


ALL = "all"
"""The kind of an item that carries none (e.g. EgoSchema): such rows get no per-kind blocks."""
REVERSED_PICK = "reversed_pick_{}"


def _is_fkey(key: str) -> bool:
    return key.startswith("f") and key[1:].isdigit()


def block_of(summary: dict, fkey: str, items: str = "overall") -> dict:
    """The `fkey` block of one item kind ("overall": the top-level block) of a summary, {} when not recorded."""
    node = summary.get(fkey) if items == "overall" else ((summary.get("by_kind") or {}).get(items) or {}).get(fkey)
    return node if isinstance(node, dict) else {}


def fkeys(keys) -> list[str]:
    """The per-F block keys among `keys` (a summary's: "f5", "f10", ...; not "by_kind" or "floors"), by F."""
    return sorted((k for k in keys if _is_fkey(k)), key=lambda k: int(k[1:]))


def _vectors(rows: list[dict], f: int, conditions: tuple[str, ...]
             ) -> tuple[list[str], dict[str, list[int]], list[int], list[int | None]]:
    """(paired items, predictions per condition, answers, reversed-clip answers or None) at F = `f`."""
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
    reversed_answers = [first[i].get("reversed_answer") for i in items]
    return items, preds, refs, reversed_answers


def kinds_of(rows: list[dict]) -> list[str]:
    """The item kinds the rows carry (`kind`, e.g. static and temporal), sorted; [] when none does."""
    return sorted({r.get("kind") or ALL for r in rows} - {ALL})


def summarize(rows: list[dict], frames: tuple[int, ...], conditions: tuple[str, ...],
              contrasts: dict[str, tuple[str, str]], *, n_boot: int, seed: int, n_options: int = 5,
              reversed_picks: tuple[str, ...] = ()) -> dict:
    """{f"f{F}": block, ..., "by_kind": {kind: {f"f{F}": block, ...}}}.

    A block holds "n_items", "acc_<cond>": {...} and "<contrast>": {...}; for generate scoring also
    "failed_<cond>" and "random_fill_<cond>" (`n_options` options per item: a failure scores 1/n_options).
    For each condition of `reversed_picks` and the paired items that carry a `reversed_answer` (the option
    the time-reversed clip would have), "reversed_pick_<cond>": the share of them whose prediction is that
    option, with its bootstrap CI. "by_kind" is there only when rows carry a `kind` other than "all": the
    same blocks over the rows of each kind (pairing, seeds and keys as overall)."""
    generated = any(r.get("extraction") for r in rows)
    args = dict(frames=frames, conditions=conditions, contrasts=contrasts, n_boot=n_boot, seed=seed,
                n_options=n_options, reversed_picks=reversed_picks, generated=generated)
    out = _blocks(rows, **args)
    kinds = kinds_of(rows)
    if kinds:
        out["by_kind"] = {k: _blocks([r for r in rows if (r.get("kind") or ALL) == k], **args) for k in kinds}
    return out


def _blocks(rows: list[dict], *, frames, conditions, contrasts, n_boot, seed, n_options, reversed_picks,
            generated) -> dict:
    out = {}
    for f in frames:
        items, preds, refs, reversed_answers = _vectors(rows, f, conditions)
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
        temporal = [k for k, rev in enumerate(reversed_answers) if rev is not None]
        for c in (c for c in reversed_picks if c in conditions and temporal):
            picks = [int(preds[c][k] == int(reversed_answers[k])) for k in temporal]
            est = accuracy_ci(picks, n_boot=n_boot, seed=seed)
            block[REVERSED_PICK.format(c)] = {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                                              "n": est.n}
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
    """MLflow metric names that line up across checkpoints.

    Per F `vcot/f5/acc_base`, `vcot/f5/gain_p`, ...; per kind `vcot/temporal/f5/acc_base`, ...; the floors
    `vcot/floor/guesser` (its CI as `_ci_low`/`_ci_high`) and per kind `vcot/floor/guesser_temporal`."""
    flat: dict[str, float] = {}
    for key, block in summary.items():
        if _is_fkey(key):
            flat |= _flat_block(f"{task}/{key}", block)
        elif key == "by_kind":
            for kind, blocks in block.items():
                for fkey, b in blocks.items():
                    flat |= _flat_block(f"{task}/{kind}/{fkey}", b)
        elif key == "floors":
            for name, floor in block.items():
                flat |= _flat_estimate(f"{task}/floor/{name}", floor)
                for kind, est in (floor.get("by_kind") or {}).items():
                    flat |= _flat_estimate(f"{task}/floor/{name}_{kind}", est)
    return flat


def _flat_block(prefix: str, block: dict) -> dict[str, float]:
    flat = {f"{prefix}/n": float(block["n_items"])}
    for name, est in block.items():
        if isinstance(est, dict):
            flat |= _flat_estimate(f"{prefix}/{name}", est)
    return flat


def _flat_estimate(name: str, est: dict) -> dict[str, float]:
    flat = {name: float(est["value"])}
    for extra, suffix in (("ci_low", "_ci_low"), ("ci_high", "_ci_high"), ("p_value", "_p")):
        if est.get(extra) is not None:
            flat[f"{name}{suffix}"] = float(est[extra])
    return flat


HEADLINE = ("base", "vcot", "blind", "text_only")
"""The accuracies `headline` shows: frames alone, frames with infills, and the two text-only floors."""


def headline(summary: dict) -> str:
    """`f5 (n=200): base 0.440 vcot 0.514 blind 0.260 text_only 0.400  gain +0.074 [+0.030, +0.120] p=0.002 | ...`
    (overall blocks only; a condition the summary lacks is left out)."""
    parts = []
    for fkey in fkeys(summary):
        block = summary[fkey]
        accs = " ".join(f"{c} {block[f'acc_{c}']['value']:.3f}" for c in HEADLINE if f"acc_{c}" in block)
        gain = block.get("gain")
        g = f"  gain {gain['value']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}] p={gain['p_value']:.3g}" \
            if gain else ""
        parts.append(f"{fkey} (n={block['n_items']}): {accs}{g}")
    return " | ".join(parts)
