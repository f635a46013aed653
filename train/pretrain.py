"""The base stage of the embedded default: make a tiny random-init model a working "image model".

    python -m train.pretrain --family llava --out models/tiny-llava-pretrained [--steps 1500] [--seed 0]

LoRA on a random-init model stays at chance (measured when the demo was designed), so before the image-vs-video comparison the
tiny base learns static scenes: the language model and projector train fully on generated image
samples (attributes, counting, positions, captions, multiple choice), the vision tower stays frozen at
its random init (a trainable one collapsed). The held-out answer-token accuracy on validation scenes
is written to `tiny.json` so the demo can check the base works before going on. At real scale this
stage does not exist: the base is a pretrained 7B checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_recipes.synthetic import image_sample
from train.chat import IGNORE_INDEX, encode
from train.families import get_module, load_model
from train.schedule import lr_factor
from train.tiny import build_tiny


def _batch(processor, seed: int, split: str, start: int, n: int):
    samples = [image_sample(seed, start + i, split) for i in range(n)]
    return encode(processor, [js["messages"] for js, _ in samples], [ims for _, ims in samples]).inputs


@torch.no_grad()
def answer_accuracy(model, processor, seed: int, n: int = 256, batch: int = 32) -> float:
    """Share of held-out (val split) answers whose every token is the model's argmax: an exact match."""
    model.eval()
    right = 0
    for start in range(0, n, batch):
        inputs = _batch(processor, seed, "val", start, min(batch, n - start))
        logits = model(**inputs).logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        ok = (logits.argmax(-1) == labels) | (labels == IGNORE_INDEX)
        right += int(ok.all(dim=1).sum())
    model.train()
    return right / n


def pretrain(model, processor, family, *, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0,
             pool: int = 6000, log_every: int = 100) -> list[float]:
    """Train everything but the vision tower on a pool of generated image samples.

    The pool is encoded once and cycled (batch order reshuffled each epoch): rendering and
    tokenizing cost as much as the tiny model's step, and the base stage needs thousands of steps
    before the model starts to use the image.
    """
    for p in get_module(model, family.vision_tower).parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps // 20, steps, "cosine"))
    batches = [_batch(processor, seed, "train", start, batch) for start in range(0, pool - batch + 1, batch)]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    losses, t0, order = [], time.perf_counter(), []
    for step in range(steps):
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        inputs = batches[order.pop()]
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = losses[-log_every:]
            print(f"base stage step {step + 1}/{steps}  loss {sum(recent) / len(recent):.4f}  "
                  f"{(step + 1) * batch / (time.perf_counter() - t0):.0f} samples/s", flush=True)
    return losses


def pretrain_tiny(family: str, out: str | Path, *, steps: int = 1500, seed: int = 0, image_size: int = 64) -> Path:
    """Build the tiny model of `family`, run the base stage, write it to `out` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build_tiny(family, tmp / "init", image_size=image_size, seed=seed)
        model, processor, fam = load_model(tmp / "init")
        before = answer_accuracy(model, processor, seed)
        losses = pretrain(model, processor, fam, steps=steps, seed=seed)
        after = answer_accuracy(model, processor, seed)
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError("base stage diverged (non-finite loss)")
        model.save_pretrained(tmp / "model", safe_serialization=True)
        for f in (tmp / "init").iterdir():
            if not (tmp / "model" / f.name).exists():
                shutil.copy(f, tmp / "model" / f.name)
        info = json.loads((tmp / "init" / "tiny.json").read_text())
        info.update(base_stage={"steps": steps, "batch": 32, "seed": seed, "final_loss": sum(losses[-20:]) / 20,
                                "val_answer_accuracy_before": before, "val_answer_accuracy": after})
        (tmp / "model" / "tiny.json").write_text(json.dumps(info, indent=1))
        print(f"base stage: held-out exact-answer accuracy {before:.1%} -> {after:.1%}")
        if out.exists():
            shutil.rmtree(out)
        (tmp / "model").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pretrain_tiny(args.family, args.out, steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
