"""Run tasks on checkpoints: skip what is done, resume what was interrupted, merge ranks, track.

For each checkpoint and task: the task's settings are compared with `eval/<task>/metrics.json`
(equal: skipped, the checkpoint is not even loaded); otherwise this rank's share of the items that
still lack predictions is evaluated item by item, each item's rows appended as soon as they exist;
after a barrier the main process merges the ranks' rows, computes the metrics and writes
metrics.json. Once a checkpoint's tasks are through, the main process logs one MLflow run for it.

Before anything runs the main process prints the plan: per checkpoint and task, the items, prompts,
forward passes (loglik) or generations (generate, plus judge calls at most), and the infill generations
and frame decodes the caches do not already hold (`Task.plan`). Progress bars show the time left (ETA),
from the average time per item so far. When a task of a checkpoint is done the generator, rephraser and
judge are freed (`Resources.release`); the checkpoint itself once all its tasks are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from data_recipes.files import file_sha256, lock_on_main
from evalsuite import context
from evalsuite.benchmarks.video_qa import Benchmark
from evalsuite.checkpoints import CheckpointRef
from evalsuite.config import EvalConfig
from evalsuite.distributed import Ranks
from evalsuite.outputs import OutputError, TaskOutputs, read_rows, write_json_atomic
from evalsuite.resources import Resources, Subject
from evalsuite.tasks import get_task
from evalsuite.tasks.base import Task, Workload

BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s "
              "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}]")
"""tqdm's layout with the time left spelled out as an ETA; `smoothing=0` estimates it from the average time
per item since the start (items differ a lot: the first ones also generate infills and decode frames)."""



def task_settings(task, subject) -> dict:
    """What `task`'s results on `subject` depend on: the task's settings and the precision the models ran in."""
    return task.settings(subject.info, subject.inputs) | {"precision": subject.precision}

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress_bar(work, desc: str, position: int = 0, disable: bool = False, leave: bool = True):
    """A tqdm bar over `work` (items) that shows the time left (ETA)."""
    return tqdm(work, desc=desc, unit="item", position=position, disable=disable, leave=leave,
                bar_format=BAR_FORMAT, smoothing=0, dynamic_ncols=True)


def split_work(items: list, keys, done: set[str], ranks: Ranks) -> list[tuple]:
    """This rank's (item, keys still to predict): the items with work left, dealt out among the ranks. A resume
    shares out what is left, not every item: after one rank died (an out-of-memory on one long prompt), its
    whole share used to fall to one GPU while the others waited at the barrier."""
    left = [(item, todo) for item in items if (todo := [k for k in keys(item) if k not in done])]
    return ranks.shard(left)


def run_task(task: Task, subject: Subject, ranks: Ranks, progress: bool = True) -> tuple[str, dict]:
    """("skipped" | "done", metrics.json content) of one task on one checkpoint."""
    settings = task_settings(task, subject)
    out = TaskOutputs(subject.ref.path, task.name, ranks.rank, ranks.world_size)
    if out.is_done(settings):
        return "skipped", json.loads(out.metrics.read_text())
    lock = _lock_task(subject, task.name, ranks)
    try:
        return _run_task(task, subject, ranks, settings, out, progress)
    finally:
        if lock is not None:
            lock.release()


def _lock_task(subject: Subject, task: str, ranks: Ranks):
    """One evaluation of a task of a checkpoint at a time: the main rank holds `eval/.TASK.lock` (every rank learns
    whether it got it). Two at once (a study rerun while its old evaluation jobs still run) would append rows
    made under different settings to one predictions file, or move each other's outputs aside."""
    return lock_on_main(subject.ref.path / "eval" / f".{task}.lock", f"an evaluation of {task} on {subject.ref.name}",
                        ranks.is_main, ranks.from_main)


def _run_task(task: Task, subject: Subject, ranks: Ranks, settings: dict, out: TaskOutputs,
              progress: bool) -> tuple[str, dict]:
    if ranks.is_main:
        moved = out.prepare(settings)
        if moved:
            log(f"[{task.name}] {subject.ref.name}: settings changed; previous outputs moved to {moved}")
    ranks.barrier()
    items = task.items()
    order = [k for item in items for k in task.keys(item)]
    if len(set(order)) != len(order):
        raise OutputError(f"task {task.name}: duplicate prediction keys across items")
    work = split_work(items, task.keys, out.done_keys(), ranks)
    ranks.barrier()  # every rank has read what is done before any appends more
    desc = f"{task.name} {subject.ref.name}" + (f" [rank {ranks.rank}]" if ranks.world_size > 1 else "")
    bar = progress_bar(work, desc, position=ranks.rank, disable=not progress, leave=ranks.is_main)
    try:
        for item, todo in bar:
            rows = task.predict(subject, item, todo)
            got = [r["key"] for r in rows]
            if sorted(got) != sorted(todo):
                raise OutputError(f"task {task.name} returned rows {got} for keys {todo} of item {item.id}")
            out.append(rows)
    finally:
        bar.close()
        # this checkpoint's infills for the task are made and its answers judged: free those models
        resources = getattr(task, "resources", None)
        if isinstance(resources, Resources):
            resources.release()
    ranks.barrier()
    metrics: dict = {}
    if ranks.is_main:
        rows = out.merge(order)
        errors = {r["item"]: r["error"] for r in rows if r.get("error")}
        metrics = {"task": task.name, "checkpoint": subject.info, "settings": settings, "n_rows": len(rows),
                   "metrics": task.summarize(rows), "errors": [{"id": k, "reason": v} for k, v in errors.items()],
                   "context": context.summary(rows, subject.context), **task.extra_outputs()}
        out.write_metrics(metrics)
        if line := context.warning(task.name, subject.ref.name, metrics["context"]):
            log(line)
    ranks.barrier()
    if not ranks.is_main:
        metrics = json.loads(out.metrics.read_text())
    return "done", metrics


def evaluate(refs: list[CheckpointRef], task_names: list[str], cfg: EvalConfig, cache_dir: Path,
             ranks: Ranks | None = None) -> dict[str, dict[str, dict]]:
    """Every task on every checkpoint; returns {checkpoint path: {task: metrics.json content}}."""
    ranks = ranks or Ranks.from_env()
    resources = Resources(cfg, cache_dir, device=ranks.device)
    tasks = [get_task(name)(cfg, resources) for name in task_names]
    for task in tasks:  # one frame cache for every task's benchmark: a second task decodes nothing
        bench = getattr(task, "bench", None)
        if isinstance(bench, Benchmark) and bench.frame_cache is None:
            bench.frame_cache = resources.frame_cache
    for task in tasks:
        if task.problems and ranks.is_main:  # e.g. missing EgoSchema videos: said once, counted in metrics.json
            shown = "; ".join(f"{p['id']}: {p['reason']}" for p in task.problems[:3])
            log(f"[{task.name}] {len(task.problems)} item(s) cannot be evaluated ({shown}"
                f"{'; ...' if len(task.problems) > 3 else ''})")
    tracker = None
    if cfg.tracking and ranks.is_main:
        from evalsuite.tracking import EvalTracker

        tracker = EvalTracker(experiment=cfg.experiment)
    subjects = [Subject(ref, cfg, device=ranks.device) for ref in refs]
    for subject in subjects:  # e.g. --video_input native on a family without a video path: before any work
        for task in tasks:
            task.check(subject)
    if ranks.is_main:
        log(format_plan(plan_run(subjects, tasks), cfg))
    results: dict[str, dict[str, dict]] = {}
    for ref, subject in zip(refs, subjects):
        results[str(ref.path)] = {}
        fresh = []
        for task in tasks:
            status, metrics = run_task(task, subject, ranks, progress=cfg.progress)
            results[str(ref.path)][task.name] = metrics
            if ranks.is_main:
                log(f"[{task.name}] {ref.name}: {status}  {task.headline(metrics['metrics'])}")
            if status == "done":
                fresh.append(task)
        subject.release()
        if tracker is not None and (fresh or not _tracked(ref, tasks, tracker.uri)):
            try:
                _track(tracker, ref, tasks, results[str(ref.path)], refs)
            except Exception as e:  # noqa: BLE001 - the metrics are on disk; the next run logs them again
                log(f"[mlflow] {ref.name}: logging failed ({type(e).__name__}: {e}); will retry on the next run")
    return results


def _planned_done(out: TaskOutputs, settings: dict) -> set[str] | None:
    """Keys `run_task` will find already predicted (None: the task is done and will be skipped)."""
    if out.is_done(settings):
        return None
    if out.settings.is_file():
        try:
            if json.loads(out.settings.read_text()) != settings:
                return set()  # outputs made with other settings are moved aside: everything is redone
        except json.JSONDecodeError:
            return set()
    try:
        return {r["key"] for p in [out.predictions, *sorted(out.dir.glob("predictions.part*.jsonl"))]
                for r in read_rows(p)}
    except OutputError:
        return set()  # a corrupt file: run_task says so; the plan counts everything


def plan_run(subjects: list[Subject], tasks: list[Task]) -> list[tuple[str, str, Workload | None]]:
    """(checkpoint name, task, its `Workload`, None when done) for every checkpoint and task, in run order.

    Loads no model. Infills and frames are counted once, where they will be made: an infill a fixed
    generator makes for the first checkpoint is not counted again for the second, nor a frame vcot
    decodes for shuffle."""
    seen: set = set()
    rows = []
    for subject in subjects:
        for task in tasks:
            done = _planned_done(TaskOutputs(subject.ref.path, task.name), task_settings(task, subject))
            if done is None:
                rows.append((subject.ref.name, task.name, None))
                continue
            work = [(item, todo) for item in task.items() if (todo := [k for k in task.keys(item) if k not in done])]
            rows.append((subject.ref.name, task.name, task.plan(subject, work, seen)))
    return rows


def format_plan(rows: list[tuple[str, str, Workload | None]], cfg: EvalConfig) -> str:
    """The plan as printed before a run: one line per checkpoint and task, then the total."""
    def describe(w: Workload) -> str:
        parts = [f"{w.items} items", f"{w.prompts} prompts"]
        if cfg.scoring == "loglik":
            parts.append(f"{w.forwards} forward passes")
        else:
            parts.append(f"{w.generations} generations" + (f" (+ at most {w.judge_calls} judge calls)"
                                                           if w.judge_calls else ""))
        parts.append(f"{w.infills} infill generations" + (f" + {w.rephrasings} rephrasings" if w.rephrasings else ""))
        parts.append(f"{w.frame_decodes} frame decodes")
        return ", ".join(parts)

    lines = ["[plan] what this run will do, per checkpoint and task. A prompt per prediction row; forward passes "
             "are loglik scoring's model calls at most (the prompt, then each option against its cache; 2 per prompt "
             "where the options are batched: --option_batch_mb); judge calls are an upper bound; infill generations "
             "and frame decodes are what the caches do not hold yet"]
    total = Workload()
    for ckpt, task, w in rows:
        lines.append(f"[plan] {ckpt} {task}: " + ("done, skipped" if w is None else describe(w)))
        total = total + (w or Workload())
    lines.append(f"[plan] total: {describe(total)}")
    return "\n".join(lines)


def _metrics_digests(ref: CheckpointRef, tasks: list[Task]) -> dict[str, str]:
    """{task: sha256 of its metrics.json}: which results a log holds (they change with the settings)."""
    files = {t.name: TaskOutputs(ref.path, t.name).metrics for t in tasks}
    return {name: file_sha256(f) for name, f in files.items() if f.is_file()}


def _tracked(ref: CheckpointRef, tasks: list[Task], uri: str) -> bool:
    """Whether an earlier run already logged these tasks' current metrics of `ref` to this store (results
    made since under other settings, whose logging failed, are not: the next run logs them)."""
    record = ref.path / "eval" / "mlflow.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    now = _metrics_digests(ref, tasks)
    return any(h["tracking_uri"] == uri and all(h.get("metrics", {}).get(t.name) == now.get(t.name) for t in tasks)
               for h in history)


def _track(tracker, ref: CheckpointRef, tasks: list[Task], results: dict[str, dict], refs) -> None:
    flat, params, artifacts = {}, {}, []
    for task in tasks:
        metrics = results[task.name]
        flat |= task.flat_metrics(metrics["metrics"])
        params |= {f"{task.name}.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v
                   for k, v in metrics["settings"].items() if k != "checkpoint"}
        out = TaskOutputs(ref.path, task.name)
        artifacts += [(out.metrics, f"eval/{task.name}"), (out.predictions, f"eval/{task.name}")]
    params |= {f"checkpoint.{k}": v for k, v in ref.identity().items()}
    run_id = tracker.log_evaluation(ref, flat, params, artifacts, siblings=refs)
    record = ref.path / "eval" / "mlflow.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"run_id": run_id, "tracking_uri": tracker.uri, "tasks": [t.name for t in tasks],
                    "metrics": _metrics_digests(ref, tasks)})
    write_json_atomic(record, history)
    log(f"[mlflow] {ref.name}: run {run_id} ({tracker.uri})")

