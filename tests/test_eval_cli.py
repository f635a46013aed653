"""`python -m evalsuite all` end to end: discovery, base models, MLflow runs linked to training, report, skip."""

from __future__ import annotations

import json
import shutil

import pytest

import evalsuite.resources
from evalsuite.cli import main
from evalsuite.outputs import read_rows
from helpers import make_adapter, tiny_model

FAST = ["--limit", "2", "--frames", "3", "--infill-tokens", "3", "--answer-tokens", "3", "--n-boot", "100",
        "--no-progress"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow store holding one training run, as the trainer leaves it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("lora-study", artifact_location=str(tmp_path / "mlruns" / "artifacts"))
    runs = [client.create_run(exp, run_name=name).info.run_id for name in ("video_demo", "image_demo")]
    return client, uri, exp, runs


def test_all_evaluates_runs_and_their_outside_base_then_skips(tmp_path, tmp_path_factory, store, capsys,
                                                               monkeypatch, one_thread):
    client, uri, exp, (train_run, image_train_run) = store
    base = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "models" / "tiny-llava")
    root = tmp_path / "ckpt"
    root.mkdir()
    make_adapter(base, root / "video_run", seed=1, run={"mlflow_run_id": train_run, "tracking_uri": uri})
    make_adapter(base, root / "image_run", seed=2, run={"mlflow_run_id": image_train_run, "tracking_uri": uri})
    (root / "video_run" / "checkpoints" / "step-3").mkdir(parents=True)  # a training state: not a checkpoint

    assert main(["all", str(root), *FAST]) == 0
    out = capsys.readouterr().out
    names = ["base-tiny-llava", "image_run", "video_run"]
    for name in names:
        assert (root / name / "eval/vcot/metrics.json").is_file()
        assert f"| {name} |" in out  # the report table is printed
    assert json.loads((root / "base-tiny-llava" / "base.json").read_text())["model"] == str(base.resolve())
    report = (root / "report.md").read_text()
    vcot_table = report.split("## vCoT")[1].split("\n## ")[0]
    kinds = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in vcot_table.splitlines()
             if line.startswith(("| base-", "| image", "| video"))}
    assert kinds == {"base-tiny-llava": "base", "image_run": "adapter", "video_run": "adapter"}

    runs = {r.data.tags["evalsuite.checkpoint"].rsplit("/", 1)[-1]: r
            for r in client.search_runs([exp]) if "evalsuite.checkpoint" in r.data.tags}
    assert sorted(runs) == names  # the base joined the experiment of the run trained on it
    video = runs["video_run"]
    assert video.data.tags["mlflow.parentRunId"] == train_run == video.data.tags["training_run_id"]
    assert runs["base-tiny-llava"].data.tags["evalsuite.kind"] == "base"
    for r in runs.values():
        assert {"vcot/f3/acc_base", "vcot/f3/acc_vcot", "vcot/f3/gain", "vcot/f3/gain_p",
                "vcot/f3/caption_gain", "vcot/f3/acc_blind", "vcot/f3/text_only_gain",
                "vcot/floor/guesser"} <= set(r.data.metrics)
        assert r.data.params["vcot.scoring"] == "loglik"
    metrics = json.loads((root / "video_run/eval/vcot/metrics.json").read_text())
    assert video.data.metrics["vcot/f3/gain"] == metrics["metrics"]["f3"]["gain"]["value"]

    def no_loading(*a, **k):
        raise AssertionError("done checkpoints must not be loaded")

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", no_loading)
    assert main(["all", str(root), *FAST]) == 0
    assert "skipped" in capsys.readouterr().err
    assert len([r for r in client.search_runs([exp]) if "evalsuite.checkpoint" in r.data.tags]) == 3


def _text_lm(tmp_path, tmp_path_factory):
    """A tiny text-only causal LM (the rephraser role) with the tiny VLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model("llava", tmp_path_factory))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    out = tmp_path / "text-lm"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_generate_scoring_with_rephraser_and_judge(tmp_path, tmp_path_factory, generate_calls, one_thread):
    calls = generate_calls
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    judge = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "judge")
    code = main(["vcot", str(ckpt), *FAST, "--limit", "1", "--scoring", "generate", "--no-tracking",
                 "--rephraser", str(_text_lm(tmp_path, tmp_path_factory)), "--judge", str(judge)])
    assert code == 0
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert len(rows) == 6 and all("output" in r and r["extraction"] in ("letter", "text", "judge", "failed")
                                  for r in rows)
    assert calls["rephraser"] == 2  # one shortening per infill (F=3: 2 pairs)
    assert calls["judge"] == sum(r["extraction"] in ("judge", "failed") and bool(r["output"]) for r in rows)
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert "failed_vcot" in m["metrics"]["f3"] and m["settings"]["judge"].startswith(str(judge.resolve()))
    assert "+rephraser:" in m["settings"]["infills"]


def test_a_failed_mlflow_log_is_retried_on_the_next_run(tmp_path, tmp_path_factory, store, capsys, monkeypatch,
                                                       one_thread):
    from evalsuite.tracking import EvalTracker

    client = store[0]
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    real = EvalTracker.log_evaluation

    def store_down(self, *a, **k):
        raise RuntimeError("database is unreachable")

    monkeypatch.setattr(EvalTracker, "log_evaluation", store_down)
    args = ["vcot", str(ckpt), *FAST, "--limit", "1", "--experiment", "evals"]
    assert main(args) == 0  # the evaluation itself is not lost
    assert "logging failed" in capsys.readouterr().err and (ckpt / "eval/vcot/metrics.json").is_file()
    monkeypatch.setattr(EvalTracker, "log_evaluation", real)
    for _ in range(2):  # logged once on the next run (skipped evaluation), not again after that
        assert main(args) == 0
    exp = client.get_experiment_by_name("evals").experiment_id
    runs = client.search_runs([exp])
    assert len(runs) == 1 and "vcot/f3/acc_vcot" in runs[0].data.metrics
    # Evaluated again under other settings while the store is down: the next run logs the new results, although
    # an earlier run had logged this task of this checkpoint (under the old settings).
    monkeypatch.setattr(EvalTracker, "log_evaluation", store_down)
    other = ["vcot", str(ckpt), *FAST, "--limit", "2", "--experiment", "evals"]
    assert main(other) == 0 and "logging failed" in capsys.readouterr().err
    monkeypatch.setattr(EvalTracker, "log_evaluation", real)
    assert main(other) == 0
    runs = client.search_runs([exp], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.params["vcot.limit"] == "2"


def test_a_second_evaluation_of_a_task_is_refused_while_one_runs(tmp_path, tmp_path_factory, capsys, one_thread):
    """One evaluation of a task of a checkpoint at a time (`eval/.TASK.lock`): a second one at once (a study rerun
    while its old evaluation jobs still run) would append rows made under other settings to the same
    predictions file. It stops before writing anything, naming the holder; once the lock is free it runs, and
    leaves no lock behind."""
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    lock = ckpt / "eval" / ".vcot.lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": "node-b", "pid": 4242, "slurm_job": None, "slurm_restart": None}))
    args = ["vcot", str(ckpt), *FAST, "--limit", "1", "--no-tracking"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {lock}: an evaluation of vcot on m is already in progress (host node-b, pid 4242" in err
    assert not (ckpt / "eval" / "vcot").exists()
    lock.unlink()
    assert main(args) == 0 and (ckpt / "eval" / "vcot" / "metrics.json").is_file() and not lock.exists()


def test_discovery_skips_training_states_and_reports_broken_checkpoints(tmp_path, tmp_path_factory):
    from evalsuite.checkpoints import CheckpointError, discover

    base = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "ck" / "base")
    (tmp_path / "ck" / "run" / "checkpoints" / "step-2").mkdir(parents=True)
    (tmp_path / "ck" / "run" / "checkpoints" / "step-2" / "run.json").write_text("{}")  # inside a state: ignored
    (tmp_path / "ck" / "crashed").mkdir()
    (tmp_path / "ck" / "crashed" / "run.json").write_text(json.dumps({"base_model": str(base)}))  # no weights
    broken: list[str] = []
    refs = discover(tmp_path / "ck", broken)
    assert [r.name for r in refs] == ["base"] and len(broken) == 1 and "crashed" in broken[0]
    with pytest.raises(CheckpointError, match="crashed.*is not a checkpoint"):
        discover(tmp_path / "ck")
