"""I-RAVEN transfer: does finetuning on video help a VLM complete Raven's progressive matrices?

Each puzzle has 8 context panels, 8 candidates and one answer (chance 12.5%). Three layouts
(`--iraven-layout`, rendered by `evalsuite.prompts`, its I-RAVEN section):

- `composite` (default; one image) and `separate` (16 images) ask for the letter A-H: loglik scores
  the eight one-letter answers, generate reads the letter out of the reply.
- `candidates` judges each candidate on its own: 8 prompts per puzzle, each the full matrix with that
  candidate as the ninth panel (9 images at the model's input size) and a yes/no question. loglik
  scores "yes." and "no." per candidate; the prediction is the candidate with the largest margin
  log P(yes.) - log P(no.) (raw totals: a probability ratio; ties to the lowest index), and the row
  records the 8 margins. generate reads yes/no from each reply; the prediction is the one candidate
  answered yes, and a puzzle with no or several yeses is a recorded failure (a reply gives no degree
  of belief to rank yeses by).

Metrics: accuracy overall, per configuration and per rule group (bootstrap CIs), the chance level, and
the answer-position bias: predicted against target candidates, and the share of predictions on the most
predicted candidate (~0.125 unbiased, targets being balanced; 1.0 when always the same candidate).
`informative` is False when that share exceeds 0.5: the model then answers one position whatever the
puzzle, its accuracy is mostly that position's share of the targets, and `informative_reason` says so.

Rule groups (`by_rule_group`, decoded by `evalsuite.benchmarks.iraven.groups`): which kind of regularity a
puzzle asks for, read from its `meta_matrix` (one row per rule: component 0's Number/Position, Type, Size
and Color rules, then component 1's; each row sets one rule column, Constant / Progression / Arithmetic /
Distribute_Three, and its attribute column(s)). A rule is *active* when it is not Constant: Constant holds
one value along the row (or, on Type/Size/Color of entities re-drawn in every column, constrains nothing),
so it leaves nothing to infer. A puzzle counts for

- `spatial` when any component has an active rule on Number or Position (the layout changes along a row),
- `abstract` when any component has an active rule on Type, Size or Color (attributes follow a relation),
- `abstract_only` when it is `abstract` and not `spatial` (the layout does not change along a row).

`spatial` and `abstract` overlap (most puzzles with an active Number/Position rule also have an active
attribute rule, and single-slot configurations such as center_single never have an active layout rule), so
`spatial` against `abstract_only` is the disjoint comparison; a puzzle with no active rule counts for none.
`by_rule_type[group][rule]` splits `spatial` and `abstract` by the active rule type (a puzzle counts for each
type it has in the group), `per_config_by_rule_group[config][group]` splits each configuration, and
`rule_group_counts` counts the puzzles in each group, in both, in neither and without rule metadata. Every
value is an `Estimate.to_dict()` ({value, ci_low, ci_high, n}); a group without puzzles is left out. Each
prediction row keeps the decoded rules (`rules`: [component, rule, attribute] per used meta_matrix row) and
its groups with their active rule types (`rule_groups`: {"spatial": ["Progression"], ...}), so the report
can pair two runs group by group.

Data: the test split of an official-layout directory (`--iraven-data DIR`), or by default a test
split made once by `evalsuite.benchmarks.iraven.generate_dataset` (seed 2026, `--limit` puzzles per
configuration, default 20) under the cache directory and reused by every checkpoint.

    python -m evalsuite iraven ckpt/video_100k --limit 50
    python -m evalsuite iraven ckpt/video_100k --iraven-data data/I-RAVEN --iraven-layout separate
    python -m evalsuite iraven ckpt/tiny_video --iraven-layout candidates --iraven-limit 10
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_recipes.files import atomic_dir
from evalsuite.benchmarks.iraven import CONFIG_NAMES, IRavenFormatError, generate_dataset, read_npz
from evalsuite.benchmarks.iraven.groups import (ACTIVE_RULES, GROUPING, GROUPS, RULE_GROUPS, in_group, meta_rules,
                                                rule_groups)
from evalsuite.benchmarks.iraven.loader import split_files
from evalsuite.prompts import IRAVEN_LETTERS as LETTERS
from evalsuite.prompts import (IRAVEN_HASH, IRAVEN_JUDGEMENTS, iraven_best_margin, iraven_candidate_images,
                               iraven_composite_image, iraven_image_size, iraven_judgement, iraven_letter_choice,
                               iraven_separate_images, iraven_single_yes, iraven_user_content)
from evalsuite.scoring import score_options
from evalsuite.stats import accuracy_ci
from evalsuite.tasks.base import Task, Workload, loglik_forwards

SEED, PER_CONFIG = 2026, 20  # the generated test split: one fixed set for every checkpoint
CHANCE = 1 / len(LETTERS)
MAX_INFORMATIVE_BIAS = 0.5
"""Above this share of predictions on one candidate, accuracy measures that position, not reasoning."""
MAX_INFORMATIVE_FAILED = 0.5
"""Generate scoring: above this share of puzzles whose answer no rule could read (counted wrong), accuracy
measures how the run formats its answers, not reasoning."""


@dataclass(frozen=True)
class Puzzle:
    id: str  # "<config>/RAVEN_<k>_test": unique across configurations
    config: str
    path: Path


class IRavenTask(Task):
    name = "iraven"
    description = "Raven's progressive matrices (I-RAVEN, 8 candidates): accuracy per configuration, position bias"
    n_options = len(LETTERS)  # the run plan's forward passes: 8 letters scored per puzzle (letter layouts)
    uses_judge = False        # answers are read by prompts.iraven_letter_choice, never by the judge

    _puzzles: list[Puzzle] | None = None  # listed on first use: a finished checkpoint needs no data

    def settings(self, subject_info: dict, inputs=None) -> dict:
        # I-RAVEN panels are rendered at the model's input size: neither video_input nor max_pixels apply
        cfg = self.cfg
        data = {"data": str(Path(cfg.iraven_data).expanduser().resolve()), "per_config": cfg.iraven_limit or cfg.limit} \
            if cfg.iraven_data else {"data": "generated", "generator_seed": SEED, "per_config": cfg.iraven_limit or cfg.limit or PER_CONFIG}
        out = {"task": self.name, **data, "layout": cfg.iraven_layout, "protocol": cfg.protocol, "scoring": cfg.scoring, "seed": cfg.seed,
               "n_boot": cfg.n_boot, "prompts": IRAVEN_HASH, "rule_groups": GROUPING,
               "checkpoint": {k: v for k, v in subject_info.items() if k.endswith("fingerprint")}}
        return out | ({"answer_tokens": cfg.answer_tokens} if cfg.scoring == "generate" else {})

    def _generated(self) -> Path:
        n = self.cfg.iraven_limit or self.cfg.limit or PER_CONFIG
        root = Path(self.resources.cache_dir) / "iraven" / f"seed{SEED}_n{n}"
        if not root.is_dir():
            # Written aside, then renamed: ranks each write an identical copy, the first rename wins.
            with atomic_dir(root, existing="keep") as tmp:
                generate_dataset(tmp, per_config=n, seed=SEED, val=0, test=10)  # val=0, test=10: all test
        return root

    def items(self) -> list[Puzzle]:
        if self._puzzles is None:
            root = Path(self.cfg.iraven_data).expanduser().resolve() if self.cfg.iraven_data else self._generated()
            self._puzzles = [Puzzle(f"{config}/{p.stem}", config, p) for config, paths in
                             split_files(root, "test").items() for p in paths[:self.cfg.iraven_limit or self.cfg.limit]]
        return self._puzzles

    def keys(self, item: Puzzle) -> list[str]:
        return [item.id]

    def plan(self, subject, work, seen: set) -> Workload:
        """The default count for the letter layouts; `candidates` makes 8 prompts per puzzle, 2 options each."""
        w = super().plan(subject, work, seen)
        if self.cfg.iraven_layout != "candidates":
            return w
        k = len(LETTERS)
        prompts = k * w.prompts
        forwards = prompts * loglik_forwards(len(IRAVEN_JUDGEMENTS)) if self.cfg.scoring == "loglik" else 0
        return Workload(items=w.items, prompts=prompts, forwards=forwards, generations=k * w.generations)

    def predict(self, subject, item: Puzzle, todo: list[str]) -> list[dict]:
        layout = self.cfg.iraven_layout
        row = {"key": item.id, "item": item.id, "config": item.config, "layout": layout}
        try:
            rec = read_npz(item.path, item.config)
            rules = meta_rules(rec.meta_matrix, str(item.path))
        except IRavenFormatError as e:
            return [row | {"error": str(e)}]
        row |= {"answer": rec.target, "rules": rules, "rule_groups": rule_groups(rules)}
        if layout == "candidates":
            row |= self._judge_candidates(subject, rec.image)
        else:
            if layout == "composite":
                row["image_size"] = size = iraven_image_size(subject.processor)
                images = [iraven_composite_image(rec.image, size)]
            else:
                images = iraven_separate_images(rec.image)
            content = iraven_user_content(layout)
            if self.cfg.scoring == "loglik":
                scores = score_options(subject.model, subject.processor, content, images, list(LETTERS),
                                       option_batch_bytes=self.cfg.option_batch_bytes)
                row |= {"pred": scores.choice, "logliks": scores.logliks, "sequence_tokens": scores.sequence_tokens}
            else:
                lengths: list[int] = []
                answer = subject.chat.generate([content], [images], max_new_tokens=self.cfg.answer_tokens,
                                               lengths=lengths)[0]
                pred = iraven_letter_choice(answer)
                row |= {"pred": pred, "output": answer, "extraction": "failed" if pred is None else "letter",
                        "sequence_tokens": lengths[0]}
        row["correct"] = row["pred"] == rec.target
        return [row]

    def _judge_candidates(self, subject, panels) -> dict:
        """The `candidates` layout's row fields: each candidate's matrix judged yes/no, then the choice."""
        size = iraven_image_size(subject.processor)
        content = iraven_user_content("candidates")
        images = [iraven_candidate_images(panels, c, size) for c in range(len(LETTERS))]
        out: dict = {"image_size": size}
        if self.cfg.scoring == "loglik":
            scored = [score_options(subject.model, subject.processor, content, imgs, list(IRAVEN_JUDGEMENTS),
                                    option_batch_bytes=self.cfg.option_batch_bytes) for imgs in images]
            logliks = [s.logliks for s in scored]
            margins = [yes - no for yes, no in logliks]
            return out | {"pred": iraven_best_margin(margins), "margins": margins, "logliks": logliks,
                          "sequence_tokens": max(s.sequence_tokens for s in scored)}
        lengths: list[int] = []
        replies = subject.chat.generate([content] * len(images), images, max_new_tokens=self.cfg.answer_tokens,
                                        batch_size=self.cfg.batch_size, lengths=lengths)
        judgements = [iraven_judgement(r) for r in replies]
        pred = iraven_single_yes(judgements)
        return out | {"pred": pred, "outputs": replies, "judgements": judgements,
                      "extraction": "failed" if pred is None else "single yes", "sequence_tokens": max(lengths)}

    def summarize(self, rows: list[dict]) -> dict:
        ok = [r for r in rows if not r.get("error")]
        out: dict = {"n_items": len(ok), "chance": CHANCE}
        if not ok:
            return out

        def acc(rs: list[dict]) -> dict:
            return accuracy_ci([r["correct"] for r in rs], n_boot=self.cfg.n_boot, seed=self.cfg.seed).to_dict()

        out["acc"] = acc(ok)
        out["per_config"] = {c: acc(rs) for c in CONFIG_NAMES if (rs := [r for r in ok if r["config"] == c])}
        out |= self._by_rule(ok, acc)
        # joint[target][predicted]: the report can show whether errors pile up on one answer position
        joint = [[0] * len(LETTERS) for _ in LETTERS]
        for r in ok:
            if r["pred"] is not None:
                joint[r["answer"]][r["pred"]] += 1
        predicted = [sum(col) for col in zip(*joint)]
        target = [sum(1 for r in ok if r["answer"] == i) for i in range(len(LETTERS))]
        n_pred, top = sum(predicted), max(range(len(LETTERS)), key=lambda i: (predicted[i], -i))
        out["position"] = {"letters": LETTERS, "predicted": predicted, "target": target, "joint": joint,
                           "failed": len(ok) - n_pred}
        bias = predicted[top] / n_pred if n_pred else None
        out["position_bias"] = {"value": bias, "n": n_pred, "index": top if n_pred else None,
                                "letter": LETTERS[top] if n_pred else None, "target_share": max(target) / len(ok)}
        out["informative"] = bias is not None and bias <= MAX_INFORMATIVE_BIAS
        if bias is None:
            out["informative_reason"] = "no puzzle got a readable answer: there is no accuracy to read"
        elif not out["informative"]:
            out["informative_reason"] = (f"answers sit on candidate {LETTERS[top]} in {100 * bias:.0f}% of the "
                                         f"{n_pred} answered puzzles: accuracy is that candidate's share of "
                                         "targets, not a measure of reasoning")
        if self.cfg.scoring == "generate":
            failed = (len(ok) - n_pred) / len(ok)
            out["failed"] = {"value": failed, "n": len(ok), "count": len(ok) - n_pred}
            if out["informative"] and failed > MAX_INFORMATIVE_FAILED:
                out["informative"], out["uninformative_by"] = False, "failed"
                out["informative_reason"] = (f"no rule could read the answer to {100 * failed:.0f}% of the {len(ok)} "
                                             "puzzles, each counted wrong: accuracy measures how the run words "
                                             "its answers, not reasoning")
        return out

    @staticmethod
    def _by_rule(ok: list[dict], acc) -> dict:
        """The rule-group blocks of `summarize` (module docstring) from the rows that were evaluated."""
        def by_group(rs: list[dict]) -> dict:
            return {g: acc(sel) for g in GROUPS if (sel := [r for r in rs if in_group(r, g)])}

        by_type = {g: {t: acc(sel) for t in ACTIVE_RULES
                       if (sel := [r for r in ok if t in (r.get("rule_groups") or {}).get(g, ())])}
                   for g in RULE_GROUPS}
        recorded = [r["rule_groups"] for r in ok if isinstance(r.get("rule_groups"), dict)]
        counts = {g: sum(in_group(r, g) for r in ok) for g in GROUPS}
        counts |= {"both": sum("spatial" in g and "abstract" in g for g in recorded),
                   "neither": sum(not g for g in recorded), "unrecorded": len(ok) - len(recorded)}
        per_config = {c: b for c in CONFIG_NAMES if (b := by_group([r for r in ok if r["config"] == c]))}
        return {"by_rule_group": by_group(ok), "by_rule_type": {g: b for g, b in by_type.items() if b},
                "per_config_by_rule_group": per_config, "rule_group_counts": counts}

    def flat_metrics(self, summary: dict) -> dict[str, float]:
        flat = {f"{self.name}/n": float(summary["n_items"]), f"{self.name}/chance": summary["chance"]}
        named = [("acc", summary.get("acc"))] + [(f"{c}/acc", e) for c, e in summary.get("per_config", {}).items()]
        named += [(f"rule_group/{g}/acc", e) for g, e in summary.get("by_rule_group", {}).items()]
        named += [(f"rule_group/{g}/{t}/acc", e) for g, b in summary.get("by_rule_type", {}).items() for t, e in b.items()]
        for name, est in named:
            if est:
                flat |= {f"{self.name}/{name}{s}": float(est[k]) for k, s in
                         (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))}
        for name in ("position_bias", "failed"):
            if summary.get(name, {}).get("value") is not None:
                flat[f"{self.name}/{name}"] = float(summary[name]["value"])
        if "informative" in summary:
            flat[f"{self.name}/informative"] = float(summary["informative"])
        return flat

    @staticmethod
    def headline(summary: dict) -> str:  # acc 0.231 [0.164, 0.300] (n=140, chance 0.125)  position bias 0.41 on C
        if "acc" not in summary:
            return "no puzzle evaluated"
        a, b = summary["acc"], summary["position_bias"]
        bias = f"  position bias {b['value']:.2f} on {b['letter']}" if b["value"] is not None else ""
        bias += "" if summary.get("informative", True) else "  NOT INFORMATIVE"
        return f"acc {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] (n={a['n']}, chance {CHANCE:.3f}){bias}"
