"""Infill sources and the infill cache: a fixed generator generates each infill once, for all checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

from data_recipes.synthetic import item_static_caption
from data_recipes.synthetic.narration import item_oracle_transition
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.infills import InfillError
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from helpers import fast_config, make_adapter, tiny_model


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    base = shutil.copytree(tiny_model("llava", tmp_path_factory), root / "base")
    adapter = make_adapter(base, root / "run_a", seed=1)
    return root, base, adapter


def test_fixed_generator_generates_nothing_for_the_second_checkpoint(two_checkpoints, tmp_path, generate_calls,
                                                                      one_thread):
    root, base, adapter = two_checkpoints
    gen = tmp_path / "generator"
    shutil.copytree(base, gen)
    cfg = fast_config(infills=f"model:{gen}", limit=2, frames=(3,))
    cache = tmp_path / "cache"
    evaluate([checkpoint_ref(base)], ["vcot"], cfg, cache)
    first = generate_calls["generator"]
    # 2 items x F=3: 2 pairs x 2 steps + 3 captions = 7 prompts per item
    assert first == 2 * 7
    evaluate([checkpoint_ref(adapter)], ["vcot"], cfg, cache)
    assert generate_calls["generator"] == first  # every infill came from the cache
    rows_a = read_rows(base / "eval/vcot/predictions.jsonl")
    rows_b = read_rows(adapter / "eval/vcot/predictions.jsonl")
    texts = lambda rows: [r["texts"] for r in rows]  # noqa: E731
    assert texts(rows_a) == texts(rows_b)  # same generator, same infills, different evaluated model
    assert [r["logliks"] for r in rows_a] != [r["logliks"] for r in rows_b]
    entries = [json.loads(line) for f in cache.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(entries) == 2 * 5 and len({e["key"] for e in entries}) == len(entries)
    assert {e["kind"] for e in entries} == {"transition", "caption"}
    assert all(set(e["steps"]) == {"common", "between"} for e in entries if e["kind"] == "transition")


def test_self_infills_are_cached_per_checkpoint(two_checkpoints, tmp_path, generate_calls, one_thread):
    root, base, adapter = two_checkpoints
    ckpt = tmp_path / "ck"
    shutil.copytree(adapter, ckpt)
    cfg = fast_config(limit=1, frames=(3,))
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    assert generate_calls["ck"] == 7
    shutil.rmtree(ckpt / "eval")  # start the evaluation over: the infills are still cached
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    assert generate_calls["ck"] == 7
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(limit=1, frames=(3,), infill_tokens=5), tmp_path / "cache")
    assert generate_calls["ck"] == 14  # other generation settings: a different cache key


def test_oracle_infills_are_the_ground_truth(two_checkpoints, tmp_path, generate_calls, one_thread):
    root, base, _ = two_checkpoints
    ckpt = shutil.copytree(base, tmp_path / "b")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(infills="oracle", limit=2), tmp_path / "cache")
    assert sum(generate_calls.values()) == 0
    from evalsuite.benchmarks.video_qa import Synthetic

    items = {i.id: i for i in Synthetic(0, 2, None).items}
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    for r in rows:
        meta, idx = items[r["item"]].meta, r["indices"]
        if r["condition"] == "vcot":
            assert r["texts"] == [item_oracle_transition(meta, a, b) for a, b in zip(idx, idx[1:])]
        elif r["condition"] == "text_only":  # the same infills, no frame shown
            sampled = Synthetic(0, 2, None).indices(items[r["item"]], r["frames"])
            assert idx == []
            assert r["texts"] == [item_oracle_transition(meta, a, b) for a, b in zip(sampled, sampled[1:])]
        elif r["condition"] == "caption":
            assert r["texts"] == [item_static_caption(meta, t) for t in idx]
    assert {r["condition"] for r in rows} >= {"vcot", "text_only", "caption"}


def test_file_infills(two_checkpoints, tmp_path, generate_calls, one_thread):
    root, base, _ = two_checkpoints
    from evalsuite.benchmarks.video_qa import Synthetic
    from data_recipes.video import uniform_indices

    item = Synthetic(0, 1, None).items[0]
    idx = uniform_indices(32, 3)
    lines = [{"video": item.id, "frames": [a, b], "text": f"infill {a}-{b}"} for a, b in zip(idx, idx[1:])]
    lines += [{"video": item.id, "frames": [t], "text": f"caption {t}"} for t in idx]
    path = tmp_path / "infills.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ckpt = shutil.copytree(base, tmp_path / "b")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(infills=f"file:{path}", limit=1, frames=(3,)),
             tmp_path / "cache")
    rows = {r["condition"]: r for r in read_rows(ckpt / "eval/vcot/predictions.jsonl")}
    assert rows["vcot"]["texts"] == [f"infill {a}-{b}" for a, b in zip(idx, idx[1:])]
    assert rows["caption"]["texts"] == [f"caption {t}" for t in idx]
    assert sum(generate_calls.values()) == 0
    # a pair the file lacks is an error that names the video and the frames
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[1:]))
    other = shutil.copytree(base, tmp_path / "c")
    with pytest.raises(InfillError, match=f"video {item.id} frames \\[{idx[0]}, {idx[1]}\\]"):
        evaluate([checkpoint_ref(other)], ["vcot"], fast_config(infills=f"file:{path}", limit=1, frames=(3,)),
                 tmp_path / "cache")


def test_each_process_appends_to_its_own_cache_file_and_reads_all(tmp_path):
    """Evaluations on several nodes share one cache directory on a network file system, where appends of
    two machines to one file can overwrite each other: every process writes a file of its own, and every
    cache reads them all (and the single file of earlier versions). Lines that are not entries (cut by a
    crash, or mangled) are skipped, not fatal."""
    import multiprocessing as mp
    import os

    from evalsuite.infills import InfillCache

    path = tmp_path / "cache" / "gen-abc123.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"key": "old", "text": "from the shared file"}) + "\n0.5\n[1, 2]\n{\"key\": \"cut")
    (tmp_path / "cache" / "gen-abc1234.x-1.jsonl").write_text(json.dumps({"key": "other", "text": "no"}) + "\n")

    def write(n: int) -> None:
        cache = InfillCache(path)
        for i in range(3):
            cache.put(f"p{n}-{i}", {"text": f"text {n} {i}"})

    procs = [mp.get_context("fork").Process(target=write, args=(n,)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    own = sorted(path.parent.glob("gen-abc123.*.jsonl"))
    assert [f.name.rsplit("-", 1)[1] for f in own] == sorted(f"{p.pid}.jsonl" for p in procs)
    assert all(len(f.read_text().splitlines()) == 3 for f in own)
    cache = InfillCache(path)
    assert set(cache.entries) == {"old"} | {f"p{n}-{i}" for n in range(2) for i in range(3)}
    assert cache.get("p1-2")["text"] == "text 1 2" and cache.get("other") is None
    cache.put("mine", {"text": "t"})
    assert cache.own.name.endswith(f"-{os.getpid()}.jsonl") and InfillCache(path).get("mine")["text"] == "t"


def test_two_hosts_named_alike_write_apart(tmp_path, monkeypatch):
    """Pod and node names often differ only past their 40th character, and pids repeat across containers:
    the cache file of each host is its own all the same."""
    import socket

    from evalsuite.infills import InfillCache

    cache = InfillCache(tmp_path / "gen-abc.jsonl")
    names = []
    for host in ("eval-job-7f9c2d-worker-0-nodepool-a100-80gb-us-east1-b-0001",
                 "eval-job-7f9c2d-worker-0-nodepool-a100-80gb-us-east1-b-0002"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        names.append(cache.own.name)
    assert names[0] != names[1]
