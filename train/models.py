"""Finding the base model a recipe names, and wrapping it for LoRA.

A base model is named as
- a local directory (what users at scale do: `--base_model /data/models/llava-v1.6-mistral-7b-hf`);
- an HF-style id such as `llava-hf/llava-v1.6-mistral-7b-hf`, looked up under `$MODEL_ROOT` and
  `models/` (nothing is downloaded);
- `tiny:FAMILY`, a random-init tiny model built on demand under `models/`;
- `tiny-pretrained:FAMILY`, the same after a short base stage (`train.toy.pretrain`: single images, still
  clips and text-only reading items), so that it sees and reads before any LoRA run; one made by an
  older base stage is refused rather than silently reused.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from peft import LoraConfig, get_peft_model

from train.families import Family

MODELS_ROOT = Path(os.environ.get("BETWEENFRAMES_MODELS", "models"))


class ModelNotFound(FileNotFoundError):
    pass


def resolve_base_model(spec: str, build: bool = True) -> Path:
    """The local directory of `spec`, building tiny models when asked and `build` is True."""
    if not spec:
        raise ModelNotFound("no base model: set base_model in the recipe's train section, --config or --base_model")
    for prefix in ("tiny-pretrained:", "tiny:"):
        if spec.startswith(prefix):
            family = spec[len(prefix):]
            out = MODELS_ROOT / (f"tiny-{family}" + ("-pretrained" if prefix == "tiny-pretrained:" else ""))
            if (out / "config.json").exists() or not build:
                if prefix == "tiny-pretrained:" and (out / "config.json").exists():
                    from train.toy.pretrain import is_current

                    if not is_current(out):  # an older base stage's model: stale tokenizer and data
                        raise ModelNotFound(
                            f"{out} was made by an older base stage (its tiny.json does not match the current "
                            f"design): delete it, or rebuild it with python -m train.toy.pretrain --family {family} "
                            f"--out {out}")
                return out
            with _unpartitioned():
                if prefix == "tiny:":
                    from train.toy.tiny import build_tiny

                    return build_tiny(family, out)
                from train.toy.pretrain import pretrain_tiny

                return pretrain_tiny(family, out)
    candidates = [Path(spec).expanduser()]
    if os.environ.get("MODEL_ROOT"):
        root = Path(os.environ["MODEL_ROOT"])
        candidates += [root / spec, root / Path(spec).name]
    candidates += [MODELS_ROOT / spec, MODELS_ROOT / Path(spec).name]
    for c in candidates:
        if (c / "config.json").exists():
            return c
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    hint = "" if os.environ.get("MODEL_ROOT") else " ($MODEL_ROOT is not set)"
    raise ModelNotFound(f"base model '{spec}' not found; looked in: {looked}{hint}. "
                        f"Nothing is downloaded: put the checkpoint in a local directory and name it.")


@contextmanager
def _unpartitioned():
    """Build a tiny model as plain torch modules, even inside a ZeRO-3 job.

    Under ZeRO-3, accelerate registers its DeepSpeed config with transformers, and every model
    constructed while it is registered is partitioned across the ranks by `deepspeed.zero.Init`: a
    collective that all ranks must join. The trainer builds a missing tiny model on the main process
    only while the other ranks wait at a barrier, so a partitioned build would wait for them forever.
    The registration is lifted while building and restored after."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers keeps no public getter of the object
    registered = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            hf_deepspeed.set_hf_deepspeed_config(registered)


LM_MLP = ("gate_proj", "up_proj", "down_proj")
LM_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def target_regex(family: Family, targets: str) -> str:
    """peft `target_modules` for a `lora_targets` setting: attention | all_linear | a regex."""
    lm = family.language_model.replace(".", r"\.")
    if targets in ("", "attention"):
        return rf"^{lm}\.layers\.\d+\.self_attn\.({'|'.join(LM_ATTENTION)})$"
    if targets == "all_linear":
        return rf"^{lm}\.layers\.\d+\.(self_attn\.({'|'.join(LM_ATTENTION)})|mlp\.({'|'.join(LM_MLP)}))$"
    try:
        re.compile(targets)
    except re.error as e:
        raise ValueError(f"lora_targets {targets!r}: not attention, all_linear or a valid regex ({e})") from None
    return targets


def lora_config(family: Family, *, r: int, alpha: int, dropout: float, targets: str = "attention",
                freeze_projector: bool = False, freeze_vision_tower: bool = True,
                train_embeddings: bool = False) -> LoraConfig:
    """LoRA on the language model; projector / vision tower / embeddings trained fully unless frozen."""
    full = []
    # Qwen's projector (visual.merger) lies inside its vision tower: a trained tower already holds it, and
    # naming both would wrap a copy of the merger inside the tower's copy
    inside_tower = family.projector.startswith(family.vision_tower + ".")
    if not freeze_projector and not (inside_tower and not freeze_vision_tower):
        full.append(family.projector.split(".")[-1])
    if not freeze_vision_tower:
        full.append(family.vision_tower.split(".")[-1])
    if train_embeddings:
        full += ["embed_tokens", "lm_head"]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(family, targets),
                      modules_to_save=full or None, bias="none")


def lora_config_of(family: Family, cfg) -> LoraConfig:
    """The LoraConfig a TrainConfig asks for."""
    return lora_config(family, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       targets=cfg.lora_targets, freeze_projector=cfg.freeze_projector,
                       freeze_vision_tower=cfg.freeze_vision_tower, train_embeddings=cfg.train_embeddings)


def wrap_lora(model, family: Family, cfg, *, gradient_checkpointing: bool | None = None) -> object:
    """The peft model for a TrainConfig; everything outside the adapter stays frozen.

    Gradient checkpointing is non-reentrant: it recomputes into the LoRA parameters whether or not a
    layer's input requires grad (the reentrant variant drops their gradients unless it does). So the
    input embeddings are not made to require grad: transformers (when checkpointing is enabled) and peft
    (when it wraps a checkpointed model) hook every sub-model's input embeddings for that, the frozen
    vision tower's patch embedding too, and each step then backpropagated through the whole tower (and
    kept its layers' inputs) for nothing. Their hooks are taken off again.
    """
    checkpointing = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with recompute
    peft_model = get_peft_model(model, lora_config_of(family, cfg))  # peft refuses targets that match nothing
    for module in peft_model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "").startswith("make_inputs_require_grad"):  # transformers' and peft's
                del module._forward_hooks[key]
        if getattr(module, "_require_grads_hooks", None):
            module._require_grads_hooks = []
    return peft_model
