"""`python -m evalsuite export CKPT_DIR --format lmms-eval`: EgoSchema results and per-sample logs laid out as
lmms-eval writes them, from hand-made eval/vcot outputs and from a real tiny evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from calendar import timegm

import pytest

from data_recipes.synthetic import eval_item
from data_recipes.video import write_video
from evalsuite import comparisons, prompts
from evalsuite.checkpoints import checkpoint_ref, discover
from evalsuite.cli import main
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from evalsuite.tasks.vcot import CONTRASTS
from helpers import fast_config, tiny_model

WHEN = timegm((2024, 5, 6, 7, 8, 9))  # metrics.json's mtime: the files' date id
DATE = "20240506_070809"
QUESTIONS = {"q0": ("what happens first?", ["it moves up", "it turns red", "it grows", "it shrinks", "nothing"], 1),
             "q1": ("what happens last?", ["a", "b", "c", "d", "e"], 3),
             "q2": ("how many shapes?", ["one", "two", "three", "four", "five"], 0)}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row(item, cond, pred, output, extraction, video_input="images"):
    indices = [4, 8, 12, 16, 20]
    steps = [f"{item} step {i}" for i in range(4)]
    texts = {"base": None, "caption": [f"{item} frame {i}" for i in indices], "vcot": steps, "blind": None,
             "text_only": steps, "reversed": None}[cond]
    shown = {"reversed": indices[::-1], "blind": [], "text_only": []}.get(cond, indices)
    video_input = "none" if cond in ("blind", "text_only") else video_input
    return {"key": f"{item}|f5|{cond}", "item": item, "video": item, "frames": 5, "condition": cond, "kind": "all",
            "indices": shown, "answer": QUESTIONS[item][2], "texts": texts, "video_input": video_input,
            "pred": pred, "output": output, "extraction": extraction, "correct": pred == QUESTIONS[item][2]}


@pytest.fixture
def ckpt_dir(tmp_path):
    """CKPT_DIR with one run whose eval/vcot holds the files an EgoSchema paper-protocol evaluation writes."""
    data = tmp_path / "egoschema"
    data.mkdir()
    (data / "questions.json").write_text(json.dumps(
        [{"q_uid": uid, "question": q, **{f"option {i}": o for i, o in enumerate(opts)}}
         for uid, (q, opts, _) in QUESTIONS.items()]))
    rows = [_row("q0", "base", 1, "B", "letter", video_input="native"),
            _row("q0", "caption", None, "no idea at all", "failed"),
            _row("q0", "vcot", 1, "B. it turns red", "letter"),
            _row("q1", "base", 0, "A", "letter"),
            _row("q1", "caption", 3, "D", "letter"),
            _row("q1", "vcot", 3, "something the judge read", "judge"),
            _row("q0", "blind", 0, "A", "letter"),
            _row("q0", "text_only", 1, "B", "letter"),
            _row("q0", "reversed", 2, "C", "letter", video_input="native"),
            _row("q1", "blind", 3, "D", "letter"),
            _row("q1", "text_only", 0, "A", "letter"),
            _row("q1", "reversed", 3, "D", "letter")]
    rows += [{"key": f"q2|f5|{c}", "item": "q2", "video": "q2", "frames": 5, "condition": c,
              "error": "cannot decode q2.mp4"} for c in prompts.CONDITIONS]  # not in the paired set
    settings = {"task": "vcot", "benchmark": "egoschema", "data": str(data), "frames": [5], "limit": None,
                "seed": 0, "n_boot": 50, "protocol": "paper", "scoring": "generate", "answer_tokens": 24,
                "answer_instruction": prompts.ANSWER_HASH, "judge": "/models/judge@f00+abc",
                "infills": "model:/models/gen@f00+rephraser:/models/reph@f00", "prompts": prompts.PROMPTS_HASH,
                "item_set": "3@0123456789ab", "checkpoint": {"fingerprint": "f1", "base_fingerprint": "f0"}}
    metrics = {"task": "vcot", "settings": settings, "n_rows": len(rows),
               "checkpoint": {"name": "video_run", "model_path": "/ckpt/video_run", "base_model": "/models/base",
                              "fingerprint": "f1"},
               "metrics": comparisons.summarize(rows, (5,), prompts.CONDITIONS, CONTRASTS, n_boot=50, seed=0),
               "errors": [{"id": "q2", "reason": "cannot decode q2.mp4"}],
               "problems": [{"id": "q3", "reason": "missing video"}]}
    root = tmp_path / "ckpt"
    out = root / "video_run" / "eval" / "vcot"
    out.mkdir(parents=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "metrics.json").write_text(json.dumps(metrics))
    os.utime(out / "metrics.json", (WHEN, WHEN))
    return root, metrics


def test_export_writes_lmms_eval_results_and_sample_logs(ckpt_dir, capsys):
    root, metrics = ckpt_dir
    assert main(["export", str(root), "--format", "lmms-eval"]) == 0
    folder = root / "lmms-eval" / "video_run"
    tasks = [f"egoschema_subset_f5_{c}" for c in prompts.CONDITIONS]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{DATE}_results.json"] + [f"{DATE}_samples_{t}.jsonl" for t in tasks])
    assert f"wrote {folder / f'{DATE}_results.json'}" in capsys.readouterr().out

    res = json.loads((folder / f"{DATE}_results.json").read_text())
    assert set(res["results"]) == set(tasks) and res["group_subtasks"] == {t: [] for t in tasks}
    # q0, q1 (q2 errored, q3 had no video)
    expected = {"base": [1, 0], "caption": [0, 1], "vcot": [1, 1], "blind": [0, 1], "text_only": [1, 0],
                "reversed": [0, 1]}
    for cond, scores in expected.items():
        got = res["results"][f"egoschema_subset_f5_{cond}"]
        mean = sum(scores) / 2
        assert got["score,none"] == mean == metrics["metrics"]["f5"][f"acc_{cond}"]["value"]
        assert got["score_stderr,none"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores) / 1 / 2))
    t = "egoschema_subset_f5_vcot"
    assert res["n-samples"][t] == {"original": 4, "effective": 2}
    assert res["n-shot"][t] == 0 and res["higher_is_better"][t] == {"score": True}
    cfg = res["configs"][t]
    assert cfg["output_type"] == "generate_until" and cfg["generation_kwargs"]["max_new_tokens"] == 24
    assert cfg["metric_list"] == [{"metric": "score", "aggregation": "mean", "higher_is_better": True}]
    recorded = cfg["metadata"]["evalsuite"]
    assert (recorded["protocol"], recorded["scoring"], recorded["condition"], recorded["num_frames"]) == \
        ("paper", "generate", "vcot", 5)
    assert recorded["judge"] == "/models/judge@f00+abc" and "checkpoint" not in recorded
    assert res["config"]["model_args"] == "pretrained=/models/base,peft=/ckpt/video_run"
    assert res["model_name"] == "video_run" and res["date"] == WHEN
    assert res["exported_by"]["protocol"] == "paper"

    samples = {c: read_rows(folder / f"{DATE}_samples_egoschema_subset_f5_{c}.jsonl") for c in prompts.CONDITIONS}
    assert [s["doc_id"] for s in samples["base"]] == [0, 1]  # q2 errored: not in the paired set
    failed = samples["caption"][0]
    assert failed["filtered_resps"] == ["no idea at all"] and failed["target"] == "1"
    assert failed["score"] == {"pred": -1, "ground_truth": 1} and failed["submission"] == {"q0": -1}
    assert failed["evalsuite"]["extraction"] == "failed" and failed["target_hash"] == sha("1")
    judged = samples["vcot"][1]
    assert judged["score"] == {"pred": 3, "ground_truth": 3} and judged["evalsuite"]["extraction"] == "judge"
    # the same question has the same doc_hash in every condition, another question another
    assert len({samples[c][0]["doc_hash"] for c in prompts.CONDITIONS}) == 1
    assert samples["base"][0]["doc_hash"] != samples["base"][1]["doc_hash"]
    # inputs: the user turn as text, frames as markers, the letter instruction last
    block = prompts.question_block(*QUESTIONS["q0"][:2])
    assert samples["base"][0]["input"] == f"<video>{block}\n{prompts.ANSWER_LETTER}"  # fed as one clip
    assert samples["base"][1]["input"].count("<image>") == 5
    vcot_input = samples["vcot"][0]["input"]
    assert vcot_input.startswith("<image>q0 step 0\n<image>q0 step 1\n") and vcot_input.count("<image>") == 5
    assert vcot_input.endswith(f"{block}\n{prompts.ANSWER_LETTER}")
    assert samples["blind"][0]["input"] == f"{block}\n{prompts.ANSWER_LETTER}"  # no frame, no infill
    steps = "".join(f"q0 step {i}\n" for i in range(4))  # the infills alone, one line each
    assert samples["text_only"][0]["input"] == f"{steps}{block}\n{prompts.ANSWER_LETTER}"
    assert samples["reversed"][0]["input"] == f"<video>{block}\n{prompts.ANSWER_LETTER}"
    assert samples["reversed"][0]["evalsuite"]["frame_indices"] == [20, 16, 12, 8, 4]
    assert all(s["prompt_hash"] == sha(s["input"]) for c in samples for s in samples[c])
    assert res["task_hashes"][t] == sha("".join(f"sample_{i}{s['doc_hash']}" for i, s in enumerate(samples["vcot"])))

    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["export", str(root / "video_run"), "--out", str(root / "lmms-eval")]) == 0  # one checkpoint
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the same files, byte for byte
    assert [r.name for r in discover(root)] == []  # the export directory is never taken for a checkpoint


def test_export_skips_results_of_weights_the_checkpoint_no_longer_holds(ckpt_dir, capsys):
    """The run was trained again in place after its evaluation (its weights' fingerprint is not the recorded
    one): exporting its results would label the old weights' answers with the new checkpoint."""
    root, _ = ckpt_dir
    run = root / "video_run"
    (run / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (run / "model.safetensors").write_bytes(b"retrained weights")
    assert main(["export", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{run}: its results were made on other weights than it holds now (evaluate it again)" in err
    assert not (root / "lmms-eval").exists()


def test_one_checkpoint_that_cannot_be_exported_does_not_stop_the_others(ckpt_dir, capsys):
    import shutil

    root, _ = ckpt_dir
    bad = root / "a_run"  # sorted first
    shutil.copytree(root / "video_run", bad)
    (bad / "eval" / "vcot" / "predictions.jsonl").write_text("")
    assert main(["export", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'eval' / 'vcot' / 'predictions.jsonl'}: missing" in err and "the other checkpoints were exported" in err
    assert (root / "lmms-eval" / "video_run").is_dir() and not (root / "lmms-eval" / "a_run").exists()


def test_export_refuses_what_it_cannot_export_faithfully(ckpt_dir, tmp_path, capsys):
    root, metrics = ckpt_dir
    m = root / "video_run" / "eval" / "vcot" / "metrics.json"
    tampered = json.loads(m.read_text())
    tampered["metrics"]["f5"]["acc_vcot"]["value"] = 0.25
    m.write_text(json.dumps(tampered))
    assert main(["export", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "F=5 vcot: the predictions give accuracy 1.0, metrics.json says 0.25" in err

    synthetic = json.loads(json.dumps(metrics))
    synthetic["settings"]["benchmark"] = "synthetic"
    m.write_text(json.dumps(synthetic))
    assert main(["export", str(root)]) == 2
    assert "only EgoSchema evaluations have an lmms-eval counterpart" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(empty)]) == 2
    assert "no eval/vcot/metrics.json under" in capsys.readouterr().err


def test_export_of_a_real_loglik_evaluation(tmp_path, tmp_path_factory, one_thread):
    data = tmp_path / "egoschema"
    (data / "videos").mkdir(parents=True)
    items = {f"q{i}": eval_item(0, i) for i in range(2)}
    for uid, it in items.items():
        write_video(data / "videos" / f"{uid}.mp4", it["frames"][:12])
    (data / "questions.json").write_text(json.dumps(
        [{"q_uid": uid, "question": it["question"], **{f"option {k}": it["options"][k] for k in range(5)}}
         for uid, it in items.items()]))
    (data / "subset_answers.json").write_text(json.dumps({uid: it["answer"] for uid, it in items.items()}))
    root = tmp_path / "ckpt"
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), root / "base")
    cfg = fast_config(benchmark="egoschema", data=str(data), protocol="custom", limit=None, frames=(3,))
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    assert main(["export", str(root)]) == 0
    metrics = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    rows = {r["key"]: r for r in read_rows(ckpt / "eval/vcot/predictions.jsonl")}
    (results,) = (root / "lmms-eval" / "base").glob("*_results.json")
    res = json.loads(results.read_text())
    for cond in prompts.CONDITIONS:
        task = f"egoschema_subset_mcppl_f3_{cond}"  # lmms-eval's option-ranking EgoSchema task
        assert res["results"][task]["score,none"] == metrics["metrics"]["f3"][f"acc_{cond}"]["value"]
        assert res["configs"][task]["output_type"] == "multiple_choice"
        assert res["configs"][task]["metadata"]["evalsuite"]["loglik_norm"] == cfg.loglik_norm
        samples = read_rows(results.with_name(results.name.replace("results.json", f"samples_{task}.jsonl")))
        assert len(samples) == 2
        for s in samples:
            row = rows[s["evalsuite"]["key"]]
            assert s["filtered_resps"] == row["logliks"] and len(s["filtered_resps"]) == 5
            assert s["score"] == {"pred": row["pred"], "ground_truth": row["answer"]}
            assert "input" in s and s["input"].count("<image>") == (0 if cond in prompts.FRAMELESS else 3)
