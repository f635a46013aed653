"""The vision stage of the embedded default: give the tiny model's vision tower what a pretrained one has.

A real VLM's vision encoder arrives pretrained: its features already say what is where. The tiny
models' towers are random, and a random tower hides what the language model must read: a linear probe
on its mean-pooled features of a generated frame names the object's colour at about 95%, its shape
at about 37% (chance 25%). A language model reading such features has to learn perception and
comparison at once, and on clips with several objects and several kinds of event the demo's budget
does not get it past the plateau of either (docs/toy_world.md, "Validity checks").

So the base stage starts with this stage: the tower (and nothing else) learns, on generated single
frames of its own pool, to say in each patch token what object is centred in that patch: its colour,
its shape and its size (or "no object"), through three linear heads that are then thrown away. It
sees only still frames: nothing about what happens between frames. The tower is then frozen for the
rest of the base stage and for both LoRA runs, like a pretrained encoder.

Which tokens are the patches depends on the family's tower: CLIP, SigLIP and InternVL towers give a
row-major grid of patch tokens (after a CLS token for CLIP and InternVL), read from the tower itself on
the frame at the model's input size. Qwen2-VL and InternVL merge 2 x 2 patches into one token for the
language model: for them the stage trains the model's image features (tower and merger or projector),
one token per merged cell, in the language model's order.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from PIL import Image

from data_recipes.synthetic.render import render_frame
from data_recipes.synthetic.sampler import random_scene, rng_for, scene_for_split, video_windows
from data_recipes.synthetic.scenes import COLOURS, SHAPES, SIZES, Scene
from data_recipes.processors import frame_options
from train.families import Family, get_module

STEPS = 1500
"""Optimizer steps of the vision stage: 96,000 frames, about 60 s of the demo's base stage on the
development machine (2 threads), after which held-out object patches are named at colour 96%, shape
60%, size 92%. 1,000 steps (shape 39%) saved 30 s, but the long validity check (b) after it was 0.32
[0.23, 0.41] instead of 0.38 [0.28, 0.47]; 4,000 steps (shape 92%) did not make the video training
after the base stage learn faster (docs/toy_world.md, "Validity checks")."""
BATCH = 64
LR = 1e-3
VAL_FRAMES = 256
POOL = "base-vision"
"""The generator's pool of this stage: its random streams are apart from every other part's."""
COLOUR_NAMES = sorted(COLOURS)
ATTRIBUTES = ("colour", "shape", "size")
CLASSES = {"colour": len(COLOUR_NAMES) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1}
"""Classes of each head: 0 is "no object centred in this patch"."""
MERGED = ("qwen2_vl", "qwen2_5_vl", "internvl")
"""Families whose language model reads one token per 2 x 2 patches: the stage trains their image
features (tower and merger or projector), one token per cell of the merged grid."""
_SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2


def frame(seed: int, index: int, split: str) -> tuple[Scene, int]:
    """The `index`-th frame of the stage's pool: a training-like clip of 1-3 objects with one event
    (so objects are seen mid-move, mid-growth, half-recoloured...) and one of its 5 frames."""
    rng = rng_for(seed, split, index, POOL)
    n_objects = rng.randint(1, 3)

    def draw(r: random.Random) -> Scene | None:
        return random_scene(r, 5, n_objects, video_windows(5, 1))

    scene = scene_for_split(rng, split, draw)
    return scene, rng.randrange(scene.n_frames)


def patch_labels(scene: Scene, t: int, grid: int) -> torch.Tensor:
    """(3, grid * grid) class indices, row-major: for each patch, the colour, shape and size class of
    the visible object whose centre lies in it (0: none)."""
    labels = torch.zeros(len(ATTRIBUTES), grid * grid, dtype=torch.long)
    for state in scene.state(t):
        if not state.visible:
            continue
        col, row = min(grid - 1, int(state.x * grid)), min(grid - 1, int(state.y * grid))
        j = row * grid + col
        labels[0, j] = COLOUR_NAMES.index(state.colour) + 1
        labels[1, j] = SHAPES.index(state.shape) + 1
        labels[2, j] = 1 + (state.radius > _SIZE_SPLIT)
    return labels


class _Tokens:
    """The patch tokens of a family's tower for a batch of frames, and their grid side."""

    def __init__(self, model, processor, family: Family, image_size: int):
        self.model, self.family, self.image_size = model, family, image_size
        self.tower = get_module(model, family.vision_tower)
        self.image_processor = processor.image_processor
        self.options = frame_options(processor)  # as every frame of a clip is fed
        cfg = self.tower.config
        patch = cfg.patch_size[0] if isinstance(cfg.patch_size, (list, tuple)) else cfg.patch_size
        self.merged = family.name in MERGED
        self.params = list(self.tower.parameters())
        if self.merged:  # the image features the language model reads: 2 x 2 patches per token
            self.grid = image_size // patch // 2
            self.width = model.config.text_config.hidden_size
            if family.name == "internvl":  # Qwen2-VL's visual module holds its merger already
                self.params += list(get_module(model, family.projector).parameters())
        else:
            self.grid = image_size // patch
            self.width = cfg.hidden_size
        self.mean = torch.tensor(self.image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.image_processor.image_std).view(1, 3, 1, 1)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        if self.merged:
            enc = self.image_processor(images, return_tensors="pt", **self.options)
            grid = {"image_grid_thw": enc["image_grid_thw"]} if "image_grid_thw" in enc else {}
            feats = self.model.model.get_image_features(pixel_values=enc["pixel_values"], **grid)
            feats = getattr(feats, "pooler_output", feats)
            return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats.view(
                len(images), self.grid * self.grid, -1)
        px = torch.stack([torch.from_numpy(_array(im, self.image_size)) for im in images])
        px = (px.permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
        out = self.tower(pixel_values=px.to(self.tower.dtype))
        hidden = out.last_hidden_state
        return hidden[:, -self.grid * self.grid:]  # the patches, after the CLS token if the tower has one


def _array(image: Image.Image, size: int) -> np.ndarray:
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image.convert("RGB"), dtype=np.float32).copy()


def _batch(seed: int, split: str, indices, grid: int, image_size: int):
    images, labels = [], []
    for i in indices:
        scene, t = frame(seed, i, split)
        images.append(render_frame(scene, t, image_size))
        labels.append(patch_labels(scene, t, grid))
    return images, torch.stack(labels)


@torch.no_grad()
def _accuracy(tokens: _Tokens, heads, val) -> dict[str, float]:
    """Per attribute, the share of object patches (of held-out frames) whose class the head gets."""
    images, labels = val
    hidden = tokens(images)
    has_object = labels[:, 0] > 0
    return {a: round((heads[k](hidden).argmax(-1)[has_object] == labels[:, k][has_object]).float().mean().item(), 4)
            for k, a in enumerate(ATTRIBUTES)}


def train_vision(model, processor, family: Family, *, steps: int = STEPS, seed: int, image_size: int = 64,
                 batch: int = BATCH, lr: float = LR, log_every: int = 250) -> dict:
    """Train the vision tower to name each patch's object; freeze it; return what it learned.

    The returned dict holds the held-out (val split) accuracy of each attribute on object patches
    before and after (before: linear heads fitted on the frozen random tower for a fifth of the steps,
    so the gain shown is the tower's, not the heads')."""
    torch.manual_seed(seed)
    tokens = _Tokens(model, processor, family, image_size)
    val = _batch(seed, "val", range(VAL_FRAMES), tokens.grid, image_size)

    def fit(train_tower: bool) -> tuple[torch.nn.ModuleList, list[float]]:
        heads = torch.nn.ModuleList(torch.nn.Linear(tokens.width, CLASSES[a]) for a in ATTRIBUTES)
        for p in tokens.params:
            p.requires_grad_(train_tower)
        params = list(heads.parameters()) + (tokens.params if train_tower else [])
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses, t0 = [], time.perf_counter()
        for step in range(steps if train_tower else steps // 5):
            images, labels = _batch(seed, "train", range(step * batch, (step + 1) * batch), tokens.grid, image_size)
            hidden = tokens(images)  # no graph through the tower while it is frozen
            loss = sum(torch.nn.functional.cross_entropy(h(hidden).flatten(0, 1), labels[:, k].flatten())
                       for k, h in enumerate(heads))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if train_tower and ((step + 1) % log_every == 0 or step + 1 == steps):
                recent = losses[-log_every:]
                print(f"vision stage step {step + 1}/{steps}  loss {sum(recent) / len(recent):.4f}  "
                      f"{(step + 1) * batch / (time.perf_counter() - t0):.0f} frames/s", flush=True)
        return heads, losses

    t0 = time.perf_counter()
    probe, _ = fit(train_tower=False)
    before = _accuracy(tokens, probe, val)
    heads, losses = fit(train_tower=True)
    after = _accuracy(tokens, heads, val)
    for p in tokens.params:
        p.requires_grad_(False)
    tail = losses[-20:]
    return {"steps": steps, "batch": batch, "lr": lr, "grid": tokens.grid, "final_loss": sum(tail) / len(tail),
            "val_patch_accuracy_before": before, "val_patch_accuracy": after,
            "seconds": round(time.perf_counter() - t0, 1)}
