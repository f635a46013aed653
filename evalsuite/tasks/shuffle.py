"""Perturbation robustness: how much of the vCoT accuracy is left when the infills stop fitting the frames?

Every item starts from its vCoT input (same benchmark, frames, infill source and infill cache as
`vcot`, so no infill is generated twice). For every F in `--frames` five conditions are scored:

    vcot    own frames, own infills (the reference, scored again so every drop is paired)
    text    own frames, the infills of another video  (the partner: a seeded derangement of the items)
    visual  the partner's frames, own infills
    words   own frames, own infills with the words inside each infill shuffled (seeded)
    order   own frames, own infills in a seeded other order (never the original one when F-1 >= 2)

`order` keeps every word and every frame of the video and changes only which infill sits between which
frames: a model that reads an infill as "what happened between these two frames" loses under it, one
that reads the infills as a bag of facts about the video does not. Its row records the permutation
(`order`: infill k of the prompt is the video's infill order[k]).

Metrics per F: the five accuracies and `drop_<p>` = acc_vcot - acc_<p> (positive: accuracy lost),
a paired difference over the same items with bootstrap CI and exact McNemar p; rows carry the item's
`kind` and the summary repeats every block per kind under "by_kind", as vcot's. Every condition is a
vCoT input (text between the frames), so frames are always fed as images, whatever `--video_input`
says; they go through the checkpoint's `max_pixels` like vcot's. Prompts, scoring and the settings'
protocol are vcot's (`--protocol paper`: the letter-answer instruction, generate scoring, the judge).
A model that reads its infills loses under `text`: in the paper the image LLaVA-NeXT lost 9.4 points
under the text perturbation at F=5, the video model (LLaVA-NeXT-Video) 1.6.

    python -m evalsuite shuffle ckpt/video_100k --frames 5 10 --infills model:models/generator
"""

from __future__ import annotations

from data_recipes.video import VideoError
from evalsuite import comparisons, prompts
from evalsuite.benchmarks.video_qa import Item
from evalsuite.perturb import derangement, shuffle_order, shuffle_words
from evalsuite.tasks.vcot import VCoTTask, between

CONDITIONS = ("vcot", "text", "visual", "words", "order")
CONTRASTS = {f"drop_{p}": ("vcot", p) for p in CONDITIONS[1:]}  # vcot - perturbed: a loss is positive


class ShuffleTask(VCoTTask):
    name = "shuffle"
    description = "vCoT input with another video's infills or frames, or shuffled words (drop from vCoT)"

    def __init__(self, cfg, resources):
        super().__init__(cfg, resources)  # the benchmark, exactly as vcot loads it
        items = self.bench.items
        self.partner: dict[str, Item] = {}
        if len(items) < 2:
            self.problems.append({"id": "*", "reason": f"{len(items)} item(s): shuffling needs at least 2"})
        else:
            self.partner = {it.id: items[j] for it, j in zip(items, derangement(len(items), cfg.seed))}

    def related_items(self, item: Item) -> list[Item]:
        """The item and its partner: the text and visual perturbations use the partner's infills and frames."""
        partner = self.partner.get(item.id)
        return [item] if partner is None else [item, partner]

    def video_inputs(self, inputs) -> dict[str, str]:
        """Infills sit between the frames in every condition: images only (and no video path needed)."""
        return {c: "images" for c in CONDITIONS}

    def items(self) -> list[Item]:
        return self.bench.items if self.partner else []

    def keys(self, item: Item) -> list[str]:
        return [f"{item.id}|f{f}|{c}" for f in self.cfg.frames for c in CONDITIONS]

    def _inputs(self, subject, item: Item) -> tuple[dict, dict, dict]:
        """Per F: the item's frame indices, its frames and its F-1 infills (vcot's `frame_plan`)."""
        idx, wanted, pairs = self.frame_plan(item)
        frames = dict(zip(wanted, self.bench.frames(item, wanted, max_pixels=subject.inputs.max_pixels)))
        trans = self.resources.infill_source(subject).transitions(item, pairs, frames)
        return (idx, {f: [frames[i] for i in v] for f, v in idx.items()},
                {f: between(trans, v) for f, v in idx.items()})

    def predict(self, subject, item: Item, todo: list[str]) -> list[dict]:
        partner = self.partner[item.id]
        try:
            own, other = self._inputs(subject, item), self._inputs(subject, partner)
        except VideoError as e:  # either video: the item cannot be paired in every condition
            return [{"key": k, **self._where(k, item), "error": str(e)} for k in todo]
        rows, contents, images = [], [], []
        about = self.item_fields(item)
        for key in todo:
            where = self._where(key, item)
            f, cond = where["frames"], where["condition"]
            idx, frames, _ = other if cond == "visual" else own
            texts = (other if cond == "text" else own)[2][f]
            extra = {}
            if cond == "words":
                texts = [shuffle_words(t, f"{self.cfg.seed}|{item.id}|f{f}|{k}") for k, t in enumerate(texts)]
            elif cond == "order":
                extra["order"] = order = shuffle_order(len(texts), f"{self.cfg.seed}|{item.id}|f{f}|order")
                texts = [texts[i] for i in order]
            contents.append(prompts.user_content("vcot", f, item.question, item.options, texts, self.instruction))
            images.append(frames[f])
            rows.append({"key": key, **where, **about, "frames_from": partner.id if cond == "visual" else item.id,
                         "infills_from": partner.id if cond == "text" else item.id, "indices": idx[f],
                         "answer": item.answer, "texts": texts, "video_input": "images", **extra})
        return self.answer(subject, item, rows, contents, images)

    def summarize(self, rows: list[dict]) -> dict:
        return comparisons.summarize(rows, self.cfg.frames, CONDITIONS, CONTRASTS,
                                     n_boot=self.cfg.n_boot, seed=self.cfg.seed)

    @staticmethod
    def headline(summary: dict) -> str:
        """`f5 (n=200): vcot 0.514  drop text +0.094 [+0.05, +0.14] p=0.001, visual ..., words ... | f10 ...`."""
        parts = []
        for fkey in comparisons.fkeys(summary):
            block = summary[fkey]
            if "acc_vcot" not in block:
                parts.append(f"{fkey} (n=0)")
                continue
            drops = ", ".join(f"{c} {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.3g}"
                              for c in CONDITIONS[1:] if (d := block[f"drop_{c}"]))
            parts.append(f"{fkey} (n={block['n_items']}): vcot {block['acc_vcot']['value']:.3f}  drop {drops}")
        return " | ".join(parts)
