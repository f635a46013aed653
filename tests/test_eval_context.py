"""Sequences longer than the checkpoint's context: the limit from published-shaped configs, the measure on
what the model runs (through peft, scoring and generation), and what metrics.json, stderr and the report say."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from evalsuite import context
from evalsuite.cli import main
from evalsuite.generation import ChatModel
from evalsuite.scoring import option_continuations, score_options
from fixtures_7b import config_7b
from helpers import tiny_model
from train.families import context_length, get_family, get_module, load_model

FAST = ["--limit", "2", "--frames", "3", "--infill-tokens", "3", "--answer-tokens", "3", "--n-boot", "100",
        "--no-progress", "--no-tracking"]


def _vicuna(**rope) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(max_position_embeddings=4096, **({"rope_scaling": rope} if rope else {}))


def test_the_context_is_the_positions_a_rope_scaling_stretches_to(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir(tmp_path))
    # the published 7B shapes: Vicuna's 4,096, Qwen2's 32,768 (M-RoPE is no stretch)
    assert context_length(config_7b("llava_next", tok)) == 4096
    assert context_length(config_7b("llava_next_video", tok)) == 4096
    assert context_length(config_7b("qwen2_vl", tok)) == 32768
    assert context_length(config_7b("internvl", tok)) == 32768
    # LLaVA-NeXT-Video run with linear scaling 2.0 (as its authors run 32 frames): 8,192
    video = transformers.LlavaNextVideoConfig(text_config={"model_type": "llama", "max_position_embeddings": 4096,
                                                           "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert context_length(video) == 8192
    assert context_length(_vicuna(rope_type="dynamic", factor=4.0)) == 16384
    # YaRN and Llama 3 name the pre-scaling length themselves
    yarn = transformers.Qwen2Config(max_position_embeddings=32768, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert context_length(yarn) == 131072
    llama3 = transformers.LlamaConfig(max_position_embeddings=131072, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0})
    assert context_length(llama3) == 131072
    assert context_length(_vicuna(rope_type="linear", factor=1.0)) == 4096
    assert context_length(transformers.LlamaConfig(max_position_embeddings=0)) == 0


def tiny_model_dir(tmp_path):
    from train.toy.tiny import build_tiny

    return build_tiny("llava", tmp_path / "tiny")


@pytest.mark.parametrize("batched", [True, False])
def test_a_row_records_the_longest_sequence_its_answer_ran(tmp_path_factory, batched):
    """Loglik scoring: the prompt, then the longest option but its last token (predicted, not fed), whether
    the options run batched or one by one; generation: the prompt, then max_new_tokens - 1, per prompt,
    whatever the batch's padding. Measured against what the language model is fed (a forward hook)."""
    from evalsuite.checkpoints import load_checkpoint
    from train.smoke import demo_frames

    model, processor, _ = load_checkpoint(tiny_model("llava", tmp_path_factory))
    fed = []

    def see(module, args, kwargs):  # new tokens plus those in the cache (its name differs across versions)
        cache = next((kwargs[k] for k in ("past_key_values", "cache") if kwargs.get(k) is not None), None)
        fed.append(kwargs["inputs_embeds"].shape[1] + (cache.get_seq_length() if cache is not None else 0))

    hook = get_module(model, get_family("llava").language_model).register_forward_pre_hook(see, with_kwargs=True)
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "what moves?"}]
    options = ["it moves left.", "nothing moves at all, the scene stays still."]
    scores = score_options(model, processor, content, demo_frames(2), options,
                           option_batch_bytes=2**30 if batched else 0)
    assert scores.sequence_tokens == max(fed) and scores.as_row()["sequence_tokens"] == max(fed)
    prefix, conts = option_continuations(processor, [{"role": "user", "content": content}], options)
    prompt = processor(text=[prefix], images=[demo_frames(2)], return_tensors="pt")["input_ids"].shape[1]
    assert max(fed) == prompt + max(len(c) for c in conts) - 1 > prompt
    fed.clear()
    lengths: list[int] = []
    short = [{"type": "text", "text": "hi"}]
    ChatModel(model, processor=processor).generate([short, content], [[], demo_frames(2)], max_new_tokens=4,
                                                   lengths=lengths)
    alone: list[int] = []
    ChatModel(model, processor=processor).generate([short], [[]], max_new_tokens=4, lengths=alone)
    hook.remove()
    assert lengths[1] == prompt + 3  # the same rendered prompt as scoring's, then 4 new tokens but the last
    assert lengths[0] == alone[0] < lengths[1]  # padding beside a longer prompt does not count
    assert max(fed) <= lengths[1]  # what it fed, at most (it may stop early)


def test_summary_counts_items_over_the_limit_from_rows():
    rows = [{"item": "a", "sequence_tokens": 90}, {"item": "a", "sequence_tokens": 90},
            {"item": "b", "sequence_tokens": 40}, {"item": "c"}]  # c: evaluated before the measure existed
    got = context.summary(rows, 64)
    assert got == {"limit": 64, "longest": 90, "items": 2, "items_over": 1, "examples": ["a"]}
    assert context.summary(rows, 0)["items_over"] == 0  # no limit known: nothing is over it
    assert context.warning("vcot", "m", got).startswith("[vcot] m: 1 of 2 item(s) ran sequences longer than the "
                                                        "model's context of 64 positions (longest 90 tokens")
    assert context.warning("vcot", "m", context.summary(rows, 100)) is None


def test_an_evaluation_past_the_context_says_so_in_metrics_stderr_and_report(tmp_path, tmp_path_factory, capsys,
                                                                            one_thread):
    """A checkpoint whose config names 64 positions (its prompts of 3 frames run longer): every item is counted
    over, stderr warns, the report lists it; the same checkpoint with its 4,096 positions: none, and the
    report gives its longest sequence against its context."""
    root = tmp_path / "ckpt"
    short = shutil.copytree(tiny_model("llava", tmp_path_factory), root / "short")
    cfg = json.loads((short / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 64
    (short / "config.json").write_text(json.dumps(cfg))
    assert load_model(short)[0].config.text_config.max_position_embeddings == 64
    long = shutil.copytree(tiny_model("llava", tmp_path_factory), root / "long")
    assert main(["all", str(root), *FAST, "--tasks", "vcot"]) == 0
    err = capsys.readouterr().err
    over = json.loads((short / "eval" / "vcot" / "metrics.json").read_text())["context"]
    assert over["limit"] == 64 and over["items"] == over["items_over"] == 2 and over["longest"] > 64
    fits = json.loads((long / "eval" / "vcot" / "metrics.json").read_text())["context"]
    assert fits["limit"] == 4096 and fits["items"] == 2 and fits["items_over"] == 0
    assert fits["longest"] == over["longest"]  # the same prompts
    assert "[vcot] short: 2 of 2 item(s) ran sequences longer than the model's context of 64 positions" in err
    assert "[vcot] long:" not in err.replace("[vcot] long: done", "")
    report = (root / "report.md").read_text()
    section = report.split("## Not evaluated as asked", 1)[1].split("## Figures", 1)[0]
    assert "- `short` vcot: 2 of 2 item(s) ran sequences longer than the model's context of 64 positions" in section
    assert "`long` vcot" not in section
    assert f"`long` {fits['longest']:,} of 4,096" in section


def test_a_text_model_whose_tokenizer_has_no_pad_token_generates(tmp_path_factory):
    """Llama-3 and Mistral instruct tokenizers have no pad token (a judge or rephraser of that kind): batched
    generation pads with the end-of-sequence token, left, and masks it out; each answer is the one it gets
    alone. Before, the tokenizer refused `padding=True`, even for a batch of one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model("llava", tmp_path_factory))
    tok.pad_token = None
    assert tok.pad_token_id is None and tok.eos_token is not None
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).eval()
    chat = ChatModel(model, tokenizer=tok, name="judge")
    turns = [[{"type": "text", "text": "Which option?"}],
             [{"type": "text", "text": "A much longer question, which the other prompt is padded to, about it?"}]]
    both = chat.generate(turns, max_new_tokens=3, batch_size=2)
    alone = [chat.generate([t], max_new_tokens=3)[0] for t in turns]
    assert both == alone and all(isinstance(a, str) for a in both)
    assert chat.pad_id == tok.eos_token_id
