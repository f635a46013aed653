"""Optimizer and learning-rate schedule of the LoRA trainer.

The schedule's length can be unknown when the run starts (a budget in visual tokens, say): the lambda
reads it from a mutable `schedule` dict that the trainer fills after the first step, from how much
that step consumed. Warmup needs no length, so nothing is lost meanwhile.
"""

from __future__ import annotations

import math

import torch


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))


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
