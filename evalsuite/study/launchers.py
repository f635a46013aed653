"""How a study's commands run: one after another on this machine, or as submitit jobs.

A study (`evalsuite.study.run.run_study`) builds a launcher with the evaluation flags and hands it its
`RunJob`s, each a run's directory, its `train/lora.py` arguments (None when it is trained already) and
the evaluation tasks it still needs, and a callback `event(name, status)` that records `trained`,
`done` or `failed` in `study.json`. A failure raises `LaunchError` after its `failed` event.
An evaluation is `python -m evalsuite TASK RUN_DIR... <eval flags>` per task.

- `LocalLauncher`: each command in turn as a subprocess, stopping at the first failure: every training
  run (`python train/lora.py ...`, or `accelerate launch --config_file C train/lora.py ...` when the
  spec names an accelerate config), then one evaluation per task over all the trained checkpoints (one
  model-loading process per task instead of one per run). The evaluation takes as many processes as
  the accelerate config's `num_processes` (`accelerate launch --multi_gpu`, on CPU when the config says
  `use_cpu`; the ranks split the items and merge to the single process's files), else one.
- `SubmititLauncher`: one submitit job per training run and one per evaluation, each command an
  `accelerate launch` over the job's nodes and GPUs (`AccelerateJob`). On Slurm
  (`submitit.AutoExecutor(cluster="slurm")`) every job is submitted at once, each evaluation depending
  on its training job (`--dependency afterok:ID`, cancelled when that job fails), then the study waits
  for every one of them, records each, and raises one `LaunchError` naming every failed run. Each job
  asks `cpus_per_gpu` CPUs per GPU (and `mem_gb` when the spec sets it), rendezvouses on a port of its
  own, and is requeued when preempted or timed out (`AccelerateJob.checkpoint`; `max_timeouts` times
  for time-outs). With submitit's `LocalExecutor` (the same code path on one machine) the training
  job's result is awaited before its evaluation is submitted, one run goes at a time, and the first
  failure stops the study. Job scripts and logs: `<output_dir>/submitit/`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import yaml

from data_recipes.files import REPO_ROOT as REPO

LORA = str(REPO / "train" / "lora.py")
SAVE_REQUEST = ".save_now"
"""train.lora.SAVE_REQUEST (not imported: the launcher does not load the trainer's modules)."""
SAVE_WAIT_S = 60
"""How long a job warned of its time limit waits for its trainer's state before it is requeued."""
PORTS = (20000, 10000)
"""A job's rendezvous port: first of PORTS plus its Slurm job id modulo the second (below Linux's ephemeral
ports). Accelerate's fixed default, 29500, fails the second of two jobs whose processes share a node."""


def newest_state(run_dir: Path) -> int:
    """Step of a run's newest complete state (`train.checkpointing.valid_states`), -1: none."""
    from train.checkpointing import valid_states

    states = valid_states(run_dir)
    return int(states[-1].name.removeprefix("step-")) if states else -1


def job_port(job_id: str) -> int:
    """The rendezvous port of the job `job_id` ("123", or "123_4" in an array: its digits)."""
    digits = re.sub(r"\D", "", str(job_id))
    return PORTS[0] + int(digits or 0) % PORTS[1]

Event = Callable[[str, str], None]


class LaunchError(RuntimeError):
    """A training or evaluation command failed; the message names the run and where its log is."""


@dataclass
class RunJob:
    run_dir: str
    train: list[str] | None
    """train/lora.py arguments; None: the run is trained already."""
    tasks: list[str] = field(default_factory=list)
    """Evaluation tasks still to run on it."""

    @property
    def name(self) -> str:
        return Path(self.run_dir).name


def eval_commands(jobs: list[RunJob], flags: list[str]) -> list[list[str]]:
    """`python -m evalsuite` arguments evaluating `jobs`: per task, every job that needs it."""
    tasks = list(dict.fromkeys(t for j in jobs for t in j.tasks))
    return [[task, *(j.run_dir for j in jobs if task in j.tasks), *flags] for task in tasks]


def _accelerate() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def _config_file(config: str | None) -> str | None:
    """An accelerate config named by a spec: the repository's file when the name is one, else as given."""
    return str(REPO / config) if config and (REPO / config).is_file() else config


def read_accelerate_config(path: str | os.PathLike) -> dict:
    """An accelerate config file as a mapping (a LaunchError naming the file when it is not one)."""
    try:
        conf = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LaunchError(f"accelerate config {path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(conf, dict):
        raise LaunchError(f"accelerate config {path}: expected a mapping, got {type(conf).__name__}")
    return conf


# --- one after another, here ---------------------------------------------------------------------------
class LocalLauncher:
    def __init__(self, eval_flags: list[str], env: dict, cwd: Path, accelerate_config: str | None = None):
        self.eval_flags, self.env, self.cwd, self.accelerate_config = eval_flags, env, cwd, accelerate_config

    def _config_path(self) -> Path:
        return Path(_config_file(self.accelerate_config))

    @cached_property
    def _conf(self) -> dict:
        """The accelerate config, read once for every evaluation of the study ({} without one)."""
        return read_accelerate_config(self._config_path()) if self.accelerate_config else {}

    def train_argv(self, args: list[str]) -> list[str]:
        if self.accelerate_config:
            return [_accelerate(), "launch", "--config_file", str(self._config_path()), LORA, *args]
        return [sys.executable, LORA, *args]

    def eval_call(self, args: list[str]) -> tuple[list[str], dict]:
        """(argv, extra environment) of one evaluation command: over the accelerate config's processes on
        this machine (its DeepSpeed settings are the trainer's, not the evaluation's), else one process."""
        conf = self._conf
        try:  # accelerate's num_processes counts every machine's; this launcher runs on one
            procs = int(conf.get("num_processes") or 1) // max(1, int(conf.get("num_machines") or 1))
        except (TypeError, ValueError):
            raise LaunchError(f"accelerate config {self._config_path()}: num_processes and num_machines must be "
                              f"integers, got {conf.get('num_processes')!r} and {conf.get('num_machines')!r}") from None
        if procs <= 1:
            return [sys.executable, "-m", "evalsuite", *args], {}
        env = {"ACCELERATE_USE_CPU": "1"} if conf.get("use_cpu") else {}
        return [_accelerate(), "launch", "--multi_gpu", "--num_processes", str(procs), "-m", "evalsuite", *args], env

    def _call(self, jobs: list[RunJob], argv: list[str], event: Event, env: dict | None = None) -> None:
        print(f"[{', '.join(j.name for j in jobs)}] {shlex.join(argv)}", flush=True)
        code = subprocess.run(argv, cwd=self.cwd, env={**os.environ, **self.env, **(env or {})}).returncode
        if code != 0:
            for job in jobs:
                event(job.name, "failed")
            raise LaunchError(f"run {', '.join(j.name for j in jobs)}: exit {code} from {shlex.join(argv)}")

    def run(self, jobs: list[RunJob], event: Event) -> None:
        for job in jobs:
            if job.train is not None:
                self._call([job], self.train_argv(job.train), event)
                event(job.name, "trained")
        for args in eval_commands(jobs, self.eval_flags):
            these = [j for j in jobs if j.run_dir in args]
            try:
                argv, env = self.eval_call(args)
            except LaunchError:
                for job in these:
                    event(job.name, "failed")
                raise
            self._call(these, argv, event, env)
        for job in jobs:
            event(job.name, "done")


# --- submitit ------------------------------------------------------------------------------------------
@dataclass
class AccelerateJob:
    """A submitit job's function: its commands in turn, each an `accelerate launch` over the job's nodes.

    A command is what follows `accelerate launch ...`: `[train/lora.py, args...]` or `[-m, evalsuite, args...]`.
    Under Slurm it runs once per node (one task per node) and reads its node rank and the first node's
    host from `submitit.JobEnvironment`, and its job id, from which its rendezvous port comes (`job_port`).

    When Slurm preempts the job, or its time limit nears, submitit calls `checkpoint`, and the job is
    requeued with the same commands: the trainer resumes from its newest saved state (the study passes
    `--resume latest`; `checkpoint` first asks it for one) and the evaluation from its finished rows."""
    commands: list[list[str]]
    gpus_per_node: int
    env: dict
    cwd: str
    accelerate_config: str | None = None
    deepspeed: bool = False
    """Whether the accelerate config runs DeepSpeed (read when the job is submitted)."""
    run_dirs: tuple[str, ...] = ()
    """The run directories its training commands write (asked for a state by `checkpoint`)."""

    def argv(self, command: list[str], nodes: int, node: int, main_host: str, port: int) -> list[str]:
        processes = max(1, self.gpus_per_node) * nodes
        argv = [_accelerate(), "launch"]
        if self.accelerate_config:
            argv += ["--config_file", self.accelerate_config]
        argv += ["--num_processes", str(processes), "--num_machines", str(nodes)]
        if processes > 1:
            argv += ["--main_process_port", str(port)]
        if nodes > 1:
            argv += ["--machine_rank", str(node), "--main_process_ip", main_host]
            if self.deepspeed:
                # accelerate starts each node's processes itself; without this a config written for one node
                # makes it call pdsh with no hostfile, and DeepSpeed then trains every node on its own
                argv += ["--deepspeed_multinode_launcher", "standard"]
        if processes > 1 and not self.accelerate_config:
            argv.append("--multi_gpu")
        return argv + command

    def __call__(self) -> None:
        import submitit

        je = submitit.JobEnvironment()
        for command in self.commands:
            argv = self.argv(command, je.num_nodes, je.node, je.hostnames[0] if je.num_nodes > 1 else "",
                             job_port(je.job_id))
            print(shlex.join(argv), flush=True)
            subprocess.run(argv, cwd=self.cwd, env={**os.environ, **self.env}, check=True)

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption or time-out (Slurm's USR2, `signal_delay_s` = 90 s before the limit):
        ask each unfinished training run for a state now (`train.lora.SAVE_REQUEST`), wait up to
        `SAVE_WAIT_S` for it, then requeue this job as it is (its commands resume from that state)."""
        import submitit

        asked = {}
        for run_dir in (Path(self.cwd) / d for d in self.run_dirs):
            if run_dir.is_dir() and not (run_dir / "run.json").exists():
                (run_dir / SAVE_REQUEST).touch()
                asked[run_dir] = newest_state(run_dir)
        deadline = time.monotonic() + SAVE_WAIT_S
        while asked and time.monotonic() < deadline:
            asked = {d: before for d, before in asked.items()
                     if (d / SAVE_REQUEST).exists() and newest_state(d) == before}
            time.sleep(0.5)
        for run_dir in asked:
            print(f"{run_dir}: no state saved within {SAVE_WAIT_S} s of the request; the requeued job resumes "
                  f"from the last one", file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class SubmititLauncher:
    def __init__(self, spec, folder: Path, eval_flags: list[str], env: dict, cwd: Path):
        """`spec`: the study's `LauncherSpec` (type submitit_local or slurm, nodes, gpus, partition, time)."""
        self.spec, self.folder, self.eval_flags, self.env, self.cwd = spec, Path(folder), eval_flags, env, str(cwd)

    def _config(self) -> str | None:
        return _config_file(self.spec.accelerate_config)

    @cached_property
    def _deepspeed(self) -> bool:
        """Whether the training runs' accelerate config runs DeepSpeed (read once, at the first submission)."""
        config = self._config()
        return bool(config) and read_accelerate_config(config).get("distributed_type") == "DEEPSPEED"

    def _executor(self, name: str, nodes: int, dependency: str | None = None):
        import submitit

        s = self.spec
        if s.type == "submitit_local":
            ex = submitit.LocalExecutor(folder=self.folder)
            ex.update_parameters(timeout_min=s.time_min, gpus_per_node=s.gpus_per_node, tasks_per_node=1)
            return ex
        ex = submitit.AutoExecutor(folder=self.folder, cluster="slurm", slurm_max_num_timeout=s.max_timeouts)
        # an evaluation whose training failed is cancelled by Slurm, not left pending for ever
        extra = {"dependency": f"afterok:{dependency}", "kill-on-invalid-dep": "yes"} if dependency else {}
        ex.update_parameters(name=name, nodes=nodes, gpus_per_node=s.gpus_per_node, tasks_per_node=1,
                             cpus_per_task=s.cpus_per_gpu * max(1, s.gpus_per_node),
                             **({"mem_gb": s.mem_gb} if s.mem_gb else {}),
                             timeout_min=s.time_min, slurm_partition=s.partition,
                             slurm_additional_parameters=extra)
        return ex

    def _submit(self, job: RunJob, kind: str, dependency: str | None = None):
        if kind == "train":
            fn = AccelerateJob([[LORA, *job.train]], self.spec.gpus_per_node, self.env, self.cwd, self._config(),
                               self._deepspeed, run_dirs=(job.run_dir,))
            nodes = self.spec.nodes
        else:
            fn = AccelerateJob([["-m", "evalsuite", *a] for a in eval_commands([job], self.eval_flags)],
                               self.spec.gpus_per_node, self.env, self.cwd)
            nodes = 1
        return self._executor(f"{job.name}-{kind}", nodes, dependency).submit(fn)

    @staticmethod
    def _wait(job: RunJob, handle, event: Event, status: str) -> str | None:
        """Wait for a job; record `status` and return None, or record `failed` and return why."""
        try:
            handle.result()
        except Exception as e:  # submitit's FailedJobError / UncompletedJobError: the job's own log says why
            event(job.name, "failed")
            return f"run {job.name}: job {handle.job_id} failed ({type(e).__name__}); log: {handle.paths.stderr}"
        event(job.name, status)
        return None

    def run(self, jobs: list[RunJob], event: Event) -> None:
        if self.spec.type == "submitit_local":
            for job in jobs:  # one machine: one run at a time, the evaluation after its training
                if job.train is not None and (error := self._wait(job, self._submit(job, "train"), event, "trained")):
                    raise LaunchError(error)
                if error := self._wait(job, self._submit(job, "eval"), event, "done"):
                    raise LaunchError(error)
            return
        submitted = []
        for job in jobs:
            train = self._submit(job, "train") if job.train is not None else None
            submitted.append((job, train, self._submit(job, "eval", train.job_id if train else None)))
        # Every run is waited for and recorded, whatever the others did: the jobs run on whether or not this
        # process waits, and a study that stopped at the first failure would leave the rest unrecorded.
        errors = []
        for job, train, evaluation in submitted:
            error = self._wait(job, train, event, "trained") if train is not None else None
            if error:
                with contextlib.suppress(Exception):  # Slurm cancels it too (kill-on-invalid-dep)
                    evaluation.cancel(check=False)
            else:
                error = self._wait(job, evaluation, event, "done")
            if error:
                errors.append(error)
        if errors:
            raise LaunchError(f"{len(errors)} of {len(submitted)} runs failed:\n  " + "\n  ".join(errors))
