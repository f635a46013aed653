"""`--dry_run`: plan a run before spending GPU hours on it.

    accelerate launch train/lora.py --recipe R --dry_run true
    python train/lora.py --recipe R --dry_run true --gpus 8 --nodes 2 --gpu_memory_gb 80   # a cluster, from a laptop

`dry_run(cfg)` reads the base model's config.json only (the model is built on the meta device: no
weights are read or allocated), the recipe's manifest and the first samples of its shards, prints the
plan (on rank 0 only, when launched with several processes) and returns it as a JSON-serialisable
dict. It creates no Accelerator, no process group and no files. For a 7B model it stays under ~1 GB
of RAM and ~10 s, imports included.

What is printed, and how each number is obtained
================================================

Model
    `family` from config.json's model_type (`train.families.detect_family`). `parameters`: the
    unique parameters of the model built from its config on the meta device. `trainable`: the same
    model wrapped by peft with the trainer's own LoraConfig (`train.models.lora_config_of`: lora_r,
    lora_targets, freeze_projector, freeze_vision_tower, train_embeddings), split into LoRA
    matrices, projector, vision tower and embeddings. The language model's context length
    (`train.families.context_length`: `max_position_embeddings`, stretched by a RoPE scaling), hidden size, layers, heads and vocabulary come from the
    config.

Target, precision, DeepSpeed
    `--gpus N` (> 0) plans for N CUDA GPUs per node with bf16 support, whatever this machine has
    (the assumption is printed); `--gpus 0` uses what torch sees (CUDA devices, else one CPU
    process per node, or as many as the launcher started). world = gpus per node x nodes.
    Precision, attention kernel and the filled DeepSpeed JSON come from `train.runtime`
    (`resolve_precision`, `resolve_attention`, `base_ds_config`, `fill_ds_config`), the functions
    the trainer itself uses.

Budget
    samples per optimizer step = per_device_batch_size x gradient_accumulation_steps x world.
    max_samples: steps = ceil(max_samples / per step). match_to: the reference run's
    `consumed[match_by]` (run.json, or MLflow for a run id) divided by this data's mean of that unit
    per sample, decided as the trainer decides it (`train.budget`): the manifest's `counts` when the
    build counted that unit with this very model's processor, else the mean over the first 64
    samples of the shards (the trainer's prescan; the plan tokenizes the same samples), which is
    said. max_steps caps the steps (and then samples = steps x per step). passes = samples / the
    manifest's sample count. The lr schedule length is `train.budget.plan_schedule`'s.

Sequence lengths
    Up to the first 256 samples of the shards, in manifest order (fewer if tokenizing takes over
    ~12 s), rendered and tokenized with the base model's own processor through `train.chat.encode`,
    as the trainer's collator does. Printed: p50/p90/p99/max of the total length (text + visual
    tokens), and the shares over `max_length` (0: the context) and over the context. Missing shards
    are reported and this part is skipped. Visual and text tokens are counted as the manifest counts
    them (`data_recipes.tokens.split_tokens`); the mean visual tokens per sample size the trainable
    vision tower's activations (Memory).

Memory per GPU
    Formulas and their sources in `train/memory.py` (`python -c 'import train.memory; help(train.memory)'`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tarfile
import time
import warnings
from pathlib import Path

from train.families import context_length
from train.memory import configured_stage, estimate_memory

SAMPLE_LIMIT = 256          # samples tokenized for the sequence-length statistics
TOKENIZE_SECONDS = 12.0     # ...or fewer, when a real processor on large frames is slow
ENCODE_BATCH = 8


class PlanError(RuntimeError):
    """Nothing sensible can be planned (no model config to read)."""


# --- model ---------------------------------------------------------------------------------------------
def _lm_shape(config) -> dict:
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {"hidden_size": text.hidden_size, "layers": text.num_hidden_layers, "heads": heads, "kv_heads": kv,
            "head_dim": head_dim, "intermediate_size": text.intermediate_size, "vocab_size": text.vocab_size,
            "context": context_length(config)}


def _vision_shape(config, family_name: str) -> dict:
    """Width, depth and patches-per-visual-token of the vision tower (for a trainable tower's activations)."""
    v = config.vision_config
    if family_name == "qwen2_vl":  # Qwen2-VL's vision `hidden_size` is the merger's output width
        width, depth = v.embed_dim, v.depth
    else:
        width, depth = v.hidden_size, getattr(v, "num_hidden_layers", None) or getattr(v, "depth", 0)
    if family_name.startswith("qwen2"):
        merge = v.spatial_merge_size ** 2
    elif family_name == "internvl":
        merge = round(1 / config.downsample_ratio ** 2)
    else:
        merge = 1
    return {"hidden_size": width, "layers": depth, "patches_per_visual_token": merge}


def _wrap(model, family, cfg):
    """The model wrapped with the trainer's own LoraConfig (`train.models.lora_config_of`)."""
    from peft import get_peft_model

    from train.models import lora_config_of

    try:
        config = lora_config_of(family, cfg)
    except ValueError as e:  # e.g. lora_targets is not a valid regex
        raise PlanError(str(e)) from None
    with warnings.catch_warnings():  # peft asks the model about checkpointing through deprecated names
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def _category(name: str, family) -> str:
    if "lora_" in name:
        return "lora"
    proj, tower = family.projector.split(".")[-1], family.vision_tower.split(".")[-1]
    if f".{proj}." in f".{name}":
        return "projector"
    if f".{tower}." in f".{name}":
        return "vision_tower"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings"
    return "other"


def inspect_model(model_dir: Path, cfg) -> dict:
    """Parameter counts and shapes of the model in `model_dir`, built on the meta device."""
    import torch
    import transformers

    from train.families import detect_family

    family = detect_family(model_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = family.model_cls()(config)
    params = list(model.parameters())  # unique: tied weights are listed once
    total = sum(p.numel() for p in params)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    lm = _lm_shape(config)

    peft_model = _wrap(model, family, cfg)
    breakdown = dict.fromkeys(("lora", "projector", "vision_tower", "embeddings", "other"), 0)
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            breakdown[_category(name, family)] += p.numel()
    lm_prefix = family.language_model + "."
    lora_in, lora_modules = 0, 0
    for name, m in peft_model.named_modules():
        if hasattr(m, "lora_A") and hasattr(m, "in_features") and name.removeprefix("base_model.model.").startswith(lm_prefix):
            lora_modules += 1
            lora_in += m.in_features if cfg.lora_dropout > 0 else 0  # dropout 0: peft passes the input through
    return {
        "dir": str(model_dir), "family": family.name, "model_class": family.model_class,
        "parameters": total, "trainable": sum(breakdown.values()), "trainable_breakdown": breakdown,
        "largest_layer_parameters": largest, "lora_modules": lora_modules,
        "lora_input_width_per_layer": lora_in / max(1, lm["layers"]),
        "language_model": lm, "vision": _vision_shape(config, family.name),
    }


# --- data ----------------------------------------------------------------------------------------------
def _first_samples(shard_paths: list[Path], limit: int):
    """(key, members) of the first `limit` samples, read from the tars in order."""
    out = []
    for path in shard_paths:
        with tarfile.open(path) as tar:
            key, members = None, {}
            for info in tar:
                if not info.isfile():
                    continue
                k, _, ext = info.name.partition(".")
                if k != key:
                    if key is not None:
                        out.append((key, members))
                        if len(out) >= limit:
                            return out
                    key, members = k, {}
                members[ext] = tar.extractfile(info).read()
            if key is not None:
                out.append((key, members))
                if len(out) >= limit:
                    return out
    return out


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile."""
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))]


def sequence_stats(shards_dir: Path, manifest: dict, model_dir: Path, cfg, cap: int, context: int) -> dict:
    """Token lengths of the first samples, tokenized with the model's processor as the collator does."""
    from train.budget import PRESCAN_SAMPLES
    from train.data import encode_samples, resolve_frames
    from train.families import detect_family

    video_input, max_pixels = resolve_frames(cfg.video_input, cfg.max_pixels, manifest)
    processor = detect_family(model_dir).load_processor(model_dir, trust_remote_code=cfg.trust_remote_code)
    paths = [shards_dir / s["name"] for s in manifest["shards"]]
    raw = _first_samples([p for p in paths if p.exists()], SAMPLE_LIMIT)
    lengths, visual, text, supervised, errors = [], [], [], [], []
    t0, stopped_early = time.perf_counter(), False
    for i in range(0, len(raw), ENCODE_BATCH):
        if time.perf_counter() - t0 > TOKENIZE_SECONDS:
            stopped_early = True
            break
        chunk = [{**members, "__key__": key} for key, members in raw[i:i + ENCODE_BATCH]]
        try:
            groups = [encode_samples(processor, chunk, video_input, max_pixels)[0]] if chunk else []
        except Exception:  # one bad sample spoils the batch: encode one by one to count only it
            groups = []
            for sample in chunk:
                try:
                    groups.append(encode_samples(processor, [sample], video_input, max_pixels)[0])
                except Exception as e:  # a bad sample is counted, as the trainer counts it
                    errors.append(f"{sample['__key__']}: {type(e).__name__}: {e}"[:200])
        for enc in groups:
            lengths += enc.inputs["attention_mask"].sum(1).tolist()
            visual += enc.visual_tokens
            text += enc.text_tokens
            supervised += enc.supervised_tokens
    n = len(lengths)
    s = sorted(lengths)
    k = min(n, PRESCAN_SAMPLES)

    def mean(v):
        return sum(v) / len(v) if v else 0.0

    return {
        "sampled": n, "read": len(raw), "stopped_early": stopped_early, "errors": len(errors),
        "error_examples": errors[:3], "seconds": round(time.perf_counter() - t0, 2),
        "length": {"p50": _percentile(s, 50), "p90": _percentile(s, 90), "p99": _percentile(s, 99),
                   "max": s[-1] if s else 0, "mean": round(mean(s), 1)},
        "over_max_length": sum(x > cap for x in s) / n if n else 0.0,
        "over_context": sum(x > context for x in s) / n if n and context else 0.0,
        "video_input": video_input, "max_pixels": max_pixels,
        "per_sample": {"visual_tokens": mean(visual), "text_tokens": mean(text),
                       "supervised_tokens": mean(supervised), "samples": 1.0},
        # The trainer's schedule prescan reads the same first samples; its mean is what the budget uses.
        "prescan": {"samples": k, "visual_tokens": mean(visual[:k]), "text_tokens": mean(text[:k]),
                    "supervised_tokens": mean(supervised[:k])},
    }


# --- budget --------------------------------------------------------------------------------------------
def plan_budget(cfg, world: int, manifest: dict | None, seqs: dict | None, model_dir: Path,
                notes: list[str], problems: list[str]) -> dict:
    """Steps, samples and passes of the budget, decided with the trainer's own `train.budget`."""
    from train import budget as budgets
    from train.data import resolve_frames

    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world
    out = {"per_step": per_step, "world": world, "unit": None, "target": None, "reference": None,
           "per_sample": None, "per_sample_source": None, "samples": None, "steps": None, "passes": None,
           "limited_by": None, "schedule_steps": None, "schedule_source": None}
    try:
        uri = cfg.tracking_uri
        if cfg.match_to and not uri and not (Path(cfg.match_to) / "run.json").exists():
            from train.tracking import default_tracking_uri

            uri = default_tracking_uri()
        b = budgets.resolve_budget(cfg, uri)
    except Exception as e:  # a missing reference run is the plan's to report, not to crash on
        problems.append(str(e) if "match_to" in str(e) else f"match_to {cfg.match_to}: {e}")
        b = budgets.Budget(cfg.match_by if cfg.match_to else None)
    out.update(unit=b.unit, target=b.target, reference=b.reference)

    def per_sample() -> tuple[float, str]:
        """The trainer's mean of the unit per sample: the manifest's count for this model, else its prescan."""
        mean = None if not manifest else budgets.per_sample_from_manifest(
            manifest, b.unit, model_dir, *resolve_frames(cfg.video_input, cfg.max_pixels, manifest))
        if mean is not None:
            return mean, "manifest counts"
        if seqs and seqs["prescan"]["samples"]:
            n = seqs["prescan"]["samples"]
            notes.append(f"{b.unit} per sample estimated from the first {n} samples of the shards (the trainer's "
                         f"prescan: the manifest has no {b.unit} count for this model)")
            return seqs["prescan"][b.unit], f"prescan of the first {n} samples"
        raise ValueError(f"no {b.unit} count in the manifest for this model, and no shards to tokenize")

    samples_needed = None
    given = "match_to" if cfg.match_to else "budget" if cfg.budget else None
    out["given"] = given
    if b.unit == "samples":
        out.update(per_sample=1.0, per_sample_source="samples",
                   limited_by=f"{given} (samples)" if given else "max_samples")
        samples_needed = b.target
    elif b.unit is not None and b.target is not None:
        try:
            mean, how = per_sample()
            out.update(per_sample=mean, per_sample_source=how, limited_by=f"{given} ({b.unit})")
            samples_needed = math.ceil(b.target / mean) if mean else None
        except ValueError as e:
            problems.append(f"budget in {b.unit}: {e}")
    if b.unit is not None and b.target is not None and (b.unit == "samples" or out["per_sample"]):
        mean = out["per_sample"]
        budgets.plan_schedule(b, cfg, per_step, lambda: (mean, out["per_sample_source"]))
        out.update(schedule_steps=b.schedule_steps, schedule_source=b.schedule_source)
    elif cfg.schedule_steps or cfg.max_steps:
        out.update(schedule_steps=cfg.schedule_steps or cfg.max_steps,
                   schedule_source="schedule_steps" if cfg.schedule_steps else "max_steps")
    steps = math.ceil(samples_needed / per_step) if samples_needed else None
    samples = samples_needed
    if cfg.max_steps and (steps is None or cfg.max_steps < steps):
        steps, samples, out["limited_by"] = cfg.max_steps, cfg.max_steps * per_step, "max_steps"
    out["steps"], out["samples"] = steps, samples
    data_samples = (manifest or {}).get("counts", {}).get("samples")
    if samples and data_samples:
        out["passes"] = samples / data_samples
    return out


# --- the plan ------------------------------------------------------------------------------------------
def _target(cfg, environ) -> dict:
    import torch

    local_cuda = torch.cuda.is_available()
    if cfg.gpus > 0:
        gpus, cuda, bf16 = cfg.gpus, True, True
        assumed = f"planning for {cfg.gpus} CUDA GPU(s) per node with bf16 support (--gpus), whatever this machine has"
    elif local_cuda:
        gpus, cuda, bf16 = torch.cuda.device_count(), True, None
        assumed = f"this machine's {gpus} CUDA GPU(s)"
    else:
        gpus, cuda, bf16 = 0, False, False
        assumed = "no GPU: this machine's CPU (pass --gpus N to plan for a GPU cluster)"
    if gpus:
        per_node = gpus
    else:  # CPU processes: as many per node as the launcher started (accelerate sets LOCAL_WORLD_SIZE)
        per_node = int(environ.get("LOCAL_WORLD_SIZE") or environ.get("WORLD_SIZE") or 1)
    nodes = cfg.nodes
    return {"cuda": cuda, "bf16": bf16, "gpus_per_node": per_node, "nodes": nodes, "world": per_node * nodes,
            "gpu_memory_gb": cfg.gpu_memory_gb, "assumption": assumed}


def make_plan(cfg, environ=os.environ) -> dict:
    """The plan of a TrainConfig as a dict (see the module docstring); prints nothing."""
    from data_recipes.build import read_manifest, stale
    from data_recipes.recipe import load_recipe
    from train import runtime
    from train.models import ModelNotFound, resolve_base_model

    t0 = time.perf_counter()
    notes, problems = [], []
    recipe = load_recipe(cfg.recipe)
    try:
        model_dir = resolve_base_model(cfg.base_model, build=False)
    except ModelNotFound as e:
        raise PlanError(str(e)) from None
    if not (Path(model_dir) / "config.json").exists():
        hint = (f" (a tiny model is built by the first real run, or now with python -m train.toy.tiny --family "
                f"{cfg.base_model.split(':', 1)[1]} --out {model_dir})" if cfg.base_model.startswith("tiny") else "")
        raise PlanError(f"base model {cfg.base_model!r}: no config.json in {model_dir}{hint}")
    model = inspect_model(Path(model_dir), cfg)
    lm = model["language_model"]

    target = _target(cfg, environ)
    try:
        precision = runtime.resolve_precision(cfg.mixed_precision, cuda=target["cuda"], bf16=target["bf16"])
    except runtime.RuntimeConfigError as e:
        problems.append(f"mixed_precision: {e}")
        precision = "no"
    try:
        attention = runtime.resolve_attention(cfg.attn_implementation, precision, cuda=target["cuda"])
    except runtime.RuntimeConfigError as e:
        attention = cfg.attn_implementation
        if cfg.gpus > 0 and attention == "flash_attention_2" and precision in ("bf16", "fp16"):
            notes.append("flash_attention_2 is assumed installed on the cluster (flash-attn is not installed here)")
        else:
            problems.append(f"attn_implementation: {e}")
    if cfg.gpus > 0 and cfg.attn_implementation == "auto" and attention == "sdpa":
        notes.append("attention resolved on this machine (no flash-attn here); a cluster with flash-attn uses "
                     "flash_attention_2: both keep no s^2 scores, the memory estimate is the same")
    ds, ds_source = None, ""
    try:
        base, ds_source = runtime.base_ds_config(cfg, environ)
        ds = runtime.fill_ds_config(base, cfg, precision, lm["hidden_size"]) if base is not None else None
    except (runtime.RuntimeConfigError, FileNotFoundError) as e:
        problems.append(f"ds_config: {e}")

    shards_dir = Path(cfg.shards_root) / recipe.name
    manifest, seqs = None, None
    cap = cfg.max_length or lm["context"]
    data = {"shards": str(shards_dir), "built": False, "max_length": cap}
    try:
        manifest = read_manifest(shards_dir)
        data.update(built=True, samples=manifest["counts"]["samples"], shards_count=len(manifest["shards"]),
                    counts=manifest["counts"], tokens_model=manifest.get("tokens_model"))
        if why := stale(manifest, recipe):
            notes.append(f"the shards in {shards_dir} are stale ({why}): the run would rebuild them")
    except Exception as e:
        data["reason"] = str(e)
        notes.append(f"no shards in {shards_dir}: sequence lengths skipped (a real run builds them first; "
                     f"or python -m data_recipes build {recipe.name})")
    if manifest is not None:
        missing = [s["name"] for s in manifest["shards"] if not (shards_dir / s["name"]).exists()]
        if missing:
            notes.append(f"{len(missing)} shard file(s) listed in the manifest are missing, e.g. {missing[0]}")
        try:
            seqs = sequence_stats(shards_dir, manifest, Path(model_dir), cfg, cap, lm["context"])
            data["sequence"] = seqs
            if seqs["stopped_early"]:
                notes.append(f"tokenized {seqs['sampled']} samples (stopped after {TOKENIZE_SECONDS:.0f} s)")
            if seqs["over_max_length"] > 0:
                over = seqs["over_max_length"] > cfg.max_dropped_fraction
                msg = (f"{seqs['over_max_length']:.1%} of the sampled samples are longer than max_length {cap} "
                       "tokens: the trainer drops them" + (f", and stops past max_dropped_fraction "
                                                           f"{cfg.max_dropped_fraction:g}" if over else ""))
                (problems if over else notes).append(msg)
            if seqs["errors"]:
                notes.append(f"{seqs['errors']} sampled samples could not be encoded, e.g. {seqs['error_examples'][0]}")
        except Exception as e:
            notes.append(f"sequence lengths skipped: could not tokenize the shards ({type(e).__name__}: {e})")

    budget = plan_budget(cfg, target["world"], manifest, seqs, Path(model_dir), notes, problems)

    if seqs and seqs["sampled"]:
        seq, seq_source = min(seqs["length"]["max"], cap), "the longest sampled sample"
        if seqs["length"]["max"] > cap:
            seq_source += f", capped at max_length {cap}"
    else:
        seq, seq_source = cap, "max_length" if cfg.max_length else "the context length"
    vision_trainable = not cfg.freeze_vision_tower
    per_vis = seqs["per_sample"]["visual_tokens"] if seqs else 0.0
    if vision_trainable and not seqs:
        notes.append("the trainable vision tower's activations are not counted (no sampled visual tokens)")
    memory = estimate_memory(model, precision=precision, gpus_per_node=target["gpus_per_node"], nodes=target["nodes"],
                             seq=seq, micro_batch=cfg.per_device_batch_size,
                             checkpointing=cfg.gradient_checkpointing, attention=attention,
                             gpu_memory_gb=cfg.gpu_memory_gb, visual_tokens_per_sample=per_vis,
                             vision_trainable=vision_trainable)
    memory["seq_source"] = seq_source
    memory["configured"] = configured_stage(ds)
    if memory["configured"] == "none":
        notes.append("ds_config none: no ZeRO row applies exactly; without sharding the ZeRO-2 row with 1 GPU is "
                     "the closest estimate")
    elif ds and int(ds.get("zero_optimization", {}).get("stage", 0)) == 1:
        notes.append("ZeRO-1 is planned as ZeRO-2 (its gradients are not sharded: slightly more memory)")
    row = memory["stages"].get(memory["configured"])
    if row and not row["fits"]:
        problems.append(f"{memory['configured']}: {row['total_gb']:.1f} GiB per GPU at micro-batch "
                        f"{cfg.per_device_batch_size} exceeds {memory['usable_gb']:.1f} GiB usable "
                        f"(largest that fits: {row['max_micro_batch']})")
    if model["lora_modules"] == 0:
        problems.append(f"lora_targets {cfg.lora_targets!r} matches no module of the language model")
    return {
        "recipe": recipe.name, "model": model, "target": target, "precision": precision, "attention": attention,
        "deepspeed": {"source": ds_source or "none", "config": ds}, "budget": budget, "data": data,
        "micro_batch": cfg.per_device_batch_size, "accumulation": cfg.gradient_accumulation_steps,
        "memory": memory, "notes": notes, "problems": problems, "seconds": round(time.perf_counter() - t0, 2),
    }


# --- printing ------------------------------------------------------------------------------------------
def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}"


def _b(x: int) -> str:
    return f"{x / 1e9:.2f} B" if x >= 1e8 else f"{x / 1e6:.2f} M"


def format_plan(p: dict) -> str:
    m, lm, t, b, d, mem = p["model"], p["model"]["language_model"], p["target"], p["budget"], p["data"], p["memory"]
    bd = m["trainable_breakdown"]
    lines = [f"== dry run of recipe {p['recipe']}: a plan from the model's config and the manifest "
             "(no weights loaded, nothing trained) ==", "",
             f"model       {m['dir']}  family {m['family']} ({m['model_class']})",
             f"  parameters  {_n(m['parameters'])} ({_b(m['parameters'])}); trainable {_n(m['trainable'])} "
             f"({100 * m['trainable'] / m['parameters']:.2f}%): lora {_n(bd['lora'])} in {m['lora_modules']} modules, "
             f"projector {_n(bd['projector'])}, vision tower {_n(bd['vision_tower'])}, "
             f"embeddings {_n(bd['embeddings'])}" + (f", other {_n(bd['other'])}" if bd["other"] else ""),
             f"  language    hidden {lm['hidden_size']}, {lm['layers']} layers, {lm['heads']} heads "
             f"({lm['kv_heads']} kv), MLP {lm['intermediate_size']}, vocab {_n(lm['vocab_size'])}, "
             f"context {_n(lm['context'])}", "",
             f"target      {t['gpus_per_node']} x {t['nodes']} node(s) = world {t['world']}, "
             f"{t['gpu_memory_gb']:g} GiB per GPU ({t['assumption']})",
             f"  precision {p['precision']}, attention {p['attention']}, DeepSpeed {p['deepspeed']['source']}"]
    if p["deepspeed"]["config"] is not None:
        lines += ["  " + x for x in json.dumps(p["deepspeed"]["config"], indent=1).splitlines()]
    lines += ["", f"budget      {_n(b['per_step'])} samples per optimizer step ({p['micro_batch']} per micro-batch x "
              f"{p['accumulation']} accumulation x world {b['world']})"]
    if b["unit"] == "samples" and not b.get("given"):
        lines.append(f"  max_samples {_n(b['target'])}")
    elif b["unit"] and b["target"] is not None:
        ref = (b.get("reference") or {}).get("checkpoint") or (b.get("reference") or {}).get("mlflow_run_id") or ""
        what = f"  {'budget' if b.get('given') == 'budget' else f'match_to {ref}'}: {_n(b['target'])} {b['unit']}"
        if b["per_sample"] and b["unit"] != "samples":
            what += f" / {b['per_sample']:.1f} per sample [{b['per_sample_source']}]"
        lines.append(what)
    if b["steps"] is not None:
        passes = f", {b['passes']:.2f} passes over the {_n(d.get('samples', 0))} samples" if b["passes"] else ""
        lines.append(f"  -> {_n(b['steps'])} optimizer steps, {_n(b['samples'])} samples{passes}; "
                     f"stops at {b['limited_by']}")
    else:
        lines.append("  -> steps unknown (see problems)")
    if b["schedule_steps"]:
        lines.append(f"  lr schedule over {_n(b['schedule_steps'])} steps ({b['schedule_source']})")
    lines.append("")
    if d["built"]:
        lines.append(f"data        {d['shards']}: {_n(d['samples'])} samples in {d['shards_count']} shard(s)"
                     + (f"; tokens counted with {d['tokens_model']}" if d.get("tokens_model") else ""))
        s = d.get("sequence")
        if s and s["sampled"]:
            L, ps = s["length"], s["per_sample"]
            lines += [f"  tokens per sample over the first {s['sampled']} (of {_n(d['samples'])}): p50 {L['p50']}, "
                      f"p90 {L['p90']}, p99 {L['p99']}, max {L['max']}  (visual {ps['visual_tokens']:.0f}, "
                      f"text {ps['text_tokens']:.0f}, supervised {ps['supervised_tokens']:.0f} on average)",
                      f"  over max_length ({_n(d['max_length'])}): {100 * s['over_max_length']:.1f}%   "
                      f"over the context ({_n(lm['context'])}): {100 * s['over_context']:.1f}%"]
    else:
        lines.append(f"data        no shards at {d['shards']}: sequence lengths skipped")
    lines += ["", f"memory per GPU in GiB at micro-batch {mem['micro_batch']}, {mem['seq']} tokens ({mem['seq_source']}), "
              f"checkpointing {'on' if mem['gradient_checkpointing'] else 'off'}, {mem['attention']} attention; "
              f"usable {mem['usable_gb']:.1f} of {mem['gpu_memory_gb']:g}",
              f"  {'stage':<15}{'weights':>9}{'grad+opt':>10}{'gather':>8}{'activ.':>9}{'logits':>8}{'total':>9}"
              f"{'fits':>6}{'max micro-batch':>17}"]
    for name, r in mem["stages"].items():
        label = name + (" *" if name == mem["configured"] else "")
        lines.append(f"  {label:<15}{r['weights_gb']:>9.2f}{r['grads_optim_gb']:>10.2f}{r['gather_gb']:>8.2f}"
                     f"{r['activations_gb']:>9.2f}{r['logits_gb']:>8.2f}{r['total_gb']:>9.2f}"
                     f"{'yes' if r['fits'] else 'NO':>6}{r['max_micro_batch']:>17}")
    off = mem["stages"]["zero3_offload"]["cpu_per_node_gb"]
    lines.append(f"  (* configured; zero3_offload needs ~{off:.0f} GiB of CPU memory per node; "
                 "formulas: python -c 'import train.memory; help(train.memory)')")
    for title, items in (("notes", p["notes"]), ("problems", p["problems"])):
        if items:
            lines += ["", f"{title}:"] + [f"  - {x}" for x in items]
    return "\n".join(lines) + "\n"


def dry_run(cfg, out=None) -> dict:
    """Print the plan of `cfg` to `out` (default: stdout) and return it (JSON-serialisable)."""
    out = sys.stdout if out is None else out
    plan = make_plan(cfg)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under `accelerate launch -n N`, one copy of the plan
        out.write(format_plan(plan))
        out.flush()
    return plan
