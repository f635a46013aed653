"""Command line of the evaluation suite.

    python -m evalsuite all CKPT_DIR [options]          every checkpoint under CKPT_DIR, every task, then the report
    python -m evalsuite vcot CKPT [CKPT ...] [options]  one task on the given checkpoints
    python -m evalsuite report CKPT_DIR                 rewrite CKPT_DIR/report.md from the metrics found
    python -m evalsuite export CKPT_DIR --format lmms-eval   the EgoSchema (vcot) results in lmms-eval's layout
    python -m evalsuite list                            tasks and benchmarks
    python -m evalsuite study studies/NAME.yaml [--dry_run]   arms x budgets x seeds: train, evaluate, report

Options (flag = EvalConfig field = MLflow param, spelled with underscores as the trainer's; the dashed
`--n-boot` works with a deprecation warning): --benchmark synthetic|egoschema, --data DIR,
--protocol paper|custom, --frames 5 10, --limit N, --scoring loglik|generate,
--infills self|oracle|oracle_noisy:P|file:PATH|model:DIR, --rephraser DIR, --judge DIR, --seed N,
--video_input auto|images|native, --max_pixels N, ... (`--help` on a command lists them all).
`--data` is the data of what runs: the benchmark's (egoschema), or with the iraven task alone its
puzzle directory (`python -m evalsuite iraven CKPT --data DIR`, as `--iraven_data DIR`).

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

from data_recipes.hints import did_you_mean as hint  # noqa: E402
from evalsuite.config import BENCHMARKS, ConfigError, EvalConfig, did_you_mean  # noqa: E402
from train.config import add_field_flags  # noqa: E402

COMMANDS = ("all", "report", "export", "list", "study")


def _task_names() -> list[str]:
    from evalsuite.tasks import TASKS

    return list(TASKS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evalsuite", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{all,TASK,report,list,study}")
    a = sub.add_parser("all", help="every task on every checkpoint under CKPT_DIR, then the report", allow_abbrev=False)
    a.add_argument("ckpt_dir")
    a.add_argument("--tasks", nargs="+", default=None, help="restrict to these tasks (default: every task)")
    add_field_flags(a, EvalConfig)
    for name in _task_names():
        t = sub.add_parser(name, help=f"run the {name} task on the given checkpoints", allow_abbrev=False)
        t.add_argument("checkpoints", nargs="+")
        add_field_flags(t, EvalConfig)
    r = sub.add_parser("report", help="write CKPT_DIR/report.md from the metrics under it", allow_abbrev=False)
    r.add_argument("ckpt_dir")
    recorded = "the evaluations' own (the larger recorded n_boot, the recorded seed)"
    add_field_flags(r, EvalConfig, ("n_boot", "seed", "tracking"), {"n_boot": recorded, "seed": recorded})
    x = sub.add_parser("export", help="write the EgoSchema (vcot) results under CKPT_DIR in another tool's format")
    x.add_argument("ckpt_dir", help="a checkpoint, or a directory of checkpoints (every eval/vcot/metrics.json under it)")
    x.add_argument("--format", dest="format", default="lmms-eval", choices=["lmms-eval"],
                   help="lmms-eval: OUT/<model>/<date>_results.json and <date>_samples_<task>.jsonl per F and condition")
    x.add_argument("--out", default=None, help="output directory (default: CKPT_DIR/lmms-eval)")
    sub.add_parser("list", help="list tasks and benchmarks")
    from evalsuite.study.run import add_parser as add_study_parser

    add_study_parser(sub)
    return p


def config_from(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig of the flags given (the fields' defaults for the rest). With the iraven task alone,
    `--data` is its puzzle directory (`--iraven_data`), unless `--benchmark egoschema` says it is EgoSchema's."""
    given = {k: v for k, v in vars(args).items() if k in EvalConfig.field_names() and v is not None}
    if args.command == "iraven" and "data" in given and given.get("benchmark") != "egoschema":
        if "iraven_data" in given:
            raise ConfigError(f"--data {given['data']} and --iraven_data {given['iraven_data']}: with the iraven task "
                              f"alone both name its puzzle directory; give one of them")
        given["iraven_data"] = given.pop("data")
    return EvalConfig(**given)


def _unknown(command: argparse.ArgumentParser, arg: str) -> str:
    """`error: unknown flag ...` naming the closest flag of a command's parser, the one that would work."""
    if not arg.startswith("-"):
        return f"error: unexpected argument '{arg}' (`python -m evalsuite {command.prog.split()[-1]} --help`)"
    known = [s for a in command._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
    typed = "--" + arg.lstrip("-").split("=")[0].replace("-", "_")
    return f"error: unknown flag '{arg}'{hint(typed, known, cutoff=0.5)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = list(COMMANDS) + _task_names()
    if argv and not argv[0].startswith("-") and argv[0] not in known:
        print(f"error: {did_you_mean('command or task', argv[0], known)}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(_unknown(parser._subparsers._group_actions[0].choices[args.command], unknown[0]), file=sys.stderr)
        return 2
    if args.command == "list":
        from evalsuite.tasks import TASKS

        for name, cls in TASKS.items():
            print(f"task       {name:<10} {cls.description}")
        for b in BENCHMARKS:
            print(f"benchmark  {b}")
        return 0
    if args.command == "export":
        from evalsuite.report.export import ExportError, export_lmms_eval

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
        from evalsuite.study.run import main as study_main
        from train.config import ConfigError as TrainConfigError
        from train.plan import PlanError

        try:
            return study_main(args)
        except (RecipeError, TrainConfigError, PlanError) as e:  # StudyError is a RecipeError
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "report":
        from evalsuite.report.evaluation import summary_text, write_report

        try:
            report = write_report(args.ckpt_dir, track=args.tracking is not False, n_boot=args.n_boot, seed=args.seed)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
    from evalsuite.benchmarks.video_qa import BenchmarkError
    from evalsuite.checkpoints import CheckpointError
    from evalsuite.infills import InfillError
    from evalsuite.benchmarks.iraven import IRavenFormatError
    from evalsuite.outputs import OutputError
    from data_recipes.files import LockHeld
    from data_recipes.processors import ProcessorLoadError
    from train.families import FamilyError

    return (BenchmarkError, CheckpointError, InfillError, IRavenFormatError, OutputError, FamilyError,
            ProcessorLoadError, LockHeld)


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
            from evalsuite.report.evaluation import summary_text, write_report

            report = write_report(root, track=cfg.tracking, n_boot=cfg.n_boot, seed=cfg.seed)
            print(f"\n{summary_text(report)}\n\nfull report: {report} (figures and metrics.csv in {report.parent / 'report'})")
    return 0
