"""vCoT: does interleaving frames with transitional infills help a model answer video questions?

For every item and every F in `--frames`, three conditions (see `evalsuite.prompts`): `base` (frames
then question), `caption` (each frame followed by a static description), `vcot` (frames interleaved
with what happened between consecutive frames). Metrics per F: the three accuracies and the paired
differences `gain` = vcot - base, `caption_gain` = caption - base, `vcot_vs_caption` = vcot - caption.

    python -m evalsuite vcot ckpt/video_100k --frames 5 10 --infills model:models/generator
"""

from __future__ import annotations

from data_recipes.video import VideoError
from evalsuite import comparisons, prompts
from evalsuite.benchmarks import Item, load_benchmark
from evalsuite.extraction import extract_choice
from evalsuite.scoring import score_options
from evalsuite.tasks.base import Task

CONTRASTS = {"gain": ("vcot", "base"), "caption_gain": ("caption", "base"), "vcot_vs_caption": ("vcot", "caption")}


class VCoTTask(Task):
    name = "vcot"
    description = "frames only vs frames + captions vs frames + transitional infills (vCoT gain)"

    def __init__(self, cfg, resources):
        super().__init__(cfg, resources)
        self.bench = load_benchmark(cfg)
        self.problems = list(self.bench.problems)

    def settings(self, subject_info: dict) -> dict:
        cfg = self.cfg
        out = {"task": self.name, **self.bench.describe(), "frames": list(cfg.frames), "limit": cfg.limit,
               "seed": cfg.seed, "image_size": self.bench.size, "scoring": cfg.scoring, "n_boot": cfg.n_boot,
               "infills": self.resources.describe_infills(), "infill_tokens": cfg.infill_tokens,
               "prompts": prompts.PROMPTS_HASH,
               # the weights, not the path: a moved or renamed checkpoint is not evaluated again
               "checkpoint": {k: v for k, v in subject_info.items() if k.endswith("fingerprint")}}
        out.pop("items"), out.pop("problems")
        if cfg.benchmark == "egoschema":
            out["data"] = str(self.bench.root)
        if cfg.scoring == "generate":
            out |= {"answer_tokens": cfg.answer_tokens, "judge": self.resources.describe("judge")}
        return out

    def items(self) -> list[Item]:
        return self.bench.items

    def keys(self, item: Item) -> list[str]:
        return [f"{item.id}|f{f}|{c}" for f in self.cfg.frames for c in prompts.CONDITIONS]

    def predict(self, subject, item: Item, todo: list[str]) -> list[dict]:
        try:
            idx = {f: self.bench.indices(item, f) for f in self.cfg.frames}
            wanted = sorted({i for v in idx.values() for i in v})
            frames = dict(zip(wanted, self.bench.frames(item, wanted)))
        except VideoError as e:
            return [{"key": k, **self._where(k, item), "error": str(e)} for k in todo]
        source = self.resources.infill_source(subject)
        # Infills for every F, even on a resume that only needs some: batches, hence texts, stay the same.
        pairs = [(a, b) for f in self.cfg.frames for a, b in zip(idx[f], idx[f][1:])]
        transitions = source.transitions(item, pairs, frames)
        captions = source.captions(item, wanted, frames)
        rows, contents, images = [], [], []
        for key in todo:
            where = self._where(key, item)
            f, cond = where["frames"], where["condition"]
            texts = {"base": None, "caption": [captions[i] for i in idx[f]],
                     "vcot": [transitions[p] for p in zip(idx[f], idx[f][1:])]}[cond]
            contents.append(prompts.user_content(cond, f, item.question, item.options, texts))
            images.append([frames[i] for i in idx[f]])
            rows.append({"key": key, **where, "indices": idx[f], "answer": item.answer, "texts": texts})
        return self.answer(subject, item, rows, contents, images)

    def answer(self, subject, item: Item, rows: list[dict], contents: list, images: list) -> list[dict]:
        """Fill each row's prediction for its prompt (loglik or generate + extraction) and correctness."""
        if self.cfg.scoring == "loglik":
            for row, content, imgs in zip(rows, contents, images):
                scores = score_options(subject.model, subject.processor, content, imgs, item.options)
                row |= {"pred": scores.choice, "logliks": scores.logliks}
        else:
            answers = subject.chat.generate(contents, images, max_new_tokens=self.cfg.answer_tokens,
                                            batch_size=self.cfg.batch_size)
            judge = self.resources.judge_for(item.question, item.options)
            for row, answer in zip(rows, answers):
                ext = extract_choice(answer, item.options, judge)
                row |= {"pred": ext.choice, "output": answer, "extraction": ext.method}
        for row in rows:
            row["correct"] = row["pred"] == item.answer
        return rows

    @staticmethod
    def _where(key: str, item: Item) -> dict:
        _, f, cond = key.rsplit("|", 2)
        return {"item": item.id, "video": item.video, "frames": int(f[1:]), "condition": cond}

    def summarize(self, rows: list[dict]) -> dict:
        return comparisons.summarize(rows, self.cfg.frames, prompts.CONDITIONS, CONTRASTS,
                                     n_boot=self.cfg.n_boot, seed=self.cfg.seed)

    def flat_metrics(self, summary: dict) -> dict[str, float]:
        return comparisons.flatten(self.name, summary)

    headline = staticmethod(comparisons.headline)
