"""Sources: where a recipe's samples come from, turned into the toolkit's sample schema.

Every source is addressed by position: `source.make(i)` returns the i-th sample (or a `Skip` saying
why record i is unusable), a pure function of the recipe and i. That is what lets the build run in
several worker processes and still write byte-identical shards.

- `synthetic_image` / `synthetic_video`: the generator in `data_recipes.synthetic` (endless).
- `llava_image`: LLaVA-style JSON, a list of `{"id", "image", "conversations": [{"from": "human"|"gpt",
  "value": "<image>\\n..."}]}`, images relative to `media_root`.
- `llava_video`: the same with `"video"` (mp4, frames sampled uniformly with PyAV).
Real sources are read in a seeded shuffled order so that `samples: N` takes a random subset.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from PIL import Image

from data_recipes import synthetic
from data_recipes.recipe import Recipe, RecipeError, Source, expand_path
from data_recipes.video import VideoError, read_frames

MEDIA_TAG = re.compile(r"<image>|<video>")


@dataclass
class Sample:
    json: dict
    images: list  # PIL images, one per {"type": "image"} marker, in order


@dataclass
class Skip:
    reason: str
    """missing_image | unreadable_image | missing_video | unreadable_video | malformed_conversation"""
    record: str
    detail: str


def _fit(im: Image.Image, size: int) -> Image.Image:
    """RGB, longer side at most `size` (aspect ratio kept)."""
    im = im.convert("RGB")
    if max(im.size) > size:
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


class SyntheticSource:
    def __init__(self, recipe: Recipe, source: Source):
        self.recipe, self.video = recipe, source.type == "synthetic_video"

    def __len__(self):
        return 2**62  # endless

    def make(self, i: int) -> Sample:
        r = self.recipe
        if self.video:
            js, ims = synthetic.video_sample(r.seed, i, r.split, frames=r.frames, image_size=r.image_size)
        else:
            js, ims = synthetic.image_sample(r.seed, i, r.split, image_size=r.image_size)
        return Sample(js, ims)


def conversation_to_messages(conv, n_images: int, where: str) -> list[dict]:
    """LLaVA `conversations` -> chat messages with `n_images` image markers where the tag stood."""
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError(f"{where}: 'conversations' must be a list of at least 2 turns")
    messages, tags = [], 0
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: conversations[{t}] must be {{'from': 'human'|'gpt', 'value': str}}")
        expected = "human" if t % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise ValueError(f"{where}: conversations[{t}] is from '{turn['from']}', expected '{expected}'")
        if turn["from"] == "gpt":
            if MEDIA_TAG.search(turn["value"]) or not turn["value"].strip():
                raise ValueError(f"{where}: conversations[{t}] (gpt) must be non-empty text without media tags")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"].strip()}]})
            continue
        parts = MEDIA_TAG.split(turn["value"])
        tags += len(parts) - 1
        content = []
        for k, text in enumerate(parts):
            if k:
                content += [{"type": "image"}] * n_images
            if text.strip():
                content.append({"type": "text", "text": text.strip()})
        messages.append({"role": "user", "content": content})
    if conv[-1]["from"] != "gpt":
        raise ValueError(f"{where}: the last turn must be from 'gpt'")
    if tags > 1:
        raise ValueError(f"{where}: {tags} media tags for one image/video")
    if tags == 0:  # LLaVA data without a tag: the media go before the first question
        messages[0]["content"] = [{"type": "image"}] * n_images + messages[0]["content"]
    for t, m in enumerate(messages):
        if not m["content"]:
            raise ValueError(f"{where}: conversations[{t}] (human) holds neither text nor media")
    return messages


class LlavaSource:
    """LLaVA-style image or video instruction JSON with a media folder."""

    def __init__(self, recipe: Recipe, source: Source, where: str):
        self.recipe, self.video = recipe, source.type == "llava_video"
        self.path = expand_path(source.path, f"{where}.path")
        self.root = expand_path(source.media_root, f"{where}.media_root")
        field = "video" if self.video else "image"
        layout = (f"expected a JSON list of {{'id', '{field}', 'conversations'}} records at {self.path} "
                  f"and the {field} files under {self.root}/")
        if not self.path.is_file():
            raise RecipeError(f"{where}: annotation file {self.path} does not exist; {layout}. "
                              "Without real data, try the generated recipes image_demo and video_demo.")
        if not self.root.is_dir():
            raise RecipeError(f"{where}: media folder {self.root} does not exist; {layout}")
        try:
            records = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise RecipeError(f"{self.path}: not valid JSON ({e}); {layout}") from None
        if not isinstance(records, list):
            raise RecipeError(f"{self.path}: top level must be a list of records; {layout}")
        self.records, self.field = records, field
        self.order = list(range(len(records)))
        random.Random(f"{recipe.seed}:{source.path}").shuffle(self.order)

    def __len__(self):
        return len(self.records)

    def make(self, i: int) -> Sample | Skip:
        rec = self.records[self.order[i]]
        rid = str(rec.get("id", f"#{self.order[i]}")) if isinstance(rec, dict) else f"#{self.order[i]}"
        where = f"{self.path} record {rid}"
        if not isinstance(rec, dict) or not isinstance(rec.get(self.field), str):
            return Skip("malformed_conversation", rid, f"{where}: field '{self.field}' must be a file name")
        media = self.root / rec[self.field]
        kind = self.field
        if not media.is_file():
            return Skip(f"missing_{kind}", rid, f"{where}: {media} does not exist")
        try:
            if self.video:
                images = read_frames(media, num_frames=self.recipe.frames, size=None)
                images = [_fit(im, self.recipe.image_size) for im in images]
            else:
                with Image.open(media) as im:
                    im.load()
                    images = [_fit(im, self.recipe.image_size)]
        except (OSError, VideoError, ValueError) as e:
            return Skip(f"unreadable_{kind}", rid, f"{where}: {media}: {e}")
        try:
            messages = conversation_to_messages(rec.get("conversations"), len(images), where)
        except ValueError as e:
            return Skip("malformed_conversation", rid, str(e))
        js = {"id": rid, "source": self.path.name, "kind": "video" if self.video else "image",
              "messages": messages, "meta": {"file": rec[self.field]}}
        return Sample(js, images)


def open_sources(recipe: Recipe) -> list:
    out = []
    for k, s in enumerate(recipe.sources):
        where = f"{recipe.path or recipe.name}: sources[{k}]"
        out.append(SyntheticSource(recipe, s) if s.type.startswith("synthetic") else LlavaSource(recipe, s, where))
    return out


def mix_plan(recipe: Recipe, sizes: list[int]):
    """Endless (source index, position) pairs: a seeded weighted interleave of the sources.

    Stops when the chosen source runs out, since silently re-weighting the rest would change the mix.
    """
    rng = random.Random(f"mix:{recipe.seed}:{recipe.content_hash()}")
    weights = [s.weight for s in recipe.sources]
    cursors = [0] * len(sizes)
    while True:
        k = rng.choices(range(len(sizes)), weights)[0] if len(sizes) > 1 else 0
        if cursors[k] >= sizes[k]:
            return
        yield k, cursors[k]
        cursors[k] += 1
