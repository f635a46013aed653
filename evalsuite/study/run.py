"""A study: arms x budgets x seeds, each run trained to its own budget, evaluated, then summarised.

    python -m evalsuite study studies/scale_demo.yaml [--dry_run]

The spec (`studies/NAME.yaml`, typed like a recipe: unknown keys are errors with a "did you mean"):

    name: scale_demo
    arms:                         # what differs between runs; each arm names a recipe
      - {name: video, recipe: video_demo}
      - {name: qwen, recipe: video_demo, family: qwen2_vl, video_input: native,   # the architecture axis
         train: {lora_r: 8}}      # extra trainer settings of this arm (train/lora.py flags)
    budgets: [200000, 400000]     # every run stops at exactly its budget, in `unit`
    unit: visual_tokens           # samples | visual_tokens | text_tokens | supervised_tokens (the trainer's)
    seeds: [0, 1, 2]              # the trainer's --seed
    base_model: tiny-pretrained:llava   # what the trainer's --base_model accepts; an arm may override it
    eval: [--limit, 300]          # `python -m evalsuite` flags, a list or a mapping ({limit: 300});
                                  # --tasks restricts the tasks (default: every task)
    launcher: local               # local | submitit_local | slurm, or a mapping:
                                  # {type: slurm, nodes, gpus_per_node, partition, time_min, accelerate_config,
                                  #  cpus_per_gpu, mem_gb, max_timeouts}
    tracking_uri: ...             # default: the project's sqlite store; many nodes: an http:// mlflow server
                                  # ($VARS expanded; under slurm not a loopback address)
    output_dir: ...               # default: studies_out/NAME
    shards_root: shards           # where recipes are built

What a run does (`run_study`): each arm's recipe is built once (`python -m data_recipes build`, skipped
when the manifest is current); every arm x budget x seed is trained with `train/lora.py --budget B
--budget_unit UNIT --seed S --resume latest` into `<output_dir>/runs/<arm>-b<budget>-s<seed>/`, not
matched to another run; every checkpoint is evaluated (`python -m evalsuite TASK RUN_DIR... <eval flags>`
per task, sharing `runs/.infill_cache`; see `evalsuite.study.launchers`); then
`evalsuite.report.study.write_study_report` writes the study report. Commands run in the directory the
study was started from, through the launcher (`evalsuite.study.launchers`).

Resume: the study writes `<output_dir>/study.json` (atomically) after every step: the run list in the
shape `write_study_report` reads ({arm, recipe, budget, unit, seed, run_dir, status}, status one of
pending, partial, trained, done, failed), the MLflow parent run and the evaluation flags. A rerun reads
the state of each run from disk: a run whose `run.json` exists (the trainer writes it last) is not
trained again, one with resumable states continues from the newest (`--resume latest`), and a run
whose every task has its `eval/<task>/metrics.json` under the same evaluation flags is not evaluated
again (the evaluation itself also skips finished tasks and resumes interrupted ones).

MLflow: one parent run per study (tag `study`), created by the first invocation and reused by reruns;
every training and evaluation run is its child (`$BETWEENFRAMES_PARENT_RUN_ID`, read by the trainer and
the evaluation where they create their runs). Children get the spec's tracking URI through
`$MLFLOW_TRACKING_URI` and the trainer's `--tracking_uri`.

`--dry_run` prints the run list and the cost without loading any weights: per run the trainer's own
plan (`train.plan`: steps, samples, passes, memory per GPU, from the model's config on the meta device),
then total GPU-hours for GPU launchers or a CPU time for the local ones (see `estimate_seconds`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shlex
import urllib.parse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data_recipes.files import REPO_ROOT as REPO, atomic_write_json
from data_recipes.hints import did_you_mean
from data_recipes.recipe import RecipeError, _build, _expect, _is_int, load_recipe
from data_recipes.yamlfile import load_yaml
from train.run_record import RunRecord, RunRecordError

LAUNCHER_TYPES = ("local", "submitit_local", "slurm")
STATUSES = ("pending", "partial", "trained", "done", "failed")
STUDY_SET = ("recipe", "run_name", "output_root", "output_dir", "shards_root", "base_model", "seed", "budget", "budget_unit",
             "match_to", "match_by", "resume", "experiment", "tracking_uri", "dry_run", "video_input")
"""Trainer settings the study sets itself: an arm's `train:` may not (video_input: the arm's own field)."""
BUDGET_CAPS = ("max_steps", "max_samples", "schedule_steps")
"""Trainer settings that would stop a study's run before its budget (max_steps) or size its schedule for
another one: refused in an arm's `train:` (a recipe's max_samples yields to the budget; the others not)."""


class StudyError(RecipeError):
    """A spec or a study directory that cannot be used; the message names the file and the field."""


# --- the spec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str
    """A recipe name (data_recipes/recipes/NAME.yaml) or a recipe file (relative to the spec's folder or cwd)."""
    base_model: str | None = None
    """This arm's base model (default: the study's)."""
    family: str | None = None
    """The architecture axis: the tiny model of this family (the study's tiny:/tiny-pretrained: kind)."""
    video_input: str | None = None
    """images | native | auto: how this arm's video frames reach the model (the trainer's --video_input)."""
    train: dict = field(default_factory=dict)
    """Extra trainer settings of this arm (train/lora.py flags without the dashes)."""


@dataclass(frozen=True)
class LauncherSpec:
    type: str = "local"
    """local | submitit_local | slurm."""
    nodes: int = 1
    """Nodes per training job (slurm)."""
    gpus_per_node: int = 0
    """GPUs per node (slurm; 0 plans and runs on CPU)."""
    partition: str | None = None
    """Slurm partition."""
    time_min: int = 1440
    """Time limit of each job in minutes."""
    accelerate_config: str | None = None
    """`accelerate launch --config_file` of the training runs (e.g. ds_configs/accelerate/gpu_1node_8gpu_zero2.yaml)."""
    cpus_per_gpu: int = 8
    """CPUs a Slurm job asks per GPU of a node (per node on CPU jobs): Slurm's own default is one CPU for the
    job's only task, which would run every process and data loader of 8 GPUs on one core."""
    mem_gb: int = 0
    """Memory a Slurm job asks per node in GB; 0 asks none, so the cluster's default per CPU applies."""
    max_timeouts: int = 3
    """How many times a Slurm job that reaches `time_min` is requeued (it resumes from its saved state);
    a job preempted by the cluster is requeued whatever this says."""


@dataclass(frozen=True)
class Study:
    name: str
    arms: tuple[Arm, ...]
    budgets: tuple[int, ...]
    unit: str
    seeds: tuple[int, ...]
    base_model: str = ""
    eval: tuple[str, ...] = ()
    launcher: LauncherSpec = LauncherSpec()
    tracking_uri: str = ""
    output_dir: str = ""
    shards_root: str = "shards"
    description: str = ""
    path: str = ""
    """The file this spec was read from."""

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _number(v, where: str, what: str) -> int:
    _expect(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 and v == int(v),
            where, f"{what} must be a positive whole number, got {v!r}")
    return int(v)


def _eval_flags(value, where: str) -> tuple[str, ...]:
    """The `eval` field as argv: a list of flags, or a mapping {flag: value | [values] | true}."""
    if isinstance(value, dict):
        flags = []
        for k, v in value.items():
            flags.append("--" + str(k).lstrip("-").replace("-", "_"))
            if v is not True:
                flags += [str(x) for x in v] if isinstance(v, list) else [str(v)]
        value = flags
    _expect(isinstance(value, list), where, f"field 'eval' must be a list of flags or a mapping, got {value!r}")
    # `--flag=value` as two words, as argparse reads it: `split_tasks` then sees `--tasks=vcot` too
    flags = tuple(w for x in value for w in (str(x).split("=", 1) if str(x).startswith("--") else [str(x)]))
    from evalsuite.cli import build_parser, config_from
    from evalsuite.config import ConfigError
    from evalsuite.tasks import TASKS

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["all", "RUN_DIR", *flags])
    except SystemExit:
        raise StudyError(f"{where}: field 'eval': {err.getvalue().strip().splitlines()[-1]}") from None
    tasks, _ = split_tasks(flags)
    for t in tasks:
        _expect(t in TASKS, where, f"field 'eval': --tasks {t}: no such task (tasks: {', '.join(TASKS)})"
                + did_you_mean(t, list(TASKS)))
    # The settings themselves, checked now rather than after every run has trained. Flags naming environment
    # variables are checked where they are expanded, on the node that runs the evaluation.
    if not any("$" in f for f in flags):
        try:
            config_from(args)
        except ConfigError as e:
            raise StudyError(f"{where}: field 'eval': {e}") from None
    return flags


def _launcher(value, where: str) -> LauncherSpec:
    if isinstance(value, str):
        value = {"type": value}
    spec = _build(LauncherSpec, value, f"{where}: launcher")
    lw = f"{where}: launcher"
    _expect(spec.type in LAUNCHER_TYPES, lw, f"type must be one of {', '.join(LAUNCHER_TYPES)}, got {spec.type!r}"
            + did_you_mean(spec.type, LAUNCHER_TYPES))
    for k in ("nodes", "time_min", "cpus_per_gpu"):
        _expect(_is_int(getattr(spec, k)) and getattr(spec, k) >= 1, lw, f"{k} must be an integer >= 1")
    for k in ("gpus_per_node", "mem_gb", "max_timeouts"):
        _expect(_is_int(getattr(spec, k)) and getattr(spec, k) >= 0, lw, f"{k} must be an integer >= 0")
    if spec.accelerate_config:
        _expect((REPO / spec.accelerate_config).is_file() or Path(spec.accelerate_config).is_file(), lw,
                f"accelerate_config {spec.accelerate_config}: file not found")
    return spec


def _recipe_ref(ref, spec_dir: Path, where: str) -> str:
    """The arm's recipe as the trainer and the builder take it (a file relative to the spec's folder made absolute)."""
    _expect(isinstance(ref, str) and ref != "", where, "recipe must be a recipe name or a recipe file")
    if ref.endswith((".yaml", ".yml")) and not Path(ref).is_absolute() and (spec_dir / ref).is_file():
        ref = str((spec_dir / ref).resolve())
    try:
        load_recipe(ref)
    except RecipeError as e:
        raise StudyError(f"{where}: recipe: {e}") from None
    return ref


def _arm(data, i: int, study_base: str, spec_dir: Path, where: str) -> Arm:
    from data_recipes.clips import VIDEO_INPUT_SETTINGS
    from train.config import ConfigError, apply_layer
    from train.families import FAMILIES

    aw = f"{where}: arms[{i}]"
    arm = _build(Arm, data, aw)
    _expect(isinstance(arm.name, str) and _NAME.fullmatch(arm.name) is not None, aw,
            f"name must be letters, digits, '_', '-' or '.', got {arm.name!r}")
    arm = dataclasses.replace(arm, recipe=_recipe_ref(arm.recipe, spec_dir, aw))
    if arm.family is not None:
        _expect(arm.family in FAMILIES, aw, f"family must be one of {', '.join(FAMILIES)}, got {arm.family!r}"
                + did_you_mean(arm.family, FAMILIES))
        base = arm.base_model or study_base
        _expect(base.startswith(("tiny:", "tiny-pretrained:")), aw,
                f"family {arm.family} picks a tiny model, but the base model is {base!r}: give the arm its own "
                "base_model instead")
    if arm.video_input is not None:
        _expect(arm.video_input in VIDEO_INPUT_SETTINGS, aw, f"video_input must be one of "
                f"{', '.join(VIDEO_INPUT_SETTINGS)}, got {arm.video_input!r}")
    _expect(isinstance(arm.train, dict), aw, "train must be a mapping of trainer settings")
    for k in arm.train:
        _expect(k not in STUDY_SET, aw, f"train: '{k}' is set by the study (use the spec's fields)")
        _expect(k not in BUDGET_CAPS, aw, f"train: '{k}' would stop the arm's runs short of the study's budget, "
                "which the report would still show them at (the budget is where a study's runs stop)")
    capped = [k for k in BUDGET_CAPS if k != "max_samples" and load_recipe(arm.recipe).train.get(k)]
    _expect(not capped, aw, f"recipe {arm.recipe}: its train section sets {', '.join(capped)}, which would stop the "
            "arm's runs short of the study's budget (its max_samples yields to the budget; these do not)")
    try:
        apply_layer({}, arm.train, f"{aw}: train")
    except ConfigError as e:
        raise StudyError(str(e)) from None
    _expect(bool(arm.base_model or study_base), aw, "no base model: give the study's base_model or the arm's")
    return arm


def parse_study(data, path: Path) -> Study:
    """The typed study of a spec's YAML `data` read from `path`; a StudyError names the file and the field."""
    try:
        return _parse_study(data, path)
    except StudyError:
        raise
    except RecipeError as e:  # the recipe loader's helpers raise their own type
        raise StudyError(str(e)) from None


def _parse_study(data, path: Path) -> Study:
    from data_recipes.counters import TRAIN_MATCH_UNITS as MATCH_UNITS

    where = str(path)
    if not isinstance(data, dict):
        raise StudyError(f"{where}: a study must be a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    data.setdefault("name", path.stem)
    for k in ("arms", "budgets", "unit", "seeds"):
        _expect(k in data, where, f"field '{k}' is required")
    for k in ("arms", "budgets", "seeds"):
        _expect(isinstance(data[k], list) and data[k], where, f"field '{k}' must be a non-empty list")
    _expect(isinstance(data.get("base_model", ""), str), where, "field 'base_model' must be a string")
    data["arms"] = tuple(_arm(a, i, data.get("base_model", ""), path.parent, where) for i, a in enumerate(data["arms"]))
    data["budgets"] = tuple(_number(b, where, f"budgets[{i}]") for i, b in enumerate(data["budgets"]))
    _expect(all(_is_int(s) for s in data["seeds"]), where, f"field 'seeds' must be integers, got {data['seeds']!r}")
    data["seeds"] = tuple(data["seeds"])
    data["eval"] = _eval_flags(data.get("eval", []), where)
    data["launcher"] = _launcher(data.get("launcher", "local"), where)
    study = _build(Study, data, where)
    _expect(isinstance(study.name, str) and _NAME.fullmatch(study.name) is not None, where,
            f"field 'name' must be letters, digits, '_', '-' or '.', got {study.name!r}")
    _expect(study.unit in MATCH_UNITS, where, f"field 'unit' must be one of {', '.join(MATCH_UNITS)}, got "
            f"{study.unit!r}" + did_you_mean(study.unit, MATCH_UNITS))
    for k, values in (("arms", [a.name for a in study.arms]), ("budgets", study.budgets), ("seeds", study.seeds)):
        _expect(len(set(values)) == len(values), where, f"field '{k}' has duplicates: {list(values)}")
    for k in ("tracking_uri", "output_dir", "shards_root", "description"):
        _expect(isinstance(getattr(study, k), str), where, f"field '{k}' must be a string")
    from train.tracking import default_tracking_uri

    uri = os.path.expandvars(study.tracking_uri) if study.tracking_uri else default_tracking_uri()
    host = urllib.parse.urlparse(uri).hostname or ""
    _expect(study.launcher.type != "slurm" or not (host == "localhost" or host == "::1" or host.startswith("127.")),
            where, f"field 'tracking_uri': {uri} is the loopback address of whichever machine reads it, and the "
            "Slurm jobs run on other nodes: name the MLflow server by a host name the compute nodes reach "
            "(e.g. http://login-node:5000)")
    return dataclasses.replace(
        study, path=where, tracking_uri=uri,
        output_dir=str(Path(study.output_dir or f"studies_out/{study.name}").expanduser().resolve()),
        shards_root=str(Path(study.shards_root).expanduser().resolve()))


def load_study(path: str | os.PathLike) -> Study:
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"{p}: study spec not found")
    try:
        data = load_yaml(p)
    except yaml.YAMLError as e:
        raise StudyError(f"{p}: not valid YAML ({e})") from None
    return parse_study(data or {}, p)


# --- the run list and each run's commands -------------------------------------------------------------
def run_name(arm: str, budget: int, seed: int) -> str:
    return f"{arm}-b{budget}-s{seed}"


def run_list(study: Study) -> list[dict]:
    """arms x budgets x seeds, in the shape `write_study_report` reads (status: pending until looked at)."""
    return [{"arm": a.name, "recipe": load_recipe(a.recipe).name, "budget": b, "unit": study.unit, "seed": s,
             "run_dir": str(study.runs_dir / run_name(a.name, b, s)), "status": "pending"}
            for a in study.arms for b in study.budgets for s in study.seeds]


def arm_base_model(study: Study, arm: Arm) -> str:
    base = arm.base_model or study.base_model
    return f"{base.split(':', 1)[0]}:{arm.family}" if arm.family else base


def _flag(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def train_args(study: Study, run: dict) -> list[str]:
    """train/lora.py arguments of one run."""
    arm = study.arm(run["arm"])
    args = ["--recipe", arm.recipe, "--run_name", Path(run["run_dir"]).name, "--output_root", str(study.runs_dir),
            "--shards_root", study.shards_root, "--base_model", arm_base_model(study, arm), "--seed", str(run["seed"]),
            "--budget", str(run["budget"]), "--budget_unit", study.unit, "--experiment", study.name,
            "--tracking_uri", study.tracking_uri, "--resume", "latest"]
    if arm.video_input:
        args += ["--video_input", arm.video_input]
    for k, v in arm.train.items():
        args += [f"--{k}", _flag(v)]
    return args


def split_tasks(flags: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(tasks, the other flags): `--tasks A B` taken out of the eval flags (default: every task)."""
    from evalsuite.tasks import TASKS

    flags = list(flags)
    if "--tasks" not in flags:
        return list(TASKS), flags
    i = flags.index("--tasks")
    j = i + 1
    while j < len(flags) and not flags[j].startswith("-"):
        j += 1
    return flags[i + 1:j], flags[:i] + flags[j:]


def _expand(flag: str, where: str) -> str:
    for var in re.findall(r"\$\{?(\w+)\}?", flag):
        if var not in os.environ:
            raise StudyError(f"{where}: field 'eval': {flag!r} needs the environment variable ${var}, which is not set")
    return os.path.expandvars(flag)


def eval_flags(study: Study) -> list[str]:
    """The evaluation flags of every `python -m evalsuite TASK RUN_DIR...` command (without --tasks; runs share
    one infill cache, `runs/.infill_cache`, unless the spec names one)."""
    _, flags = split_tasks(study.eval)
    flags = [_expand(f, study.path) for f in flags]
    return flags if {"--cache_dir", "--cache-dir"} & set(flags) else flags + ["--cache_dir", str(study.runs_dir / ".infill_cache")]


# --- state on disk -------------------------------------------------------------------------------------
def trained(run: dict) -> bool:
    """The run's run.json exists (the trainer writes it last); one of another budget or seed is an error."""
    path = Path(run["run_dir"]) / "run.json"
    if not path.is_file():
        return False
    try:
        record = RunRecord.read(path, require=("budget", "config"))
        got = (record.budget["target"], record.budget["unit"], record.config["seed"])
    except (RunRecordError, KeyError) as e:
        raise StudyError(f"{path}: not a finished training run's run.json ({type(e).__name__}: {e})") from None
    if got != (run["budget"], run["unit"], run["seed"]):
        raise StudyError(f"{path}: holds a run with budget {got[0]} {got[1]}, seed {got[2]}, not this study's "
                         f"{run['budget']} {run['unit']}, seed {run['seed']}: delete {run['run_dir']} or change output_dir")
    return True


def evaluated(study: Study, run: dict) -> bool:
    tasks, _ = split_tasks(study.eval)
    return all((Path(run["run_dir"]) / "eval" / t / "metrics.json").is_file() for t in tasks)


def status_on_disk(study: Study, run: dict, same_eval: bool) -> str:
    if trained(run):
        return "done" if same_eval and evaluated(study, run) else "trained"
    return "partial" if any((Path(run["run_dir"]) / "checkpoints").glob("step-*/trainer_state.json")) else "pending"


class StudyState:
    """`<output_dir>/study.json`: written by `run_study` after every step, read by its reruns and the report."""

    def __init__(self, study: Study):
        self.path = study.out / "study.json"
        try:
            old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except json.JSONDecodeError as e:
            raise StudyError(f"{self.path}: not valid JSON ({e}); delete it to rebuild it from the run directories")
        self.parent_run_id = old.get("parent_run_id")
        if self.parent_run_id and old.get("tracking_uri") != study.tracking_uri:
            # that run lives in the other store: this one gets its own parent (the trainers do the same)
            print(f"study {study.name}: tracking_uri is now {study.tracking_uri} (was {old.get('tracking_uri')}): "
                  f"a new parent run there", flush=True)
            self.parent_run_id = None
        # Each run's evaluation flags, recorded when its evaluation finished: a rerun with other flags that is
        # interrupted before the evaluations catch up must not take the old metrics for the new flags'.
        evaluated = old.get("evaluated") if isinstance(old.get("evaluated"), dict) else {}
        self.evaluated = {name: flags for name, flags in evaluated.items() if flags == list(study.eval)}
        self.study, self.runs = study, run_list(study)
        for r in self.runs:
            r["status"] = status_on_disk(study, r, Path(r["run_dir"]).name in self.evaluated)

    def set(self, name: str, status: str) -> None:
        next(r for r in self.runs if Path(r["run_dir"]).name == name)["status"] = status
        if status == "done":
            self.evaluated[name] = list(self.study.eval)
        self.write()

    def write(self) -> None:
        s = self.study
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"study": s.name, "spec": s.path, "unit": s.unit, "eval": list(s.eval),
                                      "tracking_uri": s.tracking_uri, "parent_run_id": self.parent_run_id,
                                      "runs": self.runs, "evaluated": self.evaluated})


# --- running -------------------------------------------------------------------------------------------
def build_data(study: Study) -> None:
    """Each arm's recipe built once (`python -m data_recipes build`), skipped when its manifest is current."""
    from data_recipes.build import read_manifest, stale

    for ref in dict.fromkeys(a.recipe for a in study.arms):
        recipe = load_recipe(ref)
        out = Path(study.shards_root) / recipe.name
        try:
            current = stale(read_manifest(out), recipe) is None
        except Exception:  # no manifest, or an unreadable one: build
            current = False
        if current:
            print(f"data {recipe.name}: {out} is up to date", flush=True)
            continue
        argv = [sys.executable, "-m", "data_recipes", "build", ref, "--out", str(out)]
        print(f"data {recipe.name}: {shlex.join(argv)}", flush=True)
        if subprocess.run(argv).returncode != 0:
            raise StudyError(f"{study.path}: building recipe {ref} failed: {shlex.join(argv)}")


def parent_run(study: Study, run_id: str | None) -> str:
    """The study's MLflow run: the one a previous invocation made (set running again), else a new one."""
    from train.tracking import artifact_root, experiment_id, make_client, retry

    client = make_client(study.tracking_uri)
    if run_id:
        retry(client.update_run, run_id, status="RUNNING")
        return run_id
    exp = experiment_id(client, study.name, artifact_root(study.tracking_uri))
    run = retry(client.create_run, exp, run_name=f"study-{study.name}",
                tags={"study": study.name, "betweenframes.kind": "study", "study.spec": study.path})
    return run.info.run_id


def finish_parent(study: Study, state: StudyState, report: Path | None, status: str) -> None:
    from train.tracking import make_client, retry

    client = make_client(study.tracking_uri)
    retry(client.log_artifact, state.parent_run_id, str(state.path), "study")
    if report is not None and report.is_file():
        retry(client.log_artifact, state.parent_run_id, str(report), "study")
    retry(client.set_terminated, state.parent_run_id, status)


def make_launcher(study: Study):
    """`parent run id -> launcher` of the spec's launcher type; children get the store and the parent run."""
    from evalsuite.study.launchers import LocalLauncher, SubmititLauncher
    from train.tracking import PARENT_RUN_ENV

    def env(parent: str) -> dict:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {"MLFLOW_TRACKING_URI": study.tracking_uri, PARENT_RUN_ENV: parent, "PYTHONPATH": path}

    flags = eval_flags(study)
    if study.launcher.type == "local":
        return lambda parent: LocalLauncher(flags, env(parent), cwd=Path.cwd(),
                                            accelerate_config=study.launcher.accelerate_config)
    return lambda parent: SubmititLauncher(study.launcher, study.out / "submitit", flags, env(parent), cwd=Path.cwd())


def write_report(study: Study, runs: list[dict]) -> Path:
    from evalsuite.report.study import write_study_report  # another module's: imported when needed

    return write_study_report(study.out, study, runs)


def run_study(study: Study, launcher=None) -> int:
    """Build, train, evaluate and report (see the module docstring); 0, or 1 when a run failed."""
    from evalsuite.study.launchers import LaunchError, RunJob

    unset = re.findall(r"\$\{?(\w+)\}?", study.tracking_uri)
    if unset:
        raise StudyError(f"{study.path}: field 'tracking_uri': {study.tracking_uri!r} needs the environment variable "
                         f"${unset[0]}, which is not set")
    state = StudyState(study)
    state.write()
    build_data(study)
    state.parent_run_id = parent_run(study, state.parent_run_id)
    state.write()
    launcher = (launcher or make_launcher(study))(state.parent_run_id)
    tasks, _ = split_tasks(study.eval)
    jobs = [RunJob(r["run_dir"], None if r["status"] == "trained" else train_args(study, r), tasks)
            for r in state.runs if r["status"] != "done"]
    done = len(state.runs) - len(jobs)
    print(f"study {study.name}: {len(state.runs)} runs, {done} done, {len(jobs)} to go -> {study.out}", flush=True)
    try:
        launcher.run(jobs, state.set)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        # The report still says what the finished runs found, and lists the failed and missing ones: a run
        # that fails every time must not keep the study without one.
        report = write_report(study, state.runs)
        finish_parent(study, state, report, "FAILED")
        print(f"study {study.name}: a run failed; report of the others {report}", flush=True)
        return 1
    report = write_report(study, state.runs)
    finish_parent(study, state, report, "FINISHED")
    print(f"study {study.name}: done; report {report}", flush=True)
    return 0


# --- dry run -------------------------------------------------------------------------------------------
GPU_PEAK_TFLOPS = 312.0
"""Dense bf16 peak of the GPU the estimate assumes (an A100, the 80 GB the trainer plans for by default)."""
MFU = 0.35
"""Share of that peak a LoRA run is assumed to reach."""
DEMO_VIDEO_TOKENS = 1_105_110
"""Tokens (visual + text) the demo's video run consumes (10,000 clips of 5 frames): the unit of the CPU
estimate, whose time is `train.toy.demo.STAGE_RATIOS['video']` seconds per second of the demo's calibration."""


def _world_of(study: Study) -> dict:
    """The environment `train.plan` reads for a CPU target: the processes of the local accelerate config."""
    cfg = study.launcher.accelerate_config
    if study.launcher.gpus_per_node or not cfg:
        return {}
    path = REPO / cfg if (REPO / cfg).is_file() else Path(cfg)
    return {"LOCAL_WORLD_SIZE": str(yaml.safe_load(path.read_text()).get("num_processes", 1))}


def _config(study: Study, run: dict):
    from train.config import resolve

    launcher = study.launcher
    args = train_args(study, run) + ["--dry_run", "true", "--gpus", str(launcher.gpus_per_node),
                                     "--nodes", str(launcher.nodes)]
    return resolve(args, recipe_train=lambda r: load_recipe(r).train)


def _plan_arm(cfg, environ: dict, tmp: Path) -> tuple[dict | None, str]:
    """(the trainer's plan of an arm's run, a note). A tiny base that is not built yet (or stale) is planned on
    a fresh tiny model of its family, the same architecture, built in `tmp` (the first real run builds it)."""
    from train.plan import PlanError, make_plan

    try:
        return make_plan(cfg, environ), ""
    except PlanError as e:
        if not cfg.base_model.startswith(("tiny:", "tiny-pretrained:")):
            return None, str(e)
        from train.toy.tiny import build_tiny

        family = cfg.base_model.split(":", 1)[1]
        path = tmp / f"tiny-{family}"
        if not path.is_dir():
            build_tiny(family, path)
        note = f"{e}; planned on a fresh tiny {family} (the same architecture) instead"
        return make_plan(dataclasses.replace(cfg, base_model=str(path)), environ), note


def plan_runs(study: Study) -> tuple[list[dict], dict[str, str]]:
    """Per run the trainer's plan (`train.plan`): the model part once per arm, the budget per run; and a
    note per arm whose plan needed one."""
    import tempfile

    from data_recipes.build import read_manifest
    from train.plan import plan_budget

    environ = {**os.environ, **_world_of(study)}
    plans, notes, rows = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="study-plan.") as tmp:
        for run in run_list(study):
            cfg = _config(study, run)
            if run["arm"] not in plans:
                plans[run["arm"]], note = _plan_arm(cfg, environ, Path(tmp))
                if note:
                    notes[run["arm"]] = note
            plan, problems = plans[run["arm"]], []
            budget = None
            if plan is not None:
                manifest = read_manifest(Path(plan["data"]["shards"])) if plan["data"]["built"] else None
                budget = plan_budget(cfg, plan["target"]["world"], manifest, plan["data"].get("sequence"),
                                     Path(plan["model"]["dir"]), [], problems)
            rows.append({**run, "plan": plan, "budget_plan": budget, "problem": "; ".join(problems)})
    return rows, notes


def tokens_per_sample(plan: dict) -> tuple[float, str]:
    seq = plan["data"].get("sequence")
    if seq and seq["sampled"]:
        return seq["length"]["mean"], "measured"
    return plan["memory"]["seq"], "upper bound"


def estimate_seconds(row: dict, cpu_per_token: float | None) -> float | None:
    """GPU-seconds of a run (6 x parameters x tokens with checkpointing, else 4 x, at `MFU` of
    `GPU_PEAK_TFLOPS`), or CPU seconds (`cpu_per_token` x tokens); None when the steps are unknown."""
    plan, b = row["plan"], row.get("budget_plan") or {}
    if plan is None or not b.get("samples"):
        return None
    tokens = b["samples"] * tokens_per_sample(plan)[0]
    if cpu_per_token is not None:
        return tokens * cpu_per_token
    passes = 6 if plan["memory"]["gradient_checkpointing"] else 4
    return passes * plan["model"]["parameters"] * tokens / (GPU_PEAK_TFLOPS * 1e12 * MFU)


def _hms(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _row_text(row: dict, seconds: float | None, gpu: bool) -> str:
    name = Path(row["run_dir"]).name
    if row["plan"] is None:
        return f"  {name:<34} no plan (see arm {row['arm']} below)"
    b, mem = row["budget_plan"], row["plan"]["memory"]
    stage = mem["stages"].get(mem["configured"]) or mem["stages"]["zero2"]
    steps = f"{b['steps']:,}" if b["steps"] else "?"
    samples = f"{b['samples']:,}" if b["samples"] else "?"
    passes = f"{b['passes']:.2f}" if b["passes"] else "-"
    cost = "?" if seconds is None else (f"{seconds / 3600:.1f} GPU-h" if gpu else _hms(seconds))
    line = (f"  {name:<34}{steps:>9}{samples:>12}{passes:>8}{stage['total_gb']:>9.1f}"
            f"{'yes' if stage['fits'] else 'NO':>6}{cost:>12}")
    return line + (f"   ({row['problem']})" if row["problem"] else "")


def dry_run(study: Study, out=None) -> dict:
    """Print the run list with each run's plan and the study's cost; return them (nothing is written)."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    rows, arm_notes = plan_runs(study)
    gpu = study.launcher.gpus_per_node > 0
    cpu_per_token = None
    if not gpu:
        from train.toy.demo import STAGE_RATIOS, calibrate

        cpu_per_token = calibrate() * STAGE_RATIOS["video"] / DEMO_VIDEO_TOKENS
    seconds = [estimate_seconds(r, cpu_per_token) for r in rows]
    L = study.launcher
    target = (f"{L.type}: {L.nodes} node(s) x {L.gpus_per_node} GPU(s)" if gpu else f"{L.type} (CPU)")
    lines = [f"== study {study.name}: {len(study.arms)} arms x {len(study.budgets)} budgets ({study.unit}) x "
             f"{len(study.seeds)} seeds = {len(rows)} runs; {target}; dry run (no weights loaded, nothing trained) ==",
             f"  output {study.out}, tracking {study.tracking_uri}", "",
             f"  {'run':<34}{'steps':>9}{'samples':>12}{'passes':>8}{'GiB/GPU':>9}{'fits':>6}"
             f"{'GPU-hours' if gpu else 'CPU time':>12}"]
    lines += [_row_text(r, s, gpu) for r, s in zip(rows, seconds)]
    known = [s for s in seconds if s is not None]
    total = sum(known)
    missing = len(seconds) - len(known)
    lines.append("")
    bound = {r["arm"]: tokens_per_sample(r["plan"])[1] for r in rows if r["plan"] is not None}
    if gpu:
        gpus = L.nodes * L.gpus_per_node
        lines.append(f"total training: {total / 3600:,.1f} GPU-hours ({total / 3600 / gpus:,.1f} h on {gpus} GPUs, one "
                     f"run after another), at {MFU:.0%} of "
                     f"{GPU_PEAK_TFLOPS:g} TFLOP/s bf16 per GPU; evaluation not included")
    else:
        lines.append(f"total training: about {_hms(total)} of this machine's time (from a calibration of the demo's "
                     "base stage; evaluation not included)")
    for arm, how in bound.items():
        if how == "upper bound":
            lines.append(f"  arm {arm}: tokens per sample unknown (no shards): the longest sequence was assumed, "
                         "an upper bound")
    if missing:
        lines.append(f"  {missing} run(s) have no estimate (see their notes)")
    for note in dict.fromkeys(arm_notes.values()):
        arms = ", ".join(a for a, n in arm_notes.items() if n == note)
        lines.append(f"  arm {arms}: {note}")
    notes = {n for r in rows if r["plan"] for n in r["plan"]["notes"] + r["plan"]["problems"]}
    if notes:
        lines += ["", "notes from the trainer's plan:"] + [f"  - {n}" for n in sorted(notes)]
    lines.append(f"\n(planned in {time.perf_counter() - t0:.1f} s)")
    out.write("\n".join(lines) + "\n")
    out.flush()
    return {"runs": rows, "arm_notes": arm_notes, "seconds": seconds, "total_seconds": total, "gpu": gpu}


# --- command line --------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    s = sub.add_parser("study", help="train and evaluate every arm x budget x seed of a study spec, then report")
    s.add_argument("spec", help="studies/NAME.yaml")
    s.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                   help="print the run list and its cost; load no weights, run nothing")


def main(args: argparse.Namespace) -> int:
    study = load_study(args.spec)
    if args.dry_run:
        dry_run(study)
        return 0
    return run_study(study)
