"""The EgoSchema results of the vcot task in lmms-eval's output layout, to sit beside runs of that tool.

    python -m evalsuite export ckpt/ --format lmms-eval [--out DIR]

For every checkpoint under CKPT_DIR (or CKPT_DIR itself) whose `eval/vcot/metrics.json` was evaluated on
EgoSchema, this writes what lmms-eval writes for a model (`--output_path OUT --log_samples`):

    OUT/<model>/<date>_results.json                 one file for every F and condition
    OUT/<model>/<date>_samples_<task>.jsonl         one line per question, per task

`<model>` is the checkpoint's name below CKPT_DIR with path separators made safe, `<date>` the time
metrics.json was written (UTC, `%Y%m%d_%H%M%S`), so exporting twice writes the same files. Every
(F, condition) pair becomes one lmms-eval task named after lmms-eval's own EgoSchema tasks:
`egoschema_subset_f5_vcot` for generate scoring (lmms-eval's `egoschema_subset` generates the answer),
`egoschema_subset_mcppl_f5_vcot` for loglik scoring (its `egoschema_subset_mcppl` ranks the options).

The results file keeps the keys a reader of lmms-eval output looks for: `results` (per task `alias`,
`score,none` = accuracy in 0..1 and `score_stderr,none`, the standard error of a mean of 0/1 scores with
the n-1 denominator, as lmms-eval computes it), `group_subtasks`, `configs` (the task's data path, output
type, generation settings, metric list, and under `metadata.evalsuite` every setting the evaluation
recorded, protocol and scoring first), `versions`, `n-shot` (0), `higher_is_better`, `n-samples`
(`original`: questions of the run, `effective`: the questions scored), `config` (model and seeds),
`model_name`, `date` and `task_hashes`. Each sample line has `doc_id` (the question's position in the
run), `target` (the answer's index, a string), `filtered_resps` (the generated answer, or the options'
log-likelihoods), `input` (the user turn as text, `<image>` / `<video>` where frames go; only when the
questions file is still at the recorded path and the prompt templates are unchanged), `doc_hash`,
`prompt_hash`, `target_hash`, and the metrics of lmms-eval's EgoSchema tasks: `score` = {pred,
ground_truth} (pred -1: no option could be read from the answer) and `submission` = {q_uid: pred}.
`evalsuite` holds the row's key, frame indices and extraction method.

The score is strict: an answer no rule or judge could map to an option counts as wrong (lmms-eval's
EgoSchema scoring does the same). Only questions scored in every condition of an F enter (the paired
set of `metrics.json`), so each exported score equals the accuracy of metrics.json; an export whose
predictions disagree with their metrics.json is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from data_recipes.files import atomic_write_text
from evalsuite import prompts
from evalsuite.checkpoints import evaluated, made_on_other_weights
from evalsuite.outputs import read_rows

TASK = "vcot"
LMMS_TASK = {"generate": "egoschema_subset", "loglik": "egoschema_subset_mcppl"}
"""lmms-eval's EgoSchema task of each scoring: the 500 questions with public answers."""
OUTPUT_TYPE = {"generate": "generate_until", "loglik": "multiple_choice"}
LETTERS = "ABCDE"


class ExportError(ValueError):
    """Nothing to export, or results that cannot be exported faithfully."""


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _safe_name(name: str) -> str:
    """A directory name for a model: separators and characters file systems reject become `__`."""
    return re.sub(r"[\"<>:/|\\?*\[\]\s]+", "__", name).strip("_") or "model"


def metrics_files(root: Path) -> list[Path]:
    """Every `<checkpoint>/eval/vcot/metrics.json` under `root` (root itself included), sorted."""
    return sorted(d / "eval" / TASK / "metrics.json" for d in evaluated(root, TASK))


def _questions(settings: dict) -> dict[str, tuple[str, list[str]]]:
    """q_uid -> (question, 5 options) from the questions.json the run read; {} when it is gone or unreadable
    (the videos are not needed)."""
    path = Path(settings.get("data") or "") / "questions.json"
    try:
        listed = json.loads(path.read_text())
        return {q["q_uid"]: (q["question"], [str(q[f"option {i}"]) for i in range(5)]) for q in listed}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def _render(content: list[dict]) -> str:
    marks = {"image": "<image>", "video": "<video>"}
    return "".join(marks.get(part["type"], part.get("text", "")) for part in content)


def _input_text(row: dict, question: str, options: list[str], instruction: str | None) -> str:
    content = prompts.user_content(row["condition"], row["frames"], question, options, row.get("texts"), instruction)
    if row.get("video_input") == "native":  # the F frame markers went in as one clip
        first = next(i for i, p in enumerate(content) if p["type"] == "image")
        content = [p for p in content if p["type"] != "image"]
        content.insert(first, {"type": "video"})
    return _render(content)


def _paired(rows: list[dict], f: int, conditions: tuple[str, ...]) -> list[str]:
    """Items with an error-free row in every condition at F, in row order (the set metrics.json scores)."""
    by_item: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["frames"] == f and r["condition"] in conditions:
            by_item.setdefault(r["item"], {})[r["condition"]] = r
    return [i for i, got in by_item.items()
            if all(c in got for c in conditions) and not any(got[c].get("error") for c in conditions)]


def _stderr(scores: list[int]) -> float | str:
    n = len(scores)
    if n < 2:
        return "N/A"
    mean = sum(scores) / n
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


def _model_args(checkpoint: dict) -> str:
    if checkpoint.get("base_model"):
        return f"pretrained={checkpoint['base_model']},peft={checkpoint['model_path']}"
    return f"pretrained={checkpoint.get('model_path', '')}"


def export_checkpoint(metrics_path: Path, out_root: Path, name: str) -> list[Path]:
    """Write one checkpoint's results file and sample logs; returns the files written."""
    metrics = json.loads(metrics_path.read_text())
    settings, checkpoint = metrics["settings"], metrics.get("checkpoint", {})
    scoring = settings["scoring"]
    if scoring not in LMMS_TASK:
        raise ExportError(f"{metrics_path}: scoring {scoring!r} has no lmms-eval counterpart")
    rows = read_rows(metrics_path.parent / "predictions.jsonl")
    if not rows:
        raise ExportError(f"{metrics_path.parent / 'predictions.jsonl'}: missing or empty; the per-sample log "
                          f"comes from it (evaluate again to recreate it)")
    conditions = tuple(c for c in prompts.CONDITIONS if any(r["condition"] == c for r in rows))
    questions = _questions(settings)
    same_prompts = settings.get("prompts") == prompts.PROMPTS_HASH and \
        settings.get("answer_instruction") in (None, prompts.ANSWER_HASH)
    instruction = prompts.ANSWER_LETTER if settings.get("answer_instruction") else None
    doc_ids = {item: n for n, item in enumerate(dict.fromkeys(r["item"] for r in rows))}
    original = len(doc_ids) + len(metrics.get("problems", []))
    written_at = metrics_path.stat().st_mtime
    date_id = datetime.fromtimestamp(written_at, tz=timezone.utc).strftime("%Y%m%d_%H%M%S")
    folder = out_root / _safe_name(name)
    folder.mkdir(parents=True, exist_ok=True)

    recorded = {k: v for k, v in settings.items() if k != "checkpoint"}
    results, configs, n_samples, hashes, written = {}, {}, {}, {}, []
    for f in settings["frames"]:
        paired = _paired(rows, f, conditions)
        for cond in conditions:
            task = f"{LMMS_TASK[scoring]}_f{f}_{cond}"
            by_item = {r["item"]: r for r in rows if r["frames"] == f and r["condition"] == cond}
            samples, scores = [], []
            for item_id in paired:
                row = by_item[item_id]
                pred = -1 if row["pred"] is None else int(row["pred"])
                answer = int(row["answer"])
                scores.append(int(pred == answer))
                asked = questions.get(item_id)
                doc = {"question_idx": item_id, "video_idx": row.get("video", item_id), "answer": str(answer)}
                if asked is not None:
                    doc |= {"question": asked[0], "option": [f"{LETTERS[i]}. {o}" for i, o in enumerate(asked[1])]}
                sample = {"doc_id": doc_ids[item_id], "target": str(answer),
                          "filtered_resps": [row["output"]] if scoring == "generate" else list(row["logliks"]),
                          "doc_hash": _hash(json.dumps(doc, indent=2, ensure_ascii=False)),
                          "target_hash": _hash(str(answer)),
                          "score": {"pred": pred, "ground_truth": answer},
                          "submission": {doc["video_idx"]: pred},
                          "evalsuite": {"key": row["key"], "frame_indices": row.get("indices"),
                                        "extraction": row.get("extraction"), "video_input": row.get("video_input")}}
                if asked is not None and same_prompts:
                    text = _input_text(row, *asked, instruction)
                    sample |= {"input": text, "prompt_hash": _hash(text)}
                samples.append(sample)
            acc = sum(scores) / len(scores) if scores else None
            want = metrics["metrics"].get(f"f{f}", {}).get(f"acc_{cond}", {}).get("value")
            if (acc is None) != (want is None) or (acc is not None and abs(acc - want) > 1e-9):
                raise ExportError(f"{metrics_path}: F={f} {cond}: the predictions give accuracy {acc}, metrics.json "
                                  f"says {want}; evaluate again before exporting")
            results[task] = {"alias": f"EgoSchema subset, F={f}, {cond}", "score,none": acc,
                             "score_stderr,none": _stderr(scores)}
            config = {"task": task, "dataset_path": settings.get("data"), "dataset_name": "Subset",
                      "test_split": "test", "output_type": OUTPUT_TYPE[scoring],
                      "metric_list": [{"metric": "score", "aggregation": "mean", "higher_is_better": True}],
                      "metadata": {"evalsuite": {**recorded, "num_frames": f, "condition": cond}}}
            if scoring == "generate":
                config["generation_kwargs"] = {"max_new_tokens": settings.get("answer_tokens"), "temperature": 0,
                                               "do_sample": False, "num_beams": 1}
            configs[task] = config
            n_samples[task] = {"original": original, "effective": len(samples)}
            hashes[task] = _hash("".join(f"sample_{i}{s['doc_hash']}" for i, s in enumerate(samples)))
            path = folder / f"{date_id}_samples_{task}.jsonl"
            atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
            written.append(path)

    tasks = list(results)
    doc = {"results": results, "group_subtasks": {t: [] for t in tasks}, "configs": configs,
           "versions": {t: "evalsuite" for t in tasks}, "n-shot": {t: 0 for t in tasks},
           "higher_is_better": {t: {"score": True} for t in tasks}, "n-samples": n_samples,
           "config": {"model": "evalsuite", "model_args": _model_args(checkpoint), "limit": settings.get("limit"),
                      "bootstrap_iters": settings.get("n_boot"), "random_seed": settings.get("seed"),
                      "gen_kwargs": (f"max_new_tokens={settings.get('answer_tokens')},do_sample=False"
                                     if scoring == "generate" else "")},
           "model_name": name, "model_name_sanitized": _safe_name(name), "date": written_at,
           "task_hashes": hashes,
           "exported_by": {"tool": "evalsuite", "source": str(metrics_path), "protocol": settings.get("protocol"),
                           "scoring": scoring, "fingerprint": checkpoint.get("fingerprint")}}
    results_path = folder / f"{date_id}_results.json"
    atomic_write_text(results_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return [results_path] + written


def export_lmms_eval(ckpt_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Export every EgoSchema vcot evaluation under `ckpt_dir` to `out` (default CKPT_DIR/lmms-eval)."""
    root = Path(ckpt_dir).expanduser().resolve()
    if not root.is_dir():
        raise ExportError(f"CKPT_DIR '{ckpt_dir}' is not a directory")
    out_root = Path(out).expanduser().resolve() if out else root / "lmms-eval"
    found = metrics_files(root)
    if not found:
        raise ExportError(f"no eval/{TASK}/metrics.json under {root}: evaluate first (python -m evalsuite vcot "
                          f"CKPT --benchmark egoschema --data DIR ...)")
    written, skipped, failed = [], [], []
    for m in found:
        ckpt = m.parent.parent.parent
        metrics = json.loads(m.read_text())
        settings = metrics.get("settings", {})
        if settings.get("benchmark") != "egoschema":
            skipped.append(f"{ckpt}: evaluated on {settings.get('benchmark')!r} (only EgoSchema evaluations have "
                           f"an lmms-eval counterpart)")
            continue
        if made_on_other_weights(ckpt, metrics):  # trained again in place since: not these weights' results
            skipped.append(f"{ckpt}: its results were made on other weights than it holds now (evaluate it again)")
            continue
        name = str(ckpt.relative_to(root)) if ckpt != root else root.name
        try:
            written += export_checkpoint(m, out_root, name)
        except ExportError as e:  # one checkpoint's problem does not keep the others from being exported
            failed.append(str(e))
    for reason in skipped:
        print(f"export: skipped {reason}", file=sys.stderr)
    if failed:
        done = f" (the other checkpoints were exported: {len(written)} files)" if written else ""
        raise ExportError("; ".join(failed) + done)
    if not written:
        raise ExportError(f"nothing to export under {root}: {'; '.join(skipped)}")
    return written


__all__ = ["ExportError", "LMMS_TASK", "export_checkpoint", "export_lmms_eval", "metrics_files"]
