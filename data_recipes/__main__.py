"""Named data recipes -> WebDataset shards + an audited manifest.

    python -m data_recipes list
    python -m data_recipes build NAME [--out DIR] [--limit N] [--workers K] [--model DIR]
    python -m data_recipes inspect DIR [-n 3]
    python -m data_recipes verify DIR
    python -m data_recipes audit DIR [DIR ...]      # the counts of several builds side by side

`build` writes `shards/NAME/` by default; a recipe sized from another (`size_from`) builds that one first
when its shards are missing or stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_recipes.build import DEFAULT_ROOT, BuildError, build, read_manifest, shard_urls, verify
from data_recipes.files import LockHeld
from data_recipes.counters import MANIFEST_COUNTERS
from data_recipes.recipe import RecipeError, load_recipe, recipe_names

AUDIT_ROWS = MANIFEST_COUNTERS


def audit_table(manifests: list[dict]) -> str:
    """Counts of several builds side by side (the scale-match audit)."""
    names = [m["recipe"] for m in manifests]
    w = max(14, *(len(n) + 2 for n in names))
    lines = [f"{'':<14}" + "".join(f"{n:>{w}}" for n in names)]
    for row in AUDIT_ROWS:
        if any(row in m["counts"] for m in manifests):
            lines.append(f"{row:<14}" + "".join(f"{m['counts'].get(row, '-'):>{w}}" for m in manifests))
    for m in manifests:
        if "match" in m:
            x = m["match"]
            lines.append(f"{m['recipe']} matched to {x['to']} by {x['by']}: target {x['target']}, "
                         f"achieved {x['achieved']}, relative error {x['rel_error']:.3%}")
    return "\n".join(lines)


def cmd_list(_args) -> int:
    for name in recipe_names():
        r = load_recipe(name)
        amount = f"{r.samples} samples" if r.samples else f"size_from {r.size_from.recipe} in {r.size_from.unit}"
        print(f"{name:<24}{r.kind:<7}{amount:<40}{', '.join(s.type for s in r.sources)}")
    return 0


def cmd_build(args) -> int:
    recipe = load_recipe(args.name)
    out = Path(args.out) if args.out else DEFAULT_ROOT / recipe.name
    m = build(recipe, out, limit=args.limit, workers=args.workers, model=args.model, progress=True)
    print(f"wrote {len(m['shards'])} shards to {out}")
    if m["skipped"]:
        print(f"skipped {sum(m['skipped'].values())} bad records: {m['skipped']}")
    if m.get("unsupported"):
        print(f"left out {sum(m['unsupported'].values())} unsupported records: {m['unsupported']}")
    print(audit_table([m]))
    return 0


def cmd_inspect(args) -> int:
    import webdataset as wds

    m = read_manifest(args.dir)
    print(json.dumps({k: v for k, v in m.items() if k != "shards"}, indent=1))
    print(f"{len(m['shards'])} shards, first: {m['shards'][0]['name'] if m['shards'] else '-'}")
    ds = wds.WebDataset(shard_urls(args.dir), shardshuffle=False).decode("pil")
    for i, s in enumerate(ds):
        if i >= args.n:
            break
        js = s["json"]
        images = [k for k in sorted(s) if k.endswith("jpg")]
        size = s[images[0]].size if images else None
        turns = " | ".join(
            (m["role"] + ": " + (m["content"] if isinstance(m["content"], str) else " ".join(
                "<image>" if p["type"] == "image" else p["text"] for p in m["content"])))
            for m in js["messages"])
        print(f"- {s['__key__']} {js['kind']} id={js['id']} {len(images)} image(s) {size}: {turns}")
    return 0


def cmd_verify(args) -> int:
    problems = verify(args.dir)
    for p in problems:
        print(p)
    m = read_manifest(args.dir)
    print(f"{args.dir}: {len(m['shards'])} shards, " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


def cmd_audit(args) -> int:
    print(audit_table([read_manifest(d) for d in args.dirs]))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_recipes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the shipped recipes")
    b = sub.add_parser("build", help="build a recipe into shards")
    b.add_argument("name", help="recipe name or path to a recipe .yaml")
    b.add_argument("--out", help="output directory (default shards/NAME)")
    b.add_argument("--limit", type=int, help="at most N samples (a quick trial build)")
    b.add_argument("--workers", type=int, default=1, help="processes encoding samples")
    b.add_argument("--model", help="model directory whose processor counts visual/text tokens")
    i = sub.add_parser("inspect", help="manifest and a few decoded samples")
    i.add_argument("dir")
    i.add_argument("-n", type=int, default=3)
    v = sub.add_parser("verify", help="re-hash shards against the manifest")
    v.add_argument("dir")
    a = sub.add_parser("audit", help="counts of several builds side by side")
    a.add_argument("dirs", nargs="+")
    args = p.parse_args(argv)
    try:
        return {"list": cmd_list, "build": cmd_build, "inspect": cmd_inspect, "verify": cmd_verify, "audit": cmd_audit}[args.cmd](args)
    except (RecipeError, BuildError, LockHeld) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
