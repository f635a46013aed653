"""Shared helpers of the evaluation-suite tests (tiny models, adapter checkpoints); holds no tests.

Tiny models are built once per pytest session under the session's base temp directory, so every
test module reuses them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tiny_model(family: str, tmp_path_factory) -> Path:
    from train.tiny import build_tiny

    out = tmp_path_factory.getbasetemp() / "eval-tiny" / family
    if not (out / "config.json").exists():
        build_tiny(family, out)
    return out


def make_adapter(base: Path, out: Path, seed: int = 0, run: dict | None = None) -> Path:
    """A trainer-like checkpoint: peft adapter (non-zero LoRA B), processor, run.json."""
    from peft import LoraConfig, get_peft_model

    from data_recipes.processors import save_processor
    from train.families import load_model

    model, processor, family = load_model(base)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=family.lora_target_regex,
                                                      init_lora_weights=False))
    peft_model.save_pretrained(out)
    save_processor(processor, out)
    info = {"base_model": str(base), "recipe": "video_demo", "family": family.name, "mlflow_run_id": None,
            "tracking_uri": None, "seed": seed, "consumed": {"samples": 0}}
    (out / "run.json").write_text(json.dumps(info | (run or {})))
    return out


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fast_config(**overrides):
    """An EvalConfig small enough for a test: few items, short generations, few bootstrap replicates."""
    from evalsuite.config import EvalConfig

    base = dict(limit=3, frames=(3, 4), infill_tokens=4, answer_tokens=4, n_boot=200, tracking=False,
                progress=False)
    return EvalConfig(**(base | overrides))


@pytest.fixture
def generate_calls(monkeypatch):
    """Counts prompts sent to `ChatModel.generate`, by the model's name (generator, judge, rephraser...)."""
    from collections import Counter

    from evalsuite.generation import ChatModel

    calls: Counter = Counter()
    real = ChatModel.generate

    def counting(self, contents, images=None, **kw):
        calls[self.name] += len(contents)
        return real(self, contents, images, **kw)

    monkeypatch.setattr(ChatModel, "generate", counting)
    return calls
