"""Where and how a run computes: device, precision, attention kernel, DeepSpeed config, process group.

Everything here is decided from what torch sees and from the TrainConfig, *before* accelerate or
DeepSpeed are built, so that the decision can be printed (`--dry_run`), tested with a patched
`torch.cuda`, and handed identically to every library:

- DeepSpeed's accelerator (`DS_ACCELERATOR`): cuda when torch sees a GPU, else cpu; a value the user
  set is never overridden.
- `mixed_precision`: one resolved value (bf16 | fp16 | no) goes to `Accelerator(mixed_precision=...)`
  *and* into the DeepSpeed config, where `"auto"` fields are filled before accelerate sees them
  (accelerate resolves `"bf16": {"enabled": "auto"}` from its own setting, which defaults to "no",
  so leaving it to accelerate silently trains in fp32 on a GPU). fp16 gets dynamic loss scaling.
- The DeepSpeed JSON's other `"auto"` fields (micro batch, accumulation, clipping, bucket sizes).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from data_recipes.files import REPO_ROOT as REPO

MIN_BUCKET = 1 << 22  # elements per ZeRO communication bucket, at least (16 MB in fp32)
# DeepSpeed's dynamic loss scaling for fp16: start at 2**16, halve on overflow (after `hysteresis`
# overflows), double after `loss_scale_window` clean steps. loss_scale 0 means dynamic.
FP16_LOSS_SCALING = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                     "min_loss_scale": 1}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


class RuntimeConfigError(ValueError):
    pass


def pick_ds_accelerator(environ=os.environ) -> str:
    """Set DS_ACCELERATOR from what torch sees unless the user set it; returns the value in force."""
    if not environ.get("DS_ACCELERATOR"):
        environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return environ["DS_ACCELERATOR"]


def resolve_precision(requested: str, cuda: bool | None = None, bf16: bool | None = None) -> str:
    """bf16 | fp16 | no for a config value auto | bf16 | fp16 | no (`cuda`, `bf16`: what to assume
    instead of asking torch, e.g. when planning for a cluster from a laptop)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if requested == "auto":
        if not cuda:
            return "no"
        # native bf16 only: torch also says yes on GPUs that merely emulate it (V100, T4: sm 7.x), very slowly
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False) if bf16 is None else bf16
        return "bf16" if bf16 else "fp16"
    if requested == "fp16" and not cuda:
        raise RuntimeConfigError("mixed_precision fp16 needs a GPU (its loss scaling is CUDA-only); use bf16 or no on CPU")
    return requested


def resolve_attention(requested: str, precision: str, cuda: bool | None = None) -> str:
    """The attn_implementation handed to from_pretrained (`cuda=True` on a machine without a GPU: planning for
    a cluster's, taken to be Ampere or later)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    has_flash = importlib.util.find_spec("flash_attn") is not None
    # FlashAttention-2's kernels run on Ampere (sm 8.0) and later only
    capability = torch.cuda.get_device_capability() if cuda and torch.cuda.is_available() else (8, 0)
    ampere = cuda and capability[0] >= 8
    if requested == "auto":
        return "flash_attention_2" if ampere and has_flash and precision in ("bf16", "fp16") else "sdpa"
    if requested == "flash_attention_2":
        if not has_flash:
            raise RuntimeConfigError("attn_implementation flash_attention_2: the flash-attn package is not installed "
                                     "(pip install flash-attn), or use sdpa")
        if not cuda or precision not in ("bf16", "fp16"):
            raise RuntimeConfigError("attn_implementation flash_attention_2 needs a GPU and mixed_precision bf16 or fp16")
        if not ampere:
            raise RuntimeConfigError(f"attn_implementation flash_attention_2 needs an Ampere or later GPU (compute "
                                     f"capability 8.0+); this one is {capability[0]}.{capability[1]}: use sdpa")
    return requested


def ds_config_path(name: str) -> Path | None:
    """A shipped config by name (ds_configs/NAME.json), a JSON path, or None for 'none'."""
    if name.lower() in ("", "none"):
        return None
    p = Path(name)
    if p.suffix == ".json":
        if not p.exists():
            raise FileNotFoundError(f"--ds_config {p}: file not found")
        return p
    p = REPO / "ds_configs" / f"{name}.json"
    if not p.exists():
        shipped = ", ".join(sorted(x.stem for x in (REPO / "ds_configs").glob("*.json")))
        raise FileNotFoundError(f"--ds_config {name}: no such config (shipped: {shipped}, or a .json path, or none)")
    return p


def launcher_deepspeed(environ=os.environ) -> tuple[bool, Path | None]:
    """(whether `accelerate launch` configured DeepSpeed, the JSON file it names)."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return False, None
    f = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if not f or f == "none":
        return True, None
    p = Path(f)
    if not p.exists() and (REPO / f).exists():
        p = REPO / f  # the shipped accelerate YAMLs name ds_configs/... relative to the repository
    return True, p


def base_ds_config(cfg, environ=os.environ) -> tuple[dict | None, str]:
    """The DeepSpeed JSON the run uses, before filling, and where it came from ('' for none)."""
    by_launcher, path = launcher_deepspeed(environ)
    if by_launcher and path is None:
        raise RuntimeConfigError("accelerate launch configured DeepSpeed without a deepspeed_config_file: "
                                 "name one of ds_configs/*.json in the launcher file")
    if not by_launcher:
        path = ds_config_path(cfg.ds_config)
    if path is None:
        return None, ""
    try:
        return json.loads(Path(path).read_text()), str(path)
    except json.JSONDecodeError as e:
        raise RuntimeConfigError(f"{path}: not valid JSON ({e})") from None


def fill_ds_config(base: dict, cfg, precision: str, hidden: int = 0) -> dict:
    """A copy of `base` with every "auto" the trainer can decide filled in, precision included."""
    ds = copy.deepcopy(base)
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds.pop("train_batch_size", None)  # DeepSpeed derives it from the two above and the world size
    if ds.get("gradient_clipping") == "auto":
        ds["gradient_clipping"] = cfg.max_grad_norm
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        want = precision == name
        have = section.get("enabled", "auto")
        if have != "auto" and bool(have) != want:
            raise RuntimeConfigError(
                f"DeepSpeed config says {name}.enabled={have} but mixed_precision resolves to {precision!r}: "
                f"set {name}.enabled to \"auto\" in the JSON or change mixed_precision")
        section["enabled"] = want
    if precision == "fp16":
        for k, v in FP16_LOSS_SCALING.items():
            ds["fp16"].setdefault(k, v)
    zero = ds.get("zero_optimization", {})
    if hidden:
        # DeepSpeed's own bucket defaults (5e8 elements) are sized for 7B models; scale them to the model,
        # with a floor: a tiny model's hidden**2 made ~7 gloo all-reduces per step where one will do.
        bucket = max(hidden * hidden, MIN_BUCKET)
        for key, val in (("reduce_bucket_size", bucket), ("allgather_bucket_size", bucket),
                         ("stage3_prefetch_bucket_size", int(0.9 * bucket)),
                         ("stage3_param_persistence_threshold", 10 * hidden)):
            if zero.get(key) == "auto":
                zero[key] = val
    return ds


@dataclass
class Runtime:
    """Every decision about where and how the run computes, resolved once."""
    device: str                  # cuda | cpu
    ds_accelerator: str          # what DeepSpeed will use
    precision: str               # bf16 | fp16 | no
    attn_implementation: str
    ds_config: dict | None       # filled; None without DeepSpeed
    ds_config_source: str
    backend: str                 # nccl | gloo
    timeout_s: int

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def describe(self) -> dict:
        return {"device": self.device, "ds_accelerator": self.ds_accelerator, "mixed_precision": self.precision,
                "attn_implementation": self.attn_implementation, "deepspeed": self.ds_config_source or "none",
                "backend": self.backend, "process_group_timeout_s": self.timeout_s}


def resolve_runtime(cfg, hidden: int = 0, environ=os.environ) -> Runtime:
    """The Runtime of a TrainConfig on this machine (patch torch.cuda to resolve a GPU machine's)."""
    cuda = torch.cuda.is_available()
    ds_acc = pick_ds_accelerator(environ)
    precision = resolve_precision(cfg.mixed_precision, cuda)
    base, source = base_ds_config(cfg, environ)
    ds = fill_ds_config(base, cfg, precision, hidden) if base is not None else None
    return Runtime(device="cuda" if cuda else "cpu", ds_accelerator=ds_acc, precision=precision,
                   attn_implementation=resolve_attention(cfg.attn_implementation, precision, cuda),
                   ds_config=ds, ds_config_source=source, backend="nccl" if cuda else "gloo",
                   timeout_s=cfg.process_group_timeout_s)
