"""Recipes: YAML files in `data_recipes/recipes/` validated into a typed config.

A recipe says what goes into a training set and how much of it:

    kind: video                 # image | video: what the set is made of
    sources:                    # where samples come from, mixed by weight
      - {type: synthetic_video, weight: 1.0}
    samples: 2000               # how many samples ... or, instead:
    size_from: {recipe: video_demo, unit: images}   # as much as another recipe's build holds, in a unit
    frames: 5                   # frames per video sample
    image_size: 64              # side of generated frames; real media get at most image_size**2 pixels
    max_pixels: 200704          # optional: the resize rule's pixel budget instead (448*448 here)
    video_input: images         # images | native: how video samples reach the model (see below)
    frame_order: ordered        # ordered | shuffled: generated clips' frames in time order or not (see below)
    seed: 0
    split: train
    max_bad_fraction: 0.01      # share of bad source records tolerated before the build fails
    train: {...}                # the recipe's own training section (read by train/lora.py)

`size_from` sizes the build from another recipe: build samples of this one until they hold as much as
the other recipe's build holds, counted in `unit` (samples | images | visual_tokens | text_tokens,
`data_recipes.counters.SIZE_FROM_UNITS`); `data_recipes.build` builds the other recipe first. It is a
build-time mechanism, not the trainer's `--match_to/--match_by`, which stops a training run once it has
consumed what another run consumed. Its old spelling `match: {to, by}` still loads, with a warning.

`max_pixels` and `image_size` set the one resize rule (`data_recipes.resize.fit`): every stored
image and frame of a real source has at most `max_pixels` pixels (default `image_size**2`), aspect
kept, never upsampled. Generated sources render `image_size` x `image_size` frames, which the rule
then shrinks only when `max_pixels` is set below that. `video_input: native` feeds a video sample
to the model as clips through its family's video processor (`data_recipes.clips.as_video`), so
visual tokens are counted on that path; `images` (default) feeds every frame as an image.

`frame_order: shuffled` is the "more frames, no order" control: the same generated clips, questions
and answers as the ordered recipe with the same seed, but each clip's frames stored in a seeded
non-identity order (`data_recipes.synthetic.video_sample(..., shuffle_frames=True)`). A model trained
on it sees as many frames as the video run but cannot learn what happens between them. It exists only
for video recipes fed by generated sources: the generator shuffles a clip whose timeline it knows and
keeps the true clip's question and answer.

Unknown keys are errors with a "did you mean". Paths may use `$DATA_ROOT` (and any other
environment variable); a missing variable or file is reported with the layout that was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data_recipes.clips import VIDEO_INPUTS
from data_recipes.counters import SIZE_FROM_UNITS
from data_recipes.files import file_sha256
from data_recipes.hints import did_you_mean
from data_recipes.resize import check_max_pixels
from data_recipes.yamlfile import load_yaml

RECIPES_DIR = Path(__file__).parent / "recipes"
SOURCE_TYPES = ("synthetic_image", "synthetic_video", "llava_image", "llava_video")
FRAME_ORDERS = ("ordered", "shuffled")
SPLITS = ("train", "val", "test")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Source:
    type: str
    """synthetic_image | synthetic_video | llava_image | llava_video."""
    weight: float = 1.0
    """Relative share of this source in the mix."""
    path: str | None = None
    """LLaVA-style JSON annotation file (real sources)."""
    media_root: str | None = None
    """Folder the annotation's `image` / `video` paths are relative to (real sources)."""


@dataclass(frozen=True)
class SizeFrom:
    """A recipe's `size_from: {recipe, unit}`: build as much as `recipe`'s build holds, counted in `unit`
    (read by `data_recipes.build`, which records the outcome in the manifest's `match`)."""
    recipe: str
    """Name or path of the recipe whose build sets the amount."""
    unit: str
    """samples | images | visual_tokens | text_tokens (`data_recipes.counters.SIZE_FROM_UNITS`)."""


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str
    """image | video."""
    sources: tuple[Source, ...]
    samples: int | None = None
    size_from: SizeFrom | None = None
    """Instead of `samples`: as much as another recipe's build holds (old spelling `match: {to, by}`)."""
    frames: int = 5
    image_size: int = 64
    """Side of generated frames; without `max_pixels`, real media are shrunk to image_size**2 pixels."""
    max_pixels: int | None = None
    """The resize rule's pixel budget (`data_recipes.resize.fit`: aspect kept, never upsampled) for every
    stored image and frame; None: image_size**2 (generated frames, image_size square, then pass untouched)."""
    video_input: str = "images"
    """images | native. How a video sample's frames reach the model, and so how its visual tokens are
    counted: `images`, each frame as an image; `native`, each clip through the family's video processor."""
    frame_order: str = "ordered"
    """ordered | shuffled. `shuffled`: each generated clip's frames in a seeded non-identity order, the
    question and answer those of the true clip (video recipes with synthetic sources only)."""
    seed: int = 0
    split: str = "train"
    max_bad_fraction: float = 0.01
    shard_size: int = 1000
    """Samples per shard file."""
    model: str | None = None
    """Model directory whose processor counts visual and text tokens (needed to match by tokens)."""
    description: str = ""
    train: dict = field(default_factory=dict)
    """The recipe's training section, validated by the trainer's own config."""
    path: str | None = None
    """The file this recipe was read from (not part of its content hash)."""

    def pixel_budget(self) -> int:
        """The resize rule's budget the build applies: `max_pixels`, else image_size**2."""
        return self.max_pixels if self.max_pixels is not None else self.image_size ** 2

    def content_hash(self) -> str:
        """sha256 of the recipe's content (what it builds), independent of where the file lives.

        For a source read from an annotation file, the file's own sha256 is part of it: a changed
        annotation file rebuilds the shards instead of silently reusing the old ones; for a generated
        source, `data_recipes.synthetic.GENERATOR_VERSION` plays that part. Fields added
        later (`max_pixels`, `video_input`, `frame_order`) count only when they differ from their
        default, so a recipe that does not use them keeps the hash it had before they existed. `size_from`
        is hashed under its old spelling (`_hashed_size_from`), so renaming it changed no recipe's hash."""
        d = dataclasses.asdict(self)
        d.pop("path"), d.pop("description"), d.pop("train")
        d["match"] = _hashed_size_from(self.size_from)
        d.pop("size_from")
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        annotations = [annotation_sha256(s.path) for s in self.sources if s.path]
        if annotations:
            d["annotation_sha256"] = annotations
        if any(s.type.startswith("synthetic") for s in self.sources):
            # Generated sources have no file to hash: the generator's version stands for it, so shards
            # built by an older generator are rebuilt, never silently reused.
            from data_recipes.synthetic import GENERATOR_VERSION

            d["generator_version"] = GENERATOR_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


_LATER_FIELDS = {"max_pixels": None, "video_input": "images", "frame_order": "ordered"}
"""Fields left out of `content_hash` at their default (they were added after recipes were hashed)."""

_OLD_SIZE_FROM_KEYS = {"to": "recipe", "by": "unit"}
"""`size_from`'s keys as the old spelling `match: {to, by}` named them (read by `parse_recipe`)."""


def _hashed_size_from(size_from: SizeFrom | None) -> dict | None:
    """`size_from` as `content_hash` hashes it: under the key and sub-keys it had when recipes were first
    hashed (`match: {to, by}`), so the rename left every recipe's hash, and every build, as it was."""
    if size_from is None:
        return None
    return {old: getattr(size_from, new) for old, new in _OLD_SIZE_FROM_KEYS.items()}


def _from_old_match(data: dict, where: str) -> dict:
    """`data` with its deprecated `match: {to, by}` respelled `size_from: {recipe, unit}`, warning on stderr."""
    print(f"warning: {where}: field 'match' is deprecated, use 'size_from' "
          f"(match: {{to: R, by: U}} is size_from: {{recipe: R, unit: U}})", file=sys.stderr)
    if "size_from" in data:
        raise RecipeError(f"{where}: give 'size_from' only; 'match' is its old spelling")
    old = data.pop("match")
    data["size_from"] = {_OLD_SIZE_FROM_KEYS.get(k, k): v for k, v in old.items()} if isinstance(old, dict) else old
    return data


_ANNOTATION_HASHES: dict = {}


def annotation_sha256(path: str) -> str:
    """sha256 of an annotation file ('absent' when it does not exist yet), cached per size and mtime."""
    p = Path(os.path.expandvars(path)).expanduser()
    try:
        st = p.stat()
    except OSError:
        return "absent"
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _ANNOTATION_HASHES:
        _ANNOTATION_HASHES[key] = file_sha256(p)
    return _ANNOTATION_HASHES[key]


def _build(cls, data, where: str):
    """Instantiate a dataclass from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise RecipeError(f"{where}: unknown key '{k}'{did_you_mean(k, names)}")
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: field '{f.name}' is required")
    return cls(**data)


def _expect(cond: bool, where: str, msg: str):
    if not cond:
        raise RecipeError(f"{where}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_opt_str(v) -> bool:
    return v is None or isinstance(v, str)


def expand_path(value: str, where: str) -> Path:
    """Expand `$VARS` in a path; an unset variable is an error naming it."""
    for var in re.findall(r"\$\{?(\w+)\}?", value):
        if var not in os.environ:
            raise RecipeError(
                f"{where}: '{value}' needs the environment variable ${var}, which is not set. "
                f"Set it to the folder holding your data (see README, 'Real data layout'), "
                f"or use the generated recipes image_demo / video_demo.")
    return Path(os.path.expandvars(value)).expanduser()


def parse_recipe(data: dict, name: str, where: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    data.setdefault("name", name)
    if "sources" not in data:
        raise RecipeError(f"{where}: field 'sources' is required (a list of {{type, weight, path}})")
    if not isinstance(data["sources"], list) or not data["sources"]:
        raise RecipeError(f"{where}: field 'sources' must be a non-empty list")
    data["sources"] = tuple(_build(Source, s, f"{where}: sources[{i}]") for i, s in enumerate(data["sources"]))
    if "match" in data:
        data = _from_old_match(data, where)
    if data.get("size_from") is not None:
        sf = data["size_from"]
        for old, new in _OLD_SIZE_FROM_KEYS.items():
            if isinstance(sf, dict) and old in sf:
                raise RecipeError(f"{where}: size_from: unknown key '{old}' (did you mean '{new}'? 'to' and 'by' "
                                  f"are the keys of its old spelling, match: {{to, by}})")
        data["size_from"] = _build(SizeFrom, sf, f"{where}: size_from")
    r = _build(Recipe, data, where)
    # The name becomes a directory under the output root: it must not be able to escape it.
    _expect(isinstance(r.name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", r.name) is not None, where,
            f"field 'name' must be letters, digits, '_', '-' or '.', got {r.name!r}")
    _expect(isinstance(r.kind, str) and r.kind in ("image", "video"), where,
            f"field 'kind' must be image or video, got {r.kind!r}")
    _expect((r.samples is None) != (r.size_from is None), where, "give exactly one of 'samples' or 'size_from'")
    if r.samples is not None:
        _expect(_is_int(r.samples) and r.samples > 0, where, f"field 'samples' must be a positive integer, got {r.samples!r}")
    if r.size_from:
        unit = r.size_from.unit
        _expect(isinstance(unit, str) and unit in SIZE_FROM_UNITS, where,
                f"size_from.unit must be one of {', '.join(SIZE_FROM_UNITS)}, got {unit!r}"
                f"{did_you_mean(unit, SIZE_FROM_UNITS)}")
        _expect(isinstance(r.size_from.recipe, str) and r.size_from.recipe != "", where,
                f"size_from.recipe must be the name or path of another recipe, got {r.size_from.recipe!r}")
        _expect(r.size_from.recipe != r.name, where,
                "size_from.recipe names this recipe itself: a recipe cannot be sized from itself")
    for i, s in enumerate(r.sources):
        sw = f"{where}: sources[{i}]"
        _expect(isinstance(s.type, str) and s.type in SOURCE_TYPES, sw,
                f"type must be one of {', '.join(SOURCE_TYPES)}, got {s.type!r}{did_you_mean(s.type, SOURCE_TYPES)}")
        _expect(_is_number(s.weight) and s.weight > 0, sw, f"weight must be a positive number, got {s.weight!r}")
        _expect(_is_opt_str(s.path) and _is_opt_str(s.media_root), sw, "'path' and 'media_root' must be strings")
        if s.type.startswith("llava"):
            _expect(bool(s.path) and bool(s.media_root), sw, f"a {s.type} source needs 'path' and 'media_root'")
        _expect(s.type.endswith(r.kind), sw, f"a {s.type} source cannot feed a {r.kind} recipe")
    for fld, lo in (("frames", 1), ("image_size", 8), ("shard_size", 1)):
        _expect(_is_int(getattr(r, fld)) and getattr(r, fld) >= lo, where, f"field '{fld}' must be an integer >= {lo}")
    _expect(_is_int(r.seed), where, "field 'seed' must be an integer")
    _expect(isinstance(r.split, str) and r.split in SPLITS, where, f"field 'split' must be one of {', '.join(SPLITS)}")
    _expect(_is_number(r.max_bad_fraction) and 0 <= r.max_bad_fraction < 1, where,
            "field 'max_bad_fraction' must be in [0, 1)")
    if r.max_pixels is not None:
        try:
            check_max_pixels(r.max_pixels, where)
        except ValueError:
            raise RecipeError(f"{where}: field 'max_pixels' must be an integer of at least 64 (e.g. 200704 = 448*448), "
                              f"or left out for image_size**2 ({r.image_size ** 2}), got {r.max_pixels!r}") from None
    _expect(isinstance(r.video_input, str) and r.video_input in VIDEO_INPUTS, where,
            f"field 'video_input' must be one of {', '.join(VIDEO_INPUTS)}, got {r.video_input!r}"
            + (did_you_mean(r.video_input, VIDEO_INPUTS) if isinstance(r.video_input, str) else ""))
    _expect(r.video_input == "images" or r.kind == "video", where,
            f"field 'video_input: {r.video_input}' is for video recipes (how clips reach the model); "
            f"an image recipe has none")
    _expect(isinstance(r.frame_order, str) and r.frame_order in FRAME_ORDERS, where,
            f"field 'frame_order' must be one of {', '.join(FRAME_ORDERS)}, got {r.frame_order!r}"
            + (did_you_mean(r.frame_order, FRAME_ORDERS) if isinstance(r.frame_order, str) else ""))
    if r.frame_order == "shuffled":
        _expect(r.kind == "video", where,
                "field 'frame_order: shuffled' is for video recipes (it reorders a clip's frames); "
                "an image recipe has no frame order")
        real = [s.type for s in r.sources if not s.type.startswith("synthetic")]
        _expect(not real, where,
                f"field 'frame_order: shuffled' needs generated sources (synthetic_video), whose clips are "
                f"shuffled from their known time order; got {', '.join(real)}")
    _expect(_is_opt_str(r.model), where, "field 'model' must be a model directory (a string)")
    _expect(isinstance(r.description, str), where, "field 'description' must be a string")
    _expect(_is_opt_str(r.path), where, "field 'path' must be a string")
    _expect(isinstance(r.train, dict), where, "field 'train' must be a mapping")
    return r


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A shipped recipe by name, or a recipe file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        path = p
    else:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            names = recipe_names()
            raise RecipeError(f"unknown recipe '{name_or_path}'{did_you_mean(name_or_path, names)}; "
                              f"shipped recipes: {', '.join(names)}")
    try:
        data = load_yaml(path)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    return dataclasses.replace(parse_recipe(data or {}, path.stem, str(path)), path=str(path))
