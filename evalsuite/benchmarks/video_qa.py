"""Benchmarks of 5-way video questions: the generated `synthetic` test split and `egoschema`.

Both give `Item`s (question, 5 options, answer, a video id) and the frames of an item at the
EgoSchema sampling `int(i * n / (F + 1))`, i = 1..F (`data_recipes.video.uniform_indices`), so every
task samples the same frames for the same F. Items are listed without decoding anything; frames are
rendered or decoded when a task asks for them, then go through the one resize rule
(`data_recipes.resize.fit`: at most `max_pixels` pixels, aspect kept, never upsampled) with the budget
of the checkpoint being evaluated. Synthetic frames are rendered square at `--image-size`; EgoSchema
frames are decoded at the video's own size (no square squash).

Decoded frames go through a `FrameCache` when the benchmark has one (`frame_cache`, given by the runner:
`<cache_dir>/frames`): a frame decoded once at a given `max_pixels` is read back by every later task,
condition and checkpoint, and so are each video's frame count and rate. Rendered (synthetic) frames are
not cached: rendering costs less than a PNG round trip. `decoded` counts the frames this benchmark
decoded or rendered; the cache counts its hits.

    bench = load_benchmark(cfg)
    for item in bench.items:
        idx = bench.indices(item, 5); frames = bench.frames(item, idx, max_pixels=200704)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data_recipes.resize import fit
from data_recipes.video import count_frames, frame_rate, read_frames, sampled_fps, uniform_indices
from evalsuite.config import ConfigError, EvalConfig
from evalsuite.framecache import FrameCache

SYNTHETIC_ITEMS = 200  # default size of the synthetic benchmark when --limit is not given
SYNTHETIC_CLIP_FRAMES = 32
SYNTHETIC_IMAGE_SIZE = 64
_OPTION_KEY = re.compile(r"^option (\d+)$")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class BenchmarkError(ValueError):
    pass


@dataclass
class Item:
    id: str
    question: str
    options: list[str]
    answer: int
    video: str
    """Identity of the clip (infill cache key): the synthetic item id or the EgoSchema q_uid."""
    meta: dict = field(default_factory=dict)
    path: Path | None = None


class Benchmark:
    name = ""
    size: int | None = None  # square size frames are rendered at (None: the video's own size)
    cacheable = False
    """Whether `frames` goes through `frame_cache` (decoded frames; rendered ones are cheaper to make again)."""

    def __init__(self, frame_cache: FrameCache | None = None) -> None:
        self.items: list[Item] = []
        self.problems: list[dict] = []  # items that could not be scored: {"id", "reason"}
        self.frame_cache = frame_cache
        self.decoded = 0
        """Frames this benchmark decoded (or rendered), i.e. did not read back from the frame cache."""

    def clip_length(self, item: Item) -> int:
        raise NotImplementedError

    def indices(self, item: Item, num_frames: int) -> list[int]:
        return uniform_indices(self.clip_length(item), num_frames)

    def clip_fps(self, item: Item, num_frames: int) -> float | None:
        """How many of `num_frames` sampled frames fall in one second of the video (None: no timing)."""
        return None

    def frames(self, item: Item, indices: list[int], max_pixels: int | None = None) -> list[Image.Image]:
        """The frames at `indices`, each within `max_pixels` pixels (aspect kept; None: as rendered or decoded);
        from the frame cache when it holds them."""
        if self.cacheable and self.frame_cache is not None and item.path is not None:
            return self.frame_cache.frames(item.path, indices, max_pixels,
                                           lambda missing: self._made(item, missing, max_pixels))
        return self._made(item, indices, max_pixels)

    def _made(self, item: Item, indices: list[int], max_pixels: int | None) -> list[Image.Image]:
        frames = self._frames(item, list(indices))
        self.decoded += len(frames)
        return [fit(frame, max_pixels) for frame in frames]

    def _frames(self, item: Item, indices: list[int]) -> list[Image.Image]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"benchmark": self.name, "items": len(self.items), "problems": self.problems}


class Synthetic(Benchmark):
    """The generator's evaluation split (`data_recipes.synthetic.eval_record`), rendered on demand."""
    name = "synthetic"

    def __init__(self, seed: int, limit: int | None, image_size: int | None, frame_cache: FrameCache | None = None):
        super().__init__(frame_cache)
        from data_recipes.synthetic import eval_record

        self.seed, self.size = seed, image_size or SYNTHETIC_IMAGE_SIZE
        for i in range(limit or SYNTHETIC_ITEMS):
            r = eval_record(seed, i, split="test", clip_frames=SYNTHETIC_CLIP_FRAMES)
            self.items.append(Item(r["id"], r["question"], list(r["options"]), int(r["answer"]), r["id"], r["meta"]))

    def clip_length(self, item: Item) -> int:
        return SYNTHETIC_CLIP_FRAMES

    def _frames(self, item: Item, indices: list[int]) -> list[Image.Image]:
        from data_recipes.synthetic import item_scene, render_frames

        return render_frames(item_scene(item.meta), list(indices), self.size)


class EgoSchema(Benchmark):
    """questions.json + subset_answers.json + videos/<q_uid>.mp4 (README, Evaluation)."""
    name = "egoschema"
    cacheable = True

    def __init__(self, data: str | Path, limit: int | None, image_size: int | None = None,
                 frame_cache: FrameCache | None = None):
        super().__init__(frame_cache)
        if image_size is not None:  # the old square squash; EvalConfig says the same for --image-size
            raise BenchmarkError(f"EgoSchema frames keep their aspect: image_size {image_size} is not applied any "
                                 f"more; bound them with max_pixels (frames(item, indices, max_pixels=N))")
        self.root = root = Path(data).expanduser().resolve()
        qfile, afile = root / "questions.json", root / "subset_answers.json"
        if not qfile.is_file():
            raise BenchmarkError(f"{qfile}: missing (an EgoSchema directory holds questions.json, "
                                 f"subset_answers.json and videos/<q_uid>.mp4)")
        questions = _read_json(qfile)
        answers = _read_json(afile) if afile.is_file() else {}
        if not isinstance(questions, list):
            raise BenchmarkError(f"{qfile}: expected a list of questions")
        if not isinstance(answers, dict):
            raise BenchmarkError(f"{afile}: expected a mapping {{q_uid: 0..4}}")
        self._lengths: dict[str, int] = {}
        self._rates: dict[str, float | None] = {}
        answered = []
        for n, q in enumerate(questions):
            if not isinstance(q, dict):
                raise BenchmarkError(f"{qfile}: question [{n}] must be an object with 'q_uid', 'question', "
                                     f"'option 0'..'option 4', got {type(q).__name__}")
            uid = q.get("q_uid")
            if not uid or not isinstance(uid, str):
                raise BenchmarkError(f"{qfile}: question [{n}] has no 'q_uid' (a string): {str(q)[:80]}")
            if not _PLAIN_NAME.fullmatch(uid):
                # q_uid names the video file: it must not reach outside videos/
                raise BenchmarkError(f"{qfile}: q_uid {uid!r} is not a plain file name (letters, digits, '_', '-', '.')")
            if not isinstance(q.get("question"), str):
                raise BenchmarkError(f"{qfile}: q_uid {uid} has no field 'question' (a string)")
            options = _options(q, qfile, uid)
            given = answers.get(uid, q.get("answer"))
            if given is None:
                continue  # unanswered questions (the hidden part of EgoSchema) cannot be scored
            if (answer := _answer(given)) is None:
                raise BenchmarkError(f"{afile}: answer {given!r} of q_uid {uid} is not 0..4")
            answered.append(Item(uid, q["question"], options, answer, uid, {}, root / "videos" / f"{uid}.mp4"))
        if not answered:
            raise BenchmarkError(f"{root}: no question has an answer (subset_answers.json or an 'answer' field)")
        self.unanswered = len(questions) - len(answered)
        for item in answered[:limit] if limit else answered:
            if item.path.is_file():
                self.items.append(item)
            else:
                self.problems.append({"id": item.id, "reason": f"missing video {item.path}"})

    def _meta(self, item: Item) -> None:
        """The video's frame count and rate, from the frame cache when it knows them (no container opened)."""
        def read() -> dict:
            return {"frames": count_frames(item.path), "fps": frame_rate(item.path)}

        meta = self.frame_cache.meta(item.path, read) if self.frame_cache is not None else read()
        self._lengths[item.id], self._rates[item.id] = int(meta["frames"]), meta["fps"]

    def clip_length(self, item: Item) -> int:
        if item.id not in self._lengths:
            self._meta(item)
        return self._lengths[item.id]

    def clip_fps(self, item: Item, num_frames: int) -> float | None:
        if item.id not in self._rates:
            self._meta(item)
        return sampled_fps(num_frames, self.clip_length(item), self._rates[item.id])

    def _frames(self, item: Item, indices: list[int]) -> list[Image.Image]:
        return read_frames(item.path, indices=list(indices))  # the video's own size; `frames` applies the rule

    def describe(self) -> dict:
        return {**super().describe(), "unanswered": self.unanswered}


def _answer(value) -> int | None:
    """0..4 from an int or a digit string; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 5:
        return value
    if isinstance(value, str) and value.strip() in ("0", "1", "2", "3", "4"):
        return int(value)
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e})") from None


def _options(q: dict, qfile: Path, uid: str) -> list[str]:
    found = {int(m.group(1)): v for k, v in q.items() if (m := _OPTION_KEY.match(k))}
    if sorted(found) != list(range(5)):
        raise BenchmarkError(f"{qfile}: q_uid {uid} has options {sorted(found)}; expected exactly 'option 0'.."
                             f"'option 4' (5 options)")
    return [str(found[i]) for i in range(5)]


def load_benchmark(cfg: EvalConfig, frame_cache: FrameCache | None = None) -> Benchmark:
    """The benchmark `cfg` names; decoded frames go through `frame_cache` when given."""
    if cfg.benchmark == "synthetic":
        return Synthetic(cfg.seed, cfg.limit, cfg.image_size, frame_cache)
    if cfg.benchmark == "egoschema":
        # EvalConfig refuses --image_size here (--max_pixels instead)
        return EgoSchema(cfg.data, cfg.limit, frame_cache=frame_cache)
    raise ConfigError(f"no loader for benchmark {cfg.benchmark!r}")  # EvalConfig validated the name
