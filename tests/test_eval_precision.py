"""The precision a checkpoint is evaluated in: chosen as the trainer chooses it, on the device the evaluation
runs on, not taken from whatever dtype a checkpoint's config.json names, and recorded with the results."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from evalsuite.checkpoints import checkpoint_ref, load_checkpoint
from evalsuite.cli import main
from evalsuite.config import ConfigError, EvalConfig, eval_precision
from evalsuite.resources import Subject
from helpers import make_adapter, tiny_model

FAST = ["--limit", "1", "--frames", "3", "--infills", "oracle", "--n_boot", "50", "--no_tracking", "--no_progress"]


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_native_else_fp16(monkeypatch, native_bf16, expected):
    """A V100 or T4 only emulates bf16, very slowly: there `auto` is fp16, as the trainer's precision is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or native_bf16)
    assert eval_precision("auto", "cuda:0") == expected and asked == [False]
    assert eval_precision("auto", "cpu") == "fp32" and eval_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="--precision fp16 needs a GPU"):
        eval_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="Unknown precision 'bf61'"):
        EvalConfig(precision="bf61")


def test_a_checkpoint_saved_in_bf16_is_evaluated_in_the_resolved_precision_and_says_so(tmp_path, tmp_path_factory):
    """A 7B checkpoint's config.json names its dtype (bfloat16 for Qwen2-VL and InternVL3, float16 for some
    LLaVA ones); loading with dtype "auto" followed it, on any device, and nothing recorded it. On CPU the
    evaluation now runs in fp32, and metrics.json's settings say which precision the results were made in."""
    from train.families import load_model

    model, processor, _ = load_model(tiny_model("llava", tmp_path_factory))
    ckpt = tmp_path / "bf16-llava"
    model.to(torch.bfloat16).save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    subject = Subject(checkpoint_ref(ckpt), EvalConfig(), device="cpu")
    assert subject.precision == "fp32" and subject.model.dtype == torch.float32
    assert main(["vcot", str(ckpt), *FAST]) == 0
    settings = json.loads((ckpt / "eval/vcot/metrics.json").read_text())["settings"]
    assert settings["precision"] == "fp32"
    assert main(["vcot", str(ckpt), *FAST, "--precision", "bf16"]) == 0  # other numerics: not mixed with fp32 rows
    assert json.loads((ckpt / "eval/vcot/metrics.json").read_text())["settings"]["precision"] == "bf16"
    from evalsuite.outputs import STALE

    assert len(list((ckpt / "eval").glob(f"vcot{STALE}*"))) == 1  # the fp32 results moved aside, not appended to


def test_on_a_gpu_the_weights_load_straight_onto_it_in_the_asked_dtype(monkeypatch, tmp_path, tmp_path_factory):
    """Every rank of an 8-GPU evaluation loaded the whole 7B model into host memory first (8 copies of ~16 GB
    at once), then moved it: the weights now load onto the rank's GPU (`device_map`), base and adapter alike."""
    from transformers import LlavaForConditionalGeneration

    base = tiny_model("llava", tmp_path_factory)
    adapter = tmp_path / "run"
    make_adapter(base, adapter, seed=1)
    seen = []

    class Stop(Exception):
        pass

    def recording(cls, path, *args, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(recording))
    for path in (base, adapter):
        with pytest.raises(Stop):
            load_checkpoint(path, dtype=torch.bfloat16, device="cuda:1")
    assert [(k["device_map"], k["dtype"]) for k in seen] == [({"": "cuda:1"}, torch.bfloat16)] * 2
    seen.clear()
    with pytest.raises(Stop):
        load_checkpoint(base, device="cpu")
    assert "device_map" not in seen[0]
