"""Shared set-up of the benchmarks (`make bench`, i.e. `pytest -m bench tests/benchmarks -s`).

Everything is built once per session under pytest's temp directory: the tiny Llava every benchmark
uses, and a training work directory (a video recipe with a `train:` section, its shards). At the end
of the session the table the benchmarks filled (`table.py`) is printed and written to
`bench-results.md` at the repository root.

The tiny models are far faster on one thread, above all on 2 shared cores: unless told otherwise the
benchmarks run torch on one thread and start their subprocesses with OMP_NUM_THREADS=1 (the Makefile
exports it too).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from table import TABLE

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench-results.md"
# What `make` exports, for a plain `pytest -m bench tests/benchmarks`; set only while benchmarks run.
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}


@pytest.fixture(scope="session", autouse=True)
def bench_environment():
    """The environment above (values already set win), one torch thread, no progress bars."""
    import torch
    from transformers.utils.logging import disable_progress_bar

    saved = dict(os.environ)
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    TABLE.torch_threads = torch.get_num_threads()
    disable_progress_bar()  # "Loading weights", "Writing model shards"
    yield
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def table():
    return TABLE


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def tiny_llava(bench_root) -> Path:
    """The tiny random-init Llava (`train.toy.tiny.build_tiny("llava", dir)`) every benchmark runs on."""
    from train.toy.tiny import build_tiny

    return build_tiny("llava", bench_root / "tiny-llava")


@pytest.fixture(scope="session")
def train_work(bench_root, tiny_llava):
    """A trainer working directory: the demo's video recipe and training section, on the tiny Llava."""
    from trainer_runs import TrainWork

    return TrainWork.create(bench_root / "train", tiny_llava)


@pytest.fixture(scope="session")
def subprocess_env(bench_environment) -> dict:
    """Environment of the trainer and build subprocesses."""
    return dict(os.environ, PYTHONPATH=str(REPO))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TABLE.rows:
        return  # no benchmark ran (e.g. the default, bench-deselected run)
    TABLE.write(RESULTS)
    terminalreporter.write_sep("=", "benchmark table")
    terminalreporter.write_line(TABLE.markdown())
    terminalreporter.write_line(f"written to {RESULTS}")

