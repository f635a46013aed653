"""The report from hand-written metrics.json files: the image-vs-video contrast only between checkpoints
evaluated the same way (else the settings that differ, and no number), and the failure rate with strict and
random-fill accuracy of generate scoring (no models run)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from evalsuite import stats
from evalsuite.comparisons import summarize
from evalsuite.report.evaluation import discover, evaluation_differences, matched_pairs, pairs_section, write_report

CONDITIONS = ("base", "caption", "vcot")
CONTRASTS = {"gain": ("vcot", "base")}
ANSWERS = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
# image run: vcot right on items 0-5, base on 0-1 (gain +0.4); video run: vcot = base on items 0-2 (gain 0)
PATTERNS = {"image": {"base": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0], "vcot": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]},
            "video": {"base": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], "vcot": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]}}

SETTINGS = {"task": "vcot", "benchmark": "egoschema", "data": "/data/egoschema", "limit": 10, "frames": [5],
            "seed": 0, "protocol": "paper", "scoring": "generate", "infills": "model:/models/gen@abc+rephraser:x",
            "answer_tokens": 24, "judge": "/models/judge@def", "n_boot": 200, "max_pixels": 200704,
            "precision": "bf16", "prompts": "p1", "infill_tokens": 64}


def _rows(kind: str, failed_vcot: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    for cond in CONDITIONS:
        right = PATTERNS[kind]["base" if cond == "caption" else cond]
        for i, (ok, answer) in enumerate(zip(right, ANSWERS)):
            pred = answer if ok else (answer + 1) % 5
            extraction = "letter"
            if cond == "vcot" and i in failed_vcot:
                pred, extraction = None, "failed"
            rows.append({"item": f"q{i}", "frames": 5, "condition": cond, "answer": answer, "pred": pred,
                         "correct": pred == answer, "extraction": extraction})
    return rows


def _checkpoint(root, name: str, kind: str, settings: dict, failed_vcot: tuple[int, ...] = (), match=None):
    """A checkpoint dir: run.json, eval/vcot/predictions.jsonl and a metrics.json with the given settings."""
    d = root / name
    (d / "eval" / "vcot").mkdir(parents=True)
    run = {"kind": kind, "consumed": {"samples": 100, "visual_tokens": 5000}}
    if match:
        run["match"] = {"reference": {"checkpoint": str(root / match)}, "unit": "visual_tokens", "target": 5000,
                        "achieved": 5000, "rel_error": 0.0}
    (d / "run.json").write_text(json.dumps(run))
    rows = _rows(kind, failed_vcot)
    if settings.get("scoring") == "loglik":
        for r in rows:
            del r["extraction"]
    (d / "eval/vcot/predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = summarize(rows, (5,), CONDITIONS, CONTRASTS, n_boot=200, seed=0)
    (d / "eval/vcot/metrics.json").write_text(json.dumps({"settings": settings, "metrics": metrics}))
    return d


def _pair(root, image_settings: dict, video_settings: dict, **kw):
    _checkpoint(root, "video_run", "video", video_settings)
    _checkpoint(root, "image_run", "image", image_settings, match="video_run", **kw)
    (pair,) = matched_pairs(discover(root))
    return pair


def _contrast_section(report: str) -> str:
    return report.split("## Image run vs video run")[1].split("\n## ")[0]


def _seeds(root, with_ids: bool):
    """seed0/ and seed1/, each with a video run and an image run trained in that directory with
    `--match_to video_run` (the path as given, relative), with or without MLflow run ids."""
    for seed in (0, 1):
        for name, kind in (("video_run", "video"), ("image_run", "image")):
            (root / f"seed{seed}").mkdir(parents=True, exist_ok=True)
            d = _checkpoint(root / f"seed{seed}", name, kind, SETTINGS)  # evaluated; its run.json replaced below
            run = {"kind": kind, "seed": seed, "consumed": {"samples": 100, "visual_tokens": 5000}}
            if with_ids:
                run["mlflow_run_id"] = f"{name}-{seed}"
            if kind == "image":
                run["match"] = {"reference": {"checkpoint": "video_run", "mlflow_run_id":
                                              f"video_run-{seed}" if with_ids else None},
                                "unit": "visual_tokens", "target": 5000, "achieved": 5000, "rel_error": 0.0}
            (d / "run.json").write_text(json.dumps(run))


def _pair_names(root) -> list[tuple[str, str]]:
    return [(p.subject.name, p.video.name) for p in matched_pairs(discover(root))]


def test_each_seeds_image_run_pairs_with_its_own_video_run(tmp_path, monkeypatch):
    """`--match_to video_run` run in seed0/ and in seed1/ records the same relative path. The MLflow run id
    decides; without one the path is read from the run's own directory first, and a path that could be
    either seed's video run pairs nothing and is named in the report, never a run of another seed."""
    ids, no_ids = tmp_path / "ids", tmp_path / "no_ids"
    _seeds(ids, with_ids=True)
    _seeds(no_ids, with_ids=False)
    want = [("seed0/image_run", "seed0/video_run"), ("seed1/image_run", "seed1/video_run")]
    for cwd in (tmp_path, ids / "seed0"):
        monkeypatch.chdir(cwd)
        assert sorted(_pair_names(ids)) == want
    monkeypatch.chdir(tmp_path)
    assert sorted(_pair_names(no_ids)) == want
    monkeypatch.chdir(no_ids / "seed0")  # from here "video_run" is also seed0's: seed1's image run is ambiguous
    assert _pair_names(no_ids) == [("seed0/image_run", "seed0/video_run")]
    report = write_report(no_ids, track=False).read_text()
    assert "**Matched runs without their reference here**" in report
    assert "`seed1/image_run` (matched to `video_run`)" in report and "`seed0/image_run` (matched" not in report


def test_results_of_weights_the_directory_no_longer_holds_are_left_out(tmp_path):
    """A run trained again in place (a larger budget, a restart) keeps its eval/: until it is evaluated again
    those results are of the old weights, and while it trains its adapter and run.json are moved aside. Each
    metrics.json records the fingerprint of the weights it was made on: results of other weights are left
    out and named, never shown as the new weights' (nor the half-moved run shown as a base model)."""
    from evalsuite.checkpoints import fingerprint

    video = _checkpoint(tmp_path, "video_run", "video", SETTINGS)
    image = _checkpoint(tmp_path, "image_run", "image", SETTINGS, match="video_run")
    for d in (video, image):  # full finetunes: config.json and safetensors beside run.json
        (d / "config.json").write_text(json.dumps({"model_type": "llava"}))
        (d / "model.safetensors").write_bytes(b"weights v1")
        m = json.loads((d / "eval/vcot/metrics.json").read_text())
        m["settings"]["checkpoint"] = {"fingerprint": fingerprint(d)}
        m["checkpoint"] = {"name": d.name, "role": "full", "fingerprint": fingerprint(d)}
        (d / "eval/vcot/metrics.json").write_text(json.dumps(m))
    report = write_report(tmp_path, track=False).read_text()
    assert "Left out" not in report and "gain(image) - gain(video) |" in _contrast_section(report)
    # results kept without their weights (eval/ and run.json copied off the cluster) are not judged
    (video / "model.safetensors").rename(tmp_path / "video_weights")
    assert "Left out" not in write_report(tmp_path, track=False).read_text()
    (tmp_path / "video_weights").rename(video / "model.safetensors")
    (image / "model.safetensors").write_bytes(b"weights v2, retrained")
    report = write_report(tmp_path, track=False).read_text()
    assert "**Left out: results of other weights**" in report and "`image_run` (vcot)" in report
    assert "1 checkpoint(s): `video_run` (video run)" in report
    assert "gain(image) - gain(video) |" not in report
    (video / "model.safetensors").unlink()  # training again: the weights moved aside
    (video / "run.json").unlink()
    report = write_report(tmp_path, track=False).read_text()
    assert "`video_run` (vcot)" in report and "0 checkpoint(s)" in report and "base model" not in report


def test_a_report_of_one_checkpoint_names_it(tmp_path):
    _checkpoint(tmp_path, "video_100k", "video", SETTINGS)
    (ckpt,) = discover(tmp_path / "video_100k")
    assert ckpt.name == "video_100k"
    assert "`video_100k` (video run)" in write_report(tmp_path / "video_100k", track=False).read_text()


def test_same_evaluation_gives_the_contrast_even_when_frames_took_different_paths(tmp_path):
    image = SETTINGS | {"video_input": {c: "images" for c in CONDITIONS}}
    video = SETTINGS | {"video_input": {"base": "native", "caption": "images", "vcot": "images"}}
    pair = _pair(tmp_path, image, video)
    assert evaluation_differences(image, video) == []
    lines, metrics = pairs_section([pair])
    expected = stats.contrast_of_differences(PATTERNS["image"]["vcot"], PATTERNS["image"]["base"],
                                             PATTERNS["video"]["vcot"], PATTERNS["video"]["base"], seed=0)
    assert expected.value == pytest.approx(0.4)
    # the rows carry no item kind: the contrast is over all items, with the evaluations' n_boot and seed
    expected = stats.contrast_of_differences(PATTERNS["image"]["vcot"], PATTERNS["image"]["base"],
                                             PATTERNS["video"]["vcot"], PATTERNS["video"]["base"],
                                             n_boot=SETTINGS["n_boot"], seed=SETTINGS["seed"])
    key = "contrast/image_run_vs_video_run/f1/overall/f5/contrast"
    assert metrics[f"{key}/value"] == expected.value
    assert metrics[f"{key}/ci_low"] == expected.ci_low and metrics[f"{key}/ci_high"] == expected.ci_high
    assert not any("/temporal/" in k for k in metrics)
    section = _contrast_section(write_report(tmp_path, track=False).read_text())
    (row,) = [line for line in section.splitlines() if line.startswith("| 5 | overall | 10 |")]
    assert row.split(" | ")[7].startswith("+40.0 [") and "No contrast" not in section
    assert "gain(image) - gain(video) |" in section


@pytest.mark.parametrize("change, setting, shown", [
    ({"protocol": "custom"}, "protocol", ("paper", "custom")),
    ({"scoring": "loglik", "loglik_norm": "mean"}, "scoring", ("generate", "loglik")),
    ({"infills": "self"}, "infills", ("model:/models/gen@abc+rephraser:x", "self")),
    ({"limit": 20}, "limit", ("10", "20")),
    ({"frames": [5, 10]}, "frames", ("5", "5, 10")),
    ({"seed": 1}, "seed", ("0", "1")),
    ({"data": "/other/egoschema"}, "data", ("/data/egoschema", "/other/egoschema")),
    ({"benchmark": "synthetic", "data": None}, "benchmark", ("egoschema", "synthetic")),
    ({"precision": "fp16"}, "precision", ("bf16", "fp16")),  # --precision auto on a V100 node beside an A100 one
    ({"judge": None}, "judge", ("/models/judge@def", "not set")),
    ({"answer_tokens": 256}, "answer_tokens", ("24", "256")),
    ({"infill_tokens": 128}, "infill_tokens", ("64", "128")),
    ({"prompts": "p2"}, "prompts", ("p1", "p2")),
])
def test_a_contrast_between_different_evaluations_is_refused_with_what_differs(tmp_path, change, setting, shown):
    video = SETTINGS | change
    pair = _pair(tmp_path, SETTINGS, video)
    differ = evaluation_differences(SETTINGS, video)
    assert setting in [k for k, _, _ in differ]
    lines, metrics = pairs_section([pair])
    assert metrics == {}  # no contrast is logged either
    section = _contrast_section(write_report(tmp_path, track=False).read_text())
    assert "**No contrast of the vCoT gains**" in section and f"`{setting}`" in section
    assert f"| {setting} | {shown[0]} | {shown[1]} |" in section
    if setting == "scoring":  # the normalisation the loglik side used is named, the generate side has none
        assert "| loglik_norm | not used (generate scoring) | mean |" in section
    assert "gain(image) - gain(video) |" not in section  # no table, no number
    assert not re.search(r"\| 5 \| [+-]\d", section)
    # the scale-match audit is still shown
    assert "| visual_tokens | 5000 | 5000 | 1.000 |" in section


def test_settings_recorded_later_are_compared_when_both_evaluations_have_them():
    """An evaluation made before precision (or the prompts' hash) was recorded is not refused for lacking it;
    infill_tokens does not count for oracle infills (written, not generated); I-RAVEN compares precision and
    its prompts too."""
    older = {k: v for k, v in SETTINGS.items() if k not in ("precision", "prompts")}
    assert evaluation_differences(older, SETTINGS | {"precision": "fp16"}) == []
    oracle = SETTINGS | {"infills": "oracle"}
    assert evaluation_differences(oracle, oracle | {"infill_tokens": 128}) == []
    from evalsuite.report.evaluation import iraven_differences

    iraven = {"data": "generated", "generator_seed": 0, "per_config": 10, "layout": "candidates",
              "protocol": "custom", "scoring": "loglik", "prompts": "i1", "precision": "bf16"}
    assert iraven_differences(iraven, iraven | {"precision": "fp16", "prompts": "i2"}) == [
        ("precision", "bf16", "fp16"), ("prompts", "i1", "i2")]
    assert iraven_differences({k: v for k, v in iraven.items() if k != "precision"}, iraven) == []


def test_loglik_normalisations_must_agree_and_an_unrecorded_one_was_a_sum(tmp_path):
    loglik = SETTINGS | {"protocol": "custom", "scoring": "loglik"}
    for norm in ("mean", "chars"):
        assert evaluation_differences(loglik | {"loglik_norm": "sum"}, loglik | {"loglik_norm": norm}) == [
            ("loglik_norm", "sum", norm)]
    assert evaluation_differences(loglik, loglik | {"loglik_norm": "sum"}) == []  # before the flag: summed
    assert evaluation_differences(loglik, loglik | {"loglik_norm": "mean"}) == [("loglik_norm", "sum", "mean")]
    # generate scoring does not use it, whatever is recorded
    assert evaluation_differences(SETTINGS | {"loglik_norm": "sum"}, SETTINGS | {"loglik_norm": "mean"}) == []
    pair = _pair(tmp_path, loglik | {"loglik_norm": "sum"}, loglik | {"loglik_norm": "mean"})
    assert pairs_section([pair])[1] == {}
    section = _contrast_section(write_report(tmp_path, track=False).read_text())
    assert "| loglik_norm | sum | mean |" in section


def test_a_missing_protocol_is_custom_and_item_digests_are_compared_when_both_have_one(tmp_path):
    custom = {k: v for k, v in SETTINGS.items() if k != "protocol"}
    assert evaluation_differences(custom, SETTINGS | {"protocol": "custom"}) == []
    assert evaluation_differences(custom, SETTINGS) == [("protocol", "custom", "paper")]
    assert evaluation_differences(SETTINGS | {"item_set": "10@aaa"}, SETTINGS | {"item_set": "10@bbb"}) == [
        ("item_set", "10@aaa", "10@bbb")]
    assert evaluation_differences(SETTINGS | {"item_set": "10@aaa"}, SETTINGS) == []  # recorded on one side only
    # several differences are all named
    assert [k for k, _, _ in evaluation_differences(SETTINGS, SETTINGS | {"seed": 3, "scoring": "loglik"})] == [
        "scoring", "loglik_norm", "seed"]


def test_generate_scoring_shows_failures_strict_and_random_fill_accuracy(tmp_path):
    _checkpoint(tmp_path, "gen", "image", SETTINGS, failed_vcot=(6, 7, 8))
    _checkpoint(tmp_path, "ll", "video", SETTINGS | {"protocol": "custom", "scoring": "loglik", "loglik_norm": "mean"})
    text = write_report(tmp_path, track=False).read_text()
    vcot = text.split("## vCoT")[1].split("\n## ")[0]
    assert "evaluated differently" in vcot
    assert "`gen`: benchmark `egoschema`, protocol `paper`, scoring `generate`" in vcot
    assert "`ll`: benchmark `egoschema`, protocol `custom`, scoring `loglik` (log-likelihood per token)" in vcot
    m = json.loads((tmp_path / "gen/eval/vcot/metrics.json").read_text())["metrics"]["f5"]
    assert m["failed_vcot"]["value"] == pytest.approx(0.3) and m["acc_vcot"]["value"] == pytest.approx(0.6)
    assert m["random_fill_vcot"]["value"] == pytest.approx(0.66)
    fill = m["random_fill_vcot"]
    row = (f"| gen | image | 5 | vCoT | 30.0 [{100 * m['failed_vcot']['ci_low']:.1f}, "
           f"{100 * m['failed_vcot']['ci_high']:.1f}] (3/10) | 60.0 [{100 * m['acc_vcot']['ci_low']:.1f}, "
           f"{100 * m['acc_vcot']['ci_high']:.1f}] | 66.0 [{100 * fill['ci_low']:.1f}, {100 * fill['ci_high']:.1f}] |")
    assert row in vcot
    assert "| gen | image | 5 | base | 0.0 [0.0, 0.0] (0/10) | 20.0 [" in vcot
    assert "| failed | strict | random-fill |" in vcot
    assert "`ll`: loglik scoring picks an option for every prompt, so there are no extraction failures" in vcot
    assert "| ll | video | 5 |" not in vcot.split("| failed | strict | random-fill |")[1]  # loglik has no failure rows
    csv_text = (tmp_path / "report/metrics.csv").read_text()
    assert "gen,image,vcot,f5/random_fill_vcot,0.66" in csv_text


def test_an_unrecorded_loglik_norm_is_reported_as_the_old_sum(tmp_path):
    _checkpoint(tmp_path, "old", "video", SETTINGS | {"protocol": "custom", "scoring": "loglik"})
    text = write_report(tmp_path, track=False).read_text()
    assert "scoring `loglik` (total log-likelihood: evaluated before --loglik-norm)" in text


def test_a_single_setup_is_stated_once(tmp_path):
    _checkpoint(tmp_path, "a", "image", SETTINGS)
    _checkpoint(tmp_path, "b", "video", SETTINGS | {"video_input": {"base": "native"}})
    vcot = write_report(tmp_path, track=False).read_text().split("## vCoT")[1].split("\n## ")[0]
    assert ("Evaluated with benchmark `egoschema`, protocol `paper`, scoring `generate`, infills "
            "`model:/models/gen@abc+rephraser:x`.") in vcot
    assert "evaluated differently" not in vcot


def test_outputs_moved_aside_by_a_rerun_are_not_read_as_tasks(tmp_path):
    """A rerun with other settings moves `eval/<task>` aside as `eval/<task>.stale-<hash>`: the report must
    read only the current outputs, and a checkpoint whose only outputs were moved aside is not evaluated."""
    import shutil

    from evalsuite.report.evaluation import metrics_csv

    d = _checkpoint(tmp_path, "video_run", "video", SETTINGS)
    shutil.copytree(d / "eval" / "vcot", d / "eval" / "vcot.stale-0123abcd")
    gone = _checkpoint(tmp_path, "old_run", "video", SETTINGS)
    (gone / "eval" / "vcot").rename(gone / "eval" / "vcot.stale-4567cdef")
    (ckpt,) = discover(tmp_path)
    assert ckpt.name == "video_run" and list(ckpt.metrics) == ["vcot"]
    rows = list(csv.reader(io.StringIO(metrics_csv([ckpt]))))[1:]
    assert rows and {r[2] for r in rows} == {"vcot"}


def test_a_match_without_an_ordered_video_run_pairs_no_findings(tmp_path):
    """A shuffled-frames run matched to the image run (`--match_to ckpt/image_run`) is no image-vs-video pair:
    the findings would call the image run the video run. Matched to the video run, it is the control's pair."""
    _checkpoint(tmp_path, "image_run", "image", SETTINGS)
    _checkpoint(tmp_path, "video_run", "video", SETTINGS)
    shuffled = _checkpoint(tmp_path, "shuffled_run", "video", SETTINGS, match="image_run")
    run = json.loads((shuffled / "run.json").read_text())
    (shuffled / "run.json").write_text(json.dumps(run | {"recipe": "video_shuffled_demo"}))
    assert matched_pairs(discover(tmp_path)) == []
    run["match"]["reference"]["checkpoint"] = str(tmp_path / "video_run")
    (shuffled / "run.json").write_text(json.dumps(run | {"recipe": "video_shuffled_demo"}))
    (pair,) = matched_pairs(discover(tmp_path))
    assert (pair.subject.name, pair.video.name, pair.subject.role) == ("shuffled_run", "video_run", "shuffled")


def test_a_store_that_is_down_does_not_fail_the_report(tmp_path, monkeypatch, capsys):
    """`python -m evalsuite report` writes the report, then logs the comparison to MLflow: a store that does not
    answer leaves the report written, says so, and does not raise (it used to end the command with a traceback
    after the files were written)."""
    import evalsuite.tracking

    _pair(tmp_path, SETTINGS, SETTINGS)

    def down(*a, **k):
        raise ConnectionError("Connection refused: mlflow:5000")

    monkeypatch.setattr(evalsuite.tracking, "log_comparison", down)
    out = write_report(tmp_path, track=True)
    assert out.is_file() and "## Findings" in out.read_text()
    assert "[mlflow] the comparison was not logged (ConnectionError: Connection refused: mlflow:5000)" in \
        capsys.readouterr().err

