"""Shared set-up of the benchmarks (`make bench`, i.e. `pytest -m bench tests/benchmarks -s`).

Everything is built once per session under pytest's temp directory: the tiny Llava every benchmark
uses, and a training work directory (a video recipe with a `train:` section, its shards). At the end
of the session the table the benchmarks filled (`table.py`) is printed and written to
`bench-results.md` at the repository root.

The tiny models are far faster on one thread, above all on 2 shared cores: OMP_NUM_THREADS defaults
to 1 here (the Makefile exports it too), before torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

for _key, _value in {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
                     "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402

from table import TABLE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench-results.md"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def table():
    return TABLE


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def tiny_llava(bench_root) -> Path:
    """The tiny random-init Llava (`train.tiny.build_tiny("llava", dir)`) every benchmark runs on."""
    from train.tiny import build_tiny

    return build_tiny("llava", bench_root / "tiny-llava")


@pytest.fixture(scope="session")
def train_work(bench_root, tiny_llava):
    """A trainer working directory: the demo's video recipe and training section, on the tiny Llava."""
    from trainer_runs import TrainWork

    return TrainWork.create(bench_root / "train", tiny_llava)


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment of the trainer and build subprocesses."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ["OMP_NUM_THREADS"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TABLE.rows:
        return  # no benchmark ran (e.g. the default, bench-deselected run)
    TABLE.write(RESULTS)
    terminalreporter.write_sep("=", "benchmark table")
    terminalreporter.write_line(TABLE.markdown())
    terminalreporter.write_line(f"written to {RESULTS}")

