"""train/lora.py end to end on CPU: DeepSpeed ZeRO-2/3 with 1 and 2 processes, matching, resume, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import ACCELERATE, LORA, PY, REPO, run_lora
from train.config import ConfigError, resolve


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory with small video and image recipes (shards and tiny model built on first use)."""
    d = tmp_path_factory.mktemp("train")
    common = {"image_size": 64, "seed": 0, "split": "train", "shard_size": 16}
    train = {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False, "projector_lr": 1e-3, "num_workers": 1, "save_steps": 0,
             "learning_rate": 1e-3, "warmup_steps": 2}
    (d / "vid.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                "samples": 64, "frames": 3, **common, "train": train}))
    (d / "img.yaml").write_text(yaml.safe_dump({"kind": "image", "sources": [{"type": "synthetic_image"}],
                                                "samples": 400, **common, "train": train}))
    return d


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def seen(run_dir: Path) -> dict[int, list[str]]:
    out = {}
    for f in sorted((run_dir / "samples").glob("rank-*.txt")):
        out[int(f.stem.split("-")[1])] = [line.split("\t")[1] for line in f.read_text().splitlines()]
    return out


@pytest.fixture(scope="module")
def ref_run(work):
    """`ckpt/ref`: 3 plain fp32 steps without DeepSpeed, run once per module; the reference a matched
    run stops at, and a run whose tiny model and video shards the tests read. No test writes to it."""
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "ref", "--max_steps", "3", "--ds_config", "none")
    return work / "ckpt" / "ref"


@pytest.fixture(scope="module")
def resumed(work):
    """`resumed(launcher)`: a 4-step run that saves its state every 2 steps, then the same run resumed from
    its step-2 state in its own run directory (as if it had died after it); done once per module and
    launcher (None: a bare run, ZeRO-2 in one process). Returns the run directory and what the
    uninterrupted run had left in it: its metrics, its samples and its run.json."""
    done = {}

    def run(launcher):
        if launcher not in done:
            name = {None: "z2", "ddp_2proc": "ddp"}.get(launcher, "z3")
            rd = work / "ckpt" / name
            args = ["--recipe", str(work / "vid.yaml"), "--max_steps", "4", "--save_steps", "2",
                    "--record_samples", "true", "--run_name", name]
            how = {"procs": 2} if launcher == "ddp_2proc" else {"launcher": launcher}
            if launcher == "ddp_2proc":
                args += ["--ds_config", "none"]
            run_lora(work, *args, **how)
            full = metrics(rd), seen(rd), json.loads((rd / "run.json").read_text())
            # Rerun steps 3-4 from the step-2 state, in the same run directory.
            run_lora(work, *args, "--resume", str(rd / "checkpoints" / "step-2"), **how)
            done[launcher] = (rd, *full)
        return done[launcher]

    return run


RESUMED_SETUPS = {"zero2_1proc": None, "zero3_2proc": "cpu_zero3_2proc.yaml", "ddp_2proc": "ddp_2proc"}
"""Setups whose uninterrupted 4-step run the `resumed` fixture makes anyway (its first run): checked from it."""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero2_1proc", "zero2_2proc", "zero3_2proc", "none_1proc", "ddp_2proc"])
def test_trains_under_each_setup(work, resumed, mode):
    if mode in RESUMED_SETUPS:  # a bare run is ZeRO-2 from ds_configs/zero2.json
        rd, full_metrics, keys, info = resumed(RESUMED_SETUPS[mode])
    else:
        name = f"r_{mode}"
        args = ["--recipe", str(work / "vid.yaml"), "--run_name", name, "--max_steps", "4", "--record_samples", "true"]
        if mode == "zero2_2proc":
            run_lora(work, *args, launcher="cpu_zero2_2proc.yaml")
        else:
            run_lora(work, *args, "--ds_config", "none")
        rd = work / "ckpt" / name
        full_metrics, keys, info = metrics(rd), seen(rd), json.loads((rd / "run.json").read_text())
    procs = 2 if "2proc" in mode else 1
    assert info["steps"] == 4 and info["consumed"]["samples"] == 4 * 4 * procs
    assert info["consumed"]["visual_tokens"] == 16 * 3 * info["consumed"]["samples"]
    assert 0 < info["consumed"]["supervised_tokens"] < info["consumed"]["text_tokens"]
    assert sorted(keys) == list(range(procs))
    everything = [k for ks in keys.values() for k in ks]
    assert len(everything) == len(set(everything)) == info["consumed"]["samples"]  # ranks see disjoint samples
    losses = [m["loss"] for m in full_metrics]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    # The adapter is a standard peft adapter.
    from peft import PeftModel

    from train.families import load_model

    base, _, _ = load_model(info["base_model"] if Path(info["base_model"]).is_absolute() else work / info["base_model"])
    PeftModel.from_pretrained(base, rd)


@pytest.mark.slow
def test_match_stops_exactly_and_mlflow_has_everything(work, ref_run):
    ref = json.loads((ref_run / "run.json").read_text())
    for unit in ("visual_tokens", "supervised_tokens", "samples"):
        name = f"img_{unit}"
        run_lora(work, "--recipe", str(work / "img.yaml"), "--run_name", name, "--ds_config", "none",
            "--match_to", str(work / "ckpt" / "ref"), "--match_by", unit, procs=2 if unit == "samples" else 1)
        info = json.loads((work / "ckpt" / name / "run.json").read_text())
        assert info["consumed"][unit] == ref["consumed"][unit], unit
        assert info["match"]["target"] == info["match"]["achieved"] and info["match"]["rel_error"] == 0
        assert info["match"]["reference"]["checkpoint"] == str(work / "ckpt" / "ref")
    # image samples have 1 frame of 16 tokens, video samples 3: five... three times as many image samples
    vis = json.loads((work / "ckpt" / "img_visual_tokens" / "run.json").read_text())
    assert vis["consumed"]["samples"] == 3 * ref["consumed"]["samples"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    r = client.get_run(vis["mlflow_run_id"])
    assert r.data.params["match_by"] == "visual_tokens" and r.data.params["lora_r"] == "16"
    assert r.data.tags["recipe"] == "img" and r.data.tags["family"] == "llava" and len(r.data.tags["manifest_hash"]) == 64
    hist = client.get_metric_history(r.info.run_id, "loss")
    assert len(hist) == vis["steps"] and [m.step for m in hist] == list(range(1, vis["steps"] + 1))
    assert r.data.metrics["consumed/visual_tokens"] == ref["consumed"]["visual_tokens"]
    arts = {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}
    assert {"checkpoint/run.json", "checkpoint/adapter_model.safetensors"} <= arts
    assert {a.path for a in client.list_artifacts(r.info.run_id, "data")} == {"data/manifest.json"}


@pytest.mark.slow
def test_resume_continues_the_same_run(resumed):
    """A bare run (ZeRO-2) resumed from its step-2 state ends as the uninterrupted run did: the same losses
    and learning rates after the state, the same samples, the same consumption."""
    rd, full, full_seen, full_info = resumed(None)
    part = metrics(rd)
    assert [m["step"] for m in part] == [1, 2, 3, 4]
    for a, b in zip(full[2:], part[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    assert seen(rd) == full_seen
    info = json.loads((rd / "run.json").read_text())
    assert info["consumed"] == full_info["consumed"]


def test_resume_refuses_another_reader_layout(resumed, work):
    """Stream positions are kept per data reader (process x loader worker): a resume with another number of
    loader workers would deal the shards out again. It is refused before the model loads, naming the state
    file and both layouts; the state records its layout."""
    rd = resumed(None)[0]
    state = rd / "checkpoints" / "step-2"
    readers = json.loads((state / "trainer_state.json").read_text())["readers"]
    assert readers["processes"] == 1 and readers["workers"] >= 1
    other = str(readers["workers"] + 1)
    p = run_lora(work, "--recipe", str(work / "vid.yaml"), "--max_steps", "4", "--run_name", "z2", "--resume", str(state),
                 "--num_workers", other, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"{state / 'trainer_state.json'}: this state was written by 1 process(es) x {readers['workers']} loader " \
           f"worker(s), this run has 1 x {other}" in p.stderr
    assert "Traceback" not in p.stderr and "Loading weights" not in p.stderr + p.stdout


def test_resume_refuses_other_settings_or_data(resumed, work):
    """A state records the settings that give its optimizer, schedule and stream positions their meaning, and
    the data's manifest hash: a resume under another learning rate is refused before the model loads, naming
    the state file and both values. (Speed and stopping settings may change: --max_steps here.)"""
    rd = resumed(None)[0]
    state = rd / "checkpoints" / "step-2"
    recorded = json.loads((state / "trainer_state.json").read_text())["settings"]
    assert recorded["learning_rate"] == 1e-3 and recorded["seed"] == 0 and len(recorded["manifest_hash"]) >= 16
    p = run_lora(work, "--recipe", str(work / "vid.yaml"), "--max_steps", "5", "--run_name", "z2", "--resume",
                 str(state), "--learning_rate", "0.002", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"{state / 'trainer_state.json'}: this state was trained under other settings: learning_rate: 0.001 in " \
           f"the state, 0.002 now" in p.stderr
    assert "Traceback" not in p.stderr and "Loading weights" not in p.stderr + p.stdout


def test_a_run_that_drops_too_many_samples_stops():
    """Samples over max_length or the context are dropped, never cut, and counted; past max_dropped_fraction of
    the samples taken (after the first MIN_SAMPLES_FOR_DROP_CHECK) the run stops, naming both reasons and what
    fits them, instead of training on a remainder that is no longer the recipe's data."""
    from types import SimpleNamespace

    from train.config import MIN_SAMPLES_FOR_DROP_CHECK
    from train.lora import LoRATrainer

    def check(samples, too_long, over_context, fraction=0.05):
        trainer = SimpleNamespace(cfg=SimpleNamespace(max_dropped_fraction=fraction, max_length=0), context=4096,
                                  state=SimpleNamespace(consumed={"samples": samples},
                                                        dropped={"too_long": too_long, "over_context": over_context}))
        LoRATrainer._check_drops(trainer)

    check(180, 0, 19)  # 19 of 199: too few taken to judge
    assert MIN_SAMPLES_FOR_DROP_CHECK == 200
    check(190, 0, 10)  # 5.0%: at the limit, not over it
    with pytest.raises(ConfigError) as e:
        check(189, 1, 10)
    assert "11 of the 200 samples taken so far were dropped as too long (too_long 1: over max_length unset; " \
           "over_context 10: over the language model's context of 4096 tokens), more than max_dropped_fraction " \
           "0.05" in str(e.value) and "video_input native" in str(e.value)
    check(10, 0, 990, fraction=1)  # 1: never


def test_a_fresh_run_moves_an_earlier_runs_states_and_adapter_aside(work):
    """A run started without --resume in a directory that holds another run's states and finished adapter moves
    them to RUN/.superseded-<time>/ before it writes anything. Left in place, pruning would delete the new run's
    own states first (it keeps the highest steps) and a requeued `--resume latest` would go on from the old run's
    step 300, with its weights, data positions and MLflow run."""
    from train.checkpointing import find_resume, valid_states

    rd = work / "ckpt" / "lineage"
    old = rd / "checkpoints" / "step-300"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text(json.dumps({"version": 2, "step": 300, "mlflow_run_id": "OLD-RUN"}))
    (rd / "run.json").write_text("{}")
    (rd / "adapter_config.json").write_text("{}")
    p = run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "lineage", "--max_steps", "4",
                 "--save_steps", "1", "--save_total_limit", "2", "--ds_config", "none")
    assert [s.name for s in valid_states(rd)] == ["step-2", "step-3"]
    assert find_resume(rd, "latest") == rd / "checkpoints" / "step-3"
    assert json.loads((rd / "checkpoints" / "step-3" / "trainer_state.json").read_text())["mlflow_run_id"] != "OLD-RUN"
    aside = sorted(rd.glob(".superseded-*"))
    assert len(aside) == 1 and sorted(f.name for f in aside[0].iterdir()) == ["adapter_config.json", "run.json",
                                                                            "step-300"]
    assert f"moved to ckpt/lineage/{aside[0].name}: adapter_config.json, run.json, step-300 (from an earlier run)" \
        in p.stdout
    assert json.loads((rd / "run.json").read_text())["steps"] == 4  # this run's own, written at its end
    assert not (rd / ".adapter.tmp").exists()


def test_resume_latest_of_a_finished_run_trains_nothing_and_finishes_its_mlflow_run(work):
    """`--resume latest` in a directory whose run finished under the same settings and stopping point (a Slurm
    job preempted after writing run.json, while it logged to MLflow) trains nothing: the adapter, run.json and
    logs stay as they are, nothing is moved aside, and the MLflow run the preemption left KILLED gets its final
    artifacts and ends FINISHED. A larger budget would run past the state's learning-rate schedule: refused."""
    from mlflow.tracking import MlflowClient

    rd = work / "ckpt" / "done"
    args = ["--recipe", str(work / "vid.yaml"), "--run_name", "done", "--max_steps", "4", "--save_steps", "2",
            "--ds_config", "none"]
    run_lora(work, *args)
    info = json.loads((rd / "run.json").read_text())
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    client.set_terminated(info["mlflow_run_id"], "KILLED")
    before = {f: (rd / f).read_bytes() for f in ("run.json", "adapter_model.safetensors", "metrics.jsonl")}
    stamp = (rd / "adapter_model.safetensors").stat().st_mtime_ns

    p = run_lora(work, *args, "--resume", "latest")
    assert "holds this run finished (4 steps; run.json): nothing to train" in p.stdout, p.stdout[-3000:]
    assert {f: (rd / f).read_bytes() for f in before} == before
    assert (rd / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert not list(rd.glob(".superseded-*")) and "Loading weights" not in p.stdout + p.stderr
    r = client.get_run(info["mlflow_run_id"])
    assert r.info.status == "FINISHED" and r.data.metrics["steps"] == 4
    assert {"checkpoint/run.json", "checkpoint/adapter_model.safetensors"} <= \
        {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}

    # A larger budget is another stopping point, but its steps would run past the state's cosine schedule, at a
    # learning rate of 0: refused, naming the state file, and the finished run left where it was.
    p = run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "done", "--max_steps", "6", "--save_steps",
                 "2", "--ds_config", "none", "--resume", "latest", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "error: ckpt/done/checkpoints/step-2/trainer_state.json: this state's cosine learning-rate schedule ends " \
           "at step 4, and the budget now asks for 6 steps: past step 4 the learning rate is 0" in p.stderr
    assert {f: (rd / f).read_bytes() for f in before} == before and not list(rd.glob(".superseded-*"))
    # A smaller one stops earlier on the same schedule: a rewind to step 2 that ends at step 3.
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "done", "--max_steps", "3", "--save_steps", "2",
             "--ds_config", "none", "--resume", str(rd / "checkpoints" / "step-2"))
    assert json.loads((rd / "run.json").read_text())["steps"] == 3
    lrs = {m["step"]: m["lr"] for m in metrics(rd)}
    assert sorted(lrs) == [1, 2, 3] and lrs[3] == pytest.approx(json.loads(before["metrics.jsonl"].splitlines()[2])["lr"])
    aside = sorted(rd.glob(".superseded-*"))
    assert len(aside) == 1 and sorted(f.name for f in aside[0].iterdir()) == ["adapter_config.json",
                                                                            "adapter_model.safetensors", "run.json"]


def test_a_run_stopped_by_max_steps_short_of_its_budget_says_so(work):
    """max_steps caps a run with a budget; the run then ends short of it, and run.json (which records the budget)
    and the output say so instead of leaving only the numbers to tell."""
    rd = work / "ckpt" / "capped"
    p = run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "capped", "--max_samples", "64",
                 "--max_steps", "2", "--ds_config", "none")
    info = json.loads((rd / "run.json").read_text())
    assert info["budget"]["target"] == 64 and info["consumed"]["samples"] == 8
    assert info["short_of_budget"] == {"unit": "samples", "target": 64, "achieved": 8, "limited_by": "max_steps"}
    assert "warning: stopped by max_steps 2 at 8 of the budget's 64 samples" in p.stdout


@pytest.mark.slow
def test_loss_falls_on_video_demo_data(work):
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "learn", "--max_steps", "60", "--ds_config", "none",
        "--learning_rate", "3e-3", "--train_embeddings", "true", "--per_device_batch_size", "8")
    losses = [m["loss"] for m in metrics(work / "ckpt" / "learn")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert json.loads((work / "ckpt" / "learn" / "run.json").read_text())["passes"] >= 2  # 480 samples over 64


# --- configuration ----------------------------------------------------------------------------------
def _recipe_train(_name):
    return {"lora_r": 4, "learning_rate": 1e-3, "max_steps": 10}


def test_precedence_defaults_recipe_file_flags(tmp_path):
    cfg = resolve(["--recipe", "x"], _recipe_train)
    assert (cfg.lora_r, cfg.learning_rate, cfg.max_steps, cfg.lora_alpha) == (4, 1e-3, 10, 32)
    f = tmp_path / "c.yaml"
    f.write_text("lora_r: 8\nmax_steps: 20\n")
    cfg = resolve(["--recipe", "x", "--config", str(f)], _recipe_train)
    assert (cfg.lora_r, cfg.learning_rate, cfg.max_steps) == (8, 1e-3, 20)
    cfg = resolve(["--recipe", "x", "--config", str(f), "--lora_r", "2", "--train_embeddings", "true"], _recipe_train)
    assert (cfg.lora_r, cfg.max_steps, cfg.train_embeddings) == (2, 20, True)


@pytest.mark.parametrize("argv, layer, msg", [
    (["--recipe", "x", "--lora_rank", "3"], {}, "unknown flag '--lora_rank' \\(did you mean 'lora_r'"),
    (["--recipe", "x"], {"learnig_rate": 1}, "train section: unknown key 'learnig_rate' \\(did you mean 'learning_rate'"),
    (["--recipe", "x", "--lora_r", "two"], {}, "'lora_r' must be int"),
    (["--recipe", "x", "--match_by", "tokens"], {}, "match_by must be one of"),
    (["--recipe", "x", "--run_name", "../escape"], {}, "cannot leave output_root"),
])
def test_bad_settings_are_errors(argv, layer, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve(argv + ["--max_steps", "1"], lambda _n: layer)


def test_no_budget_is_an_error():
    with pytest.raises(ConfigError, match="no budget"):
        resolve(["--recipe", "x"], lambda _n: {})


def test_missing_model_says_where_it_looked(monkeypatch, tmp_path):
    from train.models import ModelNotFound, resolve_base_model

    monkeypatch.setenv("MODEL_ROOT", str(tmp_path))
    with pytest.raises(ModelNotFound, match=f"looked in: .*{tmp_path}/org/model.*Nothing is downloaded"):
        resolve_base_model("org/model")


def test_zero_buckets_scale_with_the_model_but_not_below_the_floor():
    """Buckets of hidden**2 elements, floored: a tiny model communicates once per step, a 7B model in
    hidden**2-sized pieces; only "auto" fields are filled, a user's own numbers stay."""
    from train.runtime import MIN_BUCKET, fill_ds_config

    cfg = resolve(["--recipe", "video_demo", "--max_steps", "1"])
    for hidden, bucket in ((128, MIN_BUCKET), (4096, 4096 * 4096)):
        ds = {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "allgather_bucket_size": "auto",
                                    "stage3_prefetch_bucket_size": "auto"}, "gradient_clipping": "auto"}
        ds = fill_ds_config(ds, cfg, "no", hidden=hidden)
        zero = ds["zero_optimization"]
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == bucket
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * bucket)
        assert ds["train_micro_batch_size_per_gpu"] == cfg.per_device_batch_size
    mine = fill_ds_config({"zero_optimization": {"reduce_bucket_size": 12345}}, cfg, "no", hidden=128)
    assert mine["zero_optimization"]["reduce_bucket_size"] == 12345


# --- real-scale behaviour, shown on the tiny model ---------------------------------------------------
def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", ["none", "zero2"])
def test_resumable_state_holds_only_what_training_changes(work, ds_config):
    """A state is the trainable parameters + optimizer (+ small bookkeeping), not the frozen model:
    at most 1.5x (trainable fp32 + Adam's two moments) bytes."""
    name = f"state_{ds_config}"
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", name, "--max_steps", "3", "--save_steps", "2",
        "--ds_config", ds_config)
    info = json.loads((work / "ckpt" / name / "run.json").read_text())
    trainable, total = info["parameters"]["trainable"], info["parameters"]["total"]
    assert trainable < total / 2  # the frozen part is what a full-model state would add
    state = work / "ckpt" / name / "checkpoints" / "step-2"
    size, budget = dir_bytes(state), 1.5 * trainable * (4 + 8)
    assert size <= budget, f"{size:,} bytes > {budget:,.0f}"
    assert size >= trainable * 4 * 2  # parameters and optimizer moments really are in it


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [None, "cpu_zero3_2proc.yaml", "ddp_2proc"],
                         ids=["zero2_1proc", "zero3_2proc", "ddp_2proc"])
def test_resume_from_a_trainable_only_state_under_zero(resumed, launcher):
    """A state without the frozen weights resumes to the same losses and samples as an uninterrupted run
    (ZeRO-2 in one process; ZeRO-3 partitions over two; DDP over two)."""
    rd, full, full_seen, _ = resumed(launcher)
    part = metrics(rd)
    assert [m["step"] for m in part] == [1, 2, 3, 4]
    for a, b in zip(full[2:], part[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    assert seen(rd) == full_seen


@pytest.mark.slow
def test_bf16_run_records_the_dtypes_it_used(work, ref_run):
    """mixed_precision bf16 on CPU, as on a GPU: without DeepSpeed autocast computes in bf16 while the
    trained weights stay fp32; under ZeRO-2 DeepSpeed holds the model in bf16 (its optimizer keeps fp32
    masters), and under ZeRO-3 too. run.json says so from the tensors, not from the flag (and a plain run's
    says fp32)."""
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "bf16", "--max_steps", "2", "--ds_config", "none",
        "--mixed_precision", "bf16")
    p = json.loads((work / "ckpt" / "bf16" / "run.json").read_text())["precision"]
    assert p == {"mixed_precision": "bf16", "trainable_dtype": "float32", "frozen_dtype": "bfloat16",
                 "forward_dtype": "bfloat16"}
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "bf16_z2", "--max_steps", "2", "--ds_config", "zero2",
        "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2", "--gradient_checkpointing", "true")
    info = json.loads((work / "ckpt" / "bf16_z2" / "run.json").read_text())
    assert info["precision"] == {"mixed_precision": "bf16", "trainable_dtype": "bfloat16",
                                 "frozen_dtype": "bfloat16", "forward_dtype": "bfloat16"}
    assert all(0 < m["loss"] < 20 for m in metrics(work / "ckpt" / "bf16_z2"))
    # ZeRO-3 partitions the base weights in bf16 as they load; peft's fp32 adapters used to stop it at
    # its first partition (mixed dtypes). Its run.json counts the partitioned weights too.
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "bf16_z3", "--max_steps", "2", "--ds_config", "zero3",
        "--mixed_precision", "bf16")
    z3 = json.loads((work / "ckpt" / "bf16_z3" / "run.json").read_text())
    assert z3["precision"] == info["precision"]
    assert z3["parameters"] == info["parameters"] and z3["parameters"]["trainable"] < z3["parameters"]["total"] / 2
    assert all(0 < m["loss"] < 20 for m in metrics(work / "ckpt" / "bf16_z3"))
    p = json.loads((ref_run / "run.json").read_text())["precision"]  # no --mixed_precision, no DeepSpeed
    assert p["forward_dtype"] == p["trainable_dtype"] == p["frozen_dtype"] == "float32"


@pytest.mark.slow
def test_zero3_adapter_reproduces_the_trained_model(work):
    """2 processes, ZeRO-3: the adapter written from the gathered trainable partitions, loaded with peft
    on the base model, gives the logits the trained (partitioned) model gave."""
    out = work / "z3_logits.pt"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}", PYTHONPATH=str(REPO))
    cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "ds_configs" / "accelerate" / "cpu_zero3_2proc.yaml"),
           str(REPO / "tests" / "scripts" / "trained_logits.py"), str(out), "--recipe", str(work / "vid.yaml"),
           "--run_name", "z3", "--max_steps", "3", "--learning_rate", "1e-2", "--projector_lr", "1e-2"]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-6000:]
    import torch
    from peft import PeftModel

    from train.families import load_model
    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    from trained_logits import fixed_inputs

    info = json.loads((work / "ckpt" / "z3" / "run.json").read_text())
    base, processor, _ = load_model(work / info["base_model"], dtype=torch.float32)
    untrained = base(**{k: v for k, v in fixed_inputs(processor).items() if k != "labels"}).logits
    model = PeftModel.from_pretrained(base, work / "ckpt" / "z3").eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in fixed_inputs(processor).items() if k != "labels"}).logits
    trained = torch.load(out)
    torch.testing.assert_close(logits, trained, rtol=1e-4, atol=1e-4)
    assert (trained - untrained).abs().max() > 1e-3  # the adapter is not a no-op


@pytest.mark.slow
def test_long_samples_are_dropped_and_counted(work, ref_run):
    """max_length below some samples' length: those samples are dropped (never cut), counted in
    run.json, and every sample that was trained on fits."""
    from data_recipes.build import shard_urls
    from train.data import ShardStream
    from train.families import load_model

    info = json.loads((ref_run / "run.json").read_text())
    _, processor, _ = load_model(work / info["base_model"])
    stream = ShardStream(shard_urls(work / "shards" / "vid"), processor, batch_size=64, seed=0, shuffle_buffer=1)
    _, raw = next(stream.batches_of_reader(0, 1))
    inputs, _, keys = stream.collate(raw)
    lengths = dict(zip(keys, inputs["attention_mask"].sum(1).tolist()))
    limit = sorted(lengths.values())[len(lengths) // 2]
    assert min(lengths.values()) <= limit < max(lengths.values())
    run_lora(work, "--recipe", str(work / "vid.yaml"), "--run_name", "short", "--max_steps", "4", "--ds_config", "none",
        "--max_length", str(limit), "--record_samples", "true")
    info = json.loads((work / "ckpt" / "short" / "run.json").read_text())
    trained = [k for ks in seen(work / "ckpt" / "short").values() for k in ks]
    assert trained and all(lengths[k] <= limit for k in trained)
    assert info["dropped"]["too_long"] > 0 and info["dropped"]["over_context"] == 0
    assert info["consumed"]["samples"] == len(trained)


@pytest.mark.slow
def test_logged_loss_is_the_token_mean_over_micro_batches(work):
    """gas=2 at learning rate 0 (LoRA's B starts at 0, so the model stays the base): each step's logged
    loss equals a hand computation, the sum of token losses over both micro-batches / all their tokens,
    not the mean of the two micro-batch means."""
    import torch
    import webdataset as wds

    from data_recipes.build import shard_urls
    from train.data import ShardStream
    from train.families import load_model
    from train.lora import token_loss_sum

    steps = 4
    run_lora(work, "--recipe", str(work / "img.yaml"), "--run_name", "gas2", "--max_steps", str(steps), "--ds_config",
        "none", "--gradient_accumulation_steps", "2", "--per_device_batch_size", "2", "--learning_rate", "0",
        "--projector_lr", "0", "--record_samples", "true")
    logged = [m["loss"] for m in metrics(work / "ckpt" / "gas2")]
    keys = seen(work / "ckpt" / "gas2")[0]
    assert len(keys) == 4 * steps
    info = json.loads((work / "ckpt" / "gas2" / "run.json").read_text())
    model, processor, _ = load_model(work / info["base_model"], dtype=torch.float32)
    urls = shard_urls(work / "shards" / "img")
    stream = ShardStream(urls, processor, batch_size=2, seed=0)
    samples = {s["__key__"]: s for url in urls for s in wds.tarfile_to_samples()(iter([{"url": url}]))}
    uneven = 0
    with torch.no_grad():
        for step in range(steps):
            sums, counts = [], []
            for pair in (keys[4 * step:4 * step + 2], keys[4 * step + 2:4 * step + 4]):
                inputs, _, _ = stream.collate([samples[k] for k in pair])
                labels = inputs.pop("labels")
                sums.append(token_loss_sum(model(**inputs).logits, labels).item())
                counts.append(int((labels[:, 1:] != -100).sum()))
            assert logged[step] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
            if counts[0] != counts[1]:
                uneven += 1
                assert logged[step] != pytest.approx((sums[0] / counts[0] + sums[1] / counts[1]) / 2, rel=1e-4)
    assert uneven  # at least one step had micro-batches of different supervised-token counts


# `python train/lora.py ARGS` for each ARGS in turn, in one process (each run pays the imports of torch,
# accelerate and DeepSpeed only once): the script runs as __main__ as the interpreter runs it, and what the
# interpreter does at the end (exit status, traceback of an uncaught exception) is done here.
_CLI = """
import contextlib, io, json, os, runpy, sys, traceback
lora, cases, dest = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path[0] = os.path.dirname(lora)  # as for `python train/lora.py`: the script's own directory
out = []
for args in cases:
    sys.argv = [lora, *args]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(lora, run_name="__main__")
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    out.append({"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
with open(dest, "w") as f:
    json.dump(out, f)
"""


def test_cli_help_and_user_errors_without_tracebacks(tmp_path):
    """--help renders every field's docstring; a settings mistake is one `error:` line, exit 2.
    (The four invocations run one after the other in one process; a user error comes first, so it
    meets the imports' own output too.)"""
    errors = ((["--recipe", "nosuch", "--max_steps", "1"], "error: unknown recipe 'nosuch'"),
              (["--recipe", "video_demo", "--lora_rank", "3"], "did you mean 'lora_r'"),
              (["--recipe", "video_demo", "--mixed_precision", "fp8"], "mixed_precision must be one of"))
    cases = [args for args, _ in errors] + [["--help"]]
    p = subprocess.run([PY, "-c", _CLI, LORA, json.dumps(cases), str(tmp_path / "cli.json")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    *runs, help_ = json.loads((tmp_path / "cli.json").read_text())
    assert help_["returncode"] == 0 and "--mixed_precision" in help_["stdout"] and "30% more compute" in help_["stdout"]
    for (_, msg), r in zip(errors, runs):
        assert r["returncode"] == 2 and msg in r["stderr"] and "Traceback" not in r["stderr"], r["stderr"][-2000:]


def test_a_state_without_the_trained_tensors_is_not_resumed(tmp_path):
    """Without DeepSpeed the state is loaded non-strictly (the frozen weights are not in it): a state whose
    model file lacks trained tensors is refused, naming them, instead of resuming the optimizer over the
    initial weights. A tied tensor counts as present under any of its names."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from train.checkpointing import load_state

    save_file({"module.lora_A.weight": torch.zeros(1), "embed.weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    loaded = []
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None), load_state=lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match=r"lacks 1 of the 3 trained tensors \(first: lora_B.weight\)"):
        load_state(acc, tmp_path, [{"lora_A.weight"}, {"lora_B.weight"}, {"lm_head.weight", "embed.weight"}])
    assert not loaded
    load_state(acc, tmp_path, [{"lora_A.weight"}, {"lm_head.weight", "embed.weight"}])
    assert loaded == [(str(tmp_path),)]
