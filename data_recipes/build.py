"""Build a recipe into WebDataset shards plus an audited `manifest.json`.

The build streams: a lazy plan of (source, position) pairs is cut into chunks, each chunk is turned
into encoded samples by a process pool (or in-process with one worker), and the main process writes
them in plan order. Output therefore does not depend on the number of workers, memory does not grow
with the number of samples, and the stop point (a sample count, or a recipe's `size_from`: as much as
another recipe's build holds in some unit) is decided sample by sample.

The manifest audits what went in and what did not: `counts` (samples, images, frames, text
characters, tokens), `kinds` (written samples by kind: image, multi_image, text_only, video), `bad`
(= `skipped`, kept for older readers: broken records by reason, limited by `max_bad_fraction`) with
`skipped_examples`, and `unsupported` (well-formed records of a kind the toolkit does not train on,
by reason, see `sources.UNSUPPORTED`; not counted against `max_bad_fraction`) with
`unsupported_examples`.

How frames reach the model and at what size are recorded beside the counts: `video_input` (images |
native, the recipe's; token counts are on that path) and `resize`, `{"rule": "fit", "max_pixels": N,
"from": "max_pixels" | "image_size"}`: every stored image and frame has at most N pixels under
`data_recipes.resize.fit` (aspect kept, never upsampled), N being the recipe's `max_pixels` or, when it
gives none, image_size**2 (generated frames are rendered image_size x image_size, so within it). The
trainer reads both (`video_input: auto`, `max_pixels: -1`).

A killed build resumes: after every complete shard the build writes `PROGRESS` beside its shards (the
plan position reached, the audit so far, the shards' records), and the next build of the same recipe,
target, `--limit` and token model keeps those shards and goes on from that position, so that the result
is the uninterrupted build's, byte for byte. A build that fails with an error removes what it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing as mp
import re
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data_recipes.counters import TOKEN_UNITS
from data_recipes.recipe import Recipe, expand_path, load_recipe
from data_recipes.files import REPO_ROOT, DirLock, atomic_dir, atomic_write_json, file_sha256, shareable_path
from data_recipes.shards import ShardWriter, sample_images, sample_members, shard_samples
from data_recipes.sources import Skip, Unsupported, mix_plan, open_sources

MAX_MATCH_ERROR = 0.005
MANIFEST = "manifest.json"
PROGRESS = ".progress.json"
"""A build's resume point inside `.NAME.building/` (never in a finished build)."""
DEFAULT_ROOT = Path("shards")
_EXAMPLES = 5


class BuildError(RuntimeError):
    pass


# --- worker side -------------------------------------------------------------------------------
_W: dict = {}


def _init_worker(recipe: Recipe, model: str | None, sources: list):
    # The sources the parent opened, inherited through fork: a worker does not parse the annotation files
    # again (each copy of a 665k-record JSON list holds several GB).
    _W["sources"] = sources
    _W["counter"] = None
    if model:
        from data_recipes.tokens import TokenCounter

        _W["counter"] = TokenCounter(model, recipe.video_input)  # counts on the recipe's video path


def _make(task):
    """Encode the sample at plan position `task` -> (members, counts) or a Skip."""
    key, k, pos = task
    out = _W["sources"][k].make(pos)
    if isinstance(out, Skip):
        return out
    js = dict(out.json, id=str(out.json["id"]))
    counts = {
        "samples": 1, "images": len(out.images),
        "frames": len(out.images) if js["kind"] == "video" else 0,
        "text_chars": sum(len(p["text"]) for m in js["messages"] for p in
                          ([{"text": m["content"]}] if isinstance(m["content"], str) else m["content"])
                          if "text" in p),
    }
    if _W["counter"] is not None:
        counts.update(_W["counter"].count(js["messages"], out.images, js["kind"], js.get("clips")))
    for reason in js.get("meta", {}).get("adjusted", ()):
        counts[f"adjusted:{reason}"] = 1
    return sample_members(key, js, out.images), counts


def _in_order(pool, plan, window: int):
    """Encoded samples (or Skips) in plan order. With a pool, up to `window` tasks are in flight and each
    result is handed over as soon as it and those before it are done: no chunk waits for its slowest
    sample, and a lazy plan is never read further ahead than the window."""
    if pool is None:
        yield from map(_make, plan)
        return
    pending = deque()

    def first():
        task, future = pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:  # a worker died (the kernel's OOM killer, a crash in a decoder): not a hang
            raise BuildError(f"a build worker died with the samples from plan position {task[0]} on in flight "
                             "(killed for memory? try fewer --workers); "
                             "nothing was kept, the build can be run again") from None

    for task in plan:
        pending.append((task, pool.submit(_make, task)))
        if len(pending) >= window:
            yield first()
    while pending:
        yield first()


# --- main side ---------------------------------------------------------------------------------
def sample_kind(counts: dict) -> str:
    """video | image (one image) | multi_image | text_only, from a sample's counts."""
    if counts.get("frames"):
        return "video"
    n = counts.get("images", 0)
    return "text_only" if n == 0 else "image" if n == 1 else "multi_image"


@dataclass
class Audit:
    counts: dict = field(default_factory=lambda: dict(samples=0, images=0, frames=0, text_chars=0))
    skipped: dict = field(default_factory=dict)
    """Bad records by reason (they count against max_bad_fraction)."""
    examples: list = field(default_factory=list)
    kinds: dict = field(default_factory=lambda: dict(image=0, multi_image=0, text_only=0, video=0))
    """Written samples by kind."""
    unsupported: dict = field(default_factory=dict)
    """Records of a kind the toolkit does not train on, by reason (outside max_bad_fraction)."""
    unsupported_examples: list = field(default_factory=list)
    adjusted: dict = field(default_factory=dict)
    """Written samples the build changed from their record, by what it did (`sources.LEADING_ASSISTANT_TURN`)."""

    def add(self, counts: dict):
        for k, v in counts.items():
            if k.startswith("adjusted:"):
                self.adjusted[k.removeprefix("adjusted:")] = self.adjusted.get(k.removeprefix("adjusted:"), 0) + v
                continue
            self.counts[k] = self.counts.get(k, 0) + v
        kind = sample_kind(counts)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def skip(self, s: Skip):
        if isinstance(s, Unsupported):
            self.unsupported[s.reason] = self.unsupported.get(s.reason, 0) + 1
            if len(self.unsupported_examples) < _EXAMPLES:
                self.unsupported_examples.append(s.detail)
            return
        self.skipped[s.reason] = self.skipped.get(s.reason, 0) + 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(s.detail)

    @property
    def bad_fraction(self) -> float:
        bad = sum(self.skipped.values())
        return bad / max(1, bad + self.counts["samples"])


def _check_bad(recipe: Recipe, audit: Audit, final: bool):
    bad = sum(audit.skipped.values())
    seen = bad + audit.counts["samples"]
    if (final or seen >= 200) and audit.bad_fraction > recipe.max_bad_fraction:
        raise BuildError(
            f"recipe {recipe.name}: {bad} of {seen} records are bad ({audit.bad_fraction:.1%} > "
            f"max_bad_fraction {recipe.max_bad_fraction:.1%}); by reason {audit.skipped}"
            + (f" (besides {sum(audit.unsupported.values())} unsupported records, not counted: {audit.unsupported})"
               if audit.unsupported else "")
            + ". First ones:\n  " + "\n  ".join(audit.examples))


def resize_record(recipe: Recipe) -> dict:
    """The manifest's `resize` entry: the rule and the budget the build applied, and where it came from."""
    return {"rule": "fit", "max_pixels": recipe.pixel_budget(),
            "from": "max_pixels" if recipe.max_pixels is not None else "image_size"}


def manifest_hash(out_dir: Path) -> str:
    return file_sha256(Path(out_dir) / MANIFEST)


def read_manifest(out_dir: Path) -> dict:
    f = Path(out_dir) / MANIFEST
    if not f.exists():
        raise BuildError(f"{f} does not exist: build the recipe first (python -m data_recipes build NAME)")
    try:
        m = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BuildError(f"{f}: not valid JSON ({e}); rebuild the recipe") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("sha256"), str)
            for s in m["shards"]):
        raise BuildError(f"{f}: field 'shards' must be a list of {{'name', 'sha256', ...}}; rebuild the recipe")
    for s in m["shards"]:  # shard names become paths: they must stay inside the build directory
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.tar", s["name"]):
            raise BuildError(f"{f}: shard name {s['name']!r} is not a plain .tar file name in {Path(out_dir)}")
    return m


def shareable_recipe_file(path: str | None) -> str | None:
    """Where a manifest says its recipe came from, without the machine's paths: a shipped recipe's path
    inside the repository (`data_recipes/recipes/NAME.yaml`), another recipe file's name alone. The
    recipe is identified by name and hash; this is only a pointer for a reader."""
    return None if path is None else shareable_path(path, REPO_ROOT, outside="name")


def stale(manifest: dict, recipe: Recipe) -> str | None:
    """Why a build's `manifest` does not hold `recipe`'s shards (None: it does): the recipe changed since, or
    it was a `--limit` trial build (its hash is the recipe's, its samples are not)."""
    if manifest.get("recipe_hash") != recipe.content_hash():
        return "the recipe changed since it was built"
    if manifest.get("limit"):
        return f"a --limit {manifest['limit']} trial build ({manifest.get('counts', {}).get('samples')} samples)"
    return None


def _reference(recipe: Recipe, root: Path, model: str | None, workers: int) -> dict:
    """The manifest of the recipe this one is sized from (`size_from`), built (or rebuilt) if needed.

    A fresh build whose manifest lacks the token counts of `model` (built without a model, or counted with
    another) is not rebuilt: its shards are read back and counted (`count_built`), and the counts go into
    the manifest returned here, not into the one on disk. Rebuilding would decode every source video again
    (hours for 100k clips) and change the reference's manifest, and with it the manifest hash that runs
    trained on it recorded (their `--resume` would then be refused)."""
    ref = load_recipe(recipe.size_from.recipe)
    ref_dir = root / ref.name
    unit = recipe.size_from.unit
    try:
        m = read_manifest(ref_dir)
        # A build from before the resize rule (no `resize`) may hold other sizes: it is rebuilt.
        fresh = stale(m, ref) is None and m.get("resize") == resize_record(ref)
    except BuildError:
        fresh = False
    if not fresh:
        return build(ref, ref_dir, workers=workers, model=model)
    if unit in TOKEN_UNITS and not (unit in m["counts"] and m.get("tokens_model") == model):
        print(f"build {recipe.name}: counting {unit} of {ref_dir}'s shards with {model} (the build counted "
              f"{'with ' + str(m.get('tokens_model')) if m.get('tokens_model') else 'no tokens'}; it is not rebuilt)",
              file=sys.stderr, flush=True)
        m = dict(m, counts={**m["counts"], **count_built(ref_dir, m, model, ref.video_input)}, tokens_model=model)
    return m


def built_samples(build_dir: Path, manifest: dict):
    """(sample json, images) of every sample of a finished build, in manifest order, read from its shards."""
    import webdataset as wds

    for shard in manifest["shards"]:
        path = Path(build_dir) / shard["name"]
        if not path.is_file():
            raise BuildError(f"{path}: listed in {Path(build_dir) / MANIFEST} but missing; rebuild the recipe")
        for s in shard_samples(path, wds.reraise_exception):
            yield json.loads(s["json"]), sample_images(s)


def count_built(build_dir: Path, manifest: dict, model: str, video_input: str) -> dict:
    """{"visual_tokens", "text_tokens"} of a finished build counted with `model`'s processor on its stored
    samples, as its own build would have counted them with that model (`_make`: the same messages, the
    same images after resizing; token counts depend on image sizes, which JPEG keeps, not on pixels)."""
    from data_recipes.tokens import TokenCounter

    counter = TokenCounter(model, video_input)
    totals = {"visual_tokens": 0, "text_tokens": 0}
    n = 0
    for js, images in built_samples(build_dir, manifest):
        for k, v in counter.count(js["messages"], images, js["kind"], js.get("clips")).items():
            totals[k] = totals.get(k, 0) + v
        n += 1
    if n != manifest["counts"]["samples"]:
        raise BuildError(f"{Path(build_dir) / MANIFEST}: its shards hold {n} samples, its counts say "
                         f"{manifest['counts']['samples']}; rebuild the recipe")
    return totals


def build(recipe: Recipe | str, out_dir: str | Path | None = None, *, limit: int | None = None, workers: int = 1,
          model: str | None = None, progress: bool = False) -> dict:
    """Build `recipe` into `out_dir` (default `shards/NAME`); returns the manifest."""
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    out_dir = Path(out_dir) if out_dir else DEFAULT_ROOT / recipe.name
    root = out_dir.parent
    if not model and recipe.model:
        model = str(expand_path(recipe.model, f"{recipe.path or recipe.name}: model"))
    match = None
    if recipe.size_from:
        if limit is not None:
            raise BuildError(f"recipe {recipe.name} is sized from {recipe.size_from.recipe} (size_from): "
                             f"--limit would break the match")
        unit = recipe.size_from.unit
        if unit in TOKEN_UNITS and not model:
            raise BuildError(f"recipe {recipe.name}: matching by {unit} needs a model directory to count tokens "
                             f"(field 'model' in the recipe, or --model DIR)")
        ref = _reference(recipe, root, model, workers)
        match = {"to": recipe.size_from.recipe, "by": unit, "reference_recipe_hash": ref["recipe_hash"],
                 "target": ref["counts"][unit]}
        target = match["target"]
    else:
        unit, target = "samples", min(recipe.samples, limit) if limit else recipe.samples

    sources = open_sources(recipe)  # opens real sources once here, so layout errors surface before forking
    if model and recipe.video_input == "native" and recipe.kind == "video":
        _check_native(recipe, model)  # here, not in a worker's initializer (the error would be the pool's)
    plan = ((f"{i:09d}", k, pos) for i, (k, pos) in enumerate(mix_plan(recipe, [len(s) for s in sources])))
    key = resume_key(recipe, sources, limit=limit, model=model, unit=unit, target=target)
    resumed: dict = {}

    def resumable(tmp: Path) -> bool:  # what a killed build of the same recipe, target and model left
        with contextlib.suppress(OSError, ValueError):
            resumed.update(json.loads((tmp / PROGRESS).read_text()))
        return resumed.get("key") == key

    # One build of a name at a time (a second would delete the first's .NAME.building); written into
    # .NAME.building (removed if the build fails, kept if it is killed: the next build resumes it), swapped
    # in only once complete.
    with DirLock(root / f".{recipe.name}.lock", f"a build of {recipe.name} into {root}"), \
            atomic_dir(out_dir, tmp_name=f".{recipe.name}.building", existing="swap", reuse=resumable) as tmp:
        writer, audit = ShardWriter(tmp, recipe.name, recipe.shard_size), Audit()
        start = 0
        if resumed.get("key") == key:
            start = resumed["tasks"]
            audit = Audit(**resumed["audit"])
            writer.shards = resumed["shards"]
            kept = {s["name"] for s in writer.shards} | {PROGRESS}
            for f in tmp.iterdir():  # the shard being written when the build was killed
                if f.name not in kept:
                    f.unlink()
            print(f"build {recipe.name}: resuming a killed build at plan position {start} ({len(writer.shards)} "
                  f"complete shards, {audit.counts['samples']} samples kept)", file=sys.stderr, flush=True)
            plan = itertools.islice(plan, start, None)
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                   initargs=(recipe, model, sources)) if workers > 1 else None
        if pool is None:
            _init_worker(recipe, model, sources)
        bar = tqdm(total=target, initial=audit.counts.get(unit, 0), desc=f"build {recipe.name} ({unit})", unit="",
                   disable=not progress)
        check_every = max(32, 16 * workers)
        done = False
        try:
            for n, res in enumerate(_in_order(pool, plan, window=8 * workers), start + 1):
                if n % check_every == 0:
                    _check_bad(recipe, audit, final=False)
                if isinstance(res, Skip):
                    audit.skip(res)
                    continue
                members, counts = res
                have, u = audit.counts.get(unit, 0), counts[unit]
                if have + u > target and (have + u - target) >= (target - have):
                    done = True  # the next sample would overshoot more than stopping undershoots
                    break
                writer.write(members)
                audit.add(counts)
                bar.update(u)
                if audit.counts[unit] >= target:
                    done = True
                    break
                if writer.full():  # a complete shard: from here a killed build resumes
                    writer.close_shard()
                    atomic_write_json(tmp / PROGRESS, {"key": key, "tasks": n, "audit": dataclasses.asdict(audit),
                                                       "shards": writer.shards})
            if not done:
                raise BuildError(f"recipe {recipe.name}: the sources ran out after {audit.counts['samples']} "
                                 f"usable samples, short of the {target} {unit} asked for"
                                 + (f" (bad records by reason: {audit.skipped})" if audit.skipped else "")
                                 + (f" (unsupported records by reason: {audit.unsupported})" if audit.unsupported
                                    else ""))
        finally:
            bar.close()
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)
        _check_bad(recipe, audit, final=True)
        shards = writer.close()
        (tmp / PROGRESS).unlink(missing_ok=True)
        manifest = {
            "recipe": recipe.name, "recipe_hash": recipe.content_hash(), "recipe_file": shareable_recipe_file(recipe.path),
            "kind": recipe.kind, "seed": recipe.seed, "split": recipe.split, "frames": recipe.frames,
            "image_size": recipe.image_size, "video_input": recipe.video_input, "frame_order": recipe.frame_order,
            "resize": resize_record(recipe),
            "counts": audit.counts, "tokens_model": model,
            "skipped": audit.skipped, "skipped_examples": audit.examples, "bad_fraction": audit.bad_fraction,
            "shards": shards, "limit": limit,
            "kinds": audit.kinds, "bad": audit.skipped, "unsupported": audit.unsupported,
            "unsupported_examples": audit.unsupported_examples, "adjusted": audit.adjusted,
        }
        if match:
            achieved = audit.counts[unit]
            match.update(achieved=achieved, rel_error=abs(achieved - target) / max(1, target))
            manifest["match"] = match
            if match["rel_error"] > MAX_MATCH_ERROR:
                raise BuildError(f"recipe {recipe.name}: matched {achieved} {unit} to {target} of "
                                 f"{recipe.size_from.recipe}: "
                                 f"relative error {match['rel_error']:.2%} > {MAX_MATCH_ERROR:.1%}")
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def resume_key(recipe: Recipe, sources: list, **build) -> dict:
    """What a killed build must share with this one for its shards to be kept: the recipe, the build's
    settings, and each annotation file's size and modification time (data fixed in between is built anew)."""
    files = [(str(s.path), (st := s.path.stat()).st_size, st.st_mtime_ns) for s in sources if hasattr(s, "path")]
    return {"version": 1, "recipe_hash": recipe.content_hash(), **build, "annotations": files}


def _check_native(recipe: Recipe, model: str) -> None:
    """`video_input: native` needs a model whose processor has a video path to count with."""
    from data_recipes.tokens import TokenCountError, TokenCounter

    try:
        TokenCounter(model, recipe.video_input)
    except TokenCountError as e:
        raise BuildError(f"recipe {recipe.name}: {e}") from None


def verify(out_dir: str | Path) -> list[str]:
    """Re-hash every shard against the manifest; returns the list of problems (empty when sound)."""
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    problems = []
    for s in m["shards"]:
        p = out_dir / s["name"]
        if not p.exists():
            problems.append(f"{p}: missing")
        elif (h := file_sha256(p)) != s["sha256"]:
            problems.append(f"{p}: sha256 {h[:12]}... does not match the manifest's {s['sha256'][:12]}...")
    listed = {s["name"] for s in m["shards"]}
    problems += [f"{p}: not in the manifest" for p in sorted(out_dir.glob("*.tar")) if p.name not in listed]
    return problems


def shard_urls(out_dir: str | Path) -> list[str]:
    m = read_manifest(out_dir)
    return [str(Path(out_dir) / s["name"]) for s in m["shards"]]

