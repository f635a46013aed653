"""Device, precision, attention and DeepSpeed config as a GPU machine resolves them, proven on CPU.

torch.cuda is patched to answer like an 8-GPU node; what is checked is the resolved configuration the
trainer hands to DeepSpeed and accelerate (and, on CPU, the tensors a real run used).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train.config import resolve
from train.runtime import (FP16_LOSS_SCALING, RuntimeConfigError, pick_ds_accelerator, resolve_attention,
                           resolve_runtime)

REPO = Path(__file__).resolve().parents[1]


def cfg_of(*flags: str):
    return resolve(["--recipe", "video_demo", "--max_steps", "1", *flags])


@pytest.fixture
def gpu(monkeypatch):
    """torch answers like a node of bf16-capable GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # an A100


def test_ds_accelerator_follows_torch_and_never_overrides_the_user(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env = {}  # a bare GPU node: no DS_ACCELERATOR, no CUDA_VISIBLE_DEVICES
    assert pick_ds_accelerator(env) == "cuda" and env["DS_ACCELERATOR"] == "cuda"
    env = {"DS_ACCELERATOR": "cpu"}
    assert pick_ds_accelerator(env) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_ds_accelerator({}) == "cpu"


def test_lora_module_sets_the_accelerator_from_torch_before_deepspeed_loads():
    """Importing train/lora.py on a GPU node without CUDA_VISIBLE_DEVICES picks cuda (it once picked cpu)."""
    code = ("import torch; torch.cuda.is_available = lambda: True\n"
            "import os, sys; import train.lora\n"
            "print(os.environ['DS_ACCELERATOR'])")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "cuda"


def test_gpu_node_resolves_cuda_bf16_nccl_and_fills_the_deepspeed_config(gpu):
    rt = resolve_runtime(cfg_of(), hidden=4096, environ={})
    assert (rt.device, rt.ds_accelerator, rt.precision, rt.backend) == ("cuda", "cuda", "bf16", "nccl")
    assert rt.dtype is torch.bfloat16
    ds = rt.ds_config
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["reduce_bucket_size"] == 4096 ** 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 4  # the 7B defaults
    assert "auto" not in json.dumps(ds)  # nothing left for accelerate to guess


def test_gpu_without_bf16_gets_fp16_with_dynamic_loss_scaling(gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    rt = resolve_runtime(cfg_of(), environ={})
    assert rt.precision == "fp16" and rt.dtype is torch.float16
    fp16 = rt.ds_config["fp16"]
    assert fp16["enabled"] is True and rt.ds_config["bf16"]["enabled"] is False
    assert {k: fp16[k] for k in FP16_LOSS_SCALING} == FP16_LOSS_SCALING and fp16["loss_scale"] == 0  # dynamic


def test_a_v100_node_gets_fp16_and_sdpa(gpu, monkeypatch):
    """Compute capability 7.0: torch says bf16 is supported when emulation counts (its default), but it is
    emulated there, very slowly; and FlashAttention-2's kernels need 8.0. `auto` gives fp16 and sdpa even
    with flash-attn installed, and asking for flash_attention_2 says why it cannot be had."""
    import importlib.util

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a))
    rt = resolve_runtime(cfg_of(), environ={})
    assert (rt.precision, rt.attn_implementation) == ("fp16", "sdpa")
    with pytest.raises(RuntimeConfigError, match="needs an Ampere or later GPU .* this one is 7.0: use sdpa"):
        resolve_attention("flash_attention_2", "fp16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    rt = resolve_runtime(cfg_of(), environ={})
    assert (rt.precision, rt.attn_implementation) == ("bf16", "flash_attention_2")


def test_explicit_precision_and_cpu(gpu, monkeypatch):
    rt = resolve_runtime(cfg_of("--mixed_precision", "no"), environ={})
    assert rt.precision == "no" and not rt.ds_config["bf16"]["enabled"] and not rt.ds_config["fp16"]["enabled"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = resolve_runtime(cfg_of(), environ={})
    assert (rt.device, rt.precision, rt.backend) == ("cpu", "no", "gloo")
    assert resolve_runtime(cfg_of("--mixed_precision", "bf16"), environ={}).precision == "bf16"  # CPU autocast
    with pytest.raises(RuntimeConfigError, match="fp16 needs a GPU"):
        resolve_runtime(cfg_of("--mixed_precision", "fp16"), environ={})


def test_a_deepspeed_json_that_contradicts_mixed_precision_is_refused(gpu, tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(RuntimeConfigError, match="fp16.enabled=True but mixed_precision resolves to 'bf16'"):
        resolve_runtime(cfg_of("--ds_config", str(f)), environ={})


@pytest.mark.parametrize("launcher", sorted((REPO / "ds_configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_launcher_file_resolves(launcher, gpu):
    """Each shipped accelerate file: valid for accelerate, names a shipped DeepSpeed JSON, and on GPUs
    resolves to bf16; multi-node files use the standard launcher and count processes over all nodes."""
    from accelerate.commands.config.config_args import ClusterConfig

    conf = yaml.safe_load(launcher.read_text())
    ClusterConfig.from_yaml_file(launcher)  # accelerate's own parser accepts it
    assert "mixed_precision" not in conf  # accelerate refuses it beside deepspeed_config_file
    ds_file = conf["deepspeed_config"]["deepspeed_config_file"]
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": ds_file}
    cpu = conf.get("use_cpu", False)
    rt = resolve_runtime(cfg_of(), environ=env)
    assert rt.ds_config_source.endswith(ds_file) and rt.ds_config["bf16"]["enabled"] is True
    if not cpu:
        assert conf["num_processes"] == 8 * conf["num_machines"]
    if conf["num_machines"] > 1:
        assert conf["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
        assert conf["main_process_ip"] and conf["main_process_port"]


def test_attention_choice(monkeypatch):
    import importlib.util

    assert resolve_attention("auto", "no", cuda=False) == "sdpa"
    assert resolve_attention("eager", "no", cuda=False) == "eager"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a))
    assert resolve_attention("auto", "bf16", cuda=True) == "flash_attention_2"
    assert resolve_attention("auto", "no", cuda=True) == "sdpa"  # flash-attn computes in 16 bits only
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a))
    with pytest.raises(RuntimeConfigError, match="flash-attn package is not installed"):
        resolve_attention("flash_attention_2", "bf16", cuda=True)


def test_loaded_model_uses_the_requested_attention(tiny_llava):
    from train.families import load_model

    for impl in ("eager", "sdpa"):
        model, _, _ = load_model(tiny_llava, attn_implementation=impl, dtype=torch.float32)
        assert model.config._attn_implementation == impl
        assert model.config.text_config._attn_implementation == impl
        assert model.model.language_model.layers[0].self_attn.config._attn_implementation == impl


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from train.toy.tiny import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava")


def test_process_group_timeout_reaches_the_process_group(tmp_path):
    """A real one-process DeepSpeed accelerator: the gloo group's timeout is the configured one, and so is
    that of the group DeepSpeed clones from it for ZeRO (made without a timeout, it had torch's default)."""
    code = (
        "from train.config import resolve\n"
        "from train.lora import LoRATrainer\n"
        "import torch, torch.distributed as dist\n"
        "cfg = resolve(['--recipe', 'video_demo', '--max_steps', '1', '--process_group_timeout_s', '123'])\n"
        "acc = LoRATrainer(cfg)._setup_accelerator()\n"
        "from deepspeed.utils import groups\n"
        "for pg in (dist.distributed_c10d._get_default_group(), groups._get_data_parallel_group()):\n"
        "    print(pg._get_backend(torch.device('cpu')).options._timeout.total_seconds())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # the default group and DeepSpeed's own clone of it, which carries ZeRO's traffic
    assert [float(x) for x in out.stdout.split()[-2:]] == [123.0, 123.0]
