"""Names users already type, in both CLIs: the trainer's `--output_dir`; `--data` as the data of the one
task that runs (`python -m evalsuite iraven CKPT --data DIR`); one flag spelling (underscores, as the
dataclass fields, HF's Trainer and TRL spell them; the dashed one works with a deprecation warning); a refused
flag names the one that would work; `report --n_boot/--seed` reach every paired contrast. Config-level: no
model runs and nothing trains."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from evalsuite import stats
from evalsuite.cli import build_parser, config_from, main
from evalsuite.config import ConfigError, EvalConfig, field_help
from helpers import IRAVEN_SETTINGS, match_record, write_task_results
from train.config import ConfigError as TrainConfigError
from train.config import TrainConfig, resolve

TRAIN = ["--recipe", "video_demo", "--max_steps", "1"]


def _recipe_train(name: str) -> dict:
    from data_recipes.recipe import load_recipe

    return load_recipe(name).train  # what train/lora.py's main() layers under the flags


# --- the trainer's run directory -----------------------------------------------------------------------------
def test_output_dir_is_the_run_directory(tmp_path, capsys):
    from train.lora import LoRATrainer

    out = tmp_path / "runs" / "video_seed1"
    cfg = resolve([*TRAIN, "--output_dir", str(out)], _recipe_train)
    assert cfg.run_dir == out and LoRATrainer(cfg).run_dir == out  # where adapter, run.json and states go
    assert "warning" not in capsys.readouterr().err
    # without it, output_root/run_name as before (the study runner still passes those)
    cfg = resolve([*TRAIN, "--output_root", str(tmp_path / "r"), "--run_name", "v"], _recipe_train)
    assert cfg.run_dir == tmp_path / "r" / "v" and cfg.output_dir == ""
    assert resolve(TRAIN, _recipe_train).run_dir == Path("ckpt") / "video_demo"


@pytest.mark.parametrize("extra, named", [
    (["--output_root", "elsewhere"], ["output_dir", "output_root", "--output_root elsewhere"]),
    (["--run_name", "v2"], ["output_dir", "run_name", "--run_name v2"]),
    (["--output_root", "ckpt", "--run_name", "v2"], ["output_root and run_name"]),  # even the default, typed
])
def test_output_dir_with_output_root_or_run_name_is_an_error_naming_both(extra, named):
    with pytest.raises(TrainConfigError) as e:
        resolve([*TRAIN, "--output_dir", "runs/v", *extra], _recipe_train)
    assert all(word in str(e.value) for word in named), str(e.value)


def test_output_dir_clash_is_found_across_layers(tmp_path):
    (tmp_path / "c.yaml").write_text("run_name: from_file\n")
    with pytest.raises(TrainConfigError, match="output_dir .* or run_name, not both"):
        resolve([*TRAIN, "--config", str(tmp_path / "c.yaml"), "--output_dir", "runs/v"], _recipe_train)
    with pytest.raises(TrainConfigError, match="must end in the run's own directory name"):
        resolve([*TRAIN, "--output_dir", "runs/.."], _recipe_train)


# --- one spelling, both CLIs -----------------------------------------------------------------------------------
def _flags(parser) -> dict:
    return {s: a for a in parser._actions for s in a.option_strings}


def _command(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", ["all", "vcot", "shuffle", "iraven"])
def test_every_eval_config_field_has_a_flag_in_both_spellings(command):
    flags = _flags(_command(command))
    for f in dataclasses.fields(EvalConfig):
        canonical = flags[f"--{f.name}"]
        assert canonical.dest == f.name and field_help(f.name)
        assert canonical.help == f"{field_help(f.name)} [default: {f.default!r}]".replace("%", "%%")
        dashed = f"--{f.name.replace('_', '-')}"
        assert flags[dashed].dest == f.name
    for name in ("tracking", "progress"):  # bools that default to true can be switched off
        assert flags[f"--no_{name}"].dest == name


def test_every_train_config_field_has_a_flag_in_both_spellings():
    from train.config import build_parser as train_parser

    flags = _flags(train_parser())
    for f in dataclasses.fields(TrainConfig):
        assert flags[f"--{f.name}"].dest == flags[f"--{f.name.replace('_', '-')}"].dest == f.name


EVAL_CANONICAL = ["--iraven_limit", "4", "--n_boot", "50", "--loglik_norm", "sum", "--video_input", "images",
                  "--max_pixels", "4096", "--batch_size", "2", "--infill_tokens", "5", "--answer_tokens", "6",
                  "--iraven_layout", "candidates", "--image_size", "32", "--no_tracking", "--no_progress",
                  "--trust_remote_code", "--frames", "3", "4"]


def test_both_eval_spellings_give_one_config_and_only_the_dashed_one_warns(capsys):
    canonical = config_from(build_parser().parse_args(["vcot", "ck", *EVAL_CANONICAL]))
    assert capsys.readouterr().err == ""
    dashed_argv = [a.replace("_", "-") if a.startswith("--") else a for a in EVAL_CANONICAL]
    dashed = config_from(build_parser().parse_args(["vcot", "ck", *dashed_argv]))
    assert dashed == canonical
    assert (canonical.iraven_limit, canonical.n_boot, canonical.frames, canonical.tracking,
            canonical.trust_remote_code) == (4, 50, (3, 4), False, True)
    warnings = capsys.readouterr().err.splitlines()
    flags = [a for a in dashed_argv if a.startswith("--") and "-" in a[2:]]
    assert warnings == [f"warning: {f} is deprecated, use --{f[2:].replace('-', '_')}" for f in flags]


def test_both_train_spellings_give_one_config_and_only_the_dashed_one_warns(capsys):
    argv = ["--output_dir", "runs/v", "--lora_r", "4", "--learning_rate", "1e-3", "--gradient_checkpointing",
            "false", "--dry_run", "--no_system_metrics", "--match_to", "ckpt/ref", "--match_by", "samples"]
    canonical = resolve([*TRAIN, *argv], _recipe_train)
    assert capsys.readouterr().err == ""
    dashed = resolve([*TRAIN, *[a.replace("_", "-") if a.startswith("--") else a for a in argv]], _recipe_train)
    assert dashed == canonical
    assert (canonical.lora_r, canonical.dry_run, canonical.gradient_checkpointing, canonical.system_metrics) == \
        (4, True, False, False)
    err = capsys.readouterr().err
    assert "warning: --output-dir is deprecated, use --output_dir" in err and len(err.splitlines()) == 8


def test_an_ill_typed_flag_names_the_field_in_either_spelling():
    for flag in ("--lora_r", "--lora-r"):
        with pytest.raises(TrainConfigError, match="'lora_r' must be int, got 'two'"):
            resolve([*TRAIN, flag, "two"])


# --- --data is the data of the one task that runs -------------------------------------------------------------
def test_iraven_data_is_the_puzzle_directory_and_is_used(tmp_path):
    from evalsuite.benchmarks.iraven import generate_dataset
    from evalsuite.resources import Resources
    from evalsuite.tasks.iraven import IRavenTask

    puzzles = tmp_path / "puzzles"
    generate_dataset(puzzles, per_config=1, seed=5, configs=["center_single"], val=0, test=10)
    cfg = config_from(build_parser().parse_args(["iraven", "ck", "--data", str(puzzles), "--no_progress"]))
    assert cfg.iraven_data == str(puzzles) and cfg.data is None
    task = IRavenTask(cfg, Resources(cfg, tmp_path / "cache"))
    assert task.settings({})["data"] == str(puzzles.resolve())
    items = task.items()
    assert items and all(p.path.is_relative_to(puzzles.resolve()) for p in items)  # read from there, not generated
    assert not (tmp_path / "cache" / "iraven").exists()
    # the same with the task's own flag
    same = config_from(build_parser().parse_args(["iraven", "ck", "--iraven_data", str(puzzles), "--no_progress"]))
    assert same == cfg


def test_data_with_benchmark_egoschema_stays_the_benchmarks(tmp_path):
    """For the iraven task, --benchmark egoschema says --data is EgoSchema's (as `all` reads it)."""
    cfg = config_from(build_parser().parse_args(["iraven", "ck", "--benchmark", "egoschema", "--data", str(tmp_path),
                                                 "--protocol", "custom"]))
    assert (cfg.data, cfg.iraven_data) == (str(tmp_path), None)


def test_refused_flags_name_the_one_that_works(tmp_path, capsys):
    assert main(["vcot", str(tmp_path), "--data", str(tmp_path), "--no_tracking"]) == 2
    err = capsys.readouterr().err
    assert "--benchmark egoschema --data DIR" in err and "--iraven_data DIR" in err
    assert main(["iraven", str(tmp_path), "--data", str(tmp_path), "--iraven_data", str(tmp_path)]) == 2
    assert "--data" in (err := capsys.readouterr().err) and "--iraven_data" in err and "give one of them" in err
    assert main(["all", str(tmp_path), "--data", str(tmp_path)]) == 2  # several tasks: --data is the benchmark's
    assert "--iraven_data DIR" in capsys.readouterr().err
    for typed, meant in (("--n-bot", "--n_boot"), ("--iraven_limt", "--iraven_limit"), ("--limt", "--limit")):
        assert main(["vcot", str(tmp_path), typed, "3"]) == 2
        assert capsys.readouterr().err.strip() == f"error: unknown flag '{typed}' (did you mean '{meant}'?)"
    with pytest.raises(TrainConfigError, match=r"unknown flag '--output-dri' \(did you mean 'output_dir'"):
        resolve([*TRAIN, "--output-dri", "x"])
    with pytest.raises(ConfigError, match="--max_pixels must be 0"):
        EvalConfig(max_pixels=3)


# --- report: --n_boot and --seed reach the paired contrasts ---------------------------------------------------
ITEMS = [f"q{i:02d}" for i in range(24)]  # in the sorted order the report pairs them in
VCOT_SETTINGS = {"task": "vcot", "benchmark": "synthetic", "limit": 24, "frames": [5], "seed": 0, "protocol": "custom",
                 "scoring": "loglik", "loglik_norm": "mean", "infills": "oracle", "n_boot": 200}
RIGHT = {"image": {"base": range(0, 24, 3), "vcot": range(0, 24, 2)},  # per run and condition, the items right
         "video": {"base": range(0, 24, 4), "vcot": range(1, 24, 3)}}


def _vector(role: str, condition: str) -> list[int]:
    return [int(i in RIGHT[role][condition]) for i in range(len(ITEMS))]


def _pair_of_runs(root: Path) -> None:
    for name, role, run in (("video_run", "video", {"kind": "video"}),
                            ("image_run", "image", {"kind": "image", "match": match_record(root, "video_run")})):
        d = root / name
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps(run))
        rows = [{"item": item, "frames": 5, "condition": cond, "pred": 0, "answer": 0 if ok else 1, "correct": bool(ok)}
                for cond in ("base", "vcot") for item, ok in zip(ITEMS, _vector(role, cond))]
        write_task_results(d, "vcot", VCOT_SETTINGS, {"f5": {"n_items": len(ITEMS)}}, rows)
        puzzles = [{"item": f"center_single/RAVEN_{k:02d}_test", "config": "center_single", "pred": 0, "answer": 0,
                    "correct": ok} for k, ok in enumerate(_vector(role, "vcot"))]
        write_task_results(d, "iraven", IRAVEN_SETTINGS, {"n_items": len(ITEMS), "informative": True}, puzzles)


def _contrasts(root: Path, *flags: str) -> dict:
    assert main(["report", str(root), "--no_tracking", *flags]) == 0
    with open(root / "report" / "metrics.csv") as fh:
        return {r["metric"]: (float(r["value"]), float(r["ci_low"]), float(r["ci_high"]))
                for r in csv.DictReader(fh) if r["task"] == "findings"}


def test_report_contrasts_follow_n_boot_and_seed(tmp_path):
    _pair_of_runs(tmp_path)
    gain = [_vector(r, c) for r in ("image", "video") for c in ("vcot", "base")]
    iraven = (_vector("video", "vcot"), _vector("image", "vcot"))

    def expected(n_boot: int, seed: int) -> tuple:
        f1 = stats.contrast_of_differences(*gain, n_boot=n_boot, seed=seed)
        f3 = stats.paired_difference(*iraven, n_boot=n_boot, seed=seed)
        return tuple((e.value, e.ci_low, e.ci_high) for e in (f1, f3))

    settings = ((), ("--n_boot", "37", "--seed", "5"), ("--n-boot", "37", "--seed", "6"), ("--n_boot", "41", "--seed", "5"))
    runs = {flags: _contrasts(tmp_path, *flags) for flags in settings}
    got = {flags: (c["f1/overall/f5/contrast"], c["f3/contrast"]) for flags, c in runs.items()}
    # without flags, each task's recorded n_boot and seed; with them, the flags', for every contrast
    assert got[()] == (expected(200, 0)[0], expected(IRAVEN_SETTINGS["n_boot"], 0)[1])
    assert got[("--n_boot", "37", "--seed", "5")] == expected(37, 5)
    assert got[("--n-boot", "37", "--seed", "6")] == expected(37, 6)
    assert got[("--n_boot", "41", "--seed", "5")] == expected(41, 5)
    assert len({ci for f1, _ in got.values() for ci in [f1[1:]]}) == 4  # each setting moved the CI


def test_all_passes_its_own_n_boot_and_seed_to_the_report(tmp_path, monkeypatch):
    """`all` hands the report the n_boot and seed its evaluations used (the one path for every statistic)."""
    import evalsuite.checkpoints
    import evalsuite.report.evaluation
    import evalsuite.runner

    seen = {}
    monkeypatch.setattr(evalsuite.checkpoints, "discover", lambda root, broken: [object()])
    monkeypatch.setattr(evalsuite.runner, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr(evalsuite.report.evaluation, "write_report",
                        lambda root, **kw: seen.update(kw) or tmp_path / "r.md")
    monkeypatch.setattr(evalsuite.report.evaluation, "summary_text", lambda report: "")
    assert main(["all", str(tmp_path), "--n_boot", "77", "--seed", "9", "--no_tracking", "--no_progress"]) == 0
    assert seen == {"track": False, "n_boot": 77, "seed": 9}
