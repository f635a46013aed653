"""Shared-prefix loglik scoring equals naive scoring (images and the native video path), with the options
batched over copies of the prompt cache and one at a time against ONE cache (chosen by what the copies
would take); the loglik normalisations; batched greedy generation equals one at a time."""

from __future__ import annotations

import functools
import unittest.mock

import pytest
import torch

from data_recipes.clips import as_video
from data_recipes.synthetic import eval_item
from evalsuite import prompts
from evalsuite.config import ConfigError, EvalConfig, field_help
from evalsuite.generation import ChatModel
from evalsuite.scoring import (OPTION_BATCH_BYTES, OptionScores, cache_bytes, continuation_ids, options_batched,
                               score_options)
from helpers import tiny_model
from train.chat import IGNORE_INDEX, encode

FAMILIES = ["llava", "qwen2_vl"]
ONE_AT_A_TIME, BATCHED = 0, OPTION_BATCH_BYTES  # option_batch_bytes of the two ways to run the options


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
    from train.families import load_model

    model, processor, _ = load_model(tiny_model(request.param, tmp_path_factory))
    model.eval()
    return model, processor


@torch.no_grad()
def naive_logliks(model, processor, content, images, options):
    """Each option from scratch: the whole conversation through the model, sum over the answer tokens."""
    messages = prompts.conversation(content)
    out = []
    for option in options:
        _, cont = continuation_ids(processor, messages, option)
        full = processor.apply_chat_template(messages + [prompts.answer_turn(option)], tokenize=False)
        enc = processor(text=[full], images=[images], return_tensors="pt")
        ids = enc["input_ids"][0]
        start = continuation_start(ids.tolist(), cont, processor.tokenizer)
        logp = torch.log_softmax(model(**enc).logits[0].float(), dim=-1)
        out.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def continuation_start(ids: list[int], cont: list[int], tok) -> int:
    """Where the scored continuation starts in a full encoding: it is the encoding's tail, but for plain
    whitespace the template writes after the answer (not scored)."""
    start = len(ids) - len(cont)
    while start >= 0 and ids[start:start + len(cont)] != cont:
        start -= 1
    assert start >= 0 and tok.decode(ids[start + len(cont):]).strip() == "", "not the tail of the encoding"
    return start


def argmax(values) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _case(index: int, condition: str):
    item = eval_item(0, index)
    frames = [item["frames"][i] for i in (6, 13, 20)]
    texts = ["the square moves.", "nothing changes at all."] if condition == "vcot" else None
    return prompts.user_content(condition, 3, item["question"], item["options"], texts), frames, item["options"]


@pytest.mark.parametrize("option_batch_bytes", [ONE_AT_A_TIME, BATCHED], ids=["one_at_a_time", "batched"])
@pytest.mark.parametrize("condition", ["base", "vcot"])
def test_shared_prefix_scoring_equals_naive_scoring(loaded, condition, option_batch_bytes, one_thread):
    model, processor = loaded
    lengths = set()
    for index in (0, 3):  # item 3's options have different token lengths
        content, frames, options = _case(index, condition)
        naive = naive_logliks(model, processor, content, frames, options)
        for norm in ("sum", "mean", "chars"):
            shared = score_options(model, processor, content, frames, options, norm=norm,
                                   option_batch_bytes=option_batch_bytes)
            assert shared.logliks == pytest.approx(naive, abs=1e-4)  # raw totals, whatever the norm
            assert shared.n_chars == [len(o) for o in options]
            per = {"sum": [1] * 5, "mean": shared.n_tokens, "chars": shared.n_chars}[norm]
            assert shared.choice == argmax([ll / n for ll, n in zip(naive, per)])
        lengths.add(len(set(shared.n_tokens)))
        # the options in another order: the same scores (one at a time or batched)
        backwards = score_options(model, processor, content, frames, options[::-1],
                                  option_batch_bytes=option_batch_bytes)
        assert backwards.logliks[::-1] == pytest.approx(naive, abs=1e-4)
    # options of different lengths were scored: neither a rolled-back cache nor a batch's padding leaked one
    # option into another
    assert max(lengths) > 1


@pytest.mark.parametrize("option_batch_bytes", [ONE_AT_A_TIME, BATCHED], ids=["one_at_a_time", "batched"])
def test_a_text_only_prompt_after_a_frames_prompt_scores_as_on_its_own(loaded, option_batch_bytes, one_thread):
    """The blind and text-only conditions come after prompts with frames. Qwen2-VL keeps the last frames
    prompt's M-RoPE offset and applies it to forwards over a cache, and a prompt without images does not
    replace it: the options of a text-only prompt were scored at shifted positions. Scored after a frames
    prompt, a text-only prompt's logliks are its full-sequence ones."""
    model, processor = loaded
    content, frames, options = _case(0, "base")
    item = eval_item(0, 0)
    blind = prompts.user_content("blind", 3, item["question"], item["options"])
    messages = prompts.conversation(blind)
    naive = []
    for option in options:
        _, cont = continuation_ids(processor, messages, option)
        full = processor.apply_chat_template(messages + [prompts.answer_turn(option)], tokenize=False)
        ids = processor.tokenizer([full], return_tensors="pt", add_special_tokens=False)["input_ids"]
        start = continuation_start(ids[0].tolist(), cont, processor.tokenizer)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        naive.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cont)))
    for _ in range(2):
        score_options(model, processor, content, frames, options, option_batch_bytes=option_batch_bytes)
        after = score_options(model, processor, blind, [], options, option_batch_bytes=option_batch_bytes)
        assert after.logliks == pytest.approx(naive, abs=1e-4)


@pytest.fixture
def cache_seen(monkeypatch):
    """For every forward that continues from a cache: the cache's batch size and length when it was called."""
    seen = []

    def spy_on(model):
        cls = type(model)
        real = cls.forward

        @functools.wraps(real)
        def spy(self, *args, **kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and cache.get_seq_length() > 0:
                keys = cache.layers[0].keys
                seen.append({"cache": id(cache), "batch": keys.shape[0], "length": cache.get_seq_length(),
                             "layers_batches": {layer.keys.shape[0] for layer in cache.layers},
                             "input_batch": kwargs["input_ids"].shape[0]})
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)

    return seen, spy_on


def _copies_measured(model, processor, content, frames, options) -> tuple[list[int], int]:
    """(the multi-token options, the bytes their prompt-cache copies take) as `score_options` measures them."""
    sizes = []

    def recorded(cache):
        sizes.append(cache_bytes(cache))
        return sizes[-1]

    with unittest.mock.patch("evalsuite.scoring.cache_bytes", recorded):
        scores = score_options(model, processor, content, frames, options)
    multi = [i for i, n in enumerate(scores.n_tokens) if n > 1]
    assert len(sizes) == 1 and len(multi) >= 2 and sizes[0] > 0
    return multi, len(multi) * sizes[0]


def test_options_continue_one_prompt_cache_without_copies(loaded, cache_seen, one_thread):
    model, processor = loaded
    seen, spy_on = cache_seen
    content, frames, options = _case(3, "vcot")
    multi, copies = _copies_measured(model, processor, content, frames, options)
    spy_on(model)
    # copies one byte over the bound (and the bound 0): one option at a time against one cache; so too a cache
    # whose size cannot be read (its layers hide their tensors), whatever the bound
    for bound, size_of in ((copies - 1, cache_bytes), (ONE_AT_A_TIME, cache_bytes), (2**40, lambda cache: 0)):
        seen.clear()
        with unittest.mock.patch("evalsuite.scoring.cache_bytes", size_of):
            score_options(model, processor, content, frames, options, option_batch_bytes=bound)
        assert len(seen) == len(multi)  # one continuation forward per option with more than one token
        assert len({s["cache"] for s in seen}) == 1  # the same cache object every time
        # never repeated along the batch dimension, and back at the prompt's length before every option
        assert all(s["batch"] == 1 and s["layers_batches"] == {1} and s["input_batch"] == 1 for s in seen)
        assert len({s["length"] for s in seen}) == 1


def test_options_run_batched_when_the_copies_fit_the_bound(loaded, cache_seen, one_thread):
    model, processor = loaded
    seen, spy_on = cache_seen
    content, frames, options = _case(3, "vcot")
    one = score_options(model, processor, content, frames, options, option_batch_bytes=ONE_AT_A_TIME)
    multi, copies = _copies_measured(model, processor, content, frames, options)
    spy_on(model)
    batched = score_options(model, processor, content, frames, options, option_batch_bytes=copies)  # exactly fits
    # ONE continuation forward: every multi-token option a row of it, over as many copies of the prompt cache
    assert len(seen) == 1
    assert seen[0]["input_batch"] == seen[0]["batch"] == len(multi) and seen[0]["layers_batches"] == {len(multi)}
    assert batched.logliks == pytest.approx(one.logliks, abs=1e-4)
    assert batched.n_tokens == one.n_tokens and batched.choice == one.choice
    # the bound comes from the setting: --option_batch_mb in MiB, 0 turns batching off
    assert EvalConfig(option_batch_mb=0.5).option_batch_bytes == 2**19 and EvalConfig().option_batch_bytes == BATCHED
    with pytest.raises(ConfigError, match="option_batch_mb"):
        EvalConfig(option_batch_mb=-1)


@pytest.mark.parametrize("family, kib_per_token", [("qwen2_vl", 56), ("llava_next", 512)])
def test_at_7b_frame_prompts_keep_one_cache_and_only_short_ones_may_batch(family, kib_per_token):
    """The default bound on the published 7B configs (transformers' own config classes), with prompt caches
    of their real size in bf16 built on the meta device: 5 options of a 5-frame prompt are scored one at a
    time against one cache; a frameless prompt of 150 tokens (blind) is batched where its copies are small."""
    from types import SimpleNamespace

    from fixtures_7b import config_7b
    from transformers import DynamicCache

    config = config_7b(family, SimpleNamespace(convert_tokens_to_ids=lambda token: 1))
    text = config.get_text_config()
    head_dim = text.hidden_size // text.num_attention_heads

    def prompt_cache(tokens: int):
        cache = DynamicCache(config=config)
        for layer in range(text.num_hidden_layers):
            keys = torch.empty(1, text.num_key_value_heads, tokens, head_dim, dtype=torch.bfloat16, device="meta")
            cache.update(keys, keys.clone(), layer)
        return cache

    # the least a frame costs: Qwen2-VL at 448 x 448 (256 tokens), LLaVA-NeXT's base tile alone (576)
    frames = prompt_cache(150 + 5 * (256 if family == "qwen2_vl" else 576))
    blind = prompt_cache(150)
    assert cache_bytes(blind) == 150 * kib_per_token * 2**10  # 2 x layers x kv heads x head dim x 2 bytes
    assert not options_batched(frames, 5, BATCHED)
    assert options_batched(blind, 5, BATCHED) == (family == "qwen2_vl")  # 41 MiB of copies; LLaVA's 375 MiB
    assert not options_batched(blind, 5, ONE_AT_A_TIME) and not options_batched(blind, 1, BATCHED)


def test_native_video_prompt_scores_as_the_trainer_encodes_it(tmp_path_factory, one_thread):
    """qwen2_vl through its video path (M-RoPE over a clip, rope deltas carried into every option)."""
    from train.families import load_model

    model, processor, _ = load_model(tiny_model("qwen2_vl", tmp_path_factory))
    model.eval()
    item = eval_item(0, 3)
    content = prompts.user_content("base", 4, item["question"], item["options"])
    (turn,), clips = as_video(prompts.conversation(content), [item["frames"][i] for i in (0, 8, 16, 24)])
    scores = score_options(model, processor, turn["content"], [], item["options"], videos=clips,
                           option_batch_bytes=ONE_AT_A_TIME)
    batched = score_options(model, processor, turn["content"], [], item["options"], videos=clips,
                            option_batch_bytes=BATCHED)  # the rope deltas repeated over the options' batch
    by_hand = []
    with torch.no_grad():
        for option in item["options"]:
            enc = dict(encode(processor, [[turn, prompts.answer_turn(option)]], [[]], videos=[clips]).inputs)
            labels = enc.pop("labels")[0]
            logp = torch.log_softmax(model(**enc).logits[0].float(), dim=-1)
            pos = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
            by_hand.append(float(logp[pos, labels[1:][pos]].sum()))
    assert scores.logliks == pytest.approx(by_hand, abs=1e-4)
    assert batched.logliks == pytest.approx(by_hand, abs=1e-4)
    assert len(set(scores.n_tokens)) > 1


def test_normalisations_pick_different_options_by_hand():
    # option 0: short and likely in total; option 1: long, likelier per token; option 2: likeliest per character
    s = dict(logliks=[-3.0, -5.0, -6.0], n_tokens=[2, 5, 4], n_chars=[5, 20, 30])
    assert OptionScores(**s, norm="sum").choice == 0  # -3 > -5 > -6
    assert OptionScores(**s, norm="mean").scores == [-1.5, -1.0, -1.5]
    assert OptionScores(**s, norm="mean").choice == 1
    assert OptionScores(**s, norm="chars").scores == pytest.approx([-0.6, -0.25, -0.2])
    assert OptionScores(**s, norm="chars").choice == 2
    assert OptionScores([-2.0, -2.0], [1, 1]).choice == 0  # a tie goes to the first option
    row = OptionScores(**s, norm="mean").as_row()
    assert row == {"pred": 1, "logliks": [-3.0, -5.0, -6.0], "n_tokens": [2, 5, 4], "n_chars": [5, 20, 30],
                   "sequence_tokens": 0}
    with pytest.raises(ValueError, match="character count"):
        OptionScores([-1.0, -2.0], [1, 2], norm="chars").choice
    with pytest.raises(ValueError, match="unknown loglik normalisation"):
        OptionScores([-1.0], [1], norm="tokens")


def test_loglik_norm_setting_and_flag():
    from evalsuite.cli import build_parser, config_from

    assert EvalConfig().loglik_norm == "mean"
    with pytest.raises(ConfigError, match="Did you mean 'chars'"):
        EvalConfig(loglik_norm="char")
    cfg = config_from(build_parser().parse_args(["vcot", "ckpt", "--loglik-norm", "sum"]))
    assert cfg.loglik_norm == "sum"
    assert config_from(build_parser().parse_args(["vcot", "ckpt"])).loglik_norm == "mean"
    doc = field_help("loglik_norm")
    assert all(name in doc for name in ("`sum`", "`mean`", "`chars`"))
    with pytest.raises(ValueError, match="unknown loglik normalisation"):
        score_options(None, None, [], [], ["a"], norm="total")


@pytest.mark.parametrize("norm, expected", [("sum", 0), ("mean", 1), ("chars", 2)])
def test_the_vcot_task_scores_with_the_configured_norm_and_records_the_counts(monkeypatch, norm, expected):
    """The task hands `--loglik-norm` and `--option_batch_mb` to the scoring and its rows keep raw totals and
    counts (evalsuite/tasks/vcot.py: `score_options(..., norm=self.cfg.loglik_norm, option_batch_bytes=...)`,
    `row |= scores.as_row()`)."""
    from types import SimpleNamespace

    from evalsuite.benchmarks.video_qa import Item
    from evalsuite.tasks import vcot

    asked = []

    def fake_scores(model, processor, content, images, options, **kwargs):
        asked.append((kwargs.get("norm"), kwargs.get("option_batch_bytes")))
        return OptionScores([-3.0, -5.0, -6.0, -9.0, -9.0], [2, 5, 4, 5, 5], [5, 20, 30, 5, 5],
                            kwargs.get("norm", "mean"))

    monkeypatch.setattr(vcot, "score_options", fake_scores)
    task = vcot.VCoTTask.__new__(vcot.VCoTTask)
    task.cfg, task.resources, task.instruction = EvalConfig(loglik_norm=norm, option_batch_mb=3), None, None
    item = Item("q0", "what happens?", ["a", "b", "c", "d", "e"], expected, "q0")
    (row,) = task.answer(SimpleNamespace(model=None, processor=object()), item, [{}], [[]], [[]])
    assert asked == [(norm, 3 * 2**20)]
    assert (row["pred"], row["correct"]) == (expected, True)
    assert row["logliks"] == [-3.0, -5.0, -6.0, -9.0, -9.0] and row["n_tokens"] == [2, 5, 4, 5, 5]


def test_batched_generation_equals_one_at_a_time(loaded, one_thread):
    model, processor = loaded
    chat = ChatModel(model, processor=processor)
    items = [eval_item(0, i) for i in range(3)]
    # prompts of different lengths (so left padding is exercised), with 2, 1 and 2 images
    contents = [prompts.common_prompt(), prompts.describe_prompt(), prompts.between_prompt("both show a red circle")]
    images = [[items[0]["frames"][3], items[0]["frames"][9]], [items[1]["frames"][5]],
              [items[2]["frames"][1], items[2]["frames"][30]]]
    batched = chat.generate(contents, images, max_new_tokens=8, batch_size=3)
    single = [chat.generate([c], [i], max_new_tokens=8)[0] for c, i in zip(contents, images)]
    assert batched == single
    assert len(set(batched)) > 1 or batched[0]  # the model produced text, not only stop tokens


def test_a_batch_out_of_memory_is_split_and_the_smaller_size_kept(loaded, one_thread, monkeypatch, capsys):
    """Ten anyres frames of a 7B model in a batch of 8 can run out of GPU memory hours into an evaluation.
    Here any batch of more than 2 prompts "runs out": the answers must be those of the unconstrained
    batches, each prompt's length recorded once, later batches no larger than what fitted, and a prompt
    that cannot fit alone must still raise."""
    model, processor = loaded
    chat = ChatModel(model, processor=processor, name="gen")
    item = eval_item(0, 0)
    contents = [prompts.between_prompt(f"step {i}" + " and more" * i) for i in range(7)]
    images = [[item["frames"][i], item["frames"][i + 1]] for i in range(7)]
    want_lengths: list = []
    want = chat.generate(contents, images, max_new_tokens=6, batch_size=8, lengths=want_lengths)
    real, sizes = chat._plain_generate, []

    def tight(enc, config):
        sizes.append(enc["input_ids"].shape[0])
        if enc["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(enc, config)

    monkeypatch.setattr(chat, "_plain_generate", tight)
    lengths: list = []
    assert chat.generate(contents, images, max_new_tokens=6, batch_size=8, lengths=lengths) == want
    assert lengths == want_lengths
    assert sizes == [7, 4, 2, 2, 2, 1] and chat.batch_cap == 2  # 7 -> 4 -> 2 + 2, then 2 + 1 at the cap
    assert "out of memory on a batch of 7 prompts; retrying in batches of 4" in capsys.readouterr().err
    sizes.clear()
    assert chat.generate(contents[:5], images[:5], max_new_tokens=6, batch_size=8) == want[:5]
    assert sizes == [2, 2, 1]  # the next call starts at the size that fitted
    monkeypatch.setattr(chat, "_plain_generate", lambda enc, config: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError, match="gen: one prompt alone does not fit"):
        chat.generate(contents[:3], images[:3], max_new_tokens=6, batch_size=8)


def test_greedy_generation_ignores_the_checkpoints_decoding_settings(loaded, one_thread):
    """A published generation_config.json sets decoding options (Qwen2-VL-7B-Instruct: repetition_penalty
    1.05, top_k 1, ...), and transformers fills every field a passed config leaves unset from it. Greedy
    answers must be the argmax of the model's own logits whatever that file says."""
    from transformers import GenerationConfig

    model, processor = loaded
    chat = ChatModel(model, processor=processor)
    content = [{"type": "text", "text": "What is in the picture? Say it in a few words."}]
    enc = processor(text=[chat.render(content)], return_tensors="pt")
    ids = enc["input_ids"]
    with torch.no_grad():
        for _ in range(8):  # the argmax, token by token, over the whole sequence
            nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    plain = chat._decode(ids[0, enc["input_ids"].shape[1]:].tolist())
    own = model.generation_config
    model.generation_config = GenerationConfig(repetition_penalty=5.0, no_repeat_ngram_size=1,
                                               suppress_tokens=ids[0, enc["input_ids"].shape[1]:].tolist()[:2])
    try:
        assert chat.generate([content], [[]], max_new_tokens=8) == [plain]
        assert model.generation_config.repetition_penalty == 5.0  # the checkpoint's own config is left as it was
    finally:
        model.generation_config = own


@pytest.mark.parametrize("template", [True, False], ids=["chat_template", "no_template"])
def test_a_text_models_prompt_starts_with_one_bos(tmp_path_factory, template):
    """A text judge or rephraser whose chat template writes BOS itself (Llama-3, Mistral-Instruct, Gemma) on a
    tokenizer that also adds one: the prompt starts with one BOS, not two. Without a template the tokenizer
    adds it."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tokenizers.processors import TemplateProcessing

    tok = AutoTokenizer.from_pretrained(tiny_model("llava", tmp_path_factory))
    bos = tok.bos_token  # the tokenizer adds BOS, as Llama's and Mistral's do
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.bos_token_id)])
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}") if template else None
    seen = []

    def generate(input_ids, attention_mask, generation_config):
        seen.append(input_ids)
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), tok.eos_token_id)], dim=1)

    model = SimpleNamespace(device="cpu", generate=generate, generation_config=None)
    ChatModel(model, tokenizer=tok).generate([[{"type": "text", "text": "Is the answer A?"}]], max_new_tokens=2)
    (ids,) = seen
    assert ids[0, 0] == tok.bos_token_id and ids[0, 1] != tok.bos_token_id


def test_a_templates_trailing_space_after_the_answer_is_not_scored(tmp_path_factory):
    """llava-hf's vicuna templates end an assistant turn with a space and no `</s>`: the space is layout, and a
    model trained to end answers with `</s>` finds it unlikely by an amount that depends on the option. The
    scored continuation is the option's tokens; an end-of-turn special token, where the template writes one,
    is kept (the tiny templates' `</s>`)."""
    from train.families import load_model

    _, processor, _ = load_model(tiny_model("llava_next_video", tmp_path_factory))
    messages = [{"role": "user", "content": [{"type": "text", "text": "What happens?"}]}]
    decode = processor.tokenizer.decode
    _, kept = continuation_ids(processor, messages, "it moves left")
    assert decode(kept[-1:]) == "</s>"
    # a template of that shape: "USER: ... ASSISTANT: <answer> ", no end-of-sequence token
    processor.chat_template = (
        "{%- for m in messages -%}{{ m['role'].upper() }}: {% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] + ' ' }}{% endif %}{% endfor %}{%- endfor -%}{%- if add_generation_prompt -%}ASSISTANT:"
        "{%- endif -%}")
    full = processor.apply_chat_template(messages + [{"role": "assistant", "content": [{"type": "text",
                                                                                         "text": "it moves left"}]}],
                                         tokenize=False)
    assert full.endswith("ASSISTANT: it moves left ")
    tail = processor.tokenizer(full, add_special_tokens=False)["input_ids"]
    assert decode(tail[-1:]).strip() == ""  # the template's space is a token of its own
    _, cont = continuation_ids(processor, messages, "it moves left")
    assert "".join(decode([t]) for t in cont).strip() == "it moves left" and decode(cont[-1:]).strip() == "left"
