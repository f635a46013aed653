"""Sources: where a recipe's samples come from, turned into the toolkit's sample schema (`data_recipes.schema`).

Every source is addressed by position: `source.make(i)` returns the i-th sample (or a `Skip` saying
why record i is unusable), a pure function of the recipe and i. That is what lets the build run in
several worker processes and still write byte-identical shards.

- `synthetic_image` / `synthetic_video`: the generator in `data_recipes.synthetic` (endless).
- `llava_image` / `llava_video`: instruction data as published, a JSON list (or JSONL) of records,
  media relative to `media_root`. Accepted per record:
  * LLaVA (`llava_v1_5_mix665k.json`, LLaVA-Video-178K): `{"id", "image" | "video": path or [paths],
    "conversations": [{"from": "human" | "gpt" | "system", "value": "<image>\\n..."}, ...]}`; no media key
    (or null) is a text-only record;
  * ShareGPT as LLaMA-Factory and TRL write it: `{"messages": [{"role": "user" | "assistant" |
    "system", "content": "<image>..." or [{"type": "text", "text"}, {"type": "image"}]}],
    "images" | "videos": [paths]}`, optional `"system"` text; a video may be a list of frame files, or a
    folder of them (ShareGPTVideo's layout: its image files in name order).
  The k-th media tag stands for the k-th file; a record with one file and no tag gets it before the
  first question. A video (mp4 through PyAV, or frame files) gives the recipe's `frames` frames,
  sampled uniformly, as that many image markers where its tag stood (`<video>`, or `<image>` as
  LLaVA-Video-178K writes it); the sample's `clips` field lists the frames of each video (what
  `data_recipes.clips.as_video` groups into clips on the native video path) and, for an mp4,
  `clip_fps` how many of the sampled frames fall in one second of the video (Qwen2.5-VL spaces its
  temporal positions by it). An image recipe takes
  single-image, multi-image and text-only records; a video recipe takes video records.
  Broken records are a `Skip` (bad, counted against `max_bad_fraction`); well-formed records the
  toolkit does not train on are `Unsupported` (counted by reason apart; see `UNSUPPORTED`).
Real sources are read in a seeded shuffled order so that `samples: N` takes a random subset.

Sizes follow the one resize rule (`data_recipes.resize.fit`): a real image or frame is stored with at
most `recipe.pixel_budget()` pixels (`max_pixels`, or image_size**2 when the recipe gives none), aspect
kept, never upsampled. Generated frames are rendered image_size x image_size and go through the rule
only with the recipe's own `max_pixels`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from PIL import Image

from data_recipes import synthetic
from data_recipes.recipe import Recipe, RecipeError, Source, expand_path
from data_recipes.resize import fit
from data_recipes.schema import SampleRecord, image_part, text_part, validate_messages
from data_recipes.video import VideoError, count_frames, frame_rate, read_frames, sampled_fps, uniform_indices


@dataclass
class Sample:
    json: SampleRecord
    images: list  # PIL images, one per {"type": "image"} marker, in order


@dataclass
class Skip:
    reason: str
    """missing_image | unreadable_image | missing_video | unreadable_video | malformed_conversation |
    malformed_record"""
    record: str
    detail: str


@dataclass
class Unsupported(Skip):
    """A well-formed record of a kind the toolkit does not train on (reason: a key of `UNSUPPORTED`).

    The build counts these by reason in the manifest's `unsupported`, apart from bad records: they
    do not use up `max_bad_fraction`."""


UNSUPPORTED = {
    "audio": "an `audio`/`audios` field or an <audio> tag",
    "image_and_video": "images and videos in one record",
    "video_in_image_recipe": "a video record in an image recipe",
    "image_in_video_recipe": "an image record in a video recipe",
    "text_only_in_video_recipe": "a record without media in a video recipe",
    "media_tag_mismatch": "media tags that cannot be paired with the record's files (a count other than "
                          "the files', except no tag for one file; a <video> tag with images; a tag without media)",
    "media_tag_placement": "a media tag in an assistant or system turn",
    "tool_turns": "function_call / observation / tool turns",
    "remote_media": "a media URL (nothing is downloaded)",
    "embedded_media": "a media object (e.g. {'bytes', 'path'}) instead of a file name",
}


class SyntheticSource:
    """The generator's i-th image or video sample of the recipe's seed and split.

    A `frame_order: shuffled` recipe asks for the same clip with its frames in a seeded non-identity
    order (`shuffle_frames=True`): the question and answer stay the true clip's, and the sample's
    `meta["frame_order"]` records the permutation."""

    def __init__(self, recipe: Recipe, source: Source):
        self.recipe, self.video = recipe, source.type == "synthetic_video"

    def __len__(self):
        return 2**62  # endless

    def make(self, i: int) -> Sample:
        r = self.recipe
        if self.video:
            js, ims = synthetic.video_sample(r.seed, i, r.split, frames=r.frames, image_size=r.image_size,
                                             shuffle_frames=r.frame_order == "shuffled")
        else:
            js, ims = synthetic.image_sample(r.seed, i, r.split, image_size=r.image_size)
        # Rendered at image_size x image_size: within the default budget (image_size**2) already, so
        # only a recipe's own max_pixels can shrink them (and without it the shards stay as they were).
        return Sample(js, [fit(im, r.max_pixels) for im in ims])


# --- conversations ----------------------------------------------------------------------------------
_TAG = re.compile(r"<(image|video|audio)>")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TOOL_ROLES = ("function_call", "observation", "tool", "function", "tool_call", "tool_response", "ipython")


LEADING_ASSISTANT_TURN = "leading_assistant_turn_dropped"
"""A sample's `meta.adjusted` entry (and the manifest's `adjusted` key): the record's conversation opened
with an assistant turn (after any system turn), which the build dropped; the rest of it is the sample."""


class UnsupportedRecord(ValueError):
    """A well-formed record of a kind the toolkit does not train on; `reason` is its manifest key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class BadRecord(ValueError):
    """A broken record (not a broken conversation); `reason` is its manifest key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _segments(content, where: str) -> list[tuple[str, str]]:
    """A turn's content as ("text", str) and ("tag", "image"|"video"|"audio") pieces, in order.

    Content is a string with `<image>` / `<video>` tags (LLaVA, ShareGPT) or a list of parts
    `{"type": "text", "text": ...}` / `{"type": "image"|"video"|"audio"}` (TRL / HF chat format)."""
    if isinstance(content, str):
        pieces = _TAG.split(content)  # text, tag, text, tag, ..., text
        return [("tag" if k % 2 else "text", p) for k, p in enumerate(pieces) if k % 2 or p]
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                out += _segments(part["text"], where)
            elif kind in ("image", "video", "audio"):
                out.append(("tag", kind))
            else:
                raise ValueError(f"{where}: content[{j}] must be {{'type': 'text', 'text': str}} or "
                                 f"{{'type': 'image'|'video'}}, got {str(part)[:80]}")
        return out
    raise ValueError(f"{where}: the turn's text must be a string or a list of parts, got {type(content).__name__}")


def parse_turns(conv, where: str) -> list[tuple[str, list]]:
    """`conversations` (`from`/`value`) or `messages` (`role`/`content`) -> [(role, segments)],
    roles mapped to user | assistant | system."""
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: the conversation must be a non-empty list of turns")
    out = []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: turn {t} must be an object, got {type(turn).__name__}")
        who, content = (turn.get("from"), turn.get("value")) if "from" in turn or "value" in turn else (
            turn.get("role"), turn.get("content"))
        if isinstance(who, str) and who in TOOL_ROLES:
            raise UnsupportedRecord("tool_turns", f"{where}: turn {t} is a '{who}' turn (tool use is not supported)")
        if not isinstance(who, str) or who not in ROLES:
            raise ValueError(f"{where}: turn {t}: role {str(who)[:40]!r} is not one of human, gpt, user, assistant, "
                             "system")
        out.append((ROLES[who], _segments(content, f"{where}: turn {t}")))
    return out


def turns_to_messages(turns: list[tuple[str, list]], media: list[int], media_kind: str | None, where: str,
                      system: str | None = None) -> list[dict]:
    """Parsed turns -> chat messages of the sample schema.

    `media` holds the number of image markers each media item becomes (1 for an image, the recipe's
    frames for a video), in the order of the record's list. The k-th media tag of the user turns
    stands for item k; a record with one item and no tag gets it before the first question
    (LLaVA's convention). In a video record `<image>` tags stand for the video too (LLaVA-Video-178K
    writes `<image>`). Anything else that does not pair tags with items is an `UnsupportedRecord`.
    """
    if turns and turns[0][0] == "system":
        system_turn, body = turns[0], turns[1:]
    else:
        system_turn, body = (("system", [("text", system)]) if isinstance(system, str) else None), turns
    for t, (role, segs) in enumerate(body):
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"{where}: turn {t + (len(turns) - len(body))} is a '{role}' turn, expected '{expected}'"
                             + (" (a system turn may only come first)" if role == "system" else ""))
    if len(body) < 2:
        raise ValueError(f"{where}: the conversation needs a user turn and an assistant ('gpt') turn")
    if body[-1][0] != "assistant":
        raise ValueError(f"{where}: the last turn must be from 'gpt' (the assistant)")
    accepted = {"image": ("image",), "video": ("video", "image")}.get(media_kind, ())
    tags = []
    for role, segs in ([system_turn] if system_turn else []) + body:
        for kind, value in segs:
            if kind != "tag":
                continue
            if value == "audio":
                raise UnsupportedRecord("audio", f"{where}: an <audio> tag (audio is not supported)")
            if role != "user":
                article = "an" if role == "assistant" else "a"
                raise UnsupportedRecord("media_tag_placement", f"{where}: a <{value}> tag in {article} {role} turn "
                                                               "(media only go in user turns)")
            if value not in accepted:
                what = f"{media_kind} files" if media_kind else "no media"
                raise UnsupportedRecord("media_tag_mismatch", f"{where}: a <{value}> tag in a record with {what}")
            tags.append(value)
    if len(tags) != len(media) and not (not tags and len(media) == 1):
        noun = {"image": "image", "video": "video"}.get(media_kind, "media")
        raise UnsupportedRecord("media_tag_mismatch", f"{where}: {len(tags)} media tags for {len(media)} "
                                                      f"{noun} file(s)")
    messages, k = [], 0
    if system_turn:
        text = "".join(v for _, v in system_turn[1]).strip()
        if text:
            messages.append({"role": "system", "content": [text_part(text)]})
    for t, (role, segs) in enumerate(body):
        if role == "assistant":
            text = "".join(v for _, v in segs).strip()
            if not text:
                raise ValueError(f"{where}: turn {t} (assistant) must be non-empty text")
            messages.append({"role": "assistant", "content": [text_part(text)]})
            continue
        content = []
        if t == 0 and not tags:
            content += [image_part()] * sum(media)
        for kind, value in segs:
            if kind == "tag":
                content += [image_part()] * media[k]
                k += 1
            elif value.strip():
                content.append(text_part(value.strip()))
        if not content:
            raise ValueError(f"{where}: turn {t} (user) holds neither text nor media")
        messages.append({"role": "user", "content": content})
    return messages


def conversation_to_messages(conv, n_images: int, where: str) -> list[dict]:
    """LLaVA `conversations` (human/gpt only) -> chat messages with `n_images` image markers where the
    one media tag stood (or before the first question when there is none)."""
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError(f"{where}: 'conversations' must be a list of at least 2 turns")
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: conversations[{t}] must be {{'from': 'human'|'gpt', 'value': str}}")
    return turns_to_messages(parse_turns(conv, where), [n_images], "video", where)


# --- LLaVA / ShareGPT records ----------------------------------------------------------------------------
@dataclass
class _BadLine:
    line: int
    error: str


def _media_list(rec: dict, keys: tuple[str, str], where: str, frames_ok: bool) -> list:
    """The record's media paths under `image`/`images` (or `video`/`videos`): [] when absent or null."""
    present = [k for k in keys if rec.get(k) not in (None, [], "")]
    if len(present) > 1:
        raise BadRecord("malformed_record", f"{where}: both '{keys[0]}' and '{keys[1]}' are given")
    if not present:
        return []
    key = present[0]
    value = rec[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BadRecord("malformed_record", f"{where}: field '{key}' must be a file name or a list of them, "
                                            f"got {type(value).__name__}")
    for item in items:
        if isinstance(item, dict):
            raise UnsupportedRecord("embedded_media", f"{where}: field '{key}' holds an object ({str(item)[:60]}), "
                                                      "not a file name (embedded media are not supported)")
        names = item if frames_ok and isinstance(item, list) else [item]  # a video may be a list of frame files
        if not names or not all(isinstance(n, str) and n for n in names):
            raise BadRecord("malformed_record", f"{where}: field '{key}' must be a file name or a list of them, "
                                                f"got {str(value)[:80]}")
        if any(re.match(r"[a-z][a-z0-9+.-]*://", n) for n in names):
            raise UnsupportedRecord("remote_media", f"{where}: {str(item)[:80]} is a URL (nothing is downloaded)")
    return items


FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""Image files a folder given as a video holds, its frames."""


class LlavaSource:
    """LLaVA-style or ShareGPT-style image or video instruction data (JSON list or JSONL) with a media folder.

    Per record (see `make`): `conversations` (`from`/`value`) or `messages` (`role`/`content`); media under
    `image`/`images` or `video`/`videos` (a file name or a list; a video may also be a list of frame
    files, or a folder of them); optional `system` (or `system_prompt`) text. An image recipe takes single-image,
    multi-image and text-only records; a video recipe takes video records. Other records are
    `Unsupported` (counted by reason, outside `max_bad_fraction`), broken ones a `Skip`.
    """

    def __init__(self, recipe: Recipe, source: Source, where: str):
        self.recipe, self.video = recipe, source.type == "llava_video"
        self.budget = recipe.pixel_budget()
        self.path = expand_path(source.path, f"{where}.path")
        self.root = expand_path(source.media_root, f"{where}.media_root")
        field = "video" if self.video else "image"
        layout = (f"expected a JSON list of {{'id', '{field}', 'conversations'}} records (or ShareGPT "
                  f"{{'messages', '{field}s'}} records; a .jsonl file holds one record a line) at {self.path} "
                  f"and the {field} files under {self.root}/")
        if not self.path.is_file():
            raise RecipeError(f"{where}: annotation file {self.path} does not exist; {layout}. "
                              "Without real data, try the generated recipes image_demo and video_demo.")
        if not self.root.is_dir():
            raise RecipeError(f"{where}: media folder {self.root} does not exist; {layout}")
        if self.path.suffix == ".jsonl":
            records = []
            # lines end at \n only: str.splitlines would also cut at U+2028, U+2029 and U+0085, which JSON
            # strings may hold raw (a writer with ensure_ascii=False emits them). Each line is decoded on its own:
            # a line a latin-1 tool wrote costs that record, not the file.
            for n, raw in enumerate(self.path.read_bytes().split(b"\n"), 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    records.append(_BadLine(n, f"not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})"))
                    continue
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        records.append(_BadLine(n, f"not valid JSON ({e})"))
        else:
            try:
                records = json.loads(self.path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RecipeError(f"{self.path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                                  f"JSON annotation files are UTF-8; {layout}") from None
            except json.JSONDecodeError as e:
                raise RecipeError(f"{self.path}: not valid JSON ({e}); {layout}") from None
            if not isinstance(records, list):
                raise RecipeError(f"{self.path}: top level must be a list of records; {layout}")
        self.records, self.field = records, field
        self.order = list(range(len(records)))
        # Seeded by the file's name, not its path: the same data gives the same shards wherever it is mounted.
        random.Random(f"{recipe.seed}:{self.path.name}").shuffle(self.order)

    def __len__(self):
        return len(self.records)

    def _plan(self, rec: dict, where: str):
        """(image paths, videos, messages) of a record, or UnsupportedRecord / BadRecord / ValueError."""
        for key in ("audio", "audios"):
            if rec.get(key) not in (None, [], ""):
                raise UnsupportedRecord("audio", f"{where}: field '{key}' (audio is not supported)")
        images = _media_list(rec, ("image", "images"), where, frames_ok=False)
        videos = _media_list(rec, ("video", "videos"), where, frames_ok=True)
        if images and videos:
            raise UnsupportedRecord("image_and_video", f"{where}: images and videos in one record")
        if self.video and images:
            raise UnsupportedRecord("image_in_video_recipe", f"{where}: an image record in a video recipe")
        if self.video and not videos:
            raise UnsupportedRecord("text_only_in_video_recipe", f"{where}: a text-only record in a video recipe")
        if not self.video and videos:
            raise UnsupportedRecord("video_in_image_recipe", f"{where}: a video record in an image recipe")
        key = "conversations" if "conversations" in rec else "messages"
        if key not in rec:
            raise ValueError(f"{where}: the record has neither 'conversations' nor 'messages'")
        system = next((rec[k] for k in ("system", "system_prompt") if isinstance(rec.get(k), str)), None)
        media = [self.recipe.frames] * len(videos) if videos else [1] * len(images)
        kind = "video" if videos else "image" if images else None
        turns = parse_turns(rec[key], where)
        first = 1 if turns[0][0] == "system" else 0
        adjusted = []
        if len(turns) > first + 2 and turns[first][0] == "assistant" and all(k == "text" for k, _ in turns[first][1]):
            # ShareGPT conversations cut out of a longer chat may open with the assistant; LLaVA's own training
            # drops that turn and keeps the rest, and so does the build (counted in the manifest's `adjusted`)
            turns = turns[:first] + turns[first + 1:]
            adjusted.append(LEADING_ASSISTANT_TURN)
        return images, videos, turns_to_messages(turns, media, kind, where, system), adjusted

    def _read_video(self, item, rid: str, where: str):
        """(frames, sampled frames per second or None) of one video (an mp4, a list of frame files, or a folder
        of them, as ShareGPTVideo ships its videos: its image files in name order), or a Skip."""
        r = self.recipe
        if isinstance(item, str) and (self.root / item).is_dir():
            folder = self.root / item
            item = [f"{item}/{f.name}" for f in sorted(folder.iterdir()) if f.suffix.lower() in FRAME_SUFFIXES]
            if not item:
                return Skip("unreadable_video", rid, f"{where}: {folder} is a folder without frame files "
                                                     f"({', '.join(FRAME_SUFFIXES)})")
        if isinstance(item, list):
            picked = [item[j] for j in uniform_indices(len(item), r.frames)]
            frames = []
            for name in picked:
                im = self._read_image(name, rid, where, "video")
                if isinstance(im, Skip):
                    return im
                frames.append(im)
            return frames, None  # frame files carry no timing
        media = self.root / item
        if not media.is_file():
            return Skip("missing_video", rid, f"{where}: {media} does not exist")
        try:
            # counted once: a container without a frame count in its header (MKV, WebM, fragmented MP4) is
            # counted by decoding it whole, which the frame reading and the rate used to do once more each
            total = count_frames(media)
            images = read_frames(media, indices=uniform_indices(total, r.frames), size=None)
            rate = sampled_fps(len(images), total, frame_rate(media))
            return [fit(im.convert("RGB"), self.budget) for im in images], rate
        except (OSError, VideoError, ValueError) as e:
            return Skip("unreadable_video", rid, f"{where}: {media}: {e}")

    def _read_image(self, name: str, rid: str, where: str, kind: str = "image"):
        media = self.root / name
        if not media.is_file():
            return Skip(f"missing_{kind}", rid, f"{where}: {media} does not exist")
        try:
            with Image.open(media) as im:
                im.load()
                return fit(im.convert("RGB"), self.budget)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL raises OSError subclasses, ValueError for some corrupt data, SyntaxError for a PNG chunk
            # damaged after the first ("broken PNG file"), and DecompressionBombError for an image over twice
            # its pixel limit (about 179 Mpx): each costs its record, not the build
            return Skip(f"unreadable_{kind}", rid, f"{where}: {media}: {e}")

    def make(self, i: int) -> Sample | Skip:
        """The i-th record (in the seeded order) as a Sample, an Unsupported record, or a Skip (bad).

        Bad (`Skip`, counted against `max_bad_fraction`): malformed_record (not an object, not JSON,
        media field of the wrong type), malformed_conversation (roles out of order, no assistant turn,
        an empty turn...), missing_image / unreadable_image / missing_video / unreadable_video.
        Unsupported (`Unsupported`, counted apart): see `UNSUPPORTED`.
        """
        idx = self.order[i]
        rec = self.records[idx]
        if isinstance(rec, _BadLine):
            return Skip("malformed_record", f"line {rec.line}",
                        f"{self.path} line {rec.line}: {rec.error}")
        rid = str(rec.get("id", f"#{idx}")) if isinstance(rec, dict) else f"#{idx}"
        where = f"{self.path} record {rid}"
        if not isinstance(rec, dict):
            return Skip("malformed_record", rid, f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        try:
            images, videos, messages, adjusted = self._plan(rec, where)
        except UnsupportedRecord as e:
            return Unsupported(e.reason, rid, str(e))
        except BadRecord as e:
            return Skip(e.reason, rid, str(e))
        except ValueError as e:
            return Skip("malformed_conversation", rid, str(e))
        pixels, rates = [], []
        for item in videos:
            got = self._read_video(item, rid, where)
            if isinstance(got, Skip):
                return got
            pixels += got[0]
            rates.append(got[1])
        for name in images:
            im = self._read_image(name, rid, where)
            if isinstance(im, Skip):
                return im
            pixels.append(im)
        markers = validate_messages(messages, where=where)  # the schema's check, as the trainer's loader makes it
        if markers != len(pixels):  # a video that gave fewer frames than asked for
            return Skip("unreadable_video", rid, f"{where}: {len(pixels)} frames read, {markers} expected")
        files = videos or images
        if len(files) == 1 and isinstance(files[0], str):
            meta = {"file": files[0]}
        else:
            meta = {"files": files} if files else {}
        if isinstance(rec.get("data_source"), str):
            meta["data_source"] = rec["data_source"]
        if adjusted:
            meta["adjusted"] = adjusted
        js: SampleRecord = {"id": rid, "source": self.path.name, "kind": "video" if self.video else "image",
                            "messages": messages, "meta": meta}
        if videos:  # frames per clip: two videos whose tags stood side by side stay two clips (`as_video`)
            js["clips"] = [self.recipe.frames] * len(videos)
            if any(rates):  # sampled frames per second of each clip (None: unknown), for Qwen2.5-VL's time ids
                js["clip_fps"] = [round(x, 6) if x else None for x in rates]
        return Sample(js, pixels)


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
