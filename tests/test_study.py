"""`python -m evalsuite study`: the spec, the run list, --dry_run, the trainer's --budget, the launchers,
and micro studies that are killed mid-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from evalsuite.study.launchers import (AccelerateJob, LaunchError, LocalLauncher, RunJob, SubmititLauncher, eval_commands,
                                       job_port)
from evalsuite.study.run import (LauncherSpec, StudyError, load_study, parse_study, run_list, split_tasks,
                                 run_study, status_on_disk, train_args)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
           TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"), PYTHONPATH=str(REPO))
MICRO_EVAL = ["--limit", "2", "--iraven_limit", "1", "--frames", "3", "--infill_tokens", "3", "--answer_tokens", "3",
              "--n_boot", "100", "--no_progress", "--infills", "oracle"]
RUN_KEYS = {"arm", "recipe", "budget", "unit", "seed", "run_dir", "status"}


def write_recipes(d: Path) -> None:
    """Small generated recipes on the random-init tiny llava (3-frame clips: 48 visual tokens, images 16)."""
    common = {"image_size": 64, "seed": 0, "split": "train", "shard_size": 16}
    train = {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False, "num_workers": 1, "save_steps": 1, "ds_config": "none",
             "learning_rate": 1e-3, "warmup_steps": 1, "system_metrics": False, "max_samples": 10_000}
    (d / "vid.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                "samples": 64, "frames": 3, **common, "train": train}))
    (d / "img.yaml").write_text(yaml.safe_dump({"kind": "image", "sources": [{"type": "synthetic_image"}],
                                                "samples": 200, **common, "train": train}))


def spec_data(d: Path, **over) -> dict:
    data = {"name": "micro", "arms": [{"name": "image", "recipe": "img.yaml"}, {"name": "video", "recipe": "vid.yaml"}],
            "budgets": [384, 768], "unit": "visual_tokens", "seeds": [0, 1], "base_model": "tiny:llava",
            "eval": MICRO_EVAL, "launcher": "local", "tracking_uri": f"sqlite:///{d / 'mlruns' / 'mlflow.db'}",
            "output_dir": str(d / "out"), "shards_root": str(d / "shards")}
    return {**data, **over}


def write_spec(d: Path, name: str = "micro.yaml", **over) -> Path:
    write_recipes(d)
    path = d / name
    path.write_text(yaml.safe_dump(spec_data(d, **over)))
    return path


# --- the spec ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"budgts": [1]}, ["unknown key 'budgts'", "did you mean 'budgets'"]),
    ({"unit": "visual_token"}, ["field 'unit'", "did you mean 'visual_tokens'"]),
    ({"unit": "frames"}, ["field 'unit' must be one of samples, visual_tokens"]),
    ({"arms": [{"name": "video", "recipe": "video_dmo"}]}, ["arms[0]: recipe", "unknown recipe 'video_dmo'",
                                                           "did you mean 'video_demo'"]),
    ({"arms": [{"name": "video", "recipe": "vid.yaml", "recipie": "x"}]}, ["arms[0]", "unknown key 'recipie'"]),
    ({"arms": [{"name": "video", "recipe": "vid.yaml", "train": {"lora_rr": 4}}]}, ["arms[0]: train",
                                                                                    "did you mean 'lora_r'"]),
    ({"arms": [{"name": "video", "recipe": "vid.yaml", "train": {"seed": 4}}]}, ["'seed' is set by the study"]),
    ({"arms": [{"name": "v", "recipe": "vid.yaml", "family": "qwen2_vl"}], "base_model": "/m/7b"},
     ["family qwen2_vl picks a tiny model"]),
    ({"budgets": [384, -1]}, ["budgets[1] must be a positive whole number"]),
    ({"seeds": [0, 0]}, ["field 'seeds' has duplicates"]),
    ({"eval": ["--limt", "3"]}, ["field 'eval'", "--limt"]),
    # settings argparse takes but the evaluation refuses: refused at load, not after every run has trained
    ({"eval": {"infills": "oracle_noisy:1.5"}}, ["field 'eval': --infills oracle_noisy:1.5", "a number from 0 to 1"]),
    ({"eval": ["--frames", "5", "5"]}, ["field 'eval': --frames 5 5: give each F once"]),
    ({"eval": ["--limit", "0"]}, ["field 'eval': --limit must be >= 1"]),
    ({"eval": ["--protocol", "paper"]}, ["field 'eval': --protocol paper needs --judge DIR"]),
    ({"eval": ["--tasks", "vcott"]}, ["field 'eval': --tasks vcott: no such task", "did you mean 'vcot'"]),
    ({"arms": [{"name": "video", "recipe": "vid.yaml", "train": {"max_steps": 3}}]},
     ["arms[0]: train: 'max_steps' would stop the arm's runs short of the study's budget"]),
    ({"launcher": {"type": "slurmm"}}, ["launcher", "did you mean 'slurm'"]),
    ({"launcher": {"type": "slurm", "gpu_per_node": 8}}, ["launcher: unknown key 'gpu_per_node'",
                                                         "did you mean 'gpus_per_node'"]),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, change, words):
    path = write_spec(tmp_path, "bad.yaml", **change)
    with pytest.raises(StudyError) as e:
        load_study(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_the_cli_reports_a_bad_spec_without_a_traceback(tmp_path):
    path = write_spec(tmp_path, "bad.yaml", unit="tokens")
    p = subprocess.run([PY, "-m", "evalsuite", "study", str(path), "--dry_run"], capture_output=True, text=True,
                       env=ENV, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith(f"error: {path}: field 'unit'") and "Traceback" not in p.stderr


def test_eval_flags_with_equals_are_read_as_argparse_reads_them(tmp_path):
    """`--tasks=vcot` is one word in the spec: split as argparse splits it, so the study evaluates only vcot
    (before, it expected every task and each task's command refused the flag)."""
    from evalsuite.study.run import split_tasks

    study = load_study(write_spec(tmp_path, "eq.yaml", eval=["--tasks=vcot", "--limit=10"]))
    assert split_tasks(study.eval) == (["vcot"], ["--limit", "10"])


def test_eval_flags_as_a_mapping_and_the_tasks_taken_out(tmp_path):
    write_recipes(tmp_path)
    study = parse_study(spec_data(tmp_path, eval={"limit": 2, "tasks": ["vcot", "iraven"], "no_progress": True}),
                        tmp_path / "m.yaml")
    assert study.eval == ("--limit", "2", "--tasks", "vcot", "iraven", "--no_progress")
    assert split_tasks(study.eval) == (["vcot", "iraven"], ["--limit", "2", "--no_progress"])
    assert split_tasks(("--limit", "2"))[0] == ["vcot", "shuffle", "iraven"]


# --- the run list --------------------------------------------------------------------------------------
def test_run_list_is_arms_x_budgets_x_seeds_each_with_its_own_budget(tmp_path):
    from train.config import resolve

    study = load_study(write_spec(tmp_path, seeds=[0, 1, 2]))
    runs = run_list(study)
    assert len(runs) == 2 * 2 * 3 and all(set(r) == RUN_KEYS for r in runs)
    assert [Path(r["run_dir"]).name for r in runs[:4]] == ["image-b384-s0", "image-b384-s1", "image-b384-s2",
                                                           "image-b768-s0"]
    assert {(r["arm"], r["recipe"]) for r in runs} == {("image", "img"), ("video", "vid")}
    assert all(Path(r["run_dir"]).parent == tmp_path / "out" / "runs" for r in runs)
    run = runs[4]  # image-b768-s1
    cfg = resolve(train_args(study, run))  # the trainer's own parser takes them
    assert (cfg.budget, cfg.budget_unit, cfg.seed, cfg.match_to) == (768, "visual_tokens", 1, "")
    assert cfg.run_dir == Path(run["run_dir"]) and cfg.resume == "latest" and cfg.experiment == "micro"
    assert status_on_disk(study, run, True) == "pending"
    jobs = [RunJob(r["run_dir"], None, ["vcot", "iraven"]) for r in runs[:2]]
    assert eval_commands(jobs, ["--limit", "2"]) == [["vcot", runs[0]["run_dir"], runs[1]["run_dir"], "--limit", "2"],
                                                     ["iraven", runs[0]["run_dir"], runs[1]["run_dir"], "--limit", "2"]]


def test_a_rerun_with_other_eval_flags_interrupted_before_evaluating_does_not_keep_the_old_results(tmp_path):
    """study.json records each run's evaluation flags when its evaluation ends: a run evaluated with `--limit 2`
    is done under that spec; under `--limit 3` it is `trained` (to be evaluated again), and still is after an
    interrupted rerun has written the new flags into study.json."""
    from evalsuite.study.run import StudyState

    old = load_study(write_spec(tmp_path, seeds=[0], budgets=[384], eval=["--tasks", "vcot", "--limit", "2"]))
    run = run_list(old)[0]
    run_dir = Path(run["run_dir"])
    (run_dir / "eval" / "vcot").mkdir(parents=True)
    (run_dir / "eval" / "vcot" / "metrics.json").write_text("{}")
    (run_dir / "run.json").write_text(json.dumps({"budget": {"target": run["budget"], "unit": run["unit"]},
                                                  "config": {"seed": run["seed"]}}))
    state = StudyState(old)
    assert state.runs[0]["status"] == "trained"  # nothing says with which flags it was evaluated
    state.set(run_dir.name, "done")
    assert StudyState(old).runs[0]["status"] == "done"
    new = load_study(write_spec(tmp_path, seeds=[0], budgets=[384], eval=["--tasks", "vcot", "--limit", "3"]))
    StudyState(new).write()  # a rerun starts, writes its flags, and is killed before evaluating
    assert StudyState(new).runs[0]["status"] == "trained"
    assert StudyState(old).runs[0]["status"] == "trained"  # the record now holds neither run's flags as done


def test_a_rerun_against_another_tracking_store_gets_a_new_parent_run(tmp_path, capsys):
    """study.json records the parent run's id and its store. Rerun with another tracking_uri (the spec reads
    $MLFLOW_TRACKING_URI), the old id names a run that store lacks: the study makes a new parent there instead
    of failing on it."""
    from evalsuite.study.run import StudyState, parent_run

    a = load_study(write_spec(tmp_path, seeds=[0], budgets=[384], tracking_uri=f"sqlite:///{tmp_path / 'a.db'}"))
    state = StudyState(a)
    state.parent_run_id = parent_run(a, None)
    state.write()
    assert StudyState(a).parent_run_id == state.parent_run_id  # the same store: the same parent
    b = load_study(write_spec(tmp_path, seeds=[0], budgets=[384], tracking_uri=f"sqlite:///{tmp_path / 'b.db'}"))
    again = StudyState(b)
    assert again.parent_run_id is None and f"tracking_uri is now sqlite:///{tmp_path / 'b.db'}" in capsys.readouterr().out
    assert parent_run(b, again.parent_run_id) != state.parent_run_id


def test_a_failed_run_still_leaves_the_study_report(tmp_path):
    """A run that fails stops the study with exit 1 and its status recorded, but the report is written all the
    same, listing it as missing (a run failing every time used to keep the study without a report)."""
    from evalsuite.study.run import run_study

    study = load_study(write_spec(tmp_path, seeds=[0], budgets=[384]))

    class Failing:
        def run(self, jobs, event):
            event(Path(jobs[0].run_dir).name, "failed")
            raise LaunchError(f"run {Path(jobs[0].run_dir).name}: its job failed")

    assert run_study(study, launcher=lambda parent: Failing()) == 1
    assert json.loads((study.out / "study.json").read_text())["runs"][0]["status"] == "failed"
    report = (study.out / "report.md").read_text()
    assert "**Missing: 2 of 2 runs**" in report and "| failed |" in report, report[:1500]


def test_shipped_specs_load():
    specs = {p.stem: load_study(p) for p in sorted((REPO / "studies").glob("*.yaml"))}
    assert set(specs) == {"scale_demo", "seeds_demo", "long_demo", "architecture_demo", "paper_7b"}
    scale = specs["scale_demo"]
    assert len(run_list(scale)) == 27 and scale.unit == "visual_tokens" and scale.budgets == (50_000, 100_000, 200_000)
    assert [load_recipe_name(a.recipe) for a in scale.arms] == ["image_demo", "video_demo", "video_shuffled_demo"]
    seeds = specs["seeds_demo"]  # the demo's runs at the demo's budget: the video run's 10,000 clips
    assert len(run_list(seeds)) == 9 and seeds.budgets == (800_000,) and seeds.seeds == (0, 1, 2)
    assert [a.recipe for a in seeds.arms] == [a.recipe for a in scale.arms] and seeds.eval == scale.eval
    long = specs["long_demo"]  # the same runs at 2.5 x the demo's budget: 25,000 clips
    assert len(run_list(long)) == 9 and long.budgets == (2_000_000,) and long.seeds == (0, 1, 2)
    assert [a.recipe for a in long.arms] == [a.recipe for a in scale.arms] and long.eval == scale.eval
    assert long.launcher == seeds.launcher and long.base_model == seeds.base_model
    arch = specs["architecture_demo"]
    qwen = train_args(arch, run_list(arch)[-1])
    assert qwen[qwen.index("--base_model") + 1] == "tiny-pretrained:qwen2_vl"
    assert qwen[qwen.index("--video_input") + 1] == "native"
    paper = specs["paper_7b"]
    assert paper.budgets == (25_000, 50_000, 100_000) and paper.unit == "samples" and len(run_list(paper)) == 18
    assert (paper.launcher.type, paper.launcher.gpus_per_node) == ("slurm", 8)
    # LLaVA-NeXT-Video's 8 frames as AnyRes images (8 x 1,176+ tokens) do not fit its 8,192-token context: the
    # video arm goes through the model's video path (8 x 144), the image arm keeps the default
    args = {a.name: train_args(paper, next(r for r in run_list(paper) if r["arm"] == a.name)) for a in paper.arms}
    assert args["video"][args["video"].index("--video_input") + 1] == "native" and "--video_input" not in args["image"]


def test_a_slurm_study_needs_a_tracking_server_its_nodes_reach(tmp_path, monkeypatch):
    """Under Slurm the jobs run on compute nodes, where 127.0.0.1 is each node's own loopback: such a URI is
    refused when the spec loads. A $VARIABLE in tracking_uri is expanded (the shipped paper spec names
    $MLFLOW_TRACKING_URI), and a study run without it set stops before anything runs, naming it."""
    for uri in ("http://127.0.0.1:5000", "http://localhost:5000"):
        with pytest.raises(StudyError, match="loopback address .* name the MLflow server by a host name"):
            load_study(write_spec(tmp_path, launcher={"type": "slurm", "gpus_per_node": 8}, tracking_uri=uri))
    assert load_study(write_spec(tmp_path, tracking_uri="http://127.0.0.1:5000")).launcher.type == "local"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.cluster:5000")
    assert load_study(REPO / "studies" / "paper_7b.yaml").tracking_uri == "http://mlflow.cluster:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    paper = load_study(REPO / "studies" / "paper_7b.yaml")
    with pytest.raises(StudyError, match=r"needs the environment variable \$MLFLOW_TRACKING_URI, which is not set"):
        run_study(paper, launcher=lambda parent: pytest.fail("nothing may be launched"))


def load_recipe_name(ref: str) -> str:
    from data_recipes.recipe import load_recipe

    return load_recipe(ref).name


# --- the trainer's --budget ---------------------------------------------------------------------------
def test_trainer_budget_settings():
    from train.budget import resolve_budget
    from train.config import ConfigError, resolve

    cfg = resolve(["--recipe", "r", "--budget", "5000", "--budget_unit", "samples"])
    assert (resolve_budget(cfg, "").unit, resolve_budget(cfg, "").target) == ("samples", 5000)
    cfg = resolve(["--recipe", "r", "--budget", "800", "--max_samples", "10"])  # the budget wins over max_samples
    assert (resolve_budget(cfg, "").unit, resolve_budget(cfg, "").target) == ("visual_tokens", 800)
    for argv, msg in ((["--budget", "8", "--match_to", "ckpt/x"], "not both"),
                      (["--budget", "8", "--budget_unit", "frames"], "budget_unit must be one of"),
                      (["--budget", "-3"], "budget must be >= 0")):
        with pytest.raises(ConfigError, match=msg):
            resolve(["--recipe", "r", *argv])


# --- dry run -------------------------------------------------------------------------------------------
def test_paper_7b_dry_run_plans_from_configs_only(tmp_path):
    from fixtures_7b import write_config_dir

    model = write_config_dir("llava_next_video", tmp_path / "models" / "llava-hf" / "LLaVA-NeXT-Video-7B-hf")
    t0 = time.perf_counter()
    p = subprocess.run([PY, "-m", "evalsuite", "study", str(REPO / "studies" / "paper_7b.yaml"), "--dry_run"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**ENV, "MODEL_ROOT": str(tmp_path / "models")})
    took = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert took < 60
    rows = [line.split() for line in p.stdout.splitlines() if line.startswith(("  image-b", "  video-b"))]
    assert len(rows) == 18
    steps = {r[0]: int(r[1].replace(",", "")) for r in rows}
    assert steps["video-b100000-s2"] == 782 and steps["image-b25000-s0"] == 196  # ceil(B / (4 x 4 x 8 GPUs))
    assert all(r[5] == "yes" for r in rows)  # fits in 80 GB under ZeRO-2
    assert "GPU-hours" in p.stdout and "total training:" in p.stdout
    gpu_hours = [float(r[6]) for r in rows]
    assert gpu_hours[2] * 4 == pytest.approx(gpu_hours[6], rel=0.01)  # 4 x the samples: 4 x the cost
    assert not list(model.glob("*.safetensors")) and not (tmp_path / "studies_out").exists()


# --- launchers -----------------------------------------------------------------------------------------
def test_accelerate_job_spans_the_nodes():
    job = AccelerateJob([["train/lora.py", "--seed", "1"]], gpus_per_node=8, env={}, cwd=".",
                        accelerate_config="gpu.yaml")
    argv = job.argv(job.commands[0], nodes=2, node=1, main_host="node-a", port=21234)
    assert argv[1:] == ["launch", "--config_file", "gpu.yaml", "--num_processes", "16", "--num_machines", "2",
                        "--main_process_port", "21234", "--machine_rank", "1", "--main_process_ip", "node-a",
                        "train/lora.py", "--seed", "1"]
    cpu = AccelerateJob([["-m", "evalsuite", "vcot", "r"]], gpus_per_node=0, env={}, cwd=".")
    assert cpu.argv(cpu.commands[0], 1, 0, "", 21234)[2:] == ["--num_processes", "1", "--num_machines", "1", "-m",
                                                             "evalsuite", "vcot", "r"]


@pytest.mark.parametrize("config", ["gpu_1node_8gpu_zero2.yaml", "gpu_2node_8gpu_zero2.yaml"])
def test_a_deepspeed_job_over_two_nodes_runs_one_training(monkeypatch, config):
    """Whatever the DeepSpeed config was written for, the job's command, as accelerate itself resolves it with
    the config, starts 8 processes on each of 2 nodes that form one group of 16 (accelerate's `standard`
    launcher): a config for one node used to leave accelerate calling pdsh with no hostfile, and DeepSpeed
    then ran a separate training on every node into the same directory."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    spec = LauncherSpec(type="slurm", nodes=2, gpus_per_node=8, accelerate_config=f"ds_configs/accelerate/{config}")
    submitted = []
    launcher = SubmititLauncher(spec, REPO / "unused", eval_flags=[], env={}, cwd=REPO)
    monkeypatch.setattr(launcher, "_executor", lambda name, nodes, dependency=None: SimpleNamespace(
        submit=lambda fn: submitted.append((fn, nodes)) or SimpleNamespace(job_id="1")))
    launcher._submit(RunJob(run_dir="studies_out/r", train=["--recipe", "video_demo"]), "train")
    (fn, nodes), = submitted
    assert nodes == 2 and fn.deepspeed
    argv = fn.argv(fn.commands[0], nodes, node=1, main_host="node-a", port=job_port("4242"))
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip) == (16, 2, 1, "node-a")
    assert args.main_process_port == 24242


def test_jobs_sharing_a_node_rendezvous_on_their_own_ports(monkeypatch):
    """Two 4-GPU jobs on one 8-GPU node each get a port of their own from their job id, as accelerate
    resolves their commands with the 8-GPU config; with accelerate's default both would take 29500 and
    the second would fail to start."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    ports = []
    for job_id in ("731004", "731005_3"):
        job = AccelerateJob([["train/lora.py"]], gpus_per_node=4, env={}, cwd=".",
                            accelerate_config=str(REPO / "ds_configs/accelerate/gpu_1node_8gpu_zero2.yaml"))
        monkeypatch.setattr("submitit.JobEnvironment", lambda: SimpleNamespace(
            job_id=job_id, num_nodes=1, node=0, hostnames=["node-a"]))
        calls = []
        monkeypatch.setattr(subprocess, "run", lambda argv, **k: calls.append(argv))
        job()
        (argv,) = calls
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
        assert (args.num_processes, args.num_machines) == (4, 1)
        ports.append(args.main_process_port)
    assert ports == [job_port("731004"), job_port("7310053")] and ports[0] != ports[1] != 29500
    assert all(20000 <= p < 30000 for p in ports)


@pytest.mark.parametrize("config, procs, on_cpu", [
    ("ds_configs/accelerate/cpu_zero2_2proc.yaml", 2, True),
    ("ds_configs/accelerate/gpu_1node_8gpu_zero2.yaml", 8, False),
    ("ds_configs/accelerate/gpu_2node_8gpu_zero2.yaml", 8, False),  # 16 over 2 machines: 8 on this one
    (None, 1, False),
])
def test_local_evaluations_take_the_accelerate_configs_processes(monkeypatch, config, procs, on_cpu):
    """The local launcher trains under the spec's accelerate config and evaluates over as many processes
    as that config runs on one machine (on CPU when it says use_cpu), one process without a config."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, cwd, env: calls.append((argv, env)) or
                        subprocess.CompletedProcess(argv, 0))
    events = []
    launcher = LocalLauncher(["--limit", "2"], {"X": "1"}, cwd=Path("."), accelerate_config=config)
    launcher.run([RunJob("runs/a", ["--seed", "0"], ["vcot"]), RunJob("runs/b", None, ["vcot"])],
                 lambda name, status: events.append((name, status)))
    (train, train_env), (evaluate, eval_env) = calls
    lora = [str(REPO / "train" / "lora.py"), "--seed", "0"]
    if config:
        assert Path(train[0]).name == "accelerate" and train[1:3] == ["launch", "--config_file"]
        assert Path(train[3]) == REPO / config and train[4:] == lora
    else:
        assert train == [sys.executable, *lora]
    tail = ["-m", "evalsuite", "vcot", "runs/a", "runs/b", "--limit", "2"]
    if procs > 1:
        assert Path(evaluate[0]).name == "accelerate"
        assert evaluate[1:] == ["launch", "--multi_gpu", "--num_processes", str(procs), *tail]
    else:
        assert evaluate == [sys.executable, *tail]
    assert (eval_env.get("ACCELERATE_USE_CPU") == "1") == on_cpu and eval_env["X"] == "1"
    assert events == [("a", "trained"), ("a", "done"), ("b", "done")]


def test_a_bad_accelerate_config_fails_the_evaluation_with_its_name(tmp_path, monkeypatch):
    bad = tmp_path / "acc.yaml"
    bad.write_text("num_processes: two\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    events = []
    with pytest.raises(LaunchError, match=r"acc\.yaml: num_processes and num_machines must be integers, got 'two'"):
        LocalLauncher([], {}, cwd=tmp_path, accelerate_config=str(bad)).run(
            [RunJob("runs/a", None, ["vcot"])], lambda name, status: events.append((name, status)))
    assert events == [("a", "failed")]


def test_slurm_evaluations_depend_on_their_training_job(tmp_path, monkeypatch):
    """Slurm through submitit's AutoExecutor (its own parameter checks), with the sbatch call replaced."""
    import submitit

    submitted = []

    class FakeJob:
        def __init__(self, n):
            self.job_id = str(1000 + n)

        def result(self):
            return None

    def fake_submit(self, fn):
        submitted.append((dict(self._executor.parameters), fn))
        return FakeJob(len(submitted))

    monkeypatch.setattr(submitit.AutoExecutor, "submit", fake_submit)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    study = load_study(write_spec(tmp_path, launcher={"type": "slurm", "nodes": 2, "gpus_per_node": 8,
                                                      "partition": "gpu", "time_min": 600}))
    events = []
    launcher = SubmititLauncher(study.launcher, tmp_path / "jobs", ["--limit", "2"], {"X": "1"}, tmp_path)
    jobs = [RunJob("/r/a", ["--seed", "0"], ["vcot"]), RunJob("/r/b", None, ["vcot"])]
    launcher.run(jobs, lambda name, status: events.append((name, status)))
    (train_p, train_fn), (eval_p, eval_fn), (eval_b, _) = submitted
    assert train_fn.run_dirs == ("/r/a",) and eval_fn.run_dirs == ()  # what a warned job asks for a state
    assert train_p["nodes"] == 2 and train_p["gpus_per_node"] == 8 and train_p["partition"] == "gpu"
    assert train_p["time"] == 600 and train_fn.commands[0][1:] == ["--seed", "0"]
    assert eval_p["additional_parameters"] == {"dependency": "afterok:1001", "kill-on-invalid-dep": "yes"}
    assert eval_p["nodes"] == 1
    assert eval_fn.commands == [["-m", "evalsuite", "vcot", "/r/a", "--limit", "2"]]
    assert not eval_b.get("additional_parameters")  # b was trained already: its evaluation waits for nothing
    assert events == [("a", "trained"), ("a", "done"), ("b", "done")]


class FakeSlurm:
    """submitit's AutoExecutor for Slurm with the sbatch call replaced: each submission's sbatch script is
    rendered by submitit itself (`_make_sbatch_string`) and kept, and `fail` names the jobs whose result
    raises as a failed Slurm job's does."""

    def __init__(self, monkeypatch, tmp_path, fail=()):
        import submitit
        from submitit.slurm.slurm import _make_sbatch_string

        self.scripts, self.functions, self.cancelled, self.fail = [], [], [], set(fail)
        outer = self

        class Job:
            def __init__(self, n, name):
                self.job_id, self.name = str(1000 + n), name
                self.paths = SimpleNamespace(stderr=tmp_path / f"{self.job_id}_0_log.err")

            def result(self):
                if self.name in outer.fail:
                    raise submitit.core.utils.FailedJobError(f"job {self.job_id} ({self.name}) has failed")

            def cancel(self, check=True):
                outer.cancelled.append(self.name)

        def fake_submit(ex, fn):
            params = dict(ex._executor.parameters)
            self.scripts.append(_make_sbatch_string(command="python -u -m submitit.core._submit x",
                                                    folder=tmp_path, **params))
            self.functions.append(fn)
            return Job(len(self.scripts), params["job_name"])

        monkeypatch.setattr(submitit.AutoExecutor, "submit", fake_submit)
        monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here


def test_slurm_jobs_ask_for_cpus_memory_and_requeues(tmp_path, monkeypatch):
    """The sbatch script of a job on 8 GPUs asks 8 x cpus_per_gpu CPUs for its one task (Slurm's default is
    one CPU for the job: every process and data loader of 8 GPUs on one core), the spec's memory when it
    names one, and the USR2 warning before its time limit on which submitit requeues it."""
    slurm = FakeSlurm(monkeypatch, tmp_path)
    spec = {"type": "slurm", "nodes": 2, "gpus_per_node": 8, "partition": "gpu", "time_min": 600}
    for extra, cpus, mem in [({}, 64, None), ({"cpus_per_gpu": 12, "mem_gb": 900}, 96, "900GB")]:
        study = load_study(write_spec(tmp_path, launcher=spec | extra))
        launcher = SubmititLauncher(study.launcher, tmp_path / "jobs", [], {}, tmp_path)
        launcher.run([RunJob("/r/a", ["--seed", "0"], ["vcot"])], lambda name, status: None)
        train, evaluation = slurm.scripts[-2:]
        for script in (train, evaluation):
            assert f"#SBATCH --cpus-per-task={cpus}\n" in script and "#SBATCH --ntasks-per-node=1\n" in script
            assert "#SBATCH --signal=USR2@90\n" in script and "#SBATCH --gpus-per-node=8\n" in script
            assert (f"#SBATCH --mem={mem}\n" in script) if mem else "--mem" not in script
        assert "#SBATCH --nodes=2\n" in train and "#SBATCH --kill-on-invalid-dep=yes\n" in evaluation
    with pytest.raises(StudyError, match="cpus_per_gpu must be an integer >= 1"):
        load_study(write_spec(tmp_path, launcher=spec | {"cpus_per_gpu": 0}))


def test_a_timed_out_or_preempted_job_is_requeued_with_its_commands(tmp_path, monkeypatch):
    """submitit's own signal handler, as Slurm's USR2 warning before the time limit reaches it: the job is
    checkpointable, so it is requeued with the same commands (the trainer resumes with --resume latest)
    instead of ending as an uncompleted job; after `max_timeouts` time-outs it is not requeued again."""
    import submitit
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import UncompletedJobError

    job = AccelerateJob([["train/lora.py", "--resume", "latest"]], gpus_per_node=8, env={}, cwd=".")
    requeued = []
    env = SimpleNamespace(global_rank=0, _requeue=requeued.append)

    def warn(countdown: int):
        delayed = submitit.helpers.DelayedSubmission(job)
        delayed.set_timeout(600, countdown)
        handler = SignalHandler(env, SimpleNamespace(submitted_pickle=tmp_path / "submitted.pkl"), delayed)
        handler._start_time -= 595 * 60  # 5 minutes before the limit: timed out, not preempted
        handler.checkpoint_and_try_requeue(signal.SIGUSR2)

    with pytest.raises(SystemExit):
        warn(countdown=3)
    assert requeued == [2]
    again = submitit.helpers.DelayedSubmission.load(tmp_path / "submitted.pkl")
    assert again.function == job and again.function.commands == job.commands
    with pytest.raises(UncompletedJobError, match="timed-out too many times"):
        warn(countdown=0)
    assert requeued == [2]


def test_a_warned_job_asks_its_trainer_for_a_state_before_it_is_requeued(tmp_path, monkeypatch, capsys):
    """Warned of its time limit, the job writes the trainer's save request into its unfinished run directory
    and waits for the new state before it is requeued (the resumed job then loses no step); a trainer
    that does not answer in SAVE_WAIT_S leaves the job requeued all the same, and a finished run is not
    asked."""
    import threading

    from evalsuite.study import launchers
    from train.lora import SAVE_REQUEST

    assert launchers.SAVE_REQUEST == SAVE_REQUEST
    run = tmp_path / "runs" / "video-b100-s0"

    def state(step: int) -> None:
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))

    def trainer() -> None:  # answers as train/lora.py does: a state at the step it reached, the request removed
        while not (run / SAVE_REQUEST).exists():
            time.sleep(0.01)
        time.sleep(0.3)
        state(237)
        (run / SAVE_REQUEST).unlink()

    state(200)
    job = AccelerateJob([[launchers.LORA, "--recipe", "video_demo", "--run_name", run.name, "--output_root", "runs",
                          "--resume", "latest"]], gpus_per_node=8, env={}, cwd=str(tmp_path),
                        run_dirs=(str(run.relative_to(tmp_path)),))
    answering = threading.Thread(target=trainer)
    answering.start()
    t0 = time.monotonic()
    delayed = job.checkpoint()
    answering.join()
    assert delayed.function is job and 0.3 <= time.monotonic() - t0 < 5 and launchers.newest_state(run) == 237
    monkeypatch.setattr(launchers, "SAVE_WAIT_S", 1)
    t0 = time.monotonic()
    assert job.checkpoint().function is job and 1 <= time.monotonic() - t0 < 5  # nobody answers
    assert "no state saved within 1 s of the request" in capsys.readouterr().err
    (run / SAVE_REQUEST).unlink()
    (run / "run.json").write_text("{}")
    t0 = time.monotonic()
    job.checkpoint()
    assert time.monotonic() - t0 < 0.5 and not (run / SAVE_REQUEST).exists()


def test_a_failed_slurm_run_leaves_the_others_recorded(tmp_path, monkeypatch):
    """Three runs on Slurm, the first one's training fails: its evaluation is cancelled, the other two are
    still waited for and recorded as done, and one LaunchError names the failed run and its log."""
    slurm = FakeSlurm(monkeypatch, tmp_path, fail={"a-train"})
    study = load_study(write_spec(tmp_path, launcher={"type": "slurm", "gpus_per_node": 8}))
    events = []
    launcher = SubmititLauncher(study.launcher, tmp_path / "jobs", [], {}, tmp_path)
    jobs = [RunJob(f"/r/{n}", ["--seed", "0"], ["vcot"]) for n in "abc"]
    with pytest.raises(LaunchError) as e:
        launcher.run(jobs, lambda name, status: events.append((name, status)))
    assert str(e.value).startswith("1 of 3 runs failed") and "run a: job 1001 failed (FailedJobError)" in str(e.value)
    assert "1001_0_log.err" in str(e.value) and "run b" not in str(e.value)
    assert slurm.cancelled == ["a-eval"]
    assert events == [("a", "failed"), ("b", "trained"), ("b", "done"), ("c", "trained"), ("c", "done")]


# --- micro studies -------------------------------------------------------------------------------------
def start(spec: Path, cwd: Path) -> subprocess.Popen:
    log = open(cwd / f"{spec.stem}.log", "a")
    return subprocess.Popen([PY, "-m", "evalsuite", "study", str(spec)], cwd=cwd, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, spec: Path, cwd: Path, timeout: float = 900) -> None:
    assert proc.wait(timeout=timeout) == 0, (cwd / f"{spec.stem}.log").read_text()[-5000:]


def kill_midway(proc: subprocess.Popen, out: Path, timeout: float = 600) -> dict:
    """SIGKILL the study (its whole process group) once a run is trained and another has a resumable state
    but no run.json yet; returns {run name: MLflow run id of that half-finished run's state}."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the study finished before it could be killed mid-way"
        runs = sorted((out / "runs").glob("*-b*-s*"))
        if any((r / "run.json").is_file() for r in runs):
            half = [r for r in runs if not (r / "run.json").exists()
                    and list(r.glob("checkpoints/step-*/trainer_state.json"))]
            if half:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                states = sorted(half[0].glob("checkpoints/step-*/trainer_state.json"))
                return {half[0].name: json.loads(states[-1].read_text())["mlflow_run_id"]}
        time.sleep(0.02)
    raise AssertionError("no run reached a resumable state in time")


def eval_metrics(out: Path) -> dict:
    return {f"{p.parts[-4]}/{p.parts[-2]}": json.loads(p.read_text())["metrics"]
            for p in sorted((out / "runs").glob("*/eval/*/metrics.json"))}


def check_finished(out: Path, tasks=("vcot", "shuffle", "iraven"), budgets_unit: str = "visual_tokens") -> dict:
    state = json.loads((out / "study.json").read_text())
    assert all(set(r) == RUN_KEYS and r["status"] == "done" for r in state["runs"])
    for r in state["runs"]:
        info = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        assert info["consumed"][budgets_unit] == r["budget"]  # each run stopped at exactly its own budget
        assert info["budget"]["unit"] == budgets_unit and "match" not in info
        for task in tasks:
            assert (Path(r["run_dir"]) / "eval" / task / "metrics.json").is_file()
    return state


def check_mlflow(state: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.tags["study"] == state["study"] and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trained = {json.loads((Path(r["run_dir"]) / "run.json").read_text())["mlflow_run_id"] for r in state["runs"]}
    assert trained <= {c.info.run_id for c in children}
    evaluated = {Path(c.data.tags["evalsuite.checkpoint"]).name for c in children if "evalsuite.checkpoint" in c.data.tags}
    assert evaluated == {Path(r["run_dir"]).name for r in state["runs"]}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {"study/study.json"}


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback (sqlite backend, artifacts stored and served by it): what a study
    on many nodes names as its tracking URI instead of one shared sqlite file."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "w")
    proc = subprocess.Popen([str(Path(PY).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
                             "--workers", "1"],
                            env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (store / "server.log").read_text()[-3000:]
                assert time.monotonic() - t0 < 120, "mlflow server did not answer in 120 s"
                time.sleep(0.5)
        yield url, store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def check_server_holds_everything(state: dict, store: Path) -> None:
    """Every training run's metrics and every evaluation's metrics and artifacts are on the server; the
    artifacts sit in the server's own store (uploaded through it, not written by the clients)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    for r in state["runs"]:
        info = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        run = client.get_run(info["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.metrics["consumed/visual_tokens"] == r["budget"]
        assert client.get_metric_history(run.info.run_id, "loss")  # one value per logged step
    parent = client.get_run(state["parent_run_id"])
    evals = [c for c in client.search_runs([parent.info.experiment_id],
                                           filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
             if "evalsuite.checkpoint" in c.data.tags]
    assert len(evals) == len(state["runs"])
    for run in evals:
        assert any(k.startswith("vcot/") for k in run.data.metrics), sorted(run.data.metrics)[:10]
        assert client.list_artifacts(run.info.run_id), "an evaluation run without artifacts"
    served = {p.name for p in (store / "artifacts").rglob("*") if p.is_file()}
    assert "study.json" in served and "metrics.json" in served, sorted(served)[:20]


def test_a_killed_study_resumes_and_skips_what_is_done(tmp_path, mlflow_server):
    """Two runs through the local launcher (vcot only), tracked by a real mlflow server: killed while the
    second trains, rerun, rerun once more; every run, metric and artifact is on the server."""
    url, store = mlflow_server
    spec = write_spec(tmp_path, arms=[{"name": "video", "recipe": "vid.yaml"}], budgets=[384, 768], seeds=[0],
                      eval=["--tasks", "vcot", *MICRO_EVAL], tracking_uri=url)
    out = tmp_path / "out"
    proc = start(spec, tmp_path)
    half = kill_midway(proc, out)
    first = next(r for r in (out / "runs").iterdir() if (r / "run.json").is_file())
    stamp = (first / "run.json").stat().st_mtime_ns
    assert json.loads((out / "study.json").read_text())["runs"][0]["status"] == "trained"
    finish(start(spec, tmp_path), spec, tmp_path)
    state = check_finished(out, tasks=["vcot"])
    assert (first / "run.json").stat().st_mtime_ns == stamp  # the finished run was not trained again
    (name, run_id), = half.items()
    assert json.loads((out / "runs" / name / "run.json").read_text())["mlflow_run_id"] == run_id  # resumed
    assert state["tracking_uri"] == url
    check_mlflow(state)
    check_server_holds_everything(state, store)
    assert not (tmp_path / "mlruns").exists()  # nothing fell back to a local store
    report = out / "report.md"
    assert report.is_file()
    metrics = eval_metrics(out)
    finish(start(spec, tmp_path), spec, tmp_path)  # all done: nothing trained or evaluated again
    assert "2 runs, 2 done, 0 to go" in (tmp_path / "micro.log").read_text()
    assert eval_metrics(out) == metrics and (first / "run.json").stat().st_mtime_ns == stamp


@pytest.mark.long  # 4-8 minutes on 2 cores: 16 submitit jobs, each paying accelerate's start-up
def test_micro_study_killed_under_submitit_matches_an_uninterrupted_local_one(tmp_path):
    """2 arms x 2 budgets x 2 seeds (vcot only, to keep it to minutes): through the local launcher without a
    stop, and through submitit's local executor killed mid-way and rerun; both give the same evaluations and
    the same study report."""
    flags = ["--tasks", "vcot", *MICRO_EVAL]
    local = write_spec(tmp_path, "local.yaml", output_dir=str(tmp_path / "a"), eval=flags)
    sub = write_spec(tmp_path, "sub.yaml", output_dir=str(tmp_path / "b"), launcher="submitit_local", eval=flags)
    finish(start(local, tmp_path), local, tmp_path)
    proc = start(sub, tmp_path)
    half = kill_midway(proc, tmp_path / "b")
    finish(start(sub, tmp_path), sub, tmp_path)
    a, b = check_finished(tmp_path / "a", tasks=["vcot"]), check_finished(tmp_path / "b", tasks=["vcot"])
    (name, run_id), = half.items()
    assert json.loads((tmp_path / "b" / "runs" / name / "run.json").read_text())["mlflow_run_id"] == run_id
    for s in (a, b):
        check_mlflow(s)
    assert [{**r, "run_dir": Path(r["run_dir"]).name} for r in a["runs"]] == \
        [{**r, "run_dir": Path(r["run_dir"]).name} for r in b["runs"]]
    assert eval_metrics(tmp_path / "a") == eval_metrics(tmp_path / "b")
    ra = (tmp_path / "a" / "report.md").read_text().replace(str(tmp_path / "a"), "OUT")
    rb = (tmp_path / "b" / "report.md").read_text().replace(str(tmp_path / "b"), "OUT")
    assert ra == rb
