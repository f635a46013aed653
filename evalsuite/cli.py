"""Command line of the evaluation suite.

    python -m evalsuite all CKPT_DIR [options]          every checkpoint under CKPT_DIR, every task, then the report
    python -m evalsuite vcot CKPT [CKPT ...] [options]  one task on the given checkpoints
    python -m evalsuite report CKPT_DIR                 rewrite CKPT_DIR/report.md from the metrics found
    python -m evalsuite export CKPT_DIR --format lmms-eval   the EgoSchema (vcot) results in lmms-eval's layout
    python -m evalsuite list                            tasks and benchmarks
    python -m evalsuite study studies/NAME.yaml [--dry_run]   arms x budgets x seeds: train, evaluate, report

Options (flag = EvalConfig field = MLflow param): --benchmark synthetic|egoschema, --data DIR,
--protocol paper|custom, --frames 5 10, --limit N, --scoring loglik|generate,
--infills self|oracle|oracle_noisy:P|file:PATH|model:DIR, --rephraser DIR, --judge DIR, --seed N,
--video-input auto|images|native, --max-pixels N, ... (`--help` on a command lists them all).

Several processes split the items (CPU: gloo):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m evalsuite all ckpt/
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)  # nothing may download; set before transformers/mlflow are imported

from evalsuite.config import BENCHMARKS, ConfigError, EvalConfig, did_you_mean, field_help  # noqa: E402

COMMANDS = ("all", "report", "export", "list", "study")


def _task_names() -> list[str]:
    from evalsuite.tasks import TASKS

    return list(TASKS)


def _add_options(p: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    h = field_help
    p.add_argument("--benchmark", default=d.benchmark, help=h("benchmark"))
    p.add_argument("--data", default=None, help=h("data"))
    p.add_argument("--frames", type=int, nargs="+", default=list(d.frames), help=h("frames"))
    p.add_argument("--limit", type=int, default=None, help=h("limit"))
    p.add_argument("--iraven-limit", dest="iraven_limit", type=int, default=None, help=h("iraven_limit"))
    p.add_argument("--protocol", default=None, help=h("protocol"))
    p.add_argument("--scoring", default=None, help=h("scoring"))  # None: the protocol's
    p.add_argument("--loglik-norm", dest="loglik_norm", default=d.loglik_norm, help=h("loglik_norm"))
    p.add_argument("--infills", default=d.infills, help=h("infills"))
    p.add_argument("--rephraser", default=None, help=h("rephraser"))
    p.add_argument("--judge", default=None, help=h("judge"))
    p.add_argument("--seed", type=int, default=d.seed, help=h("seed"))
    p.add_argument("--image-size", dest="image_size", type=int, default=None, help=h("image_size"))
    p.add_argument("--video-input", dest="video_input", default=d.video_input, help=h("video_input"))
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=None, help=h("max_pixels"))
    p.add_argument("--n-boot", dest="n_boot", type=int, default=d.n_boot, help=h("n_boot"))
    p.add_argument("--batch-size", dest="batch_size", type=int, default=d.batch_size, help=h("batch_size"))
    p.add_argument("--infill-tokens", dest="infill_tokens", type=int, default=d.infill_tokens, help=h("infill_tokens"))
    p.add_argument("--answer-tokens", dest="answer_tokens", type=int, default=d.answer_tokens, help=h("answer_tokens"))
    p.add_argument("--iraven-data", dest="iraven_data", default=None, help=h("iraven_data"))
    p.add_argument("--iraven-layout", dest="iraven_layout", default=d.iraven_layout, help=h("iraven_layout"))
    p.add_argument("--cache-dir", dest="cache_dir", default=None, help=h("cache_dir"))
    p.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow")
    p.add_argument("--experiment", default=None, help=h("experiment"))
    p.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", help=h("trust_remote_code"))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evalsuite", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{all,TASK,report,list,study}")
    a = sub.add_parser("all", help="every task on every checkpoint under CKPT_DIR, then the report")
    a.add_argument("ckpt_dir")
    a.add_argument("--tasks", nargs="+", default=None, help="restrict to these tasks (default: every task)")
    _add_options(a)
    for name in _task_names():
        t = sub.add_parser(name, help=f"run the {name} task on the given checkpoints")
        t.add_argument("checkpoints", nargs="+")
        _add_options(t)
    r = sub.add_parser("report", help="write CKPT_DIR/report.md from the metrics under it")
    r.add_argument("ckpt_dir")
    r.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log a comparison run")
    x = sub.add_parser("export", help="write the EgoSchema (vcot) results under CKPT_DIR in another tool's format")
    x.add_argument("ckpt_dir", help="a checkpoint, or a directory of checkpoints (every eval/vcot/metrics.json under it)")
    x.add_argument("--format", dest="format", default="lmms-eval", choices=["lmms-eval"],
                   help="lmms-eval: OUT/<model>/<date>_results.json and <date>_samples_<task>.jsonl per F and condition")
    x.add_argument("--out", default=None, help="output directory (default: CKPT_DIR/lmms-eval)")
    sub.add_parser("list", help="list tasks and benchmarks")
    from evalsuite.study import add_parser as add_study_parser

    add_study_parser(sub)
    return p


def config_from(args: argparse.Namespace) -> EvalConfig:
    names = EvalConfig.field_names()
    return EvalConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = list(COMMANDS) + _task_names()
    if argv and not argv[0].startswith("-") and argv[0] not in known:
        print(f"error: {did_you_mean('command or task', argv[0], known)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.command == "list":
        from evalsuite.tasks import TASKS

        for name, cls in TASKS.items():
            print(f"task       {name:<10} {cls.description}")
        for b in BENCHMARKS:
            print(f"benchmark  {b}")
        return 0
    if args.command == "export":
        from evalsuite.export import ExportError, export_lmms_eval

        try:
            written = export_lmms_eval(args.ckpt_dir, args.out)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in written:
            print(f"wrote {path}")
        return 0
    if args.command == "study":
        from data_recipes.recipe import RecipeError
        from evalsuite.study import main as study_main
        from train.config import ConfigError as TrainConfigError
        from train.plan import PlanError

        try:
            return study_main(args)
        except (RecipeError, TrainConfigError, PlanError) as e:  # StudyError is a RecipeError
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "report":
        from evalsuite.report import summary_text, write_report

        report = write_report(args.ckpt_dir, track=args.tracking)
        print(f"report: {report}\n\n{summary_text(report)}")
        return 0
    try:
        cfg = config_from(args)
        return _evaluate(args, cfg)
    except (ConfigError, *_user_errors()) as e:
        # Bad input is the user's to fix: say what and where, without a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from evalsuite.benchmarks import BenchmarkError
    from evalsuite.checkpoints import CheckpointError
    from evalsuite.infills import InfillError
    from evalsuite.iraven import IRavenFormatError
    from evalsuite.outputs import OutputError
    from data_recipes.processors import ProcessorLoadError
    from train.families import FamilyError

    return (BenchmarkError, CheckpointError, InfillError, IRavenFormatError, OutputError, FamilyError,
            ProcessorLoadError)


def _evaluate(args: argparse.Namespace, cfg: EvalConfig) -> int:
    from evalsuite.checkpoints import checkpoint_ref, discover
    from evalsuite.distributed import Ranks
    from evalsuite.runner import evaluate
    from evalsuite.tasks import get_task

    ranks = Ranks.from_env()
    if args.command == "all":
        tasks = [get_task(t).name for t in (args.tasks or _task_names())]
        root = Path(args.ckpt_dir).expanduser().resolve()
        broken: list[str] = []
        if ranks.is_main:
            discover(root, broken)  # may write base.json homes for outside base models
            for reason in broken:
                print(f"warning: skipping a broken checkpoint: {reason}", file=sys.stderr)
        ranks.barrier()
        refs = discover(root, [])
        if not refs:
            raise ConfigError(f"no checkpoints under {root} (adapter dirs with run.json, or HF model dirs)")
        cache = Path(cfg.cache_dir) if cfg.cache_dir else root / ".infill_cache"
    else:
        tasks = [args.command]
        refs = [checkpoint_ref(c) for c in args.checkpoints]
        common = Path(os.path.commonpath([str(r.path.parent) for r in refs]))
        cache = Path(cfg.cache_dir) if cfg.cache_dir else common / ".infill_cache"
    results = evaluate(refs, tasks, cfg, cache, ranks)
    if ranks.is_main:
        for path, per_task in results.items():
            for task, metrics in per_task.items():
                print(f"{task:<6} {Path(path).name:<24} {get_task(task).headline(metrics['metrics'])}")
        if args.command == "all":
            from evalsuite.report import summary_text, write_report

            report = write_report(root, track=cfg.tracking)
            print(f"\n{summary_text(report)}\n\nfull report: {report} (figures and metrics.csv in {report.parent / 'report'})")
    return 0
