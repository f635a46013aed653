"""Option scoring: shared-prefix loglik scoring against scoring each option from scratch; the vcot task's rate.

Items are the synthetic benchmark's (`data_recipes.synthetic.eval_item`), frames sampled as the task
samples them (`uniform_indices(32, F)`), prompts in the vcot condition with the oracle infills between
the frames (`evalsuite.prompts.user_content`): the longest of the task's three prompts.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from unittest import mock

import pytest
import torch

from timing import interleave

pytestmark = pytest.mark.bench

ITEMS = 6
ROUNDS = 5
TASK_ITEMS = 10


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    from train.families import load_model

    model, processor, _ = load_model(tiny_llava)
    model.eval()
    return model, processor


def vcot_cases(n_frames: int, n_items: int) -> list[tuple[list[dict], list, list[str]]]:
    """(user content, frames, options) of the first `n_items` synthetic items at F = `n_frames`."""
    from data_recipes.synthetic import eval_item, item_transition_caption
    from data_recipes.video import uniform_indices
    from evalsuite import prompts

    cases = []
    for i in range(n_items):
        item = eval_item(0, i)
        idx = uniform_indices(32, n_frames)
        infills = [item_transition_caption(item["meta"], a, b) for a, b in zip(idx, idx[1:])]
        content = prompts.user_content("vcot", n_frames, item["question"], item["options"], infills)
        cases.append((content, [item["frames"][j] for j in idx], item["options"]))
    return cases


@torch.no_grad()
def from_scratch(model, processor, content: list[dict], images: list, options: list[str]) -> list[float]:
    """The obvious way: every option in a forward of its own over the whole conversation."""
    from evalsuite import prompts
    from evalsuite.scoring import continuation_ids
    from train.chat import render

    messages = prompts.conversation(content)
    logliks = []
    for option in options:
        _, cont = continuation_ids(processor, messages, option)
        enc = processor(text=[render(processor, messages + [prompts.answer_turn(option)])], images=[list(images)],
                        return_tensors="pt")
        assert enc["input_ids"][0, -len(cont):].tolist() == cont  # the option is the tail of the encoding
        logp = torch.log_softmax(model(**enc).logits[0, -len(cont) - 1:-1].float(), dim=-1)
        logliks.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    return logliks


@pytest.mark.parametrize("n_frames", [5, 10])
def test_shared_prefix_against_from_scratch(loaded, n_frames, table):
    from evalsuite.scoring import OptionScores, score_options

    model, processor = loaded
    cases = vcot_cases(n_frames, ITEMS)
    t = interleave({
        "shared prefix": lambda: [score_options(model, processor, *case) for case in cases],
        "from scratch": lambda: [from_scratch(model, processor, *case) for case in cases],
    }, rounds=ROUNDS)
    shared = t.results["shared prefix"][-1]
    naive = [OptionScores(logliks, []) for logliks in t.results["from scratch"][-1]]
    assert [s.choice for s in shared] == [n.choice for n in naive]  # same answers
    for s, n in zip(shared, naive):
        assert s.logliks == pytest.approx(n.logliks, abs=1e-3)
    per_item = lambda name: 1e3 * t.median(name) / ITEMS  # noqa: E731
    table.check("Option scoring", f"s/item from scratch / shared prefix, F={n_frames} (5 options, vcot prompt)",
                t.ratio("from scratch", "shared prefix"), fmt="{:.2f}x", at_least=3,
                detail=f"{per_item('shared prefix'):.0f} vs {per_item('from scratch'):.0f} ms per item, "
                       f"{ITEMS} items x {t.rounds} rounds; same choices")


def test_vcot_task_rate(tiny_llava, bench_root, table):
    """Questions per second of the vcot task (F = 5 and 10, 3 conditions each, oracle infills)."""
    from evalsuite import prompts
    from evalsuite.checkpoints import checkpoint_ref
    from evalsuite.config import EvalConfig
    from evalsuite.resources import Resources, Subject
    from evalsuite.runner import evaluate
    from evalsuite.tasks import vcot

    ckpt = shutil.copytree(tiny_llava, bench_root / "vcot-rate" / "ckpt")
    cache = bench_root / "vcot-rate" / "cache"
    cfg = EvalConfig(infills="oracle", limit=TASK_ITEMS, tracking=False, progress=False)
    task = vcot.VCoTTask(cfg, Resources(cfg, cache))
    subject = Subject(checkpoint_ref(ckpt), cfg)
    subject.model  # loaded once, outside the timed loop
    scoring = []
    real_score = vcot.score_options

    def timed_score(*args, **kwargs):
        t0 = time.perf_counter()
        out = real_score(*args, **kwargs)
        scoring.append(time.perf_counter() - t0)
        return out

    def predict_loop():
        scoring.clear()
        with mock.patch.object(vcot, "score_options", timed_score):
            rows = [row for item in task.items() for row in task.predict(subject, item, task.keys(item))]
        return rows, sum(scoring)

    def end_to_end():
        shutil.rmtree(ckpt / "eval", ignore_errors=True)
        with contextlib.redirect_stderr(io.StringIO()):  # the runner's per-task log lines
            return evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, cache)

    t = interleave({"predict loop": predict_loop, "evaluate": end_to_end}, rounds=3)
    rows, scoring_seconds = t.results["predict loop"][-1]
    assert len(rows) == TASK_ITEMS * len(cfg.frames) * len(prompts.CONDITIONS) and all("pred" in r for r in rows)
    share = scoring_seconds / t.seconds["predict loop"][-1]
    table.add("vCoT task", "questions/s, the task's predict loop (F=5 and 10 x base/caption/vcot = 6 scorings each)",
              f"{TASK_ITEMS / t.median('predict loop'):.1f}",
              note=f"option scoring is {share:.0%} of the loop; the rest renders frames, looks up infills and "
                   f"builds prompts")
    table.add("vCoT task", f"questions/s, `evaluate()` end to end ({TASK_ITEMS} items, oracle infills)",
              f"{TASK_ITEMS / t.median('evaluate'):.1f}",
              note=f"includes loading the checkpoint and {cfg.n_boot} bootstrap replicates per CI")
