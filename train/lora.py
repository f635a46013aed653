"""LoRA finetuning of a vision-language model over a recipe's WebDataset shards.

    accelerate launch train/lora.py --recipe video_demo
    accelerate launch train/lora.py --recipe image_demo --match_to ckpt/video_demo --match_by visual_tokens
    accelerate launch train/lora.py --recipe video_demo --output_dir runs/video_seed1   # the run directory itself
    accelerate launch --config_file ds_configs/accelerate/gpu_1node_8gpu_zero2.yaml train/lora.py --recipe R
    accelerate launch train/lora.py --recipe R --dry_run --gpus 8 --nodes 2    # plan only, no weights
    python train/lora.py --recipe R --resume latest

Settings: defaults < the recipe's `train:` section < --config file.yaml < flags (`--help` lists
them). DeepSpeed ZeRO-2 from ds_configs/zero2.json unless told otherwise. The run ends at max_steps,
max_samples, or exactly at a reference run's consumption (match_to/match_by), and writes the run
directory (`--output_dir DIR`, else `output_root/run_name`, by default `ckpt/<recipe>/`: peft adapter,
processor, run.json), logging to MLflow from the main process. Flags are spelled with underscores, as
HF's Trainer and TRL spell them (`--output-dir` works, with a deprecation warning).

The recipe reads top to bottom: `setup()` builds each part with its own `_setup_*`, `train()` loops
over `train_step()` (one optimizer step) with logging and saving around it, `finish()` writes the
adapter. Everything that changes during the run lives in one `TrainingState`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/lora.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed compiles its CPU ops with g++ on first use (30-60 s): keep them in the project's cache.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from train.runtime import pick_ds_accelerator  # noqa: E402

pick_ds_accelerator()  # before DeepSpeed is imported: it reads DS_ACCELERATOR once

from accelerate import Accelerator, DeepSpeedPlugin  # noqa: E402
from accelerate.utils import (DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list,  # noqa: E402
                               set_seed)

from data_recipes.build import build as build_shards  # noqa: E402
from data_recipes.build import manifest_hash, read_manifest, shard_urls, stale, verify  # noqa: E402
from data_recipes.files import LockHeld, atomic_write_text, lock_on_main  # noqa: E402
from data_recipes.processors import save_processor  # noqa: E402
from data_recipes.recipe import load_recipe  # noqa: E402
from train import accounting, budget as budgets  # noqa: E402
from train.chat import IGNORE_INDEX  # noqa: E402
from train.checkpointing import (FINAL_FILES, STOP_SETTINGS, TrainingState, check_resume_layout,  # noqa: E402
                                 check_resume_schedule, check_resume_settings, find_resume, finished_run, load_state,
                                 read_state, reader_layout, resume_settings, save_state, supersede, trainable_aliases,
                                 trainable_only, trainable_state_dict)
from data_recipes.video_processors import FAMILY_VIDEO_PROCESSOR  # noqa: E402
from train.config import MIN_SAMPLES_FOR_DROP_CHECK, ConfigError, TrainConfig, resolve  # noqa: E402
from train.data import ShardStream, encode_samples, make_loader, resolve_frames, select  # noqa: E402
from train.families import context_length, get_module, load_model  # noqa: E402
from train.models import resolve_base_model, wrap_lora  # noqa: E402
from train.run_record import RunRecord  # noqa: E402
from train.runtime import fill_ds_config, resolve_runtime  # noqa: E402
from train.schedule import make_optimizer, make_scheduler  # noqa: E402
from train.tracking import NullTracker, Tracker, default_tracking_uri, make_client, parent_run_tags, retry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GENERATED_SOURCES = {"synthetic_image", "synthetic_video"}


class ShardsMissing(RuntimeError):
    pass


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _log_step(line: str) -> int:
    """0-based step of a metrics.jsonl or samples log line (truncated lines sort last: dropped)."""
    try:
        return json.loads(line)["step"] - 1 if line.startswith("{") else int(line.split("\t")[0])
    except (ValueError, KeyError):
        return 1 << 62


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised (label != -100) positions, in fp32."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def peak_memory_gb() -> float:
    """Peak memory since the last call: the GPU allocator's on CUDA, else the process's peak RSS."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _deepspeed_world_group(timeout_s: int) -> None:
    """DeepSpeed sends ZeRO's traffic over its own clone of the world group, which it makes without a
    timeout (torch's default: 10 minutes on NCCL, so one rank still loading 7B weights 10 minutes after the
    others kills the job at engine set-up). Made here first, with the run's timeout; DeepSpeed reuses it."""
    import torch.distributed as tdist
    from deepspeed.utils import groups

    if groups._WORLD_GROUP is None and tdist.is_initialized():
        groups._WORLD_GROUP = tdist.new_group(ranks=list(range(tdist.get_world_size())),
                                              timeout=datetime.timedelta(seconds=timeout_s))


SAVE_REQUEST = ".save_now"
"""A file in the run directory that asks the trainer for a resumable state at its next step (a Slurm job's
time-out hook writes it, `evalsuite.study.launchers.AccelerateJob.checkpoint`; anyone may). The trainer
saves, removes the file and trains on."""
STOPPED = 143
"""Exit code of a trainer stopped by SIGTERM after saving its state (128 + the signal's number)."""


class LoRATrainer:
    """One LoRA run: setup, train (step by step), finish.

    Interruptions: every `save_steps` steps a resumable state is saved. Between those, a state is also saved
    at the next step boundary when a process receives SIGTERM (a preemption, `scancel`, a `kill`: the
    trainer then stops with exit code `STOPPED`) or SIGUSR2 (Slurm's warning before the time limit: it
    trains on), or when the run directory holds `SAVE_REQUEST`. Whichever process learns of it, every
    process saves at the same step (one all-reduce a step)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.finished: RunRecord | None = None
        """Set by `setup()` when `--resume latest` finds this run finished (`complete_finished`)."""

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> "LoRATrainer":
        cfg = self.cfg
        self.acc = self._setup_accelerator()
        self._lock_run_dir()
        self.acc.print("resolved config:\n" + json.dumps(cfg.to_dict(), indent=1))
        self.acc.print("runtime: " + json.dumps(self.runtime.describe()))
        # The state to resume, checked against this run's data readers before anything heavy loads.
        resume_from = find_resume(self.run_dir, cfg.resume)
        resumed = read_state(resume_from) if resume_from else None
        layout = reader_layout(self.acc.num_processes, cfg.num_workers)
        if resumed:
            check_resume_layout(resumed, layout, resume_from)
        self.recipe = load_recipe(cfg.recipe)
        self.shards = self._setup_shards()
        settings = resume_settings(cfg.to_dict(), manifest_hash(self.shards))
        if resumed:
            check_resume_settings(resumed, settings, resume_from)
        self.finished = self._finished_already(settings)
        if self.finished is not None:
            return self
        self.base_dir = self._setup_base_model()
        # Seeded after the on-demand builds (which seed for themselves), so a run that had to build the
        # tiny model and one that found it on disk draw the same LoRA init and dropout masks.
        set_seed(cfg.seed)
        self._setup_model()
        self._setup_inputs()
        self.tracking_uri = cfg.tracking_uri or default_tracking_uri()
        self.budget = self._setup_budget()
        if resumed:
            check_resume_schedule(resumed, self.budget.schedule_steps, cfg, resume_from)
        # Everything that can refuse this run has spoken: now what is not on its line of training goes aside.
        if self.acc.is_main_process:
            aside = supersede(self.run_dir, resume_from)
            if aside is not None:
                self.acc.print(f"moved to {aside}: " + ", ".join(sorted(p.name for p in aside.iterdir()))
                               + (f" (newer than {resume_from})" if resume_from else " (from an earlier run)"),
                               flush=True)
        self._setup_optimizer()
        self.state = resumed or TrainingState(schedule_steps=self.budget.schedule_steps)
        self.state.readers, self.state.settings = layout, settings
        self.schedule["total"] = self.state.schedule_steps
        self.tracker = self._setup_tracking()
        self._setup_logs(resume_from)
        if resume_from and self.acc.is_main_process:
            # points the interrupted run logged but could not write (its store was down, or it was killed
            # with points queued) are in its metrics.jsonl up to the resumed state
            self.tracker.backfill(self.run_dir / "metrics.jsonl")
        self.batches = self._setup_data()
        if resume_from:
            # Restored last, after every bit of set-up that might draw random numbers, so that dropout
            # continues exactly where the interrupted run left it.
            load_state(self.acc, resume_from, trainable_aliases(self.acc.unwrap_model(self.model)))
            self.acc.print(f"resumed from {resume_from} at step {self.state.step}")
        return self

    def _finished_already(self, settings: dict) -> RunRecord | None:
        """With `--resume latest`, the record of a run already finished here under these settings and with
        this stopping point (`train.checkpointing.finished_run`): the relaunch has nothing to train. Decided
        by the main process, so that every process leaves together."""
        cfg = self.cfg
        found = None
        if cfg.resume == "latest" and self.acc.is_main_process and (self.run_dir / "run.json").is_file():
            b = budgets.resolve_budget(cfg, cfg.tracking_uri or default_tracking_uri())
            stop = {"unit": b.unit, "target": b.target} | {k: getattr(cfg, k) for k in STOP_SETTINGS}
            found = finished_run(self.run_dir, settings, stop)
        found = self._from_main(found.to_dict() if found is not None else None)
        return RunRecord.from_dict(found, self.run_dir / "run.json") if found is not None else None

    def complete_finished(self) -> dict:
        """A relaunch of a finished run: train nothing, keep the adapter, and finish the MLflow run if the
        finished job was stopped before it could (its final tags and artifacts, points that metrics.jsonl
        holds and the store lacks, status FINISHED). Returns run.json's contents."""
        record, info = self.finished, self.finished.to_dict()
        self.acc.print(f"{self.run_dir} holds this run finished ({info.get('steps')} steps; run.json): nothing to "
                       "train. To train it again, start without --resume or under another --run_name.", flush=True)
        if not self.acc.is_main_process or not record.mlflow_run_id:
            return info
        uri = record.tracking_uri or self.cfg.tracking_uri or default_tracking_uri()
        try:
            status = retry(make_client(uri).get_run, record.mlflow_run_id).info.status
        except Exception as e:  # noqa: BLE001 - the run is finished on disk; its MLflow record can be mended later
            print(f"[tracking] MLflow run {record.mlflow_run_id} in {uri} not checked ({type(e).__name__}: {e})",
                  file=sys.stderr, flush=True)
            return info
        if status != "FINISHED":
            t = Tracker(uri, self.cfg.experiment, self.run_dir.name, {}, resume_run_id=record.mlflow_run_id)
            t.tolerate_outages(grace_s=self.cfg.tracking_grace_s)
            t.backfill(self.run_dir / "metrics.jsonl")
            self._log_final(t, info)
            self.acc.print(f"MLflow run {record.mlflow_run_id} was {status}: its final logs written, now FINISHED")
        return info

    def _lock_run_dir(self) -> None:
        """One training job per run directory: a second (a study rerun while the first still runs, a job
        requeued beside its old self) would resume from the same state and overwrite its checkpoints. The main
        process takes `RUN_DIR/.train.lock` (`data_recipes.files.DirLock`); every process learns whether it
        got it, so all stop together with the holder named, before anything is read or written."""
        self.lock = lock_on_main(self.run_dir / ".train.lock", f"training into {self.run_dir}",
                                 self.acc.is_main_process, self._from_main)

    def _from_main(self, value):
        """The main process's `value` on every process."""
        return broadcast_object_list([value], from_process=0)[0] if self.acc.num_processes > 1 else value

    def release(self) -> None:
        """Give the run directory's lock back (the main process holds it); a run directory left empty (set-up
        stopped before writing anything) is removed, so no empty checkpoint is left for the evaluation."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only succeeds when empty

    def _setup_accelerator(self) -> Accelerator:
        cfg = self.cfg
        self.runtime = resolve_runtime(cfg)
        ds = self.runtime.ds_config
        if ds is not None and "RANK" not in os.environ:
            # DeepSpeed outside a launcher goes looking for mpi4py; a one-process world avoids that.
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        distributed = ds is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1
        # Name the backend explicitly: on CPU without it accelerate believes it has one process while
        # DeepSpeed's world has two, and both ranks silently read the same data. The timeout applies
        # to every collective (a slow shard read on one node must not kill a 64-GPU job at 10 min).
        handlers = [InitProcessGroupKwargs(backend=self.runtime.backend,
                                           timeout=datetime.timedelta(seconds=self.runtime.timeout_s))] if distributed else []
        plugin = DeepSpeedPlugin(hf_ds_config=ds) if ds is not None else None
        acc = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers, mixed_precision=self.runtime.precision,
                          gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        if ds is not None:
            _deepspeed_world_group(self.runtime.timeout_s)
        return acc

    def _setup_shards(self) -> Path:
        """The recipe's shards. Generated (demo) recipes are built on the main process while the others
        wait; a real-data recipe must be built beforehand in a multi-process job."""
        cfg, acc, recipe = self.cfg, self.acc, self.recipe
        out = Path(cfg.shards_root) / recipe.name
        try:
            why = stale(read_manifest(out), recipe)
        except Exception:
            why = "no readable manifest"
        fresh = why is None
        generated = all(s.type in GENERATED_SOURCES for s in recipe.sources)
        if not fresh and acc.num_processes > 1 and not generated:
            raise ShardsMissing(
                f"{out}: no up-to-date shards for recipe {recipe.name} ({why}). Building real data inside a "
                f"{acc.num_processes}-process job would keep every other rank waiting until the collective "
                f"timeout; build them first:\n    python -m data_recipes build {cfg.recipe} --out {out} --workers N")
        if acc.is_main_process:
            if not fresh:
                acc.print(f"building shards for {recipe.name} in {out} ({why})")
                build_shards(recipe, out, workers=1, progress=True)
            if cfg.verify and (problems := verify(out)):
                raise RuntimeError(f"--verify: shards of {out} do not match their manifest:\n  " + "\n  ".join(problems))
        acc.wait_for_everyone()
        self.manifest = read_manifest(out)
        return out

    def _setup_base_model(self) -> Path:
        if self.acc.is_main_process:
            path = resolve_base_model(self.cfg.base_model)
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            path = resolve_base_model(self.cfg.base_model, build=False)
        return path

    def _setup_model(self) -> None:
        cfg, rt = self.cfg, self.runtime
        model, self.processor, self.family = load_model(
            self.base_dir, trust_remote_code=cfg.trust_remote_code, dtype=rt.dtype,
            attn_implementation=rt.attn_implementation)
        text_cfg = getattr(model.config, "text_config", model.config)
        self.hidden, self.context = text_cfg.hidden_size, context_length(model.config)
        model = wrap_lora(model, self.family, cfg)
        self.vision_trained = any(p.requires_grad for part in (self.family.vision_tower, self.family.projector)
                                  for p in get_module(model, part).parameters())
        if rt.precision != "no":
            # Without DeepSpeed, autocast computes in 16 bits and the trained weights and their Adam states
            # stay in fp32. DeepSpeed trains 16-bit weights (its optimizer holds the fp32 masters) and casts
            # the model to them itself, but not under ZeRO-3: there the loader already partitioned the base
            # weights in 16 bits, and peft's fp32 adapters beside them would stop ZeRO-3 at its first
            # partition ("assert len(set(t.dtype for t in tensors)) == 1"). So they are cast here, for every stage.
            trained = torch.float32 if rt.ds_config is None else rt.dtype
            for p in model.parameters():
                if p.requires_grad and not hasattr(p, "ds_id"):
                    p.data = p.data.to(trained)
        # The dtype the forward really computes in, read off the first attention projection's output
        # (accelerate casts the model's outputs back to fp32, so the logits would not tell).
        probe = get_module(model, f"{self.family.language_model}.layers.0.self_attn.q_proj")
        self._dtype_probe = probe.register_forward_hook(self._note_forward_dtype)
        # ZeRO-3's partitioned parameters hold no elements of their own (numel 0); ds_numel is their size.
        self.trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        self.total_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.acc.print(f"{self.family.name} from {self.base_dir}: {self.trainable:,} trainable of {self.total_params:,}")
        self.model = model

    def _setup_inputs(self) -> None:
        """How frames reach the model (`video_input`) and at what size (`max_pixels`), resolved once."""
        cfg, m = self.cfg, self.manifest
        self.video_input, self.max_pixels = resolve_frames(cfg.video_input, cfg.max_pixels, m)
        if self.video_input == "native" and getattr(self.processor, "video_processor", None) is None:
            raise ConfigError(f"video_input native: {self.family.name} ({self.base_dir}) has no video path; "
                              f"families with one: {', '.join(sorted(FAMILY_VIDEO_PROCESSOR))}. Use video_input: images")
        self.acc.print(f"frames: video_input {self.video_input}, max_pixels {self.max_pixels or 'no limit'}")

    def _note_forward_dtype(self, module, args, output) -> None:
        self.forward_dtype = str(output.dtype).removeprefix("torch.")
        self._dtype_probe.remove()

    def _setup_budget(self) -> budgets.Budget:
        cfg = self.cfg
        b = budgets.resolve_budget(cfg, self.tracking_uri)
        per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * self.acc.num_processes

        def count(raw):  # per-sample counts of raw shard samples, as the training batches count them
            return encode_samples(self.processor, raw, self.video_input, self.max_pixels)[1]

        def per_sample():
            mean = budgets.per_sample_from_manifest(self.manifest, b.unit, self.base_dir, self.video_input,
                                                    self.max_pixels)
            if mean is not None:
                return mean, "manifest counts"
            return budgets.prescan_per_sample(shard_urls(self.shards), count, b.unit), \
                f"prescan of the first {budgets.PRESCAN_SAMPLES} samples"
        b = budgets.plan_schedule(b, cfg, per_step, per_sample)
        self.acc.print(f"budget: {b.unit or 'steps'} {b.target or cfg.max_steps}; schedule {b.schedule_steps} steps "
                       f"({b.schedule_source})")
        return b

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        optimizer = make_optimizer(self.model, cfg, projector=self.family.projector)
        self.schedule = {"total": self.budget.schedule_steps}
        self.scheduler = make_scheduler(optimizer, cfg, self.schedule)
        if self.acc.state.deepspeed_plugin is not None:
            ds = self.acc.state.deepspeed_plugin.deepspeed_config
            ds.update(fill_ds_config(ds, cfg, self.runtime.precision, hidden=self.hidden))
        else:
            self.acc.register_save_state_pre_hook(trainable_only(self.model))
        text_only = int((self.manifest.get("kinds") or {}).get("text_only", 0))
        ddp = self.acc.state.deepspeed_plugin is None and self.acc.num_processes > 1
        if ddp and self.vision_trained and text_only:
            # A micro-batch of text-only samples leaves the trained projector without gradients; DDP then
            # waits for them forever unless told that parameters may go unused (on any or every process).
            self.acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        # The scheduler stays outside prepare(): accelerate would step it once per process, and the
        # schedule here is counted in optimizer steps. It drives the base optimizer's param groups,
        # which DeepSpeed's ZeRO wrapper shares.
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)
        self.trained_params = [p for p in self.model.parameters() if p.requires_grad]  # clipping skips frozen ones
        self.acc.register_for_checkpointing(self.scheduler)
        self.deepspeed = self.acc.state.deepspeed_plugin is not None
        self.zero3 = self.deepspeed and self.acc.state.deepspeed_plugin.zero_stage == 3
        # Whether a process that skips the vision tower and projector (a micro-batch without images) would
        # leave the others waiting in a collective: ZeRO-3 gathers their weights, ZeRO-2 reduces their
        # gradients when they are trained. (DDP, told above, marks the unused ones ready on its own.) If so,
        # every process forwards an image in every micro-batch: one of its samples not kept, or the
        # stream's filler row (`train.data`), under masked labels.
        self.vision_collectives = self.acc.num_processes > 1 and (self.zero3 or (self.deepspeed and self.vision_trained))

    def _setup_tracking(self):
        if not self.acc.is_main_process:
            return NullTracker()
        cfg, recipe = self.cfg, self.recipe
        tags = {"recipe": recipe.name, "family": self.family.name, "manifest_hash": manifest_hash(self.shards),
                "git_commit": git_commit(), "kind": recipe.kind, "stage": "train", "base_model": str(self.base_dir),
                "mixed_precision": self.runtime.precision, "attn_implementation": self.runtime.attn_implementation,
                "video_input": self.video_input, "max_pixels": str(self.max_pixels or "none"), **parent_run_tags()}
        tracker = Tracker(self.tracking_uri, cfg.experiment, self.run_dir.name, tags,
                          resume_run_id=self.state.mlflow_run_id, system_metrics=cfg.system_metrics)
        if not tracker.resumed:  # a new run (also when the state's run is in another store)
            tracker.log_params(cfg.to_dict() | {f"schedule/{k}": v for k, v in self.budget.to_dict().items()})
            tracker.log_artifact(self.shards / "manifest.json", "data")
        self.state.mlflow_run_id = tracker.run_id
        # The store answered so far (a wrong URI fails here); from now on an outage never stops the training.
        run_dir = self.run_dir.resolve()
        tracker.tolerate_outages(f"every point is in {run_dir / 'metrics.jsonl'}; once the store is back, "
                                 f"`python -m train.tracking sync {run_dir}` writes what it lacks",
                                 grace_s=cfg.tracking_grace_s)
        return tracker

    def _setup_logs(self, resume_from) -> None:
        if self.acc.is_main_process:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            for f in [self.run_dir / "metrics.jsonl", *(self.run_dir / "samples").glob("rank-*.txt")]:
                # A fresh run starts fresh logs; a resumed one drops what came after its state.
                keep = [] if not resume_from or not f.exists() else [
                    line for line in f.read_text().splitlines(keepends=True) if _log_step(line) < self.state.step]
                atomic_write_text(f, "".join(keep))
        self.acc.wait_for_everyone()

    def _setup_data(self):
        cfg, state = self.cfg, self.state
        self.stream = ShardStream(
            shard_urls(self.shards), self.processor, batch_size=cfg.per_device_batch_size, seed=cfg.seed,
            rank=self.acc.process_index, world=self.acc.num_processes, shuffle_buffer=cfg.shuffle_buffer,
            shard_counts=[s["samples"] for s in self.manifest["shards"]],
            max_length=cfg.max_length, context_length=self.context,
            video_input=self.video_input, max_pixels=self.max_pixels, image_filler=self.vision_collectives,
            resume={"positions": state.positions, "batches": state.micro_batches} if state.micro_batches else None)
        return iter(make_loader(self.stream, cfg.num_workers))

    # --- one optimizer step ----------------------------------------------------------------------
    def _fetch(self) -> tuple[list, float]:
        """The step's micro-batches (gradient_accumulation_steps of them) and the time spent waiting."""
        t, batches = time.perf_counter(), [next(self.batches) for _ in range(self.cfg.gradient_accumulation_steps)]
        return batches, time.perf_counter() - t

    def _plan(self, gathered: torch.Tensor) -> list[tuple[accounting.Decision, dict]]:
        """Budget decision and kept counts of each micro-batch, until the budget is reached."""
        state, b, B = self.state, self.budget, self.cfg.per_device_batch_size
        remaining = None if b.unit is None else b.target - state.consumed[b.unit]
        plans = []
        for i in range(gathered.shape[1]):
            decision = accounting.plan(gathered[:, i, :B], b.unit, remaining,
                                       gathered[:, i, B, accounting.META.index("pass_index")].tolist())
            totals = accounting.kept_totals(gathered[:, i, :B], decision)
            plans.append((decision, totals))
            if remaining is not None:
                remaining -= totals[b.unit]
            if decision.done:
                break
        return plans

    def train_step(self) -> dict:
        """One optimizer step over up to gradient_accumulation_steps micro-batches; returns its record.

        The loss is the mean over every supervised token of the step, across micro-batches and
        processes: each micro-batch contributes its token-summed loss divided by the step's total.
        (A mean of per-micro-batch means would weight a token of a short answer more than one of a long
        answer, and an image run and a video run differently.) The backward scale undoes the 1/gas and
        1/world averaging that accelerate/DeepSpeed and the data-parallel reduce apply.
        """
        cfg, acc, state = self.cfg, self.acc, self.state
        t0 = time.perf_counter()
        batches, wait = self._fetch()
        # Every process sees every process's counts, so all take the same stop decision.
        gathered = acc.gather(accounting.step_matrix(batches, cfg.per_device_batch_size).unsqueeze(0).to(acc.device)).cpu()
        self._note_readers(gathered)
        plans = self._plan(gathered)
        supervised = sum(t["supervised_tokens"] for _, t in plans)
        factor = acc.num_processes * cfg.gradient_accumulation_steps / max(supervised, 1)
        loss_sum, grad_norm = torch.zeros((), device=acc.device), None
        for i, ((decision, totals), batch) in enumerate(zip(plans, batches)):
            counts = gathered[:, i, :-1]
            # Keep one sample even when none count, with a zero loss: every process must join the step.
            me = acc.process_index
            mine, my_rows = decision.keep[me], accounting.forward_rows(counts, decision.keep)[me]
            scale = 1.0 if mine else 0.0
            extra = None  # a row forwarded under masked labels so that the vision tower and projector run here too
            if self.vision_collectives and not accounting.has_images(counts[me], my_rows):
                extra = accounting.image_row(counts[me], my_rows)
                if extra is None:
                    extra = batch.samples  # the filler row the stream gave this batch without images
                    if not batch.filler:
                        raise RuntimeError(f"step {state.step + 1}: a micro-batch without images and without the "
                                           "stream's filler row (ShardStream(image_filler=True))")
                my_rows = my_rows + [extra]
            if my_rows != list(range(len(batch.keys))):
                batch = select(batch, my_rows)
            if extra is not None:
                batch.inputs["labels"][-1] = -100
            if acc.process_index in decision.partial:
                accounting.mask_supervised_tail(batch.inputs["labels"], mine - 1, decision.partial[acc.process_index])
            if cfg.record_samples and mine:
                with open(self.run_dir / "samples" / f"rank-{acc.process_index}.txt", "a") as f:
                    f.write("".join(f"{state.step}\t{k}\n" for k in batch.keys[:mine]))
            last = i == len(plans) - 1
            acc.gradient_state._set_sync_gradients(last)  # the step ends here, early when the budget does
            inputs = {k: v.to(acc.device) for k, v in batch.inputs.items() if k != "labels"}
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                logits = self.model(**inputs).logits
                micro_loss = token_loss_sum(logits, batch.inputs["labels"]) * scale
                acc.backward(micro_loss * factor)
            loss_sum += micro_loss.detach()
            state.micro_batches += 1
            if last and not self.deepspeed:
                grad_norm = acc.clip_grad_norm_(self.trained_params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            for c in accounting.COUNTERS:
                state.consumed[c] += totals[c]
        lr_used = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        state.step += 1
        done = bool(plans[-1][0].done or (cfg.max_steps and state.step >= cfg.max_steps))
        loss = acc.reduce(loss_sum.float(), "sum").item() / max(supervised, 1)
        if self.deepspeed and hasattr(self.model, "get_global_grad_norm"):
            grad_norm = self.model.get_global_grad_norm()
        return {"loss": loss, "lr": lr_used[0], "lr_groups": lr_used, "grad_norm": grad_norm, "done": done,
                "wait": wait, "time": time.perf_counter() - t0, "supervised_tokens": supervised,
                **{c: sum(t[c] for _, t in plans) for c in accounting.COUNTERS}}

    def _note_readers(self, gathered: torch.Tensor) -> None:
        """Drops, reader positions and passes from the META rows of every process's micro-batches."""
        meta = gathered[:, :, -1, :].reshape(-1, len(accounting.META)).tolist()
        for too_long, over_context, reader, position, pass_index in meta:
            self.state.dropped["too_long"] += too_long
            self.state.dropped["over_context"] += over_context
            self.state.positions[int(reader)] = int(position)
            self.state.passes = max(self.state.passes, int(pass_index) + 1)

    # --- the loop, logging, saving -------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._asked = max(self._asked, 2 if signum == signal.SIGTERM else 1)

    def _save_asked(self) -> int:
        """0, 1 (save a state) or 2 (save and stop), agreed by every process (each must call it every step)."""
        asked = self._asked
        if self.acc.is_main_process and (self.run_dir / SAVE_REQUEST).exists():
            asked = max(asked, 1)
        if self.acc.num_processes > 1:
            import torch.distributed as tdist

            flag = torch.tensor([asked], device=self.acc.device)
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
            asked = int(flag.item())
        return asked

    def train(self) -> None:
        cfg, state = self.cfg, self.state
        self.model.train()
        done = state.step >= cfg.max_steps > 0
        window: list[dict] = []
        self._asked = 0
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGUSR2)} \
            if threading.current_thread() is threading.main_thread() else {}
        try:
            while not done:
                record = self.train_step()
                done = record["done"]
                self._check_drops()
                window.append(record)
                if state.step % cfg.logging_steps == 0 or done:
                    self.log(window)
                    window = []
                asked = self._save_asked()
                if not done and (asked or cfg.save_steps and state.step % cfg.save_steps == 0):
                    # Points logged so far go to the store before the state (a resumed run also writes what
                    # it lacks from metrics.jsonl), but a store in MLflow's own retries does not hold the GPUs.
                    self.tracker.flush(timeout=SAVE_FLUSH_S)
                    saved = save_state(self.acc, self.run_dir, state, cfg.save_total_limit)
                    if asked:
                        self._asked = 0
                        if self.acc.is_main_process:
                            (self.run_dir / SAVE_REQUEST).unlink(missing_ok=True)
                        self.acc.print(f"saved {saved} on request" + (": stopping (SIGTERM)" if asked == 2 else ""),
                                       flush=True)
                if asked == 2 and not done:
                    raise SystemExit(STOPPED)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _check_drops(self) -> None:
        """Stop when more than `max_dropped_fraction` of the samples taken were too long (every process holds
        the same gathered counts, so all stop at the same step)."""
        state, cfg = self.state, self.cfg
        dropped = sum(state.dropped.values())
        taken = state.consumed["samples"] + dropped
        if taken >= MIN_SAMPLES_FOR_DROP_CHECK and dropped > cfg.max_dropped_fraction * taken:
            raise ConfigError(
                f"{dropped} of the {taken} samples taken so far were dropped as too long (too_long "
                f"{state.dropped['too_long']}: over max_length {cfg.max_length or 'unset'}; over_context "
                f"{state.dropped['over_context']}: over the language model's context of {self.context} tokens), more "
                f"than max_dropped_fraction {cfg.max_dropped_fraction:g}: the run would no longer train on the "
                f"recipe's data. Samples are dropped, never cut. Fewer frames or a smaller max_pixels in the recipe, "
                f"video_input native (pooled video tokens) or a larger max_length fit them; `--dry_run` shows the "
                f"shares before a run; --max_dropped_fraction 1 trains on what is left")

    def log(self, window: list[dict]) -> None:
        """Metrics of the steps since the last log, to MLflow (in the background) and metrics.jsonl."""
        state, dt = self.state, sum(r["time"] for r in window)
        last = window[-1]
        metrics = {"loss": sum(r["loss"] for r in window) / len(window), "lr": last["lr"],
                   "samples_per_s": sum(r["samples"] for r in window) / dt,
                   "tokens_per_s": sum(r["text_tokens"] + r["visual_tokens"] for r in window) / dt,
                   "data_wait_share": sum(r["wait"] for r in window) / dt, "step_time_s": dt / len(window),
                   "peak_mem_gb": peak_memory_gb(), "passes": state.passes,
                   **{f"lr/{g['name']}": lr for g, lr in zip(self.optimizer.param_groups, last["lr_groups"])},
                   **{f"consumed/{c}": state.consumed[c] for c in accounting.COUNTERS},
                   **{f"dropped/{k}": v for k, v in state.dropped.items()}}
        gn = last["grad_norm"]
        if gn is not None and math.isfinite(float(gn)):
            metrics["grad_norm"] = float(gn)
        self.tracker.log_metrics(metrics, step=state.step)
        if self.acc.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": state.step, **metrics}) + "\n")
        self.acc.print(f"step {state.step:>5}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                       f"{metrics['samples_per_s']:.0f} samples/s  wait {metrics['data_wait_share']:.0%}  "
                       + "  ".join(f"{c} {state.consumed[c]}" for c in ("samples", "visual_tokens")))

    def precision_record(self) -> dict:
        """The dtypes the run really used (not what was asked for)."""
        params = list(self.acc.unwrap_model(self.model).parameters())
        trainable = {str(p.dtype).removeprefix("torch.") for p in params if p.requires_grad}
        frozen = {str(p.dtype).removeprefix("torch.") for p in params if not p.requires_grad}
        return {"mixed_precision": self.runtime.precision, "trainable_dtype": ",".join(sorted(trainable)),
                "frozen_dtype": ",".join(sorted(frozen)), "forward_dtype": getattr(self, "forward_dtype", "")}

    def finish(self) -> dict:
        """Write ckpt/<run>/: the peft adapter, the processor and run.json; log them to MLflow."""
        cfg, acc, state, b = self.cfg, self.acc, self.state, self.budget
        weights = trainable_state_dict(acc, self.model)  # every process joins the ZeRO-3 gathers
        match = None
        if b.unit is not None and cfg.match_to:
            achieved = state.consumed[b.unit]
            match = {"reference": b.reference, "unit": b.unit, "target": b.target, "achieved": achieved,
                     "rel_error": abs(achieved - b.target) / max(1, b.target)}
        record = RunRecord(
            base_model=str(self.base_dir), family=self.family.name, recipe=self.recipe.name, kind=self.recipe.kind,
            frame_order=self.recipe.frame_order, video_input=self.video_input, max_pixels=self.max_pixels,
            seed=cfg.seed, mlflow_run_id=state.mlflow_run_id, tracking_uri=self.tracking_uri,
            consumed=state.consumed, budget=b.to_dict(), config=cfg.to_dict(), match=match,
            extra={"manifest_hash": manifest_hash(self.shards), "shards": str(self.shards),
                   "experiment": cfg.experiment, "steps": state.step, "passes": state.passes,
                   "unique_samples": self.stream.unique_seen(state.positions,
                                                             self.acc.num_processes * max(1, cfg.num_workers)),
                   "dropped": state.dropped, "precision": self.precision_record(),
                   "runtime": self.runtime.describe(),
                   "parameters": {"trainable": self.trainable, "total": self.total_params}})
        if b.unit is not None and b.target and state.consumed[b.unit] < b.target:
            # Stopped by max_steps before the budget: said here and in run.json, not only by the numbers.
            record.extra["short_of_budget"] = {"unit": b.unit, "target": b.target,
                                               "achieved": state.consumed[b.unit], "limited_by": "max_steps"}
            acc.print(f"warning: stopped by max_steps {cfg.max_steps} at {state.consumed[b.unit]} of the budget's "
                      f"{b.target} {b.unit} (run.json: short_of_budget)", flush=True)
        info = record.to_dict()
        if acc.is_main_process:
            # The adapter is written beside the run directory and renamed in, each file whole; run.json, the
            # mark of a finished run, last. A kill in between leaves no run.json (the directory is no checkpoint).
            tmp = self.run_dir / ".adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)  # one a killed finish left
            tmp.mkdir(parents=True)
            acc.unwrap_model(self.model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            save_processor(self.processor, tmp)
            for f in sorted(tmp.iterdir()):
                if f.is_dir() and (self.run_dir / f.name).is_dir():
                    shutil.rmtree(self.run_dir / f.name)
                os.replace(f, self.run_dir / f.name)
            tmp.rmdir()
            record.write(self.run_dir / "run.json")
        # The run is complete on disk: the other processes go, and only the main one waits for MLflow (a store
        # that does not answer can hold it for minutes, longer than the other processes may wait in a barrier).
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._log_final(self.tracker, info)
            acc.print(f"wrote {self.run_dir}: {state.step} steps, consumed " +
                      ", ".join(f"{c} {v}" for c, v in state.consumed.items()))
        return info

    def _log_final(self, t, info: dict) -> None:
        """What a finished run adds to its MLflow run (from run.json's contents `info`), then its end."""
        step = info["steps"]  # (consumed/* of the last step are logged with it)
        t.log_metrics({"steps": step, "unique_samples": info["unique_samples"]}, step=step)
        t.set_tags({f"dtype/{k}": v for k, v in info["precision"].items()})
        if "match" in info:
            m = info["match"]
            t.set_tags({"match_to": info["config"]["match_to"], "match_by": m["unit"]})
            t.log_metrics({"match/target": m["target"], "match/achieved": m["achieved"],
                           "match/rel_error": m["rel_error"]}, step=step)
        for f in FINAL_FILES:
            t.log_artifact(self.run_dir / f, "checkpoint")
        t.end()


SAVE_FLUSH_S = 30.0
"""How long a save waits for MLflow to take the points logged before it."""


def main(argv: list[str] | None = None) -> dict:
    cfg = resolve(sys.argv[1:] if argv is None else argv, recipe_train=lambda r: load_recipe(r).train)
    if cfg.dry_run:
        from train.plan import dry_run

        return dry_run(cfg)
    trainer = LoRATrainer(cfg)
    try:
        trainer.setup()
        if trainer.finished is not None:
            info = trainer.complete_finished()
        else:
            trainer.train()
            info = trainer.finish()
    except BaseException as e:
        # The MLflow run says how it ended (it stayed RUNNING for ever); a resumed run sets it running again.
        tracker = getattr(trainer, "tracker", None)
        if tracker is not None:
            stopped = isinstance(e, (SystemExit, KeyboardInterrupt))
            with contextlib.suppress(Exception):
                tracker.end("KILLED" if stopped else "FAILED")
        raise
    finally:
        trainer.release()
    trainer.acc.end_training()
    return info


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (settings, recipe, data, base model), reported without a traceback."""
    from data_recipes.build import BuildError
    from data_recipes.processors import ProcessorLoadError
    from data_recipes.recipe import RecipeError
    from train.config import ConfigError
    from train.families import FamilyError
    from train.models import ModelNotFound
    from train.runtime import RuntimeConfigError

    return (FamilyError, ProcessorLoadError, ModelNotFound, ConfigError, RecipeError, BuildError, RuntimeConfigError,
            ShardsMissing, LockHeld)


if __name__ == "__main__":
    try:
        main()
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
