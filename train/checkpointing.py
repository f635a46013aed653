"""The trainer's typed state, its resumable snapshots, and the final adapter.

A resumable state lives in `RUN/checkpoints/step-N/`: `accelerator.save_state` restricted to what
training changes (the trainable parameters, the optimizer, the scheduler, every process's RNG; under
DeepSpeed its ZeRO partitions with `exclude_frozen_parameters`) plus `trainer_state.json` (the
`TrainingState`). The frozen base weights are never copied: at 7B they are 14 GB per state, and the
base model directory already holds them. A state is written to `.step-N.tmp` and renamed only once
complete, so a crash mid-save leaves the previous state the newest valid one; a directory without
`trainer_state.json` is never picked up. A state records the settings a resume must share with it
(`resume_settings`), and a run moves states of another line of training out of its directory before it
writes its own (`supersede`).

The final adapter is written from the trainable parameters alone, on the main process: under ZeRO-3
only those partitions are gathered (a few at a time), never the whole model on every rank.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from data_recipes.files import atomic_dir, atomic_write_json
from train import accounting
from train.config import ConfigError

STATE_FILE = "trainer_state.json"
STATE_VERSION = 2
_STEP = re.compile(r"^step-(\d+)$")
GATHER_CHUNK = 64  # trainable tensors gathered at once under ZeRO-3 when saving the adapter


@dataclass
class TrainingState:
    """Everything the trainer's loop carries from step to step (and a resumed run restores)."""
    step: int = 0
    micro_batches: int = 0
    consumed: dict = field(default_factory=lambda: dict.fromkeys(accounting.COUNTERS, 0))
    passes: int = 1
    positions: dict = field(default_factory=dict)   # reader id -> raw samples taken from its stream
    dropped: dict = field(default_factory=lambda: {"too_long": 0, "over_context": 0})
    mlflow_run_id: str | None = None
    schedule_steps: int = 0
    readers: dict = field(default_factory=dict)     # {"processes": N, "workers": W}: the layout `positions` index
    settings: dict = field(default_factory=dict)    # `resume_settings`: what a resumed run must share with it
    version: int = STATE_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = STATE_FILE) -> "TrainingState":
        known = {f.name for f in fields(cls)}
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"{where}: state version {d.get('version')!r}, this trainer reads {STATE_VERSION} "
                             f"(a state written by another version of train/lora.py cannot be resumed)")
        state = cls(**{k: v for k, v in d.items() if k in known})
        state.positions = {int(k): int(v) for k, v in state.positions.items()}  # JSON keys are strings
        return state


def reader_layout(processes: int, num_workers: int) -> dict:
    """The data readers a run has: one per loader worker (one without workers) in each process."""
    return {"processes": int(processes), "workers": max(1, int(num_workers))}


def check_resume_layout(state: TrainingState, layout: dict, where: Path) -> None:
    """A state's stream positions belong to the readers that took them: resuming them with another number
    of processes or loader workers would deal the shards out again, repeating some samples and skipping
    others without a word. (States written before the layout was recorded cannot be checked.)"""
    if state.readers and state.readers != layout:
        raise ConfigError(
            f"{where / STATE_FILE}: this state was written by {state.readers['processes']} process(es) x "
            f"{state.readers['workers']} loader worker(s), this run has {layout['processes']} x {layout['workers']}. "
            "The data stream's positions are kept per reader, so resume with the same number of processes and "
            "--num_workers, or start a new run (another --run_name, without --resume)")


RESUME_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "freeze_vision_tower", "freeze_projector",
                   "train_embeddings", "learning_rate", "projector_lr", "weight_decay", "lr_scheduler", "warmup_steps",
                   "max_grad_norm", "per_device_batch_size", "gradient_accumulation_steps", "max_length", "video_input",
                   "max_pixels", "seed", "shuffle_buffer")
"""Settings a resumed run must share with its state: they decide what the restored adapter, optimizer, schedule
and stream positions mean. Settings of speed and memory (gradient checkpointing, attention kernel, DeepSpeed
config), of logging and saving, and the stopping point may change."""


def resume_settings(config: dict, manifest_hash: str) -> dict:
    """What a state records of its run (`RESUME_SETTINGS` and the data's manifest hash) for a resume to check."""
    return {k: config[k] for k in RESUME_SETTINGS} | {"manifest_hash": manifest_hash}


def check_resume_settings(state: TrainingState, settings: dict, where: Path) -> None:
    """Refuse to resume a state under other settings or other data (see `RESUME_SETTINGS`): the run would go on
    from the old optimizer and stream positions under the new learning rate, or over rebuilt shards, and
    its MLflow run would still show the old settings. (States written before settings were recorded cannot
    be checked.)"""
    if not state.settings:
        return
    differ = [k for k in settings if k in state.settings and state.settings[k] != settings[k]]
    if differ:
        what = "; ".join(f"{k}: {state.settings[k]!r} in the state, {settings[k]!r} now" for k in differ)
        data = " (the shards were rebuilt or are another recipe's)" if "manifest_hash" in differ else ""
        raise ConfigError(f"{where / STATE_FILE}: this state was trained under other settings{data}: {what}. "
                          "Resume with the state's settings, or start a new run (another --run_name, without --resume)")


SUPERSEDED = ".superseded"
"""`RUN/.superseded-<time>/`: what a run moved out of its way when it started (hidden: checkpoint discovery
and `valid_states` never look there)."""
FINAL_FILES = ("run.json", "adapter_config.json", "adapter_model.safetensors")
"""The finished run's files: `run.json` (written last) says the adapter beside it is complete."""


def check_resume_schedule(state: TrainingState, planned_steps: int, cfg, where: Path) -> None:
    """Refuse a resume whose budget reaches past the end of its state's learning-rate schedule. The schedule
    is the state's (a new one would jump the learning rate at the resumed step); a decaying one is 0 from its
    last step on, so the steps past it would train nothing while the run reported the larger budget. A
    smaller budget (stopping earlier) and a constant schedule are fine."""
    if cfg.lr_scheduler == "constant" or not state.schedule_steps or planned_steps <= state.schedule_steps:
        return
    raise ConfigError(f"{where / STATE_FILE}: this state's {cfg.lr_scheduler} learning-rate schedule ends at step "
                      f"{state.schedule_steps}, and the budget now asks for {planned_steps} steps: past step "
                      f"{state.schedule_steps} the learning rate is 0. A longer run needs a schedule of its length: "
                      "start a new run (another --run_name, without --resume) with the larger budget")


STOP_SETTINGS = ("max_steps", "schedule_steps")
"""Settings of where a run stops besides its budget (`train.budget.resolve_budget`'s unit and target)."""


def finished_run(run_dir: Path, settings: dict, stop: dict):
    """The record of the run finished in `run_dir` under `settings` (`resume_settings`) and with the stopping
    point `stop` ({"unit", "target"} of the budget and `STOP_SETTINGS`), or None.

    `--resume latest` on a finished run (a Slurm job preempted after it wrote run.json, while it logged to
    MLflow; a relaunch of a job array) has nothing left to do. Without this it would move the finished
    adapter aside, retrain the steps after its last state and write the adapter again, while evaluations
    may already read it. A finished run under other settings, or with another stopping point (a larger
    budget continues the run), is not this one: None, and the run goes on as before."""
    from train.run_record import RunRecord

    run_dir = Path(run_dir)
    if not all((run_dir / f).is_file() for f in FINAL_FILES):
        return None
    record = RunRecord.read(run_dir / "run.json")
    config, budget = record.config or {}, record.budget or {}
    if not all(k in config for k in RESUME_SETTINGS + STOP_SETTINGS) or "manifest_hash" not in record.extra:
        return None  # a record from before these were written: cannot tell, so the run goes on as before
    then = resume_settings(config, record.extra["manifest_hash"])
    then_stop = {"unit": budget.get("unit"), "target": budget.get("target")} | {k: config[k] for k in STOP_SETTINGS}
    return record if then == settings and then_stop == stop else None


def supersede(run_dir: Path, resume_from: Path | None) -> Path | None:
    """Move what does not belong to this run's line of training out of `run_dir`, before it writes anything.

    That is every state newer than the one resumed (all of them when the run starts fresh or resumes from
    another directory's state: a rewind, a restart with new settings), and a finished run's adapter and
    run.json (this run writes its own at the end). Left in place, `--resume latest` would later pick an
    abandoned state of a higher step, and pruning (`save_total_limit`) would delete this run's own states
    first. Returns the directory they went to (None when nothing had to move); the caller says so."""
    run_dir = Path(run_dir)
    own = resume_from is not None and Path(resume_from).resolve().parent == (run_dir / "checkpoints").resolve()
    kept = _step(Path(resume_from)) if own else -1
    moving = [p for p in valid_states(run_dir) if _step(p) > kept] + \
             [run_dir / f for f in FINAL_FILES if (run_dir / f).is_file()]
    if not moving:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = run_dir / f"{SUPERSEDED}-{stamp}"
    aside.mkdir(parents=True)
    for p in moving:
        p.rename(aside / p.name)
    return aside


def _step(state_dir: Path) -> int:
    m = _STEP.match(state_dir.name)
    return int(m.group(1)) if m else -1


def valid_states(run_dir: Path) -> list[Path]:
    """Complete states, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """The state to resume from: 'latest' (None when there is none yet) or an explicit directory."""
    if not resume:
        return None
    if resume == "latest":
        states = valid_states(run_dir)
        return states[-1] if states else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise FileNotFoundError(f"--resume {p}: not a complete training state (no {STATE_FILE})")
    return p


def _is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def trainable_aliases(model) -> list[set[str]]:
    """Every name of each trainable tensor (a tied one has several; a state holds it under one of them)."""
    groups: dict[int, set[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            groups.setdefault(id(p), set()).add(n)
    return list(groups.values())


def _bare(key: str) -> str:
    """A state key without the "module." that a DistributedDataParallel wrapper puts before every name."""
    return key.removeprefix("module.")


def trainable_only(model):
    """A save_state pre-hook (non-DeepSpeed runs): keep only the trainable tensors of the model's state.

    `model` is the unwrapped model. Accelerate hands the hook the unwrapped model's names, also under DDP;
    a "module." prefix (a DDP wrapper's own state) is tolerated all the same, and `load_state` checks
    that a state holds every trained tensor before it resumes from it."""
    names = trainable_names(model)

    def hook(models, weights, output_dir):
        for sd in weights:
            for k in [k for k in sd if _bare(k) not in names]:
                del sd[k]
    return hook


def save_state(accelerator, run_dir: Path, state: TrainingState, keep: int) -> Path:
    """Write a complete resumable state for `state.step` (all processes call this)."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{state.step}", root / f".step-{state.step}.tmp"
    # The main process makes .step-N.tmp and renames it to step-N once complete; every process writes in it.
    with atomic_dir(final, tmp_name=tmp.name) if accelerator.is_main_process else nullcontext():
        accelerator.wait_for_everyone()
        if _is_deepspeed(accelerator):
            accelerator.save_state(str(tmp), exclude_frozen_parameters=True)
        else:
            accelerator.save_state(str(tmp))  # trainable_only (registered by the trainer) filters the weights
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_json(tmp / STATE_FILE, state.to_json())  # the marker of completeness, written last
    if accelerator.is_main_process:
        for old in valid_states(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> TrainingState:
    """The trainer's bookkeeping of a state (step, consumption, data position...)."""
    f = Path(path) / STATE_FILE
    return TrainingState.from_json(json.loads(f.read_text()), where=str(f))


def load_state(accelerator, path: Path, trainable: list[set[str]] | None = None) -> None:
    """Trainable parameters, optimizer, scheduler and RNG of every process (all processes call this).
    The frozen weights are not in the state: they are already in place from the base model. Without
    DeepSpeed the load is not strict (the frozen weights are absent), so the state is first checked to
    hold every tensor of `trainable` (`trainable_aliases`): a state without them would resume the optimizer
    over initial weights."""
    if _is_deepspeed(accelerator):
        accelerator.load_state(str(path), load_module_strict=False)
        return
    if trainable:
        saved = saved_model_keys(Path(path))
        missing = sorted(min(names) for names in trainable if not names & saved)
        if missing:
            raise ConfigError(f"{path}: the saved model state lacks {len(missing)} of the {len(trainable)} trained "
                              f"tensors (first: {', '.join(missing[:3])}); it cannot be resumed")
    accelerator.load_state(str(path), strict=False)


def saved_model_keys(path: Path) -> set[str]:
    """Names in a non-DeepSpeed state's model file (accelerate's model.safetensors, or pytorch_model.bin)."""
    f = path / "model.safetensors"
    if f.is_file():
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as sf:
            return {_bare(k) for k in sf.keys()}
    f = path / "pytorch_model.bin"
    if f.is_file():
        import torch

        return {_bare(k) for k in torch.load(f, map_location="cpu", weights_only=True)}
    return set()


def trainable_state_dict(accelerator, model) -> dict:
    """{name: CPU tensor} of the trainable parameters, on the main process ({} elsewhere). Every
    process must call it: under ZeRO-3 the partitions are gathered a chunk at a time."""
    unwrapped = accelerator.unwrap_model(model)
    named = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    zero3 = _is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3
    out = {}
    for i in range(0, len(named), GATHER_CHUNK):
        chunk = named[i:i + GATHER_CHUNK]
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in chunk], modifier_rank=None):
                if accelerator.is_main_process:
                    out.update({n: p.detach().cpu().clone() for n, p in chunk})
        elif accelerator.is_main_process:
            out.update({n: p.detach().cpu().clone() for n, p in chunk})
    return out
