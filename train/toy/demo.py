"""The demo's clock: `make demo` and `make control` run their stages through this module, timed.

    python -m train.toy.demo                  # make demo: data, base stage, video run, image run, evaluation
    python -m train.toy.demo --control        # make control: the shuffled-frames control, after make demo
    python -m train.toy.demo --dry-run        # the commands of every stage, nothing run

Each stage is the commands a user would type (`--dry-run` prints them), run as subprocesses from the
project's root; after each one the module prints `stage NAME done in N s`, and a table of every
stage's time ends the run. A command that fails stops the run with its exit code, after the table of
what did finish.

Before the first stage a calibration times `CALIBRATION_STEPS` base-stage steps of a fresh tiny
model on a small batch of generated images, with one thread (a few seconds, start-up included). The
whole run's time is then estimated as the calibration's seconds times each stage's `STAGE_RATIOS`:
its seconds per second of calibration, measured on the 2-core machine the demo was developed on. A
busier or slower machine slows the calibration and the stages alike, so the estimate follows it
(roughly: the stages run 2 processes, or 2 threads for the base stage, and the calibration one).

`make control` is the shuffled-frames control (`data_recipes/recipes/video_shuffled_demo.yaml`): the
video run's clips with their frames out of order, trained to exactly the video run's visual tokens,
then the demo's evaluation command again: the checkpoints already evaluated with the same settings are
skipped, the control is evaluated, and the report is rewritten with it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_recipes.files import REPO_ROOT as ROOT

BASE_MODEL = Path("models/tiny-llava-pretrained")
ACCELERATE_CONFIG = "ds_configs/accelerate/cpu_zero2_2proc.yaml"
EVAL_FLAGS = ("--infills", "oracle", "--limit", "300", "--frames", "5", "--iraven_limit", "20",
              "--iraven_layout", "candidates")
"""The demo's evaluation settings. 300 items: at 150 a 95% CI is +-7 points, too wide to tell a
25%-accurate model from the 20% of chance. One F (5 frames) so that the six conditions, the
perturbations and I-RAVEN fit the demo's time; `--frames 5 10` is the paper's pair. `make control` evaluates with the same flags, so the
checkpoints evaluated by `make demo` are not evaluated again."""

CALIBRATION_STEPS = 20
CALIBRATION_WARMUP = 3
CALIBRATION_BATCH = 16
STAGE_RATIOS = {
    "data": 10.3,
    "base": 179.4,
    "video": 98.4,
    "image": 129.4,
    "eval": 113.0,
    "control_data": 4.5,
    "control_train": 98.4,
    "control_eval": 37.7,
}
"""Seconds of each stage per second of calibration, on the 2-core machine the demo was developed on.
Measured there in one full `make demo` (calibration 1.26 s): data 13 s, base stage 226 s (2 threads;
its vision stage 55 s), video run 124 s, image run 163 s; control data 4.6 s (in an earlier run,
calibration 1.05 s); the evaluation, after loglik scoring began to batch the options, 124 s and 140 s
in two runs at calibrations 1.27 s and 1.09 s (the mean of their ratios; 146 s at 1.26 s before). The
control's training is matched to the video run's visual tokens, so it takes the video run's ratio; its
evaluation (one checkpoint instead of three) a third of the evaluation's. The same machine at the same
calibration has run the two-process stages 20% faster (image run 129 s, evaluation 117 s before the
batching, the video run about 100 s): the calibration times one process, and the estimate is only as
good as that. Re-measure them when a stage changes."""


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    env: dict = field(default_factory=dict)
    """Extra environment variables of the stage's commands."""
    skip: str = ""
    """Why the stage is skipped ("" when it runs)."""


def _accelerate() -> str:
    exe = Path(sys.executable).parent / "accelerate"
    if not exe.exists():
        raise SystemExit(f"error: {exe} not found: run the demo with the project's venv python (make demo)")
    return str(exe)


def _eval_command(accelerate: str) -> list[str]:
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "evalsuite", "all", "ckpt/", *EVAL_FLAGS]


def demo_stages(python: str, accelerate: str, base_threads: int, base_current: bool) -> list[Stage]:
    """The stages of `make demo`, in order."""
    train = [accelerate, "launch", "--config_file", ACCELERATE_CONFIG, "train/lora.py"]
    return [
        Stage("data", [[python, "-m", "data_recipes", "build", "video_demo"],
                       [python, "-m", "data_recipes", "build", "image_demo"],
                       [python, "-m", "data_recipes", "audit", "shards/video_demo", "shards/image_demo"]]),
        Stage("base", [[python, "-m", "train.toy.pretrain", "--family", "llava", "--out", str(BASE_MODEL)]],
              env={"OMP_NUM_THREADS": str(base_threads)},
              skip=f"{BASE_MODEL} is up to date" if base_current else ""),
        Stage("video", [train + ["--recipe", "video_demo"]]),
        Stage("image", [train + ["--recipe", "image_demo", "--match_to", "ckpt/video_demo", "--match_by",
                                 "visual_tokens"]]),
        Stage("eval", [_eval_command(accelerate)], env={"ACCELERATE_USE_CPU": "1"}),
    ]


def control_stages(python: str, accelerate: str) -> list[Stage]:
    """The stages of `make control`, in order (they need `make demo`'s ckpt/video_demo)."""
    return [
        Stage("control_data", [[python, "-m", "data_recipes", "build", "video_shuffled_demo"],
                               [python, "-m", "data_recipes", "audit", "shards/video_demo",
                                "shards/video_shuffled_demo"]]),
        Stage("control_train", [[accelerate, "launch", "--config_file", ACCELERATE_CONFIG, "train/lora.py",
                                 "--recipe", "video_shuffled_demo", "--match_to", "ckpt/video_demo",
                                 "--match_by", "visual_tokens"]]),
        Stage("control_eval", [_eval_command(accelerate)], env={"ACCELERATE_USE_CPU": "1"}),
    ]


def calibrate(steps: int = CALIBRATION_STEPS, batch: int = CALIBRATION_BATCH) -> float:
    """Seconds of `steps` base-stage optimizer steps (after `CALIBRATION_WARMUP` untimed ones) of a
    fresh tiny llava on one encoded batch of `batch` generated images, on one thread."""
    import torch

    from train.families import load_model
    from train.toy.pretrain import encode_part
    from train.toy.tiny import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="demo-calibration.") as tmp:
            build_tiny("llava", Path(tmp) / "tiny")
            model, processor, _ = load_model(Path(tmp) / "tiny")
        inputs = encode_part(processor, "image", 0, "train", range(batch))
        torch.manual_seed(0)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for i in range(CALIBRATION_WARMUP + steps):
            if i == CALIBRATION_WARMUP:
                t0 = time.perf_counter()
            model(**inputs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def estimate(calibration_s: float, stages: list[Stage]) -> dict[str, float]:
    """Estimated seconds of each stage that will run."""
    return {s.name: STAGE_RATIOS[s.name] * calibration_s for s in stages if not s.skip}


def _fmt(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def table(times: dict[str, float], estimates: dict[str, float], skipped: dict[str, str]) -> str:
    """Each stage's measured time beside its estimate, and the totals."""
    names = list(dict.fromkeys([*times, *estimates, *skipped]))
    lines = [f"{'stage':<14}{'measured':>10}{'estimated':>11}"]
    for n in names:
        got = f"{round(times[n])} s" if n in times else ("skipped" if n in skipped else "-")
        est = f"{round(estimates[n])} s" if n in estimates else "-"
        lines.append(f"{n:<14}{got:>10}{est:>11}")
    lines.append(f"{'total':<14}{_fmt(sum(times.values())):>10}{_fmt(sum(estimates.values())):>11}")
    return "\n".join(lines)


def run_stages(stages: list[Stage], estimates: dict[str, float], *, runner=subprocess.run, cwd: Path = ROOT) -> int:
    """Run the stages in order, printing each one's time; 0, or the exit code of the command that failed."""
    times: dict[str, float] = {}
    skipped = {s.name: s.skip for s in stages if s.skip}
    for stage in stages:
        if stage.skip:
            print(f"stage {stage.name} skipped: {stage.skip}", flush=True)
            continue
        t0 = time.perf_counter()
        for argv in stage.commands:
            print(f"[{stage.name}] {' '.join(f'{k}={v}' for k, v in stage.env.items())}"
                  f"{' ' if stage.env else ''}{shlex.join(argv)}", flush=True)
            code = runner(argv, cwd=cwd, env={**os.environ, **stage.env}).returncode
            if code != 0:
                times[stage.name] = time.perf_counter() - t0
                print(f"stage {stage.name} failed (exit {code}) after {round(times[stage.name])} s: {shlex.join(argv)}")
                print(table(times, estimates, skipped))
                return code
        times[stage.name] = time.perf_counter() - t0
        print(f"stage {stage.name} done in {round(times[stage.name])} s", flush=True)
    print(table(times, estimates, skipped))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.toy.demo", description=__doc__.splitlines()[0])
    p.add_argument("--control", action="store_true", help="the shuffled-frames control instead of the demo")
    p.add_argument("--base-threads", type=int, default=int(os.environ.get("BASE_THREADS", "2")),
                   help="threads of the single-process base stage (default: $BASE_THREADS or 2)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.base_threads < 1:
        p.error(f"--base-threads must be a positive integer, got {args.base_threads}")
    os.chdir(ROOT)
    accelerate = _accelerate()
    if args.control:
        if not (Path("ckpt/video_demo") / "run.json").exists():
            print("error: ckpt/video_demo/run.json not found: the control is trained to the video run's visual "
                  "tokens, run `make demo` first", file=sys.stderr)
            return 2
        stages = control_stages(sys.executable, accelerate)
    else:
        from train.toy.pretrain import is_current

        stages = demo_stages(sys.executable, accelerate, args.base_threads, is_current(BASE_MODEL))
    if args.dry_run:
        for s in stages:
            for c in s.commands:
                print(f"{s.name}: {' '.join(f'{k}={v}' for k, v in s.env.items())}{' ' if s.env else ''}{shlex.join(c)}"
                      + (f"   (skipped: {s.skip})" if s.skip else ""))
        return 0
    t0 = time.perf_counter()
    calibration_s = calibrate()
    estimates = estimate(calibration_s, stages)
    print(f"calibration: {CALIBRATION_STEPS} base-stage steps in {calibration_s:.2f} s "
          f"({time.perf_counter() - t0:.0f} s with start-up); estimated time of the "
          f"{'control' if args.control else 'demo'}: {_fmt(sum(estimates.values()))} ("
          + ", ".join(f"{k} {_fmt(v)}" for k, v in estimates.items()) + ")", flush=True)
    return run_stages(stages, estimates)


if __name__ == "__main__":
    sys.exit(main())
