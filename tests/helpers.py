"""Plain helper functions shared by several test modules; holds no tests and no fixtures.

The fixtures (one torch thread, counting generations, the I-RAVEN reference puzzles) live in
`tests/conftest.py`, which pytest loads by itself; test modules import these functions with
`from helpers import ...` (pytest puts `tests/` on the import path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ACCELERATE = str(Path(PY).with_name("accelerate"))
LORA = str(REPO / "train" / "lora.py")

# --- evaluation: tiny models, adapter checkpoints, a fast EvalConfig --------------------------------------------


def tiny_model(family: str, tmp_path_factory) -> Path:
    """A tiny random-init model of `family`, built once per pytest session under its base temp directory."""
    from train.toy.tiny import build_tiny

    out = tmp_path_factory.getbasetemp() / "eval-tiny" / family
    if not (out / "config.json").exists():
        build_tiny(family, out)
    return out


def make_adapter(base: Path, out: Path, seed: int = 0, run: dict | None = None) -> Path:
    """A trainer-like checkpoint: peft adapter (non-zero LoRA B), processor, run.json."""
    import torch
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


def fast_config(**overrides):
    """An EvalConfig small enough for a test: few items, short generations, few bootstrap replicates."""
    from evalsuite.config import EvalConfig

    base = dict(limit=3, frames=(3, 4), infill_tokens=4, answer_tokens=4, n_boot=200, tracking=False,
                progress=False)
    return EvalConfig(**(base | overrides))


# --- hand-written evaluation results for the report ------------------------------------------------------------

IRAVEN_SETTINGS = {"task": "iraven", "data": "generated", "generator_seed": 2026, "per_config": 10,
                   "layout": "candidates", "protocol": "custom", "scoring": "loglik", "seed": 0, "n_boot": 250}


def write_task_results(ckpt: Path, task: str, settings: dict, metrics: dict, rows: list[dict] | None) -> None:
    """`CKPT/eval/TASK/metrics.json` (and `predictions.jsonl` when rows are given), as an evaluation writes them."""
    (ckpt / "eval" / task).mkdir(parents=True, exist_ok=True)
    (ckpt / "eval" / task / "metrics.json").write_text(json.dumps({"settings": settings, "metrics": metrics}))
    if rows is not None:
        (ckpt / "eval" / task / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def match_record(root: Path, reference: str) -> dict:
    """run.json's record of a run stopped exactly at `root/reference`'s 5000 visual tokens."""
    return {"reference": {"checkpoint": str(root / reference)}, "unit": "visual_tokens", "target": 5000,
            "achieved": 5000, "rel_error": 0.0}


def report_section(report: str, title: str) -> str:
    """The text of report.md's `## title` section, up to the next `## ` heading."""
    return report.split(f"## {title}")[1].split("\n## ")[0]


# --- training and video decoding ---------------------------------------------------------------------------------


def run_lora(work: Path, *args: str, procs: int = 1, launcher: str | None = None, check: bool = True):
    """`train/lora.py ARGS` in `work` as a user starts it: plain, on `procs` CPU processes, or through the
    accelerate config `ds_configs/accelerate/LAUNCHER`; MLflow writes to `work/mlruns/mlflow.db`."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
               PYTHONPATH=str(REPO), TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    if launcher:
        cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "ds_configs" / "accelerate" / launcher), LORA, *args]
    elif procs > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(procs), LORA, *args]
    else:
        cmd = [PY, LORA, *args]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def count_decoded(monkeypatch) -> list:
    """Patches av.open so that every frame a container's decode() yields is counted; returns the list
    of their pts, which grows as frames are decoded."""
    import av

    from data_recipes import video

    decoded = []
    real_open = av.open

    class Counting:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._inner.decode(*args, **kwargs):
                decoded.append(frame.pts)
                yield frame

    monkeypatch.setattr(video.av, "open", lambda *a, **k: Counting(real_open(*a, **k)))
    return decoded
