"""Fixtures shared by the whole test suite; pytest loads this file before any test module.

Plain helper functions (tiny models, adapter checkpoints, running the trainer) are in `tests/helpers.py`.
Nothing here downloads anything: the Hugging Face hub is offline and MLflow sends no telemetry.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

IRAVEN_FIXTURE = Path(__file__).parent / "fixtures" / "iraven_reference"
"""42 puzzles written by the original I-RAVEN generator, with their answers (see its README.md)."""


@pytest.fixture(scope="session")
def iraven_reference() -> Path:
    """The original generator's reference puzzles (answers.json, one folder per configuration): the
    ones in tests/fixtures, or the directory `$IRAVEN_REFERENCE` names (a larger set, same layout)."""
    ref = Path(os.environ.get("IRAVEN_REFERENCE") or IRAVEN_FIXTURE)
    if not (ref / "answers.json").is_file():
        raise FileNotFoundError(f"{ref / 'answers.json'}: I-RAVEN reference puzzles not found (expected "
                                "answers.json and one folder of .npz files per configuration)")
    return ref


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def generate_calls(monkeypatch) -> Counter:
    """Counts prompts sent to `ChatModel.generate`, by the model's name (generator, judge, rephraser...)."""
    from evalsuite.generation import ChatModel

    calls: Counter = Counter()
    real = ChatModel.generate

    def counting(self, contents, images=None, **kw):
        calls[self.name] += len(contents)
        return real(self, contents, images, **kw)

    monkeypatch.setattr(ChatModel, "generate", counting)
    return calls
