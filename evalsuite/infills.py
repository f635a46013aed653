"""vCoT infills (what happens between two frames) and static captions, with an on-disk cache.

Sources, chosen by `--infills`:
- `self` / `model:DIR`: a `ChatModel` answers the two-step procedure of `evalsuite.prompts` for each
  pair of consecutive sampled frames (optionally shortened by `--rephraser`), and describes each
  frame for the caption condition. Generation is batched over all pairs of an item.
- `oracle`: ground truth of the synthetic generator: each transition in the narration's own words
  (`narration.item_oracle_transition`), each frame described alone (`item_static_caption`).
- `oracle_noisy:P`: the oracle with a share P of its transitions corrupted (`narration.noisy_transition`),
  which ones decided by the item id and the frame pair, so every checkpoint, rank and resume sees the
  same corrupted texts; captions are the oracle's.
- `file:PATH`: precomputed JSONL lines `{"video": id, "frames": [i, j], "text": ...}`; lines with a
  single frame index are captions. Captions missing from the file come from the evaluated model.

Generated texts are cached by (video, frame indices, frame size and max_pixels, kind, generator
identity, prompt hash) under `<cache_dir>/<generator>-<identity>`, one JSON line per text. Every
process appends to a file of its own (`<generator>-<identity>.<host>-<pid>.jsonl`) and reads all of
them when it starts: evaluations on several nodes share one cache directory on a network file system,
where appends from two machines to one file can overwrite each other. A second checkpoint evaluated
with the same `model:DIR` generator (and the same max_pixels) therefore generates nothing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
from pathlib import Path

from PIL import Image

from data_recipes.processors import frame_options
from evalsuite import prompts
from evalsuite.benchmarks.video_qa import Item
from evalsuite.generation import ChatModel

Frames = dict[int, Image.Image]  # clip frame index -> frame


class InfillError(ValueError):
    pass


class InfillCache:
    """The texts of one generator: `get` from every file of the cache, `put` into this process's own file."""

    def __init__(self, path: Path):
        """`path`: `<cache_dir>/<generator>-<identity>.jsonl`, the name every process's file derives from."""
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        stem = self.path.name.removesuffix(".jsonl")
        files = [self.path, *sorted(self.path.parent.glob(f"{glob.escape(stem)}.*.jsonl"))]
        for f in files:  # the shared file of earlier versions, then one per writing process
            for line in f.read_text().splitlines() if f.is_file() else []:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: its text is simply generated again
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    self.entries[entry["key"]] = entry

    @property
    def own(self) -> Path:
        """This process's file (a forked child's is its own too)."""
        stem, host = self.path.name.removesuffix(".jsonl"), socket.gethostname()
        # the host's name in full (hashed): pod and node names often differ only past a slug's 40 characters
        tag = f"{_slug(host)[:24]}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"
        return self.path.with_name(f"{stem}.{tag}-{os.getpid()}.jsonl")

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        entry = {"key": key, **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)
        self.entries[key] = entry


class InfillSource:
    """Gives the texts placed between (vcot) or after (caption) the frames of an item."""
    identity = ""

    def transitions(self, item: Item, pairs: list[tuple[int, int]], frames: Frames) -> dict[tuple[int, int], str]:
        raise NotImplementedError

    def captions(self, item: Item, indices: list[int], frames: Frames) -> dict[int, str]:
        raise NotImplementedError


class OracleSource(InfillSource):
    """The synthetic generator's ground truth (the frames are not looked at)."""
    identity = "oracle"

    def transitions(self, item, pairs, frames):
        from data_recipes.synthetic.narration import item_oracle_transition

        return {(i, j): item_oracle_transition(item.meta, i, j) for i, j in pairs}

    def captions(self, item, indices, frames):
        from data_recipes.synthetic import item_static_caption

        return {t: item_static_caption(item.meta, t) for t in indices}


class NoisyOracleSource(OracleSource):
    """The oracle with a share `p` of its transitions corrupted by `narration.noisy_transition`, which picks
    and corrupts an infill from its key: the item id and the frame pair (`noise_key`)."""

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise InfillError(f"oracle_noisy: the share of corrupted infills must be in [0, 1], got {p!r}")
        self.p = p
        self.identity = f"oracle_noisy:{p!r}"

    @staticmethod
    def noise_key(item: Item, pair: tuple[int, int]) -> str:
        return f"{item.id}|{pair[0]}-{pair[1]}"

    def transitions(self, item, pairs, frames):
        from data_recipes.synthetic.narration import noisy_transition

        return {(i, j): noisy_transition(item.meta, i, j, self.p, self.noise_key(item, (i, j))) for i, j in pairs}


class FileSource(InfillSource):
    def __init__(self, path: Path, caption_fallback: InfillSource):
        self.path, self.fallback = Path(path), caption_fallback
        raw = self.path.read_bytes()
        self.identity = "file-" + hashlib.sha256(raw).hexdigest()[:12]
        self.texts: dict[tuple[str, tuple[int, ...]], str] = {}
        for n, line in enumerate(raw.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                self.texts[(str(d["video"]), tuple(int(i) for i in d["frames"]))] = str(d["text"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InfillError(f"{self.path}:{n}: expected {{\"video\", \"frames\": [i, j], \"text\"}} ({e})") from None

    def transitions(self, item, pairs, frames):
        missing = [p for p in pairs if (item.video, p) not in self.texts]
        if missing:
            raise InfillError(f"{self.path}: no infill for video {item.video} frames {list(missing[0])} "
                              f"({len(missing)} pairs missing for this video)")
        return {p: self.texts[(item.video, p)] for p in pairs}

    def captions(self, item, indices, frames):
        if all((item.video, (t,)) in self.texts for t in indices):
            return {t: self.texts[(item.video, (t,))] for t in indices}
        return self.fallback.captions(item, indices, frames)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]


class ModelSource(InfillSource):
    def __init__(self, generator: ChatModel, cache_dir: Path, *, rephraser: ChatModel | None = None,
                 max_new_tokens: int = 48, batch_size: int = 8, size: int | None = None,
                 max_pixels: int | None = None):
        self.gen, self.rephraser = generator, rephraser
        self.max_new_tokens, self.batch_size, self.size = max_new_tokens, batch_size, size
        self.max_pixels = max_pixels
        self.identity = f"{generator.name}-{generator.identity}" + (f"+{rephraser.identity}" if rephraser else "")
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:12]
        self.cache = InfillCache(Path(cache_dir) / f"{_slug(generator.name)}-{digest}.jsonl")

    def _key(self, item: Item, frames: tuple[int, ...], kind: str) -> str:
        key = [item.video, list(frames), self.size, kind, self.identity, prompts.PROMPTS_HASH, self.max_new_tokens]
        if self.max_pixels:  # frames shrunk by the resize rule (no limit: the key it always had)
            key.append({"max_pixels": self.max_pixels})
        raw = json.dumps(key)
        return hashlib.sha256(raw.encode()).hexdigest()

    def _ask(self, contents, images) -> list[str]:
        options = frame_options(self.gen.processor) if self.gen.processor is not None else {}
        return self.gen.generate(contents, images, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                 image_options=options)

    def transitions(self, item, pairs, frames):
        keys = {p: self._key(item, p, "transition") for p in pairs}
        todo = [p for p in dict.fromkeys(pairs) if self.cache.get(keys[p]) is None]
        if todo:
            images = [[frames[i], frames[j]] for i, j in todo]
            common = self._ask([prompts.common_prompt() for _ in todo], images)
            between = self._ask([prompts.between_prompt(c) for c in common], images)
            final = between
            if self.rephraser is not None:
                final = self.rephraser.generate([prompts.rephrase_prompt(b) for b in between], None,
                                                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
            for p, c, b, f in zip(todo, common, between, final):
                self.cache.put(keys[p], {"video": item.video, "frames": list(p), "kind": "transition",
                                         "text": f, "steps": {"common": c, "between": b}})
        return {p: self.cache.get(keys[p])["text"] for p in pairs}

    def captions(self, item, indices, frames):
        keys = {t: self._key(item, (t,), "caption") for t in indices}
        todo = [t for t in dict.fromkeys(indices) if self.cache.get(keys[t]) is None]
        if todo:
            texts = self._ask([prompts.describe_prompt() for _ in todo], [[frames[t]] for t in todo])
            for t, text in zip(todo, texts):
                self.cache.put(keys[t], {"video": item.video, "frames": [t], "kind": "caption", "text": text})
        return {t: self.cache.get(keys[t])["text"] for t in indices}
