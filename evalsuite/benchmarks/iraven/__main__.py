"""Command line: ``python -m evalsuite.benchmarks.iraven <command>``.

Commands:
  generate  write I-RAVEN puzzles in the official layout
            (``--out DIR --per-config N --seed S [--configs NAME ...]``)
  check     run the symbolic checker on an answers.json (e.g. the reference puzzles)
  inspect   load a split of an I-RAVEN directory with validation and count it
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from tqdm import tqdm

from .layouts import CONFIG_NAMES, UnknownConfigError, get_config


def _config_name(value: str) -> str:
    try:
        return get_config(value).name
    except UnknownConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evalsuite.benchmarks.iraven",
                                description="I-RAVEN generator, checker and loader")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate puzzles in the official file layout")
    g.add_argument("--out", required=True, help="output directory (created if missing)")
    g.add_argument("--per-config", type=int, required=True, help="puzzles per configuration")
    g.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    g.add_argument("--configs", nargs="+", type=_config_name, default=None, metavar="NAME",
                   help=f"configurations to generate (default: all of {', '.join(CONFIG_NAMES)})")
    g.add_argument("--val", type=int, default=2, help="val puzzles out of every ten (default 2)")
    g.add_argument("--test", type=int, default=2, help="test puzzles out of every ten (default 2)")
    g.add_argument("--uncompressed", action="store_true",
                   help="write plain np.savez files like the original (about 400 KB each)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    c = sub.add_parser("check", help="run the symbolic checker on an answers.json")
    c.add_argument("answers", help="path to answers.json")

    i = sub.add_parser("inspect", help="load and validate one split of an I-RAVEN directory")
    i.add_argument("root")
    i.add_argument("--split", default="test", choices=("train", "val", "test"))
    i.add_argument("--configs", nargs="+", type=_config_name, default=None, metavar="NAME")
    return p


def _generate(args) -> int:
    from .generate import generate_dataset

    if args.per_config < 0:
        raise SystemExit("--per-config must be >= 0")
    names = args.configs or list(CONFIG_NAMES)
    bar = tqdm(total=args.per_config * len(names), unit="puzzle", disable=args.no_progress)

    def tick(config, k, item):
        bar.set_postfix_str(config, refresh=False)
        bar.update(1)

    try:
        summary = generate_dataset(args.out, args.per_config, args.seed, names,
                                   compress=not args.uncompressed, val=args.val,
                                   test=args.test, on_item=tick)
    finally:
        bar.close()
    print(f"wrote {summary['total']} puzzles to {summary['out_dir']} "
          f"(seed {summary['seed']}, {summary['seconds']:.1f} s)")
    for config, splits in summary["files"].items():
        parts = ", ".join(f"{s} {splits.get(s, 0)}" for s in ("train", "val", "test"))
        print(f"  {config:40s} {parts}")
    if summary["solver_misses"]:
        print(f"WARNING: the rule solver missed {summary['solver_misses']} targets")
        return 1
    return 0


def _check(args) -> int:
    from .checker import check_item
    from .reference import load_reference

    items = load_reference(args.answers)
    failures = 0
    for key, item in items.items():
        result = check_item(item)
        if not result.ok:
            failures += 1
            print(f"{key}: {result.summary()}")
            for line in result.context_violations:
                print(f"    {line}")
    print(f"{len(items) - failures}/{len(items)} puzzles: context consistent and "
          f"exactly the target satisfies the rules")
    return 1 if failures else 0


def _inspect(args) -> int:
    from .loader import load_split

    counts, targets = Counter(), Counter()
    for record in load_split(args.root, args.split, args.configs):
        counts[record.config] += 1
        targets[record.target] += 1
    for config, n in counts.items():
        print(f"  {config:40s} {n}")
    print(f"{sum(counts.values())} puzzles in split {args.split!r}; "
          f"target histogram {dict(sorted(targets.items()))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "check": _check, "inspect": _inspect}[args.command](args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
