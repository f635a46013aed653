"""LoRA finetuning of a vision-language model over a recipe's WebDataset shards.

    accelerate launch train/lora.py --recipe video_demo
    accelerate launch train/lora.py --recipe image_demo --match_to ckpt/video_demo --match_by visual_tokens
    accelerate launch --config_file ds_configs/accelerate/cpu_zero2_2proc.yaml train/lora.py --recipe R
    accelerate launch train/lora.py --recipe R --ds_config zero3 | none | path.json
    python train/lora.py --recipe R --resume latest

Settings: defaults < the recipe's `train:` section < --config file.yaml < flags (`--help` lists
them). DeepSpeed ZeRO-2 from ds_configs/zero2.json unless told otherwise. The run ends at max_steps,
max_samples, or exactly at a reference run's consumption (match_to/match_by), and writes
`ckpt/<run>/` (peft adapter, processor, run.json), logging to MLflow from the main process.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/lora.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed compiles its CPU ops with g++ on first use (30-60 s): keep them in the project's cache.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "cuda")

import torch  # noqa: E402
from accelerate import Accelerator, DeepSpeedPlugin  # noqa: E402
from accelerate.utils import InitProcessGroupKwargs, set_seed  # noqa: E402

from data_recipes.build import build as build_shards  # noqa: E402
from data_recipes.build import manifest_hash, read_manifest, shard_urls, verify  # noqa: E402
from data_recipes.processors import save_processor  # noqa: E402
from data_recipes.recipe import load_recipe  # noqa: E402
from train import accounting  # noqa: E402
from data_recipes.files import atomic_write_json, atomic_write_text
from train.checkpointing import find_resume, load_state, read_state, save_state  # noqa: E402
from train.config import TrainConfig, resolve  # noqa: E402
from train.data import ShardStream, make_loader, trim  # noqa: E402
from train.families import load_model  # noqa: E402
from train.models import resolve_base_model, wrap_lora  # noqa: E402
from train.schedule import make_optimizer, make_scheduler  # noqa: E402
from train.tracking import NullTracker, Tracker, default_tracking_uri  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIN_BUCKET = 1 << 22  # elements per ZeRO communication bucket, at least (16 MB in fp32)


# --- setup -----------------------------------------------------------------------------------------
def ds_config_path(name: str) -> Path | None:
    if name.lower() in ("", "none"):
        return None
    p = Path(name)
    if p.suffix == ".json":
        if not p.exists():
            raise FileNotFoundError(f"--ds_config {p}: file not found")
        return p
    p = REPO / "ds_configs" / f"{name}.json"
    if not p.exists():
        shipped = ", ".join(sorted(x.stem for x in (REPO / "ds_configs").glob("*.json")))
        raise FileNotFoundError(f"--ds_config {name}: no such config (shipped: {shipped}, or a .json path, or none)")
    return p


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    launcher_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    ds_path = None if launcher_ds else ds_config_path(cfg.ds_config)
    launcher_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if launcher_ds and launcher_file and not Path(launcher_file).exists() and (REPO / launcher_file).exists():
        # The shipped accelerate YAMLs name ds_configs/... relative to the repository.
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(REPO / launcher_file)
    if (launcher_ds or ds_path) and "RANK" not in os.environ:
        # DeepSpeed outside a launcher goes looking for mpi4py; a one-process world avoids that.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed = bool(launcher_ds or ds_path) or int(os.environ.get("WORLD_SIZE", "1")) > 1
    # On CPU name gloo explicitly: otherwise accelerate believes it has one process while DeepSpeed's
    # world has two, and both ranks silently read the same data (STACK.md).
    handlers = [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []
    plugin = DeepSpeedPlugin(hf_ds_config=str(ds_path)) if ds_path else None
    acc = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers,
                      gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if acc.state.deepspeed_plugin is not None:
        fill_ds_autos(acc.state.deepspeed_plugin.deepspeed_config, cfg)
    return acc


def fill_ds_autos(ds: dict, cfg: TrainConfig, hidden: int = 0) -> None:
    """Resolve the "auto" fields accelerate cannot infer here (no dataloader goes through prepare)."""
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds.pop("train_batch_size", None)
    if ds.get("gradient_clipping") == "auto":
        ds["gradient_clipping"] = cfg.max_grad_norm
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    zero = ds.get("zero_optimization", {})
    if hidden:
        # DeepSpeed's own bucket defaults (5e8 elements) are sized for 7B models; scale them to the model,
        # with a floor: a tiny model's hidden**2 made ~7 gloo all-reduces per step where one will do.
        bucket = max(hidden * hidden, MIN_BUCKET)
        for key, val in (("reduce_bucket_size", bucket), ("allgather_bucket_size", bucket),
                         ("stage3_prefetch_bucket_size", int(0.9 * bucket)),
                         ("stage3_param_persistence_threshold", 10 * hidden)):
            if zero.get(key) == "auto":
                zero[key] = val


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def ensure_shards(acc: Accelerator, cfg: TrainConfig, recipe) -> Path:
    """The recipe's shards, built first (on the main process; the others wait) when missing or stale."""
    out = Path(cfg.shards_root) / recipe.name
    if acc.is_main_process:
        try:
            fresh = read_manifest(out)["recipe_hash"] == recipe.content_hash()
        except Exception:
            fresh = False
        if not fresh:
            acc.print(f"building shards for {recipe.name} in {out}")
            build_shards(recipe, out, workers=1, progress=True)
        if cfg.verify and (problems := verify(out)):
            raise RuntimeError(f"--verify: shards of {out} do not match their manifest:\n  " + "\n  ".join(problems))
    acc.wait_for_everyone()
    return out


def ensure_base_model(acc: Accelerator, cfg: TrainConfig) -> Path:
    if acc.is_main_process:
        path = resolve_base_model(cfg.base_model)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        path = resolve_base_model(cfg.base_model, build=False)
    return path


def _log_step(line: str) -> int:
    """0-based step of a metrics.jsonl or samples log line (truncated lines sort last: dropped)."""
    try:
        return json.loads(line)["step"] - 1 if line.startswith("{") else int(line.split("\t")[0])
    except (ValueError, KeyError):
        return 1 << 62


# --- the run ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    cfg = resolve(sys.argv[1:] if argv is None else argv, recipe_train=lambda r: load_recipe(r).train)
    acc = make_accelerator(cfg)
    recipe = load_recipe(cfg.recipe)
    run_dir = cfg.run_dir
    acc.print("resolved config:\n" + json.dumps(cfg.to_dict(), indent=1))
    shards = ensure_shards(acc, cfg, recipe)
    base_dir = ensure_base_model(acc, cfg)
    # Seeded after the on-demand builds (which seed for themselves), so a run that had to build the
    # tiny model and one that found it on disk draw the same LoRA init and dropout masks.
    set_seed(cfg.seed)
    model, processor, family = load_model(base_dir, trust_remote_code=cfg.trust_remote_code)
    model = wrap_lora(model, family, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    acc.print(f"{family.name} from {base_dir}: {trainable:,} trainable of {sum(p.numel() for p in model.parameters()):,}")

    uri = cfg.tracking_uri or default_tracking_uri()
    unit, target, reference = None, None, None
    if cfg.match_to:
        consumed_ref, reference = accounting.reference_consumption(cfg.match_to, uri)
        if cfg.match_by not in consumed_ref:
            raise ValueError(f"--match_to {cfg.match_to}: reference run has no '{cfg.match_by}' count")
        unit, target = cfg.match_by, int(consumed_ref[cfg.match_by])
    elif cfg.max_samples:
        unit, target = "samples", cfg.max_samples

    optimizer = make_optimizer(model, cfg)
    schedule = {"total": cfg.schedule_steps or cfg.max_steps or 0}
    scheduler = make_scheduler(optimizer, cfg, schedule)
    if acc.state.deepspeed_plugin is not None:
        text_cfg = getattr(model.config, "text_config", model.config)
        fill_ds_autos(acc.state.deepspeed_plugin.deepspeed_config, cfg, hidden=text_cfg.hidden_size)
    # The scheduler stays outside prepare(): accelerate would step it once per process, and the
    # schedule here is counted in optimizer steps. It drives the base optimizer's param groups,
    # which DeepSpeed's ZeRO wrapper shares.
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)

    resume_from = find_resume(run_dir, cfg.resume)
    state = {"step": 0, "micro_batches": 0, "consumed": dict.fromkeys(accounting.COUNTERS, 0), "passes": 1,
             "mlflow_run_id": None, "schedule_total": schedule["total"]}
    if resume_from:
        state = read_state(resume_from)
        schedule["total"] = state["schedule_total"]

    tracker = NullTracker()
    if acc.is_main_process:
        tags = {"recipe": recipe.name, "family": family.name, "manifest_hash": manifest_hash(shards),
                "git_commit": git_commit(), "kind": recipe.kind, "stage": "train", "base_model": str(base_dir)}
        tracker = Tracker(uri, cfg.experiment, run_dir.name, tags, resume_run_id=state["mlflow_run_id"])
        if not state["mlflow_run_id"]:
            tracker.log_params(cfg.to_dict())
            tracker.log_artifact(shards / "manifest.json", "data")
        state["mlflow_run_id"] = tracker.run_id

    if acc.is_main_process:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        logs = [run_dir / "metrics.jsonl", *(run_dir / "samples").glob("rank-*.txt")]
        for f in logs:  # a fresh run starts fresh logs; a resumed one drops what came after its state
            keep = [] if not resume_from or not f.exists() else [
                line for line in f.read_text().splitlines(keepends=True) if _log_step(line) < state["step"]]
            atomic_write_text(f, "".join(keep))
    acc.wait_for_everyone()
    stream = ShardStream(shard_urls(shards), processor, batch_size=cfg.per_device_batch_size, seed=cfg.seed,
                         rank=acc.process_index, world=acc.num_processes, shuffle_buffer=cfg.shuffle_buffer,
                         skip_batches=state["micro_batches"])
    batches = iter(make_loader(stream, cfg.num_workers))
    if resume_from:
        # Restored last, after every bit of set-up that might draw random numbers, so that dropout
        # continues exactly where the interrupted run left it.
        load_state(acc, resume_from)
        acc.print(f"resumed from {resume_from} at step {state['step']}")
    gas = cfg.gradient_accumulation_steps
    done = state["step"] >= cfg.max_steps > 0
    model.train()
    window = {"loss": 0.0, "micro": 0, "wait": 0.0, "t0": time.perf_counter(), **dict.fromkeys(accounting.COUNTERS, 0)}
    while not done:
        t = time.perf_counter()
        batch = next(batches)
        window["wait"] += time.perf_counter() - t

        # Every process sees every process's counts, so all take the same stop decision.
        gathered = acc.gather(accounting.batch_matrix(batch.counts, cfg.per_device_batch_size).unsqueeze(0).to(acc.device)).cpu()
        remaining = None if unit is None else target - state["consumed"][unit]
        decision = accounting.plan(gathered, unit, remaining)
        mine = decision.keep[acc.process_index]
        scale = 1.0
        if mine < len(batch.keys):
            # Keep one sample even when none count, with a zero loss: every process must join the step.
            batch, scale = trim(batch, max(mine, 1)), (1.0 if mine else 0.0)
        if acc.process_index in decision.partial:
            accounting.mask_supervised_tail(batch.inputs["labels"], mine - 1, decision.partial[acc.process_index])

        if cfg.record_samples and mine:
            with open(run_dir / "samples" / f"rank-{acc.process_index}.txt", "a") as f:
                f.write("".join(f"{state['step']}\t{k}\n" for k in batch.keys[:mine]))
        lr_used = optimizer.param_groups[0]["lr"]

        with acc.accumulate(model):
            if decision.done and (state["micro_batches"] + 1) % gas:
                acc.gradient_state._set_sync_gradients(True)  # the budget ends mid-window: step now
            out = model(**{k: v.to(acc.device) for k, v in batch.inputs.items()})
            acc.backward(out.loss * scale)
            grad_norm = None
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            if acc.sync_gradients:
                scheduler.step()

        state["micro_batches"] += 1
        totals = accounting.kept_totals(gathered, decision)
        for c in accounting.COUNTERS:
            state["consumed"][c] += totals[c]
            window[c] += totals[c]
        state["passes"] = max(state["passes"], batch.pass_index + 1)
        # Mean loss over the processes that trained on something (all must join the reduce).
        loss_sum, n_sum = acc.reduce(torch.stack([out.loss.detach().float() * scale,
                                                  torch.tensor(scale, device=acc.device)]), "sum").tolist()
        window["loss"] += loss_sum / max(n_sum, 1e-9)
        window["micro"] += 1
        if not acc.sync_gradients:
            continue
        state["step"] += 1
        if not schedule["total"] and unit and state["consumed"][unit]:
            # Budget in data units: estimate the schedule length from the first step's consumption.
            schedule["total"] = state["schedule_total"] = math.ceil(target * state["step"] / state["consumed"][unit])
        done = bool(decision.done or (cfg.max_steps and state["step"] >= cfg.max_steps))

        if state["step"] % cfg.logging_steps == 0 or done:
            dt = time.perf_counter() - window["t0"]
            gn = model.get_global_grad_norm() if hasattr(model, "get_global_grad_norm") else grad_norm
            metrics = {"loss": window["loss"] / max(1, window["micro"]), "lr": lr_used,
                       "samples_per_s": window["samples"] / dt, "tokens_per_s": (window["text_tokens"] + window["visual_tokens"]) / dt,
                       "data_wait_share": window["wait"] / dt, "passes": state["passes"],
                       **{f"consumed/{c}": state["consumed"][c] for c in accounting.COUNTERS}}
            if gn is not None and math.isfinite(float(gn)):
                metrics["grad_norm"] = float(gn)
            tracker.log_metrics(metrics, step=state["step"])
            if acc.is_main_process:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": state["step"], **metrics}) + "\n")
            acc.print(f"step {state['step']:>5}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                      f"{metrics['samples_per_s']:.0f} samples/s  wait {metrics['data_wait_share']:.0%}  "
                      + "  ".join(f"{c} {state['consumed'][c]}" for c in ("samples", "visual_tokens")))
            window = {"loss": 0.0, "micro": 0, "wait": 0.0, "t0": time.perf_counter(), **dict.fromkeys(accounting.COUNTERS, 0)}
        if cfg.save_steps and state["step"] % cfg.save_steps == 0 and not done:
            save_state(acc, run_dir, state["step"], state, cfg.save_total_limit)

    return finish(acc, cfg, model, processor, family, recipe, shards, base_dir, state, tracker, uri, unit, target, reference)


def finish(acc, cfg, model, processor, family, recipe, shards, base_dir, state, tracker, uri, unit, target, reference) -> dict:
    """Write ckpt/<run>/: the peft adapter, the processor and run.json; log them to MLflow."""
    run_dir = cfg.run_dir
    full_state = acc.get_state_dict(model)  # gathers ZeRO-3 partitions; all processes must call it
    info = {
        "base_model": str(base_dir), "family": family.name, "recipe": recipe.name, "kind": recipe.kind,
        "manifest_hash": manifest_hash(shards), "shards": str(shards), "seed": cfg.seed,
        "mlflow_run_id": state["mlflow_run_id"], "tracking_uri": uri, "experiment": cfg.experiment,
        "consumed": state["consumed"], "steps": state["step"], "passes": state["passes"],
        "config": cfg.to_dict(),
    }
    if unit is not None and cfg.match_to:
        achieved = state["consumed"][unit]
        info["match"] = {"reference": reference, "unit": unit, "target": target, "achieved": achieved,
                         "rel_error": abs(achieved - target) / max(1, target)}
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        acc.unwrap_model(model).save_pretrained(run_dir, state_dict=full_state, safe_serialization=True)
        save_processor(processor, run_dir)
        atomic_write_json(run_dir / "run.json", info)
        tracker.log_metrics({f"consumed/{c}": v for c, v in state["consumed"].items()} | {"steps": state["step"]},
                            step=state["step"])
        if "match" in info:
            m = info["match"]
            tracker.set_tags({"match_to": cfg.match_to, "match_by": unit})
            tracker.log_metrics({"match/target": m["target"], "match/achieved": m["achieved"],
                                 "match/rel_error": m["rel_error"]}, step=state["step"])
        for f in ("run.json", "adapter_config.json", "adapter_model.safetensors"):
            tracker.log_artifact(run_dir / f, "checkpoint")
        tracker.end()
        acc.print(f"wrote {run_dir}: {state['step']} steps, consumed " +
                  ", ".join(f"{c} {v}" for c, v in state["consumed"].items()))
    acc.wait_for_everyone()
    acc.end_training()
    return info


if __name__ == "__main__":
    main()
