"""EgoSchema end to end on a directory written by the test (mp4s from the synthetic generator)."""

from __future__ import annotations

import json
import shutil

import pytest

from data_recipes.synthetic import eval_item
from data_recipes.video import count_frames, uniform_indices, write_video
from evalsuite.benchmarks.video_qa import BenchmarkError, EgoSchema
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from helpers import fast_config, tiny_model


def question(uid, item, n_options=5):
    return {"q_uid": uid, "question": item["question"], **{f"option {i}": item["options"][i] for i in range(n_options)}}


@pytest.fixture
def egoschema_dir(tmp_path):
    root = tmp_path / "egoschema"
    (root / "videos").mkdir(parents=True)
    items = {f"q{i}": eval_item(0, i) for i in range(5)}
    qs = [question(uid, it) for uid, it in items.items()]
    answers = {uid: it["answer"] for uid, it in items.items() if uid != "q4"}  # q4: hidden answer
    for uid in ("q0", "q1", "q2", "q4"):  # q3's video is missing
        write_video(root / "videos" / f"{uid}.mp4", items[uid]["frames"][:20 + int(uid[1])])
    (root / "videos" / "q2.mp4").write_bytes(b"not a video at all")  # present but undecodable
    (root / "questions.json").write_text(json.dumps(qs))
    (root / "subset_answers.json").write_text(json.dumps(answers))
    return root, items


def test_egoschema_end_to_end_with_missing_and_broken_videos(egoschema_dir, tmp_path, tmp_path_factory,
                                                               one_thread):
    root, items = egoschema_dir
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    cfg = fast_config(benchmark="egoschema", data=str(root), protocol="custom", limit=None, frames=(3, 5), max_pixels=64 * 64)
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    # answered: q0..q3; q3 has no video (reported, not dropped silently), q2 cannot be decoded
    assert m["problems"] == [{"id": "q3", "reason": f"missing video {root / 'videos' / 'q3.mp4'}"}]
    assert [e["id"] for e in m["errors"]] == ["q2"] and "q2.mp4" in m["errors"][0]["reason"]
    assert m["settings"]["unanswered"] == 1 and m["settings"]["benchmark"] == "egoschema"
    assert m["settings"]["max_pixels"] == 64 * 64 and m["settings"]["image_size"] is None
    assert m["metrics"]["f3"]["n_items"] == m["metrics"]["f5"]["n_items"] == 2
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert {r["item"] for r in rows} == {"q0", "q1", "q2"} and len(rows) == 3 * 2 * 6
    for r in rows:
        if r["item"] == "q2":
            assert r["error"]
            continue
        n = count_frames(root / "videos" / f"{r['item']}.mp4")
        uniform = uniform_indices(n, r["frames"])
        assert uniform == [int(i * n / (r["frames"] + 1)) for i in range(1, r["frames"] + 1)]
        assert r["indices"] == {"reversed": uniform[::-1], "blind": [], "text_only": []}.get(r["condition"], uniform)
        assert r["answer"] == items[r["item"]]["answer"] and r["kind"] == "all" and "reversed_answer" not in r
        if r["condition"] in ("vcot", "text_only"):
            assert len(r["texts"]) == r["frames"] - 1
    # no kinds on EgoSchema: no per-kind blocks; the floor from the untrained guessers only
    assert "by_kind" not in m["metrics"]
    floor = m["metrics"]["floors"]["guesser"]
    assert floor["n"] == 2 and "prior" not in floor["per_guesser"] and floor["by_kind"] == {}


def test_egoschema_errors_name_the_file_and_question(egoschema_dir):
    root, items = egoschema_dir
    qs = json.loads((root / "questions.json").read_text())
    qs[1] = question("q1", items["q1"], n_options=4)
    (root / "questions.json").write_text(json.dumps(qs))
    with pytest.raises(BenchmarkError, match=r"questions\.json: q_uid q1 has options \[0, 1, 2, 3\]"):
        EgoSchema(root, None, None)
    (root / "questions.json").unlink()
    with pytest.raises(BenchmarkError, match="questions.json: missing"):
        EgoSchema(root, None, None)
