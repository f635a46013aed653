"""Running an evaluation at scale: the plan printed before a run (counted by hand here), models loaded only
when needed and freed after, the collective timeout of the barriers, and progress bars with an ETA."""

from __future__ import annotations

import datetime
import gc
import json
import re
import shutil
import weakref
from collections import Counter
from dataclasses import replace

import pytest

import evalsuite.resources
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.config import ConfigError
from evalsuite.extraction import extract_choice
from evalsuite.generation import ChatModel
from evalsuite.outputs import read_rows
from evalsuite.resources import LazyChat, Resources, Subject, model_identity
from evalsuite.runner import evaluate, format_plan, plan_run, progress_bar
from evalsuite.tasks import get_task
from evalsuite.tasks.base import Workload
from helpers import fast_config, make_adapter, tiny_model

# The hand count. Synthetic clips have 32 frames; F=3 samples int(i*32/4) = 8, 16, 24 and F=4 samples
# int(i*32/5) = 6, 12, 19, 25: 2 + 3 = 5 pairs of consecutive frames and 7 distinct frames.
ITEMS, FRAMES, OPTIONS = 2, (3, 4), 5
PAIRS, DISTINCT = 5, 7
INFILLS_PER_ITEM = 2 * PAIRS + DISTINCT  # two generator steps per pair, one caption per frame: 17
FORWARDS_PER_PROMPT = 1 + OPTIONS  # loglik, planned (at most): the prompt once, then each option against its cache
BATCHED_FORWARDS = 2  # what a tiny model's prompt takes: its cache's copies fit --option_batch_mb, options batched
VCOT_ROWS = ITEMS * len(FRAMES) * 6  # base, caption, vcot, blind, text_only, reversed: 24
VCOT_PROMPTS = ITEMS * (len(FRAMES) * 5 + 1)  # blind's prompt is the same for every F: asked once per item, 22
SHUFFLE_PROMPTS = ITEMS * len(FRAMES) * 5  # vcot, text, visual, words, order: 20


@pytest.fixture
def loads(monkeypatch):
    """Names of the models `ChatModel.load` loaded (generator, rephraser, judge), in order; and weak
    references to what it returned."""
    record = {"names": [], "refs": []}
    real = ChatModel.load.__func__

    def spy(cls, path, *a, **kw):
        chat = real(cls, path, *a, **kw)
        record["names"].append(chat.name)
        record["refs"].append(weakref.ref(chat))
        return chat

    monkeypatch.setattr(ChatModel, "load", classmethod(spy))
    return record


@pytest.fixture
def forwards(monkeypatch):
    """Forward passes of every evaluated checkpoint (calls of the loaded model), by checkpoint name."""
    calls: Counter = Counter()
    real = evalsuite.resources.load_checkpoint

    def counting(ref, *a, **kw):
        model, processor, info = real(ref, *a, **kw)
        model.register_forward_pre_hook(lambda module, args: calls.update([ref.name]))
        return model, processor, info

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", counting)
    return calls


def _plan_lines(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[plan\] (.+?): (.*)$", text, re.M)}


def test_printed_plan_matches_a_hand_count_and_the_run(tmp_path, tmp_path_factory, capsys, generate_calls,
                                                       loads, forwards, one_thread):
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    gen = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "generator")
    cfg = fast_config(infills=f"model:{gen}", limit=ITEMS, frames=FRAMES)
    cache = tmp_path / "cache"
    evaluate([checkpoint_ref(ckpt)], ["vcot", "shuffle"], cfg, cache)
    lines = _plan_lines(capsys.readouterr().err)
    vcot_infills = ITEMS * INFILLS_PER_ITEM  # 34
    assert lines["m vcot"] == (f"{ITEMS} items, {VCOT_PROMPTS} prompts, {VCOT_PROMPTS * FORWARDS_PER_PROMPT} forward "
                               f"passes, {vcot_infills} infill generations, 0 frame decodes")
    # shuffle asks the same pairs vcot made (and no captions): counted once, where they are made
    assert lines["m shuffle"] == (f"{ITEMS} items, {SHUFFLE_PROMPTS} prompts, "
                                  f"{SHUFFLE_PROMPTS * FORWARDS_PER_PROMPT} forward passes, 0 infill generations, "
                                  f"0 frame decodes")
    total = VCOT_PROMPTS + SHUFFLE_PROMPTS
    assert lines["total"] == (f"{2 * ITEMS} items, {total} prompts, {total * FORWARDS_PER_PROMPT} forward passes, "
                              f"{vcot_infills} infill generations, 0 frame decodes")
    # what the run did
    assert generate_calls["generator"] == vcot_infills
    assert forwards["m"] == total * BATCHED_FORWARDS
    assert len(read_rows(ckpt / "eval/vcot/predictions.jsonl")) == VCOT_ROWS
    # options one at a time (--option_batch_mb 0): the planned count exactly (infills all cached by now)
    one_by_one = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "one")
    evaluate([checkpoint_ref(one_by_one)], ["vcot", "shuffle"], replace(cfg, option_batch_mb=0), cache)
    assert forwards["one"] == total * FORWARDS_PER_PROMPT
    # the generator loaded once, for vcot; freed after it (shuffle's infills were all cached)
    assert loads["names"] == ["generator"]
    gc.collect()
    assert loads["refs"][0]() is None

    # a resumed run: one item's rows are left, its infills cached; finished tasks are skipped
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    keep = [r for r in rows if r["item"] == rows[0]["item"]]
    (ckpt / "eval/vcot/predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    (ckpt / "eval/vcot/metrics.json").unlink()
    subject = Subject(checkpoint_ref(ckpt), cfg)
    resources = Resources(cfg, cache)
    tasks = [get_task(n)(cfg, resources) for n in ("vcot", "shuffle")]
    plan = plan_run([subject], tasks)
    one = VCOT_PROMPTS // ITEMS
    assert plan == [("m", "vcot", Workload(items=1, prompts=one, forwards=one * FORWARDS_PER_PROMPT)),
                    ("m", "shuffle", None)]
    assert "[plan] m shuffle: done, skipped" in format_plan(plan, cfg)
    assert subject._loaded is None and not any(m.loaded for m in resources._models.values())  # nothing loaded


def test_plan_of_generate_scoring_counts_generations_and_judge_calls_at_most(tmp_path, tmp_path_factory,
                                                                              monkeypatch):
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    judge = tmp_path / "judge"
    judge.mkdir()

    def no_loading(*a, **k):
        raise AssertionError("planning must not load a model")

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", no_loading)
    monkeypatch.setattr(ChatModel, "load", classmethod(no_loading))
    cfg = fast_config(infills="oracle", limit=ITEMS, frames=FRAMES, scoring="generate", judge=str(judge))
    resources = Resources(cfg, tmp_path / "cache")
    plan = plan_run([Subject(checkpoint_ref(ckpt), cfg)], [get_task("vcot")(cfg, resources)])
    assert plan == [("m", "vcot", Workload(items=ITEMS, prompts=VCOT_PROMPTS, generations=VCOT_PROMPTS,
                                           judge_calls=VCOT_PROMPTS))]
    text = format_plan(plan, cfg)
    assert (f"[plan] m vcot: {ITEMS} items, {VCOT_PROMPTS} prompts, {VCOT_PROMPTS} generations (+ at most "
            f"{VCOT_PROMPTS} judge calls), 0 infill generations, 0 frame decodes") in text


def test_a_run_with_every_infill_cached_never_loads_the_generator(tmp_path, tmp_path_factory, loads,
                                                                   one_thread):
    base = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "base")
    other = make_adapter(base, tmp_path / "run_a", seed=1)
    gen = shutil.copytree(base, tmp_path / "generator")
    cfg = fast_config(infills=f"model:{gen}", limit=1, frames=(3,))
    cache = tmp_path / "cache"
    evaluate([checkpoint_ref(base)], ["vcot"], cfg, cache)
    assert loads["names"] == ["generator"]
    evaluate([checkpoint_ref(other)], ["vcot", "shuffle"], cfg, cache)
    assert loads["names"] == ["generator"]  # the second checkpoint found every infill in the cache
    assert len(read_rows(other / "eval/vcot/predictions.jsonl")) == 6


def test_the_generator_is_freed_before_the_next_checkpoint_loads(tmp_path, tmp_path_factory, loads,
                                                                  monkeypatch, one_thread):
    base = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "base")
    other = make_adapter(base, tmp_path / "run_a", seed=1)
    gen = shutil.copytree(base, tmp_path / "generator")
    alive_at_load = []
    real = evalsuite.resources.load_checkpoint

    def watching(ref, *a, **kw):
        gc.collect()
        alive_at_load.append((ref.name, [r() is not None for r in loads["refs"]]))
        return real(ref, *a, **kw)

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", watching)
    # max_pixels differs per checkpoint: the second one needs infills of its own, the generator loads again
    (other / "run.json").write_text(json.dumps(json.loads((other / "run.json").read_text()) | {"max_pixels": 1024}))
    evaluate([checkpoint_ref(base), checkpoint_ref(other)], ["vcot"], fast_config(infills=f"model:{gen}", limit=1,
                                                                                    frames=(3,)), tmp_path / "cache")
    # the generator runs before each checkpoint scores; by the next checkpoint the previous one is freed
    assert alive_at_load == [("base", [True]), ("run_a", [False, True])]
    assert loads["names"] == ["generator", "generator"]


class _FakeChat:
    def __init__(self, name):
        self.name, self.asked = name, []

    def generate(self, contents, images=None, **kw):
        self.asked += contents
        return ["B"] * len(contents)


def test_the_judge_loads_at_the_first_answer_that_needs_it_and_is_freed(tmp_path, monkeypatch):
    judge_dir = tmp_path / "judge"
    judge_dir.mkdir()
    made = []

    def fake_load(cls, path, trust_remote_code=False, name=None, device=None, dtype=None):
        made.append(_FakeChat(name))
        return made[-1]

    monkeypatch.setattr(ChatModel, "load", classmethod(fake_load))
    cfg = fast_config(scoring="generate", judge=str(judge_dir), infills="oracle")
    resources = Resources(cfg, tmp_path / "cache")
    options = ["a red circle", "a blue square", "a green star", "two dots", "nothing"]
    ask = resources.judge_for("What moves?", options)
    assert made == []  # asking for the judge loads nothing
    assert extract_choice("B", options, ask).method == "letter"
    assert extract_choice("it is a blue square", options, ask).method == "text"
    assert made == []  # answers the rules read never load it
    assert extract_choice("hmm", options, ask).method == "judge"
    assert extract_choice("no idea", options, ask).choice == 1
    assert len(made) == 1 and made[0].name == "judge" and len(made[0].asked) == 2  # loaded once, reused
    assert resources.release() == ["judge"]
    assert resources.release() == []  # nothing held any more
    extract_choice("still unsure", options, ask)
    assert len(made) == 2  # used again after being freed: loaded again


def test_lazy_identities_equal_the_loaded_ones(tmp_path, tmp_path_factory):
    """The infill cache is keyed by the generator's identity, known without loading it: it must be what
    loading gives, for a VLM, an adapter and a text-only model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    vlm = tiny_model("llava", tmp_path_factory)
    adapter = make_adapter(shutil.copytree(vlm, tmp_path / "base"), tmp_path / "adapter", seed=3)
    tok = AutoTokenizer.from_pretrained(vlm)
    torch.manual_seed(0)
    text = tmp_path / "text-lm"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(text)
    tok.save_pretrained(text)
    identities = {model_identity(p) for p in (vlm, adapter, text)}
    assert len(identities) == 3
    for path in (vlm, adapter, text):
        assert model_identity(path) == ChatModel.load(path).identity
    lazy = LazyChat("generator", model_identity(vlm), lambda: ChatModel.load(vlm, name="generator"))
    assert not lazy.loaded and lazy.identity == ChatModel.load(vlm).identity and not lazy.loaded
    assert lazy.generate([[{"type": "text", "text": "hi"}]], max_new_tokens=2) and lazy.loaded and lazy.loads == 1
    assert lazy.release() and not lazy.loaded


class _FakeState:
    made: list = []

    def __init__(self, cpu=False, **kwargs):
        _FakeState.made.append({"cpu": cpu, **kwargs})
        self.num_processes, self.process_index = 2, 1
        self.distributed_type = type("T", (), {"name": "MULTI_CPU"})()

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("cuda", [False, True])
def test_the_collective_timeout_reaches_the_process_group(monkeypatch, cuda):
    import accelerate
    import torch

    from evalsuite.distributed import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, Ranks

    monkeypatch.setattr(accelerate, "PartialState", _FakeState)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    _FakeState.made = []
    ranks = Ranks.from_env()
    assert (ranks.rank, ranks.world_size, ranks.device) == (1, 2, "cuda:1" if cuda else "cpu")
    monkeypatch.setenv(TIMEOUT_ENV, "7200")
    Ranks.from_env()
    default, raised = _FakeState.made
    assert default["timeout"] == datetime.timedelta(seconds=DEFAULT_TIMEOUT_S) == datetime.timedelta(minutes=30)
    assert raised["timeout"] == datetime.timedelta(hours=2)
    assert (raised["cpu"], raised.get("backend")) == ((False, None) if cuda else (True, "gloo"))
    for bad in ("0", "-5", "soon", "1.5"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='{re.escape(bad)}': expected a whole number"):
            Ranks.from_env()
    assert len(_FakeState.made) == 2  # a bad value fails before any process group is set up


def test_one_rank_sets_up_no_process_group(monkeypatch):
    import accelerate

    from evalsuite.distributed import Ranks

    _FakeState.made = []
    monkeypatch.setattr(accelerate, "PartialState", _FakeState)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Ranks.from_env().world_size == 1 and _FakeState.made == []


def test_progress_bars_show_an_eta():
    import io

    out = io.StringIO()
    bar = progress_bar(range(40), "vcot ckpt", disable=False)
    bar.fp = out
    bar.start_t -= 20.0  # 20 s ago
    bar.last_print_t = bar.start_t
    bar.update(10)  # 10 of 40 items in 20 s: 30 left at 2 s each
    text = str(bar)
    bar.close()
    assert re.search(r"10/40 items \[00:2\d elapsed, ETA 01:0\d,", text), text
