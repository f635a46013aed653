"""Finding the base model a recipe names, and wrapping it for LoRA.

A base model is named as
- a local directory (what users at scale do: `--base_model /data/models/llava-v1.6-mistral-7b-hf`);
- an HF-style id such as `llava-hf/llava-v1.6-mistral-7b-hf`, looked up under `$MODEL_ROOT` and
  `models/` (nothing is downloaded);
- `tiny:FAMILY`, a random-init tiny model built on demand under `models/`;
- `tiny-pretrained:FAMILY`, the same after a short base stage on generated static data
  (`train.pretrain`), so that it is a working "image model" before any LoRA run.
"""

from __future__ import annotations

import os
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
                return out
            if prefix == "tiny:":
                from train.tiny import build_tiny

                return build_tiny(family, out)
            from train.pretrain import pretrain_tiny

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


def lora_config(family: Family, *, r: int, alpha: int, dropout: float, targets: str = "",
                train_projector: bool = True, train_vision_tower: bool = False,
                train_embeddings: bool = False) -> LoraConfig:
    """LoRA on the language model's attention; projector / vision tower / embeddings fully trained if asked."""
    full = []
    if train_projector:
        full.append(family.projector.split(".")[-1])
    if train_vision_tower:
        full.append(family.vision_tower.split(".")[-1])
    if train_embeddings:
        full += ["embed_tokens", "lm_head"]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or family.lora_target_regex,
                      modules_to_save=full or None, bias="none")


def wrap_lora(model, family: Family, cfg) -> object:
    """The peft model for a TrainConfig; everything outside the adapter stays frozen."""
    config = lora_config(family, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         targets=cfg.lora_targets, train_projector=cfg.train_projector,
                         train_vision_tower=cfg.train_vision_tower, train_embeddings=cfg.train_embeddings)
    return get_peft_model(model, config)
