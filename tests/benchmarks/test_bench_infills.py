"""Infill generation: the cache across checkpoints (`--infills model:DIR`) and batched generation."""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from timing import interleave

pytestmark = pytest.mark.bench

ROUNDS = 3
CACHE_ITEMS = 4
GENERATION_ITEMS = 4
MAX_NEW_TOKENS = 48  # EvalConfig.infill_tokens' default
BATCH_SIZE = 8  # EvalConfig.batch_size's default


@dataclass
class GeneratorUse:
    prompts: Counter = field(default_factory=Counter)
    """Prompts answered by `ChatModel.generate`, per model name."""
    loads: list = field(default_factory=list)
    """Seconds of each `ChatModel.load` (the fixed generator, the rephraser, the judge)."""

    def clear(self):
        self.prompts.clear()
        self.loads.clear()


@pytest.fixture
def generator_use(monkeypatch) -> GeneratorUse:
    from evalsuite.generation import ChatModel

    use = GeneratorUse()
    generate, load = ChatModel.generate, ChatModel.load.__func__

    def counting_generate(self, contents, images=None, **kwargs):
        use.prompts[self.name] += len(contents)
        return generate(self, contents, images, **kwargs)

    def timed_load(cls, *args, **kwargs):
        t0 = time.perf_counter()
        out = load(cls, *args, **kwargs)
        use.loads.append(time.perf_counter() - t0)
        return out

    monkeypatch.setattr(ChatModel, "generate", counting_generate)
    monkeypatch.setattr(ChatModel, "load", classmethod(timed_load))
    return use


def test_infill_cache_across_checkpoints(tiny_llava, bench_root, generator_use, table):
    """A second checkpoint evaluated with the same generator takes every infill from the cache."""
    from evalsuite.checkpoints import checkpoint_ref
    from evalsuite.config import EvalConfig
    from evalsuite.runner import evaluate
    from train.toy.tiny import build_tiny

    root = bench_root / "infill-cache"
    generator = shutil.copytree(tiny_llava, root / "generator")
    first = shutil.copytree(tiny_llava, root / "ckpt_a")
    second = build_tiny("llava", root / "ckpt_b", seed=1)  # other weights, same generator
    cfg = EvalConfig(infills=f"model:{generator}", limit=CACHE_ITEMS, tracking=False, progress=False)
    warm_cache = root / "cache-warm"
    with contextlib.redirect_stderr(io.StringIO()):  # what evaluating the first checkpoint leaves behind
        evaluate([checkpoint_ref(first)], ["vcot"], cfg, warm_cache)
    fresh = itertools.count()

    def run(ckpt, cache):
        shutil.rmtree(ckpt / "eval", ignore_errors=True)
        generator_use.clear()
        with contextlib.redirect_stderr(io.StringIO()):  # the runner's per-task log lines
            evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, cache)
        return generator_use.prompts["generator"], sum(generator_use.loads)

    t = interleave({
        "cold cache": lambda: run(first, root / f"cache-cold-{next(fresh)}"),
        "second checkpoint": lambda: run(second, warm_cache),
    }, rounds=ROUNDS, warmup=0)
    cold = [prompts for prompts, _ in t.results["cold cache"]]
    warm = [prompts for prompts, _ in t.results["second checkpoint"]]
    assert all(n > 0 for n in cold)
    assert warm == [0] * ROUNDS  # zero generation calls
    table.check("Infill cache", "prompts generated for a second checkpoint, same `--infills model:DIR`",
                max(warm), fmt="{:.0f}", at_most=0, detail=f"cold cache: {cold[-1]}",
                note=f"{CACHE_ITEMS} items, F=5 and 10, {MAX_NEW_TOKENS} new tokens per step")
    loading = statistics.median(seconds for _, seconds in t.results["second checkpoint"])
    note = "both include loading the checkpoint, scoring and the bootstrap"
    if loading > 0:
        note += (f"; with every infill cached the generator is still loaded ({loading:.2f} s of "
                 f"{t.median('second checkpoint'):.2f} s here, minutes for a 7B generator)")
    table.add("Infill cache", "evaluation time: cold cache / second checkpoint",
              f"{t.ratio('cold cache', 'second checkpoint'):.2f}x "
              f"({t.median('cold cache'):.1f} vs {t.median('second checkpoint'):.1f} s, {t.rounds} rounds)",
              note=note)


def infill_prompts(n_items: int):
    """The first infill step (what two consecutive frames have in common) over F=5 frames of each item."""
    from data_recipes.synthetic import eval_item
    from data_recipes.video import uniform_indices
    from evalsuite import prompts

    contents, images = [], []
    for i in range(n_items):
        frames = eval_item(0, i)["frames"]
        idx = uniform_indices(32, 5)
        for a, b in zip(idx, idx[1:]):
            contents.append(prompts.common_prompt())
            images.append([frames[a], frames[b]])
    return contents, images


def test_batched_generation(tiny_llava, table):
    """`ChatModel.generate` with batches of 8 vs one prompt at a time: same texts, ratio of times."""
    from evalsuite.generation import ChatModel
    from train.families import load_model

    model, processor, _ = load_model(tiny_llava)
    model.eval()
    chat = ChatModel(model, processor=processor)
    contents, images = infill_prompts(GENERATION_ITEMS)

    def generate(batch_size):
        return lambda: chat.generate(contents, images, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size)

    t = interleave({"batched": generate(BATCH_SIZE), "one at a time": generate(1)}, rounds=ROUNDS)
    assert t.results["batched"][-1] == t.results["one at a time"][-1]  # same texts
    table.add("Batched generation", f"infill generation: one at a time / batches of {BATCH_SIZE}",
              f"{t.ratio('one at a time', 'batched'):.2f}x "
              f"({len(contents) / t.median('batched'):.1f} vs {len(contents) / t.median('one at a time'):.1f} "
              f"prompts/s)",
              note=f"{len(contents)} two-frame prompts, up to {MAX_NEW_TOKENS} new tokens; same texts")
