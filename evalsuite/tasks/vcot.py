"""vCoT: does interleaving frames with transitional infills help a model answer video questions?

For every item and every F in `--frames`, six conditions (layouts in `evalsuite.prompts`):

    base       the F frames, then the question
    caption    each frame followed by a static description of it
    vcot       the frames interleaved with what happened between consecutive frames (F-1 infills)
    blind      the question and options alone: what option wording gives without any frame or infill
    text_only  the F-1 infills without their frames: what the infills alone give
    reversed   the F frames last to first, base's layout: does the model use the frames' order?

`blind`'s prompt is the same for every F: it is scored once per item and its row repeated for each F
(`scored_with` names the row that was scored), so every F block is paired over the same items.

Metrics per F (`evalsuite.comparisons.summarize`): every condition's accuracy and the paired differences
`gain` = vcot - base, `caption_gain` = caption - base, `vcot_vs_caption` = vcot - caption and
`text_only_gain` = text_only - blind (what the infills add to the options alone); for temporal items
`reversed_pick_base` / `reversed_pick_reversed`, how often the prediction is the option the time-reversed
clip would have. Rows carry the item's `kind` (synthetic: static or temporal; "all" for EgoSchema) and
the summary repeats every block per kind under "by_kind". "floors" holds the options-only guessers'
accuracy (`evalsuite.floors.options_only_floor`): how far option wording alone gets, the line `blind`
and every other condition should be read against.

How frames reach the model (`--video_input`, default the checkpoint's run.json): on `native` the `base`
and `reversed` conditions, whose frames are one uninterrupted run, feed them as one clip through the
family's video path (a `{"type": "video"}` part, `data_recipes.clips.as_video`), as a model trained with
`video_input: native` saw its videos; caption and vcot put text between the frames, so they always feed
images; blind and text_only feed no frame ("none"). Each row says which path its prompt took
(`video_input`), and the settings record it per condition with the frames' `max_pixels` and the list of
conditions.

The settings name the protocol (`--protocol paper | custom`, `evalsuite.config`), the scoring and what it
depends on: `loglik_norm` for loglik scoring; for generate scoring the answer instruction
(`answer_instruction`: the hash of `prompts.ANSWER_LETTER` under the paper's protocol, else None), the
answer length and the judge. The report contrasts two checkpoints only when these agree.

    python -m evalsuite vcot ckpt/video_100k --frames 5 10 --infills model:models/generator
"""

from __future__ import annotations

import hashlib

from data_recipes.clips import as_video
from data_recipes.processors import frame_options
from data_recipes.video_processors import FAMILY_VIDEO_PROCESSOR
from data_recipes.video import VideoError
from evalsuite import comparisons, prompts
from evalsuite.benchmarks.video_qa import Item, load_benchmark
from evalsuite.config import ConfigError, FrameInputs
from evalsuite.extraction import extract_choice
from evalsuite.scoring import score_options
from evalsuite.tasks.base import Task, Workload

CONTRASTS = {"gain": ("vcot", "base"), "caption_gain": ("caption", "base"), "vcot_vs_caption": ("vcot", "caption"),
             "text_only_gain": ("text_only", "blind")}
CLIP_CONDITIONS = ("base", "reversed")
"""Conditions whose frames are one run with no text between them: the ones that can be fed as a clip."""
NO_TRANSITIONS = ("base", "caption", "blind", "reversed")
"""Conditions that show no infill: every other condition (vcot, text_only, shuffle's) asks for transitions."""
REVERSED_PICKS = ("base", "reversed")
"""Conditions whose rate of picking the reversed-clip option is reported (`reversed_pick_<cond>`)."""
BLIND = "blind"
"""The condition whose prompt does not depend on F: scored once per item."""


def between(transitions: dict[tuple[int, int], str], indices: list[int]) -> list[str]:
    """The F-1 infills shown between the frames at `indices`, in order (`transitions` by frame pair)."""
    return [transitions[p] for p in zip(indices, indices[1:])]


class VCoTTask(Task):
    name = "vcot"
    description = "frames only vs frames + captions vs frames + transitional infills (vCoT gain)"

    def __init__(self, cfg, resources):
        super().__init__(cfg, resources)
        self.bench = load_benchmark(cfg)
        self.problems = list(self.bench.problems)
        # the paper asks for the option's letter when the answer is generated; loglik scores the option text
        self.instruction = prompts.ANSWER_LETTER if cfg.protocol == "paper" and cfg.scoring == "generate" else None

    def video_inputs(self, inputs: FrameInputs) -> dict[str, str]:
        """The path each condition's frames take: `native` (one clip), `images`, or `none` (no frame shown)."""
        return {c: inputs.video_input if c in CLIP_CONDITIONS else "none" if c in prompts.FRAMELESS else "images"
                for c in prompts.CONDITIONS}

    def check(self, subject) -> None:
        inputs = subject.inputs
        if "native" not in self.video_inputs(inputs).values():
            return
        family = subject.family
        if family.name not in FAMILY_VIDEO_PROCESSOR:  # the one list of families with a video path
            asked = ("--video_input native" if inputs.origin == "--video_input"
                     else f"{inputs.origin} says video_input native")
            with_path = ", ".join(sorted(FAMILY_VIDEO_PROCESSOR))
            raise ConfigError(f"{asked}, but {subject.ref.name} is a {family.name} model, which has no native video "
                              f"path (families with one: {with_path}); evaluate it with --video_input images")

    def settings(self, subject_info: dict, inputs: FrameInputs | None = None) -> dict:
        cfg, inputs = self.cfg, inputs or FrameInputs()
        out = {"task": self.name, **self.bench.describe(), "item_set": self.item_set(), "frames": list(cfg.frames),
               "limit": cfg.limit, "seed": cfg.seed, "image_size": self.bench.size, "max_pixels": inputs.max_pixels,
               "conditions": list(self.conditions()), "video_input": self.video_inputs(inputs),
               "protocol": cfg.protocol, "scoring": cfg.scoring,
               "n_boot": cfg.n_boot, "infills": self.resources.describe_infills(), "infill_tokens": cfg.infill_tokens,
               "prompts": prompts.PROMPTS_HASH,
               # the weights, not the path: a moved or renamed checkpoint is not evaluated again
               "checkpoint": {k: v for k, v in subject_info.items() if k.endswith("fingerprint")}}
        out.pop("items"), out.pop("problems")
        if cfg.benchmark == "egoschema":
            out["data"] = str(self.bench.root)
        if cfg.scoring == "generate":
            out |= {"answer_tokens": cfg.answer_tokens, "judge": self.resources.describe("judge"),
                    "answer_instruction": prompts.ANSWER_HASH if self.instruction else None}
        else:
            out["loglik_norm"] = cfg.loglik_norm
        return out

    def item_set(self) -> str:
        """`<n>@<hash>` of the evaluated items and their answers: two evaluations compare only on equal sets."""
        listed = "\n".join(f"{it.id}={it.answer}" for it in self.bench.items)
        return f"{len(self.bench.items)}@{hashlib.sha256(listed.encode()).hexdigest()[:12]}"

    def items(self) -> list[Item]:
        return self.bench.items

    def keys(self, item: Item) -> list[str]:
        return [f"{item.id}|f{f}|{c}" for f in self.cfg.frames for c in prompts.CONDITIONS]

    def frame_plan(self, item: Item) -> tuple[dict[int, list[int]], list[int], list[tuple[int, int]]]:
        """The one frame-index rule of vcot, shuffle and the run plan: per F of `--frames` the item's
        sampled frame indices, every index any F samples (sorted: the frames to read once), and the pairs
        of consecutive sampled frames over every F in `--frames` order (repeats kept). Asking the infill
        source for exactly these pairs keeps its batches, hence cache hits and texts, the same whichever
        task asks first and whichever rows a resume still needs."""
        idx = {f: self.bench.indices(item, f) for f in self.cfg.frames}
        wanted = sorted({i for v in idx.values() for i in v})
        return idx, wanted, [p for f in self.cfg.frames for p in zip(idx[f], idx[f][1:])]

    @staticmethod
    def item_fields(item: Item) -> dict:
        """What every row of `item` says about the item: its `kind` ("all" when it has none, e.g. EgoSchema)
        and, for a temporal synthetic item, `reversed_answer` (the option the time-reversed clip would have)."""
        fields = {"kind": item.meta.get("kind") or comparisons.ALL}
        if item.meta.get("reversed_answer") is not None:
            fields["reversed_answer"] = int(item.meta["reversed_answer"])
        return fields

    def predict(self, subject, item: Item, todo: list[str]) -> list[dict]:
        inputs = subject.inputs
        paths = self.video_inputs(inputs)
        try:
            idx, wanted, pairs = self.frame_plan(item)
            frames = dict(zip(wanted, self.bench.frames(item, wanted, max_pixels=inputs.max_pixels)))
        except VideoError as e:
            return [{"key": k, **self._where(k, item), "error": str(e)} for k in todo]
        source = self.resources.infill_source(subject)
        # Infills for every F, even on a resume that only needs some: batches, hence texts, stay the same.
        transitions = source.transitions(item, pairs, frames)
        captions = source.captions(item, wanted, frames)
        about = self.item_fields(item)
        out, rows, contents, images, videos, rates = [], [], [], [], [], []
        blind: dict | None = None  # the one scored blind row; the other F's blind rows repeat it
        for key in todo:
            where = self._where(key, item)
            f, cond = where["frames"], where["condition"]
            order = idx[f][::-1] if cond == "reversed" else [] if cond in prompts.FRAMELESS else idx[f]
            infills = between(transitions, idx[f])
            texts = {"caption": [captions[i] for i in idx[f]], "vcot": infills, "text_only": infills}.get(cond)
            row = {"key": key, **where, **about, "indices": order, "answer": item.answer, "texts": texts,
                   "video_input": paths[cond]}
            out.append(row)
            if cond == BLIND:
                if blind is not None:
                    continue  # the same prompt as the blind row already asked: filled in below
                blind = row
            content = prompts.user_content(cond, f, item.question, item.options, texts, self.instruction)
            imgs, clips = [frames[i] for i in order], []
            if paths[cond] == "native":  # the F image markers become one video part, the frames one clip
                (turn,), clips = as_video(prompts.conversation(content), imgs, where=key)
                content, imgs = turn["content"], []
            contents.append(content)
            images.append(imgs)
            videos.append(clips)
            rates.append([self.bench.clip_fps(item, f)] if clips else None)
            rows.append(row)
        self.answer(subject, item, rows, contents, images, videos, rates)
        for row in out:
            if row["condition"] == BLIND and row is not blind:
                row |= {k: v for k, v in blind.items() if k not in row} | {"scored_with": blind["key"]}
        return out

    def answer(self, subject, item: Item, rows: list[dict], contents: list, images: list,
               videos: list | None = None, rates: list | None = None) -> list[dict]:
        """Fill each row's prediction for its prompt (loglik or generate + extraction) and correctness.

        `images[i]` fills prompt i's image markers, `videos[i]` (when given) its video parts, one clip each,
        `rates[i]` their sampled frames per second (None: unknown)."""
        videos = videos if videos is not None else [[] for _ in contents]
        rates = rates if rates is not None else [None for _ in contents]
        options = frame_options(subject.processor)  # frames fed as images: the family's frame options
        if self.cfg.scoring == "loglik":
            for row, content, imgs, clips, fps in zip(rows, contents, images, videos, rates):
                scores = score_options(subject.model, subject.processor, content, imgs, item.options, videos=clips,
                                       image_options=options, video_fps=fps, norm=self.cfg.loglik_norm,
                                       option_batch_bytes=self.cfg.option_batch_bytes)
                row |= scores.as_row()  # pred, raw logliks, n_tokens, n_chars, sequence_tokens
        else:
            lengths: list[int] = []
            answers = subject.chat.generate(contents, images, max_new_tokens=self.cfg.answer_tokens,
                                            batch_size=self.cfg.batch_size,
                                            videos=videos if any(videos) else None, image_options=options,
                                            video_fps=rates, lengths=lengths)
            judge = self.resources.judge_for(item.question, item.options)
            for row, answer, n in zip(rows, answers, lengths, strict=True):
                ext = extract_choice(answer, item.options, judge)
                row |= {"pred": ext.choice, "output": answer, "extraction": ext.method, "sequence_tokens": n}
        for row in rows:
            row["correct"] = row["pred"] == item.answer
        return rows

    @staticmethod
    def _where(key: str, item: Item) -> dict:
        _, f, cond = key.rsplit("|", 2)
        return {"item": item.id, "video": item.video, "frames": int(f[1:]), "condition": cond}

    def summarize(self, rows: list[dict]) -> dict:
        """Per-F and per-kind blocks (`comparisons.summarize`) and "floors": {"guesser": the options-only
        guessers' floor over the evaluated items (`floors.options_only_floor`), fitted on the generator's
        own items for the synthetic benchmark, untrained guessers only for EgoSchema}."""
        summary = comparisons.summarize(rows, self.cfg.frames, prompts.CONDITIONS, CONTRASTS, n_boot=self.cfg.n_boot,
                                        seed=self.cfg.seed, reversed_picks=REVERSED_PICKS)
        floor = self.floor(rows)
        if floor is not None:
            summary["floors"] = {"guesser": floor}
        return summary

    def floor(self, rows: list[dict]) -> dict | None:
        """The options-only floor over the items with an error-free row (None when there is none)."""
        from evalsuite.floors import options_only_floor, synthetic_fit_items

        errored = {r["item"] for r in rows if r.get("error")}
        scored = {r["item"] for r in rows} - errored
        items = [it for it in self.bench.items if it.id in scored]
        if not items:
            return None
        fit = synthetic_fit_items(self.cfg.seed) if self.cfg.benchmark == "synthetic" else None
        return options_only_floor(items, fit, n_boot=self.cfg.n_boot, seed=self.cfg.seed)

    def flat_metrics(self, summary: dict) -> dict[str, float]:
        return comparisons.flatten(self.name, summary)

    # --- the plan printed before a run: what answering items will make besides the prompts ---------
    def conditions(self) -> tuple[str, ...]:
        """The prompt conditions an item is asked in."""
        return tuple(self.video_inputs(FrameInputs()))

    def related_items(self, item: Item) -> list[Item]:
        """The items whose frames and infills answering `item` uses (shuffle adds its partner)."""
        return [item]

    def infill_requests(self, item: Item) -> tuple[list[tuple[int, int]], list[int]]:
        """(frame pairs whose transitions, frame indices whose captions) answering `item` asks the infill
        source for: over every F of `--frames`, the pairs of consecutive sampled frames when a condition
        outside `NO_TRANSITIONS` is asked (vcot, text_only and shuffle's all show infills) and the sampled
        frames when `caption` is."""
        conds = set(self.conditions())
        _, wanted, pairs = self.frame_plan(item)
        return (list(dict.fromkeys(pairs)) if conds - set(NO_TRANSITIONS) else [],
                wanted if "caption" in conds else [])

    @staticmethod
    def prompted(todo: list[str]) -> list[str]:
        """The keys of `todo` that each cost a prompt: a blind row after the first repeats its prediction."""
        blind = [k for k in todo if k.rsplit("|", 1)[1] == BLIND]
        return [k for k in todo if k not in blind[1:]]

    def plan(self, subject, work, seen: set) -> Workload:
        """`Task.plan` over the prompts each item's rows cost (blind once per item), plus the infill
        generations and frame decodes the caches do not hold yet."""
        w = super().plan(subject, [(item, self.prompted(todo)) for item, todo in work], seen)
        bench, max_pixels = self.bench, subject.inputs.max_pixels
        for item, _ in work:
            for it in self.related_items(item):
                try:
                    pairs, captions = self.infill_requests(it)
                    frames = self.frame_plan(it)[1]
                except (VideoError, OSError):
                    continue  # an unreadable video: the item is recorded as an error, nothing is made
                if pairs or captions:
                    made = self.resources.infill_work(subject, it, pairs, captions, seen)
                    w.infills += made["infills"]
                    w.rephrasings += made["rephrasings"]
                cache = getattr(bench, "frame_cache", None)
                if bench.cacheable and cache is not None and it.path is not None:
                    for i in frames:
                        key = ("frame", cache.video_key(it.path), i, max_pixels)
                        if key not in seen and not cache.has(it.path, i, max_pixels):
                            seen.add(key)
                            w.frame_decodes += 1
        return w

    headline = staticmethod(comparisons.headline)
