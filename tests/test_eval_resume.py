"""Interrupted evaluations resume without duplicates or gaps; ranks merge; finished work is skipped."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

import evalsuite.resources
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.distributed import Ranks
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from evalsuite.tasks.vcot import VCoTTask
from helpers import fast_config, make_adapter, tiny_model

CFG = dict(limit=5, frames=(3, 4))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An adapter checkpoint and the outputs of one uninterrupted evaluation of it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    ckpt = make_adapter(tiny_model("llava", tmp_path_factory), root / "run", seed=3)
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG), root / "cache-full")
    full = root / "eval-full"
    (ckpt / "eval").rename(full)
    torch.set_num_threads(before)
    return ckpt, full


def _outputs(eval_dir):
    d = eval_dir / "vcot"
    return (d / "metrics.json").read_bytes(), (d / "predictions.jsonl").read_bytes()


def test_killed_run_resumes_to_identical_outputs(reference, tmp_path, monkeypatch, one_thread):
    ckpt, full = reference
    real = VCoTTask.predict
    calls = []

    def dies_after_two(self, subject, item, todo):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # what a kill looks like to the code after it
        calls.append(item.id)
        return real(self, subject, item, todo)

    monkeypatch.setattr(VCoTTask, "predict", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG), tmp_path / "cache")
    pred = ckpt / "eval/vcot/predictions.jsonl"
    assert len(read_rows(pred)) == 2 * 2 * 6 and not (ckpt / "eval/vcot/metrics.json").exists()
    with open(pred, "a") as f:  # the kill also cut the next item's rows mid-line
        f.write('{"key": "synthetic-eval-test-s0-0000002|f3|base", "answ')

    resumed = []
    monkeypatch.setattr(VCoTTask, "predict", lambda self, s, item, todo: resumed.append(item.id) or real(
        self, s, item, todo))
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG), tmp_path / "cache")
    assert len(resumed) == 3 and not set(resumed) & set(calls)  # only the missing items ran
    rows = read_rows(pred)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 5 * 2 * 6  # no duplicate, no gap
    assert _outputs(ckpt / "eval") == _outputs(full)  # byte-identical to the uninterrupted run
    shutil.rmtree(ckpt / "eval")


def test_two_ranks_merge_to_the_single_process_outputs(reference, tmp_path, one_thread):
    ckpt, full = reference
    barrier = threading.Barrier(2, timeout=120)
    errors = []

    def rank(r):
        try:
            evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG), tmp_path / "cache",
                     ranks=Ranks(r, 2, barrier.wait))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert not list((ckpt / "eval/vcot").glob("predictions.part*"))  # parts folded into predictions.jsonl
    assert _outputs(ckpt / "eval") == _outputs(full)
    shutil.rmtree(ckpt / "eval")


def test_a_resume_shares_out_what_is_left_among_the_ranks():
    """Rank 0 of 2 died after its whole share (every even item); on the rerun the 5 items left go 3 and 2 to
    the two ranks, not all 5 to rank 1 while rank 0 waits at the barrier."""
    from evalsuite.runner import split_work

    items = [f"item{i}" for i in range(10)]
    keys = lambda item: [f"{item}/a", f"{item}/b"]  # noqa: E731
    done = {k for item in items[0::2] for k in keys(item)} | {"item1/a"}
    shares = [split_work(items, keys, done, Ranks(r, 2)) for r in (0, 1)]
    assert [len(s) for s in shares] == [3, 2]
    assert sorted(item for s in shares for item, _ in s) == items[1::2]
    assert dict(shares[0])["item1"] == ["item1/b"]  # only the keys still to predict


def test_finished_work_is_skipped_and_changed_settings_start_over(reference, tmp_path, monkeypatch):
    ckpt, full = reference
    shutil.copytree(full, ckpt / "eval")

    def no_loading(*a, **k):
        raise AssertionError("a finished checkpoint must not be loaded")

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", no_loading)
    out = evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG), tmp_path / "cache")
    assert out[str(ckpt)]["vcot"] == json.loads((full / "vcot/metrics.json").read_text())
    with pytest.raises(AssertionError, match="must not be loaded"):
        evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(**CFG | {"seed": 1}), tmp_path / "cache")
    stale = list((ckpt / "eval").glob("vcot.stale-*"))
    assert len(stale) == 1 and (stale[0] / "predictions.jsonl").read_bytes() == _outputs(full)[1]
    shutil.rmtree(ckpt / "eval")


def test_truncated_last_line_is_repaired(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "pr')
    assert [r["key"] for r in read_rows(p, repair=True)] == ["a", "b"]
    assert p.read_text() == '{"key": "a"}\n{"key": "b"}\n'
    p.write_text('{"key": "a"}\n{"key": "b"}')  # complete line, only its newline lost
    assert [r["key"] for r in read_rows(p, repair=True)] == ["a", "b"]
    assert p.read_text().endswith('"b"}\n')
    p.write_text('{"key": "a"}\n{"ke\n{"key": "b"}\n')
    with pytest.raises(ValueError, match="p.jsonl:2: corrupt line"):
        read_rows(p)
