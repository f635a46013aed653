"""Option scoring: shared-prefix loglik scoring against scoring each option from scratch, its peak memory for
5 options against 1; the vcot task's rate.

Items are the synthetic benchmark's (`data_recipes.synthetic.eval_item`), frames sampled as the task
samples them (`uniform_indices(32, F)`), prompts in the vcot condition with the oracle infills between
the frames (`evalsuite.prompts.user_content`): the longest of the task's three prompts.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
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
        "batched": lambda: [score_options(model, processor, *case) for case in cases],  # the default bound
        "one at a time": lambda: [score_options(model, processor, *case, option_batch_bytes=0) for case in cases],
        "from scratch": lambda: [from_scratch(model, processor, *case) for case in cases],
    }, rounds=ROUNDS)
    naive = [OptionScores(logliks, s.n_tokens, s.n_chars, s.norm)  # the same counts and normalisation
             for s, logliks in zip(t.results["one at a time"][-1], t.results["from scratch"][-1])]
    for way in ("batched", "one at a time"):
        shared = t.results[way][-1]
        assert [s.choice for s in shared] == [n.choice for n in naive]  # same answers
        for s, n in zip(shared, naive):
            assert s.logliks == pytest.approx(n.logliks, abs=1e-3)
    per_item = lambda name: 1e3 * t.median(name) / ITEMS  # noqa: E731
    table.check("Option scoring", f"s/item from scratch / shared prefix, F={n_frames} (5 options, vcot prompt)",
                t.ratio("from scratch", "batched"), fmt="{:.2f}x", at_least=3,
                detail=f"{per_item('batched'):.0f} vs {per_item('from scratch'):.0f} ms per item, {ITEMS} items x "
                       f"{t.rounds} rounds; same choices. The options batched over per-option copies of the prompt "
                       f"cache: the default when the copies fit --option_batch_mb (the tiny models' always do)")
    table.check("Option scoring", f"s/item shared prefix one option at a time / options batched, F={n_frames}",
                t.ratio("one at a time", "batched"), fmt="{:.2f}x", at_least=1.1,
                detail=f"{per_item('batched'):.0f} vs {per_item('one at a time'):.0f} ms per item; same choices. "
                       f"One at a time: each option against the one prompt cache, the way for a cache too large "
                       f"to copy (the memory row)")


# Run in a fresh process per measurement (see test_option_scoring_memory for how memory is read).
SCORE_MEMORY = textwrap.dedent("""
    import gc, json, re, sys
    from pathlib import Path
    import torch
    from transformers import AutoConfig
    from data_recipes.processors import load_processor
    from data_recipes.synthetic import eval_item
    from evalsuite import prompts
    from evalsuite.scoring import option_continuations, score_options
    from train.families import get_family

    def status(field):
        return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

    model_dir, method, k, n_frames = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    config = AutoConfig.from_pretrained(model_dir)
    text = config.text_config
    text.num_hidden_layers, text.num_key_value_heads = LAYERS, KV_HEADS
    torch.manual_seed(0)
    model = get_family(config.model_type).model_cls()(config).eval()
    processor = load_processor(model_dir)
    item = eval_item(0, 3)
    frames = [item["frames"][i % len(item["frames"])] for i in range(n_frames)]
    content = prompts.user_content("base", n_frames, item["question"], item["options"])
    options = item["options"][:k]
    bound = 0 if method == "one cache" else 2**40  # one option at a time, or batched whatever the copies take
    score = lambda *args: score_options(*args, option_batch_bytes=bound)  # noqa: E731
    score(model, processor, content, frames, options)  # first call: one-off allocations out of the way
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    score(model, processor, content, frames, options)
    peak = status("VmHWM")
    prefix, _ = option_continuations(processor, prompts.conversation(content), options)
    tokens = processor(text=[prefix], images=[frames], return_tensors="pt")["input_ids"].shape[1]
    head_dim = text.hidden_size // text.num_attention_heads
    cache_mb = tokens * text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * 4 / 2**20
    print(json.dumps({"peak_mb": (peak - before) / 1024, "tokens": tokens, "cache_mb": cache_mb}))
""")
MEMORY_FRAMES = 128
MEMORY_LAYERS, MEMORY_KV_HEADS = 16, 4


def test_option_scoring_memory(tiny_llava, subprocess_env, table):
    """Peak memory of scoring 5 options against scoring 1, on one prompt of 128 frames (about 2.1k tokens).

    Model: the tiny Llava with a deeper language model (16 layers, 4 KV heads instead of 2 and 2, random
    weights, built in the measuring process). The stock tiny model's KV cache (1 KiB per token) is smaller
    than transient buffers of the prompt's forward (the causal mask alone is tokens^2 bytes), so copies of
    it would not show; here the cache (16 KiB per token, about 33 MB) is the largest allocation of the
    scoring, as at 7B (Qwen2-VL-7B: 56 KiB per token in bf16).

    Method: each measurement runs in a fresh process that builds the model, scores the prompt once (so
    one-off allocations are out of the way), then resets the high-water mark of its resident set (writing
    5 to /proc/self/clear_refs sets VmHWM to VmRSS), reads VmRSS, scores again and reads VmHWM from
    /proc/self/status: the row's numbers are VmHWM - VmRSS, what the scoring call added at its peak above
    the loaded model. glibc is told to serve every allocation above 64 KiB with mmap
    (MALLOC_MMAP_THRESHOLD_, which also turns its adaptive threshold off), so a freed tensor returns to the
    kernel at once and the resident set follows the live tensors rather than what the heap keeps: the CPU
    counterpart of a GPU allocator's max_memory_allocated. The batched way (the prompt cache repeated along the
    batch, one copy per option: what `--option_batch_mb` bounds) is measured the same way beside it."""
    env = dict(subprocess_env, MALLOC_MMAP_THRESHOLD_="65536")
    script = SCORE_MEMORY.replace("LAYERS, KV_HEADS", f"{MEMORY_LAYERS}, {MEMORY_KV_HEADS}")
    peaks = {}
    for method in ("one cache", "per-option copies"):
        for k in (1, 5):
            p = subprocess.run([sys.executable, "-c", script, str(tiny_llava), method, str(k), str(MEMORY_FRAMES)],
                               env=env, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, p.stderr[-3000:]
            peaks[method, k] = json.loads(p.stdout.strip().splitlines()[-1])
    info = peaks["one cache", 5]
    assert info["tokens"] > 2000  # a long prompt: the cache, not the options, is what could be copied
    ratio = peaks["one cache", 5]["peak_mb"] / peaks["one cache", 1]["peak_mb"]
    old = peaks["per-option copies", 5]["peak_mb"] / peaks["per-option copies", 1]["peak_mb"]
    table.check("Option scoring", f"peak memory, 5 options / 1 option, one shared prompt cache "
                                  f"({MEMORY_FRAMES}-frame prompt, {info['tokens']} tokens)",
                ratio, fmt="{:.2f}x", at_most=1.3,
                detail=f"{peaks['one cache', 5]['peak_mb']:.0f} vs {peaks['one cache', 1]['peak_mb']:.0f} MB "
                       f"above the loaded model; the cache is {info['cache_mb']:.0f} MB",
                note=f"options batched (one cache copy per option, used when the copies fit --option_batch_mb): "
                     f"{old:.2f}x "
                     f"({peaks['per-option copies', 5]['peak_mb']:.0f} vs "
                     f"{peaks['per-option copies', 1]['peak_mb']:.0f} MB); tiny Llava with {MEMORY_LAYERS} "
                     f"language layers x {MEMORY_KV_HEADS} KV heads so that the cache dominates, as at 7B; "
                     f"peak RSS of a fresh process, see the test's docstring")


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
