"""Optimizer and learning-rate schedule of the LoRA trainer.

Parameter groups: the projector (when trained) gets `projector_lr`, everything else trainable (LoRA
matrices, embeddings, a vision tower when unfrozen) gets `learning_rate`. One warmup + decay lambda
scales every group. The schedule's length is decided before the first step from the budget
(`train.budget`); the lambda reads it from the `schedule` dict so that a resumed run can restore it.
"""

from __future__ import annotations

import math

import torch


def param_groups(model, cfg, projector: str) -> list[dict]:
    """Trainable parameters split into the projector's group and the rest (empty groups left out)."""
    mark = "." + projector.split(".")[-1] + "."
    groups = {"lora": [], "projector": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["projector" if mark in f".{name}." else "lora"].append(p)
    lrs = {"lora": cfg.learning_rate, "projector": cfg.projector_lr}
    return [{"name": k, "params": v, "lr": lrs[k]} for k, v in groups.items() if v]


def make_optimizer(model, cfg, projector: str = "multi_modal_projector") -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg, projector), lr=cfg.learning_rate,
                             weight_decay=cfg.weight_decay, betas=(0.9, 0.999))


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based count of completed steps)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, cfg, schedule: dict):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, schedule["total"], cfg.lr_scheduler))
