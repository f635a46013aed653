"""The base stage of the embedded default: make a tiny random-init model a working multi-image reader.

    python -m train.toy.pretrain --family llava --out models/tiny-llava-pretrained [--steps 1000] [--seed 1]

LoRA on a random-init model stays at chance (measured when the demo was designed), so before the
image-vs-video comparison the tiny base learns what a pretrained VLM brings to it, and nothing about
what happens between frames:

- `image`: static questions about one image (attributes, counting, positions, captions, multiple
  choice), `data_recipes.synthetic.samples.image_sample`;
- `still`: the same kind of questions about multi-frame clips in which nothing happens, every other
  one with each frame's caption after it (`data_recipes.synthetic.reading.still_sample`), so several
  images in one prompt, and text between frames, are familiar before any LoRA run;
- `reading`: text-only items, the infills of an evaluation-like clip written out between its sampled
  frames, then a five-option question (`data_recipes.synthetic.reading.reading_record`): the model
  learns to answer from text it is given, so a vCoT infill can help a model that did not see the
  change itself.

Both LoRA runs start from this base, so whatever it teaches is shared by the image and the video run.
Its samples come from their own pool ("base") and seed (`BASE_SEED`, not the recipes' 0): their ids
are disjoint from every recipe's samples by construction. Scenes may recur (the generator's scene space
is small); tests/test_pretrain.py reports how many.

It starts with the vision stage (`train.toy.vision`): the tower alone learns, on still frames of its
own pool, to name the object in each patch, as a pretrained encoder would; then it is frozen. (Trained
together with the language model on the questions below, the tower collapsed.) Then the language
model and projector train fully on the three parts. Each optimizer step takes one batch of one part
(the parts have different numbers of images per sample), in a seeded interleaved order with exactly
`MIXTURE`'s shares. The held-out (val split) exact-answer accuracy of each part, and the vision
stage's accuracy at naming patches, are written to `tiny.json` (`base_stage.vision` and
`base_stage.val_answer_accuracy_by_part`) so the demo and the report can see the base works before
going on. At real scale this stage does not exist: the base is a pretrained 7B checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from data_recipes.files import atomic_dir
from data_recipes.processors import frame_options
from data_recipes.synthetic.reading import reading_record, still_record, still_sample
from data_recipes.synthetic.samples import image_record, image_sample
from train.chat import IGNORE_INDEX, encode
from train.families import get_module, load_model
from train.schedule import lr_factor
from train.toy.tiny import build_tiny
from train.toy.vision import BATCH as VISION_BATCH
from train.toy.vision import LR as VISION_LR
from train.toy.vision import POOL as VISION_POOL
from train.toy.vision import STEPS as VISION_STEPS
from train.toy.vision import frame as vision_frame
from train.toy.vision import patch_labels, train_vision

PARTS = ("image", "still", "reading")
MIXTURE = {"image": 0.4, "still": 0.3, "reading": 0.3}
"""Share of optimizer steps (batches) of each part. Single images stay the largest part: they are
what the model must first learn to see; stills and reading items each get a bit under a third."""
BASE_POOL = "base"
"""The generator's pool of the base stage: its ids and random streams are apart from the recipes' (pool "")."""
BASE_SEED = 1
"""The base stage's own seed (the demo recipes use 0)."""
STILL_FRAMES = 5
"""Frames of a still clip: as many as a video_demo clip."""
DEFAULT_STEPS = 1000
"""Sized to keep the stage near three and a half minutes: on the 2-core development machine with 2
threads the whole stage took 223 s (the vision stage 59 s, pool encoding 8 s, 1000 steps 150 s at 214
samples/s; a still-clip step costs about 4 image steps, a reading step about 2), reaching held-out
exact answers of 56% (image), 49% (still) and 62% (reading), from 0% at random init (42%, 38% and 58%
before the vision stage)."""
BATCH = 32
POOL_SAMPLES = 4800
"""Generated samples encoded once and cycled, split between the parts by `MIXTURE` (so every part is
cycled about equally often). Rendering and tokenizing cost about as much as a step, so the pool is
encoded once; at the default steps each sample is seen about 7 times."""
VAL_SAMPLES = 128
"""Held-out (val split) samples per part for the exact-answer accuracy."""
LR = 1e-3


def part_sample(part: str, seed: int, index: int, split: str, image_size: int = 64) -> tuple[dict, list]:
    """The `index`-th sample of a part of the base stage: (sample JSON, its images in marker order)."""
    if part == "image":
        return image_sample(seed, index, split, pool=BASE_POOL, image_size=image_size)
    if part == "still":
        return still_sample(seed, index, split, frames=STILL_FRAMES, pool=BASE_POOL, image_size=image_size)
    if part == "reading":
        return reading_record(seed, index, split, pool=BASE_POOL), []
    raise ValueError(f"unknown base-stage part {part!r}; known: {', '.join(PARTS)}")


def part_record(part: str, seed: int, index: int, split: str = "train") -> dict:
    """The JSON of `part_sample` without rendering any pixels (for audits and the pool's fingerprint)."""
    if part == "image":
        return image_record(seed, index, split, pool=BASE_POOL)[0]
    if part == "still":
        return still_record(seed, index, split, frames=STILL_FRAMES, pool=BASE_POOL)[0]
    if part == "reading":
        return reading_record(seed, index, split, pool=BASE_POOL)
    raise ValueError(f"unknown base-stage part {part!r}; known: {', '.join(PARTS)}")


def pool_sizes(pool: int, batch: int) -> dict[str, int]:
    """Samples of each part in a pool of `pool`: `MIXTURE`'s shares, in whole pairs of batches (one of
    each index parity, see `batch_indices`), at least one pair each."""
    return {p: max(1, int(pool * MIXTURE[p]) // (2 * batch)) * 2 * batch for p in PARTS}


def step_parts(steps: int, seed: int, mixture: dict[str, float] | None = None) -> list[str]:
    """Which part each optimizer step trains on: the shares of `mixture` (default `MIXTURE`) exactly
    (largest remainders), in a seeded shuffled order, so the parts are interleaved through the whole
    schedule."""
    mixture = MIXTURE if mixture is None else mixture
    if not mixture or any(not (w > 0) for w in mixture.values()):
        raise ValueError(f"mixture must map parts to positive shares, got {mixture!r}")
    names, total = list(mixture), sum(mixture.values())
    exact = {p: steps * mixture[p] / total for p in names}
    counts = {p: int(exact[p]) for p in names}
    for p in sorted(names, key=lambda p: (counts[p] - exact[p], names.index(p)))[: steps - sum(counts.values())]:
        counts[p] += 1
    order = [p for p in names for _ in range(counts[p])]
    random.Random(f"base-stage-order:{seed}").shuffle(order)
    return order


def encode_part(processor, part: str, seed: int, split: str, indices, image_size: int = 64):
    """Model inputs (with labels) of a part's samples at `indices`. A still clip's frames take the
    family's frame options, as the trainer feeds a video sample's frames."""
    samples = [part_sample(part, seed, i, split, image_size) for i in indices]
    options = frame_options(processor) if part == "still" else None
    return encode(processor, [js["messages"] for js, _ in samples], [ims for _, ims in samples],
                  image_options=options).inputs


def batch_indices(n: int, batch: int) -> list[list[int]]:
    """Samples 0..n-1 in batches of `batch` that each hold indices of one parity.

    The generator alternates layouts by index (a still clip with or without captions, a reading item
    with 4 or 9 infills, image question types): a batch of one parity holds one layout, so it is
    padded to its own length rather than to the other layout's, which cuts the base stage's tokens by
    a fifth. A last short batch per parity is kept."""
    out = []
    for parity in (0, 1):
        same = list(range(parity, n, 2))
        out += [same[s:s + batch] for s in range(0, len(same), batch)]
    return out


def encode_pool(processor, seed: int, split: str, sizes: dict[str, int], batch: int,
                image_size: int = 64) -> dict[str, list[dict]]:
    """Every part's first `sizes[part]` samples of `split`, encoded once, in `batch_indices` batches."""
    return {p: [encode_part(processor, p, seed, split, idx, image_size) for idx in batch_indices(n, batch)]
            for p, n in sizes.items()}


@torch.no_grad()
def answer_accuracy(model, batches: list[dict]) -> float:
    """Share of samples whose every answer token is the model's argmax (exact match of the answer)."""
    model.eval()
    right = total = 0
    for inputs in batches:
        logits = model(**inputs).logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        ok = (logits.argmax(-1) == labels) | (labels == IGNORE_INDEX)
        right += int(ok.all(dim=1).sum())
        total += labels.shape[0]
    model.train()
    return right / total


def accuracy_by_part(model, val: dict[str, list[dict]]) -> dict[str, float]:
    return {p: answer_accuracy(model, val[p]) for p in val}


def pretrain(model, processor, family, *, steps: int, batch: int = BATCH, lr: float = LR, seed: int = BASE_SEED,
             pool: int = POOL_SAMPLES, image_size: int = 64, log_every: int = 100,
             batches: dict[str, list[dict]] | None = None, mixture: dict[str, float] | None = None) -> list[float]:
    """Train everything but the vision tower on the base stage's pool; return the loss of every step.

    The pool is encoded once (or given as `batches`, part -> encoded batches) and cycled, each part's
    batch order reshuffled each time it has been used up; `step_parts` says which part each step
    takes (`mixture`: other shares, e.g. one part alone; default `MIXTURE`). Cosine schedule with a 5%
    warmup, AdamW without weight decay, gradients clipped at 1.
    """
    for p in get_module(model, family.vision_tower).parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps // 20, steps, "cosine"))
    if batches is None:
        batches = encode_pool(processor, seed, "train", pool_sizes(pool, batch), batch, image_size)
    plan = step_parts(steps, seed, mixture)
    missing = sorted(set(plan) - set(batches))
    if missing:
        raise ValueError(f"the mixture asks for parts without batches: {', '.join(missing)}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    losses, t0, samples = [], time.perf_counter(), 0
    orders: dict[str, list[int]] = {p: [] for p in batches}
    for step, part in enumerate(plan):
        if not orders[part]:
            orders[part] = torch.randperm(len(batches[part]), generator=gen).tolist()
        inputs = batches[part][orders[part].pop()]
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        samples += inputs["input_ids"].shape[0]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = losses[-log_every:]
            print(f"base stage step {step + 1}/{steps}  loss {sum(recent) / len(recent):.4f}  "
                  f"{samples / (time.perf_counter() - t0):.0f} samples/s", flush=True)
    return losses


def design(steps: int = DEFAULT_STEPS, seed: int = BASE_SEED, pool: int = POOL_SAMPLES,
           vision_steps: int = VISION_STEPS) -> dict:
    """What a base built with these settings was made of, for telling a stale base from a current one:
    the constants of this module and a fingerprint of each part's first generated records and of the
    vision stage's first frames and their patch labels (a change in the generator or the labels changes
    it)."""
    h = hashlib.sha256()
    for part in PARTS:
        for i in range(4):
            h.update(json.dumps(part_record(part, seed, i), sort_keys=True).encode())
    for i in range(4):
        scene, t = vision_frame(seed, i, "train")
        h.update(json.dumps({"scene": scene.to_dict(), "t": t, "labels": patch_labels(scene, t, 4).tolist()},
                            sort_keys=True).encode())
    return {"vision": {"steps": vision_steps, "batch": VISION_BATCH, "lr": VISION_LR, "pool": VISION_POOL},
            "parts": dict(MIXTURE), "pool": pool, "pool_name": BASE_POOL, "still_frames": STILL_FRAMES,
            "steps": steps, "batch": BATCH, "lr": LR, "seed": seed, "records_sha256": h.hexdigest()[:16]}


def is_current(model_dir: str | Path, steps: int = DEFAULT_STEPS, seed: int = BASE_SEED,
               pool: int = POOL_SAMPLES, vision_steps: int = VISION_STEPS) -> bool:
    """Whether `model_dir` holds a base built by this base stage's current design with these settings
    (False when there is none, or one from before: `make demo` then builds it again)."""
    info = Path(model_dir) / "tiny.json"
    if not (Path(model_dir) / "config.json").exists() or not info.exists():
        return False
    try:
        return json.loads(info.read_text()).get("base_stage", {}).get("design") == design(steps, seed, pool,
                                                                                          vision_steps)
    except (json.JSONDecodeError, AttributeError):
        return False


def pretrain_tiny(family: str, out: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = BASE_SEED,
                  image_size: int = 64, pool: int = POOL_SAMPLES, vision_steps: int = VISION_STEPS) -> Path:
    """Build the tiny model of `family` (initialised with `seed`), run the base stage (the vision stage's
    `vision_steps`, then `steps`), write it to `out` atomically, with the held-out accuracy of each part
    and the stage's timings in its tiny.json."""
    out = Path(out)
    with atomic_dir(out) as tmp:  # the base model is written here; the initial one goes to tmp/init
        t_start = time.perf_counter()
        build_tiny(family, tmp / "init", image_size=image_size, seed=seed)
        model, processor, fam = load_model(tmp / "init")
        vision_stats = train_vision(model, processor, fam, steps=vision_steps, seed=seed, image_size=image_size)
        t0 = time.perf_counter()
        batches = encode_pool(processor, seed, "train", pool_sizes(pool, BATCH), BATCH, image_size)
        val = encode_pool(processor, seed, "val", {p: VAL_SAMPLES for p in PARTS}, BATCH, image_size)
        encode_s = time.perf_counter() - t0
        before = accuracy_by_part(model, val)
        t0 = time.perf_counter()
        losses = pretrain(model, processor, fam, steps=steps, seed=seed, batches=batches)
        train_s = time.perf_counter() - t0
        after = accuracy_by_part(model, val)
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError("base stage diverged (non-finite loss)")
        model.save_pretrained(tmp, safe_serialization=True)
        for f in (tmp / "init").iterdir():
            if not (tmp / f.name).exists():
                shutil.copy(f, tmp / f.name)
        info = json.loads((tmp / "init" / "tiny.json").read_text())
        tail = losses[-20:]
        info.update(base_stage={
            "design": design(steps, seed, pool, vision_steps), "steps": steps, "batch": BATCH, "seed": seed,
            "vision": vision_stats,
            "final_loss": sum(tail) / len(tail),
            "val_samples_per_part": VAL_SAMPLES,
            "val_answer_accuracy_before": sum(before.values()) / len(before),
            "val_answer_accuracy": sum(after.values()) / len(after),
            "val_answer_accuracy_by_part_before": before,
            "val_answer_accuracy_by_part": after,
            "seconds": {"vision": vision_stats["seconds"], "encode": round(encode_s, 1), "train": round(train_s, 1),
                        "total": round(time.perf_counter() - t_start, 1)},
            "train_samples_per_s": round(steps * BATCH / train_s, 1)})
        (tmp / "tiny.json").write_text(json.dumps(info, indent=1))
        named, named_before = vision_stats["val_patch_accuracy"], vision_stats["val_patch_accuracy_before"]
        print("base stage: vision tower, held-out object patches named "
              + ", ".join(f"{a} {named_before[a]:.0%} -> {named[a]:.0%}" for a in named))
        print("base stage: held-out exact-answer accuracy "
              + ", ".join(f"{p} {before[p]:.1%} -> {after[p]:.1%}" for p in PARTS)
              + f" ({time.perf_counter() - t_start:.0f} s)")
        shutil.rmtree(tmp / "init")  # scratch: only the base model is renamed to out
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.toy.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--seed", type=int, default=BASE_SEED)
    p.add_argument("--pool", type=int, default=POOL_SAMPLES, help="generated samples encoded once and cycled")
    p.add_argument("--vision-steps", type=int, default=VISION_STEPS, help="steps of the vision stage, before the rest")
    args = p.parse_args(argv)
    for name in ("steps", "pool", "vision_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    pretrain_tiny(args.family, args.out, steps=args.steps, seed=args.seed, pool=args.pool,
                  vision_steps=args.vision_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
