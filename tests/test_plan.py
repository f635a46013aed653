"""`--dry_run` (train/plan.py) on config-only 7B checkpoints of four families: counts, budget, memory, cost."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures_7b import PUBLISHED, write_config_dir

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
FAMILIES = tuple(PUBLISHED)
SAMPLES = 48
MAX_SAMPLES = 10_000
GPUS = 8

# Language-model shapes of the published checkpoints, written out independently of the configs:
# (layers, hidden, k/v projection width = kv heads x head dim).
LM = {"llava_next": (32, 4096, 4096), "llava_next_video": (32, 4096, 4096),
      "qwen2_vl": (28, 3584, 4 * 128), "internvl": (28, 3584, 4 * 128)}
# Projector parameters by hand: LLaVA-NeXT linear 1024->4096, gelu, 4096->4096; Qwen2-VL's merger
# LayerNorm(1280) then 5120->5120, gelu, 5120->3584; InternVL LayerNorm(4096) then 4096->3584, gelu, 3584->3584.
PROJECTOR = {
    "llava_next": (1024 * 4096 + 4096) + (4096 * 4096 + 4096),
    "llava_next_video": (1024 * 4096 + 4096) + (4096 * 4096 + 4096),
    "qwen2_vl": 2 * 1280 + (5120 * 5120 + 5120) + (5120 * 3584 + 3584),
    "internvl": 2 * 4096 + (4096 * 3584 + 3584) + (3584 * 3584 + 3584),
}


def lora_attention_params(family: str, r: int = 16) -> int:
    """r*(in+out) per projection: q and o are hidden x hidden, k and v hidden x kv width (GQA)."""
    layers, h, kv = LM[family]
    return layers * r * ((h + h) + (h + kv) + (h + kv) + (h + h))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Config-only 7B directories of the four families and one small built video recipe."""
    from data_recipes.build import build
    from data_recipes.recipe import load_recipe
    from train.toy.tiny import default_corpus

    d = tmp_path_factory.mktemp("plan")
    corpus = default_corpus()
    for fam in FAMILIES:
        write_config_dir(fam, d / "models" / fam, corpus)
    recipe = d / "vid.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "video", "sources": [{"type": "synthetic_video"}], "samples": SAMPLES, "frames": 3,
        "image_size": 64, "seed": 0, "split": "train", "shard_size": 16,
        "train": {"max_samples": MAX_SAMPLES, "base_model": str(d / "models" / "llava_next")}}))
    build(load_recipe(recipe), d / "shards" / "vid")
    return d


def argv(work: Path, family: str, *extra: str) -> list[str]:
    return ["--recipe", str(work / "vid.yaml"), "--base_model", str(work / "models" / family),
            "--shards_root", str(work / "shards"), "--gpus", str(GPUS), "--dry_run", "true", *extra]


_CHILD = """
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from train.lora import main
imported = time.perf_counter() - t0
out = {}
for family, args in json.loads(sys.argv[1]).items():
    t = time.perf_counter()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        plan = main(args)
    out[family] = {"plan": plan, "stdout": text.getvalue(), "seconds": imported + time.perf_counter() - t}
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def plans(work):
    """The dry run of each family through train/lora.py's main, one after the other in one fresh process:
    {family: (plan, stdout, seconds including the process's imports, peak RSS of the whole process)}."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("WORLD_SIZE", None)
    dest = work / "plans.json"
    with open(work / "plans.log", "w+") as log:
        p = subprocess.Popen([PY, "-c", _CHILD, json.dumps({f: argv(work, f) for f in FAMILIES}), str(dest)],
                             cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS (KiB on Linux)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        assert p.returncode == 0, f"dry runs failed:\n{log.read()[-4000:]}"
    got = json.loads(dest.read_text())
    return {f: (got[f]["plan"], got[f]["stdout"], got[f]["seconds"], usage.ru_maxrss * 1024) for f in FAMILIES}


def resolve_here(args: list[str]):
    from data_recipes.recipe import load_recipe
    from train.config import resolve

    return resolve(args, recipe_train=lambda r: load_recipe(r).train)


# --- model -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_parameters_match_the_published_count(plans, family):
    plan = plans[family][0]
    assert plan["model"]["family"] == family
    assert abs(plan["model"]["parameters"] / PUBLISHED[family] - 1) < 0.03, plan["model"]["parameters"]


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameters_equal_a_hand_count(plans, family):
    m = plans[family][0]["model"]
    assert m["trainable_breakdown"]["lora"] == lora_attention_params(family)
    assert m["trainable_breakdown"]["projector"] == PROJECTOR[family]  # freeze_projector defaults to false
    assert m["trainable_breakdown"]["vision_tower"] == m["trainable_breakdown"]["embeddings"] == 0
    assert m["trainable"] == lora_attention_params(family) + PROJECTOR[family]
    assert m["lora_modules"] == 4 * LM[family][0]
    lm = m["language_model"]
    assert (lm["layers"], lm["hidden_size"]) == LM[family][:2]
    assert lm["context"] == (4096 if family.startswith("llava") else 32768)


def test_all_linear_and_frozen_projector_change_the_count(work):
    """all_linear adds the MLP's gate/up/down; a frozen projector trains nothing outside the adapter."""
    from train.plan import inspect_model

    cfg = resolve_here(argv(work, "qwen2_vl", "--lora_targets", "all_linear", "--freeze_projector", "true",
                       "--lora_r", "8"))
    m = inspect_model(work / "models" / "qwen2_vl", cfg)
    layers, h, kv = LM["qwen2_vl"]
    mlp = 3 * 8 * (h + 18944)
    assert m["trainable"] == m["trainable_breakdown"]["lora"] == lora_attention_params("qwen2_vl", 8) + layers * mlp


# --- target, precision, DeepSpeed, budget --------------------------------------------------------------
def test_cluster_assumptions_precision_and_ds_config(plans):
    plan, text, _, _ = plans["llava_next"]
    assert plan["target"]["world"] == GPUS and plan["target"]["cuda"] is True
    assert "bf16 support" in plan["target"]["assumption"] and "bf16 support" in text
    assert plan["precision"] == "bf16"
    ds = plan["deepspeed"]["config"]
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    assert plan["memory"]["configured"] == "zero2"


def test_budget_steps_and_passes(plans):
    b = plans["qwen2_vl"][0]["budget"]
    per_step = 4 * 4 * GPUS
    assert b["per_step"] == per_step
    assert b["steps"] == math.ceil(MAX_SAMPLES / per_step) == b["schedule_steps"]
    assert b["passes"] == pytest.approx(MAX_SAMPLES / SAMPLES)


def test_match_to_uses_the_reference_consumption(work, tmp_path):
    """visual_tokens are not in this manifest (no tokens model): the per-sample mean is the prescan's."""
    from train.plan import make_plan

    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "run.json").write_text(json.dumps({"consumed": {"samples": 100, "visual_tokens": 100 * 480}}))
    cfg = resolve_here(argv(work, "llava_next_video", "--match_to", str(ref), "--match_by", "visual_tokens",
                       "--max_steps", "0", "--gpus", "2", "--max_length", "150"))
    plan = make_plan(cfg, environ={})
    b, seq = plan["budget"], plan["data"]["sequence"]
    mean = seq["prescan"]["visual_tokens"]
    assert b["unit"] == "visual_tokens" and b["target"] == 48_000 and b["per_sample"] == pytest.approx(mean)
    assert b["samples"] == math.ceil(48_000 / mean) and b["steps"] == math.ceil(b["samples"] / (4 * 4 * 2))
    assert any("prescan" in n for n in plan["notes"])
    # max_length 150 is under some of these samples (about 150 tokens each): they will be dropped, and it is
    # said; more than max_dropped_fraction (5%) of them, so the run would stop: a problem, not a note.
    share = seq["over_max_length"]
    assert 0.05 < share < 1
    assert f"{share:.1%} of the sampled samples are longer than max_length 150 tokens: the trainer drops them, and " \
           f"stops past max_dropped_fraction 0.05" in plan["problems"]
    allowed = make_plan(resolve_here(argv(work, "llava_next_video", "--match_to", str(ref), "--match_by",
                                          "visual_tokens", "--max_steps", "0", "--gpus", "2", "--max_length", "150",
                                          "--max_dropped_fraction", "0.5")), environ={})
    assert f"{share:.1%} of the sampled samples are longer than max_length 150 tokens: the trainer drops them" \
        in allowed["notes"] and not any("longer than max_length" in p for p in allowed["problems"])
    assert plan["memory"]["seq"] == 150


# --- data ----------------------------------------------------------------------------------------------
def test_sequence_lengths_from_the_shards(plans, work):
    from train.plan import sequence_stats

    seq = plans["internvl"][0]["data"]["sequence"]
    L = seq["length"]
    assert seq["sampled"] == SAMPLES and seq["errors"] == 0
    assert 0 < L["p50"] <= L["p90"] <= L["p99"] <= L["max"]
    assert seq["over_max_length"] == seq["over_context"] == 0.0
    assert seq["per_sample"]["visual_tokens"] > 0 and 0 < seq["per_sample"]["supervised_tokens"] < seq["per_sample"]["text_tokens"]
    # A max_length just under the longest sample counts it (and its equals) as over; the context does not.
    manifest = json.loads((work / "shards" / "vid" / "manifest.json").read_text())
    cfg = resolve_here(argv(work, "internvl"))
    again = sequence_stats(work / "shards" / "vid", manifest, work / "models" / "internvl", cfg, L["max"] - 1, L["p50"])
    assert again["length"] == L
    assert 1 / SAMPLES <= again["over_max_length"] <= 0.5 and L["p50"] < L["max"]
    assert 0 < again["over_context"] <= 0.5  # nearest-rank median: at most half the samples lie above it


def test_missing_shards_still_plan(work, tmp_path):
    from train.plan import dry_run

    cfg = resolve_here(argv(work, "llava_next", "--shards_root", str(tmp_path / "none")))
    out = io.StringIO()
    plan = dry_run(cfg, out=out)
    assert plan["data"]["built"] is False and "no shards" in out.getvalue()
    assert plan["memory"]["seq"] == 4096 and plan["budget"]["steps"] == math.ceil(MAX_SAMPLES / (16 * GPUS))
    assert plan["budget"]["passes"] is None
    json.dumps(plan)


# --- memory --------------------------------------------------------------------------------------------
def _memory(model, **kw):
    from train.memory import estimate_memory

    args = dict(precision="bf16", gpus_per_node=8, nodes=1, seq=4096, micro_batch=4, checkpointing=True,
                attention="sdpa", gpu_memory_gb=80.0)
    return estimate_memory(model, **{**args, **kw})


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_estimates_behave(plans, family):
    from train.memory import GIB

    model = plans[family][0]["model"]
    one, eight, sixteen = (_memory(model, gpus_per_node=g)["stages"] for g in (1, 8, 16))
    assert one["zero2"]["weights_gb"] == pytest.approx(2 * model["parameters"] / GIB)
    assert eight["zero2"]["weights_gb"] == one["zero2"]["weights_gb"]  # ZeRO-2 keeps every weight on every GPU
    assert eight["zero3"]["weights_gb"] == pytest.approx(one["zero3"]["weights_gb"] / 8)
    assert sixteen["zero3"]["weights_gb"] == pytest.approx(one["zero3"]["weights_gb"] / 16)
    assert eight["zero3"]["grads_optim_gb"] < one["zero3"]["grads_optim_gb"]
    for stages in (one, eight):
        assert stages["zero3_offload"]["weights_gb"] == 0 and stages["zero3_offload"]["grads_optim_gb"] == 0
        assert stages["zero3_offload"]["cpu_per_node_gb"] > one["zero2"]["weights_gb"]
    fp32 = _memory(model, precision="no")["stages"]
    assert fp32["zero2"]["weights_gb"] == pytest.approx(2 * one["zero2"]["weights_gb"])
    # Checkpointing keeps layer inputs only.
    with_ckpt = _memory(model)["stages"]["zero2"]["activations_gb"]
    without = _memory(model, checkpointing=False)["stages"]["zero2"]["activations_gb"]
    assert with_ckpt < without / 5
    eager = _memory(model, checkpointing=False, attention="eager")["stages"]["zero2"]["activations_gb"]
    assert eager > without  # the s^2 attention probabilities
    tower = _memory(model, vision_trainable=True, visual_tokens_per_sample=576)["stages"]["zero2"]["activations_gb"]
    assert tower > with_ckpt  # a trainable vision tower keeps its activations too
    # The largest micro-batch grows with the GPU, and is the largest that fits.
    for stage in ("zero2", "zero3", "zero3_offload"):
        best = [_memory(model, gpu_memory_gb=g)["stages"][stage]["max_micro_batch"] for g in (16, 24, 40, 80, 141)]
        assert best == sorted(best) and best[-1] > 0, (stage, best)
        b80 = best[3]
        if b80:
            assert _memory(model, micro_batch=b80)["stages"][stage]["fits"]
        assert not _memory(model, micro_batch=b80 + 1)["stages"][stage]["fits"]
    assert one["zero2"]["max_micro_batch"] <= eight["zero3"]["max_micro_batch"]


def test_plan_memory_table_uses_the_sampled_length(plans):
    mem = plans["llava_next"][0]["memory"]
    seq = plans["llava_next"][0]["data"]["sequence"]["length"]["max"]
    assert mem["seq"] == seq and "longest sampled" in mem["seq_source"]
    assert set(mem["stages"]) == {"zero2", "zero3", "zero3_offload"}


# --- cost and output ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_dry_run_is_cheap(plans, family):
    """Config only: no weights are read or allocated, so a 7B plan fits in a laptop's spare memory (the RSS
    is the peak of the process that planned all four models; a 7B model's weights alone are 14 GB). Its
    wall time (under 30 s) is a `make bench` row, not a timed test."""
    plan, text, wall, rss = plans[family]
    assert rss < 2 * 1024 ** 3, f"peak RSS {rss / 2 ** 20:.0f} MiB"
    assert "memory per GPU" in text and "zero3_offload" in text and f"family {family}" in text
    assert plan["problems"] == []


def test_peak_rss_of_all_dry_runs(plans):
    import resource

    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < 2 * 1024 ** 3


LOSS_PEAK = """
import sys
sys.argv = ["x"]
import torch
from train.lora import token_loss_sum


def hwm() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))


s, V = 1024, 32000  # one sample's logits at a 32k vocabulary, in 16 bits, as the model returns them
logits = torch.randn(1, s, V, dtype=torch.bfloat16).requires_grad_(True)
labels = torch.randint(0, V, (1, s))
before = hwm()
token_loss_sum(logits, labels).backward()
print((hwm() - before) / (s * V) + logits.element_size())
"""


def test_the_logits_term_covers_what_the_loss_really_takes():
    """The planner's bytes per logit element against the peak the trainer's loss reaches in its backward,
    measured (the process's peak RSS, in a fresh process): 10 were planned where 14 are taken, so a
    152k-vocabulary plan's `max micro-batch` overran an 80 GB card."""
    from train.memory import LOGIT_BYTES

    p = subprocess.run([sys.executable, "-c", LOSS_PEAK], cwd=Path(__file__).resolve().parents[1],
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1])),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    measured = float(p.stdout.split()[-1])
    assert measured - 0.5 <= LOGIT_BYTES <= measured + 1.5, measured
