"""What the user looks at: the report, and the MLflow UI serving training, evaluation and comparison runs.

One small pipeline (video run, image run matched to it, every evaluation, report) feeds all tests
here; the MLflow server is started on loopback only, like `make ui`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    store = d / "mlruns" / "mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    train = {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False, "projector_lr": 2e-4, "num_workers": 0, "ds_config": "none",
             "save_steps": 0, "experiment": "ui-test"}
    (d / "video_mini.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                       "samples": 24, "frames": 3, "train": {**train, "max_steps": 3}}))
    (d / "image_mini.yaml").write_text(yaml.safe_dump({"kind": "image", "sources": [{"type": "synthetic_image"}],
                                                       "samples": 120, "train": train}))
    lora = str(REPO / "train" / "lora.py")
    _run([sys.executable, lora, "--recipe", "video_mini.yaml"], d, env)
    _run([sys.executable, lora, "--recipe", "image_mini.yaml", "--match_to", "ckpt/video_mini",
          "--match_by", "visual_tokens"], d, env)
    out = _run([sys.executable, "-m", "evalsuite", "all", "ckpt", "--infills", "oracle", "--limit", "6",
                "--frames", "3", "--n-boot", "200", "--no-progress"], d, env)
    return d, store, out


def test_report_has_every_section_and_legible_figures(pipeline):
    d, _, out = pipeline
    report = (d / "ckpt" / "report.md").read_text()
    assert "| video_mini | video | 3 |" in report and "| image_mini | image | 3 |" in report
    assert "### image_mini (image run) vs video_mini (video run)" in report
    assert "stopped at video_mini's consumption of **visual_tokens**" in report
    assert "| visual_tokens |" in report and "| 1.000 |" in report  # matched: ratio exactly 1
    assert "gain(image) - gain(video)" in report
    assert "## vCoT on long-form video QA" in out  # `all` prints the main table
    csv_text = (d / "ckpt" / "report" / "metrics.csv").read_text()
    assert "vcot,f3/gain" in csv_text
    from PIL import Image

    pngs = sorted((d / "ckpt" / "report").glob("*.png"))
    assert "vcot_gain.png" in [p.name for p in pngs]
    for p in pngs:
        im = Image.open(p).convert("L")
        assert im.size[0] >= 600 and im.size[1] >= 400
        assert len(set(im.getdata())) > 20  # text, bars and axes, not a blank canvas


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(pipeline):
    d, store, _ = pipeline
    port = _free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{store}", "--default-artifact-root", str(store.parent / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow ui did not answer on loopback within 90 s")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def _api(base: str, path: str, body: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}"
    if body is None:
        req = urllib.request.Request(url)
    else:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_ui_serves_aligned_runs_and_report_artifacts(server):
    exp = _api(server, "experiments/get-by-name?experiment_name=ui-test")["experiment"]
    runs = _api(server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert {"video_mini", "image_mini", "eval-video_mini", "eval-image_mini"} <= set(by_name)
    comparison = [r for r in runs if r["info"]["run_name"].startswith("comparison-")]
    assert comparison, "no comparison run"

    def metric_names(run):
        return {m["key"] for m in run["data"].get("metrics", [])}

    # The evaluation runs of both checkpoints carry the same metric names: MLflow's compare view lines them up.
    ev_img, ev_vid = metric_names(by_name["eval-image_mini"]), metric_names(by_name["eval-video_mini"])
    assert "vcot/f3/gain" in ev_img and ev_img == ev_vid
    assert {"loss", "consumed/visual_tokens"} <= metric_names(by_name["image_mini"]) & metric_names(by_name["video_mini"])
    hist = _api(server, f"metrics/get-history?run_id={by_name['image_mini']['info']['run_id']}&metric_key=loss")
    assert len(hist["metrics"]) >= 3
    tags = {t["key"]: t["value"] for t in by_name["eval-image_mini"]["data"]["tags"]}
    assert tags.get("mlflow.parentRunId") == by_name["image_mini"]["info"]["run_id"]

    arts = _api(server, f"artifacts/list?run_id={comparison[0]['info']['run_id']}&path=report")
    names = {f["path"] for f in arts.get("files", [])}
    assert "report/report.md" in names
    inner = _api(server, f"artifacts/list?run_id={comparison[0]['info']['run_id']}&path=report/report")
    assert any(f["path"].endswith("vcot_gain.png") for f in inner.get("files", []))


# Installing the browser is a set-up step (`make browser`), never something a test does.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found: run `make browser`")
def test_compare_view_in_headless_chromium(server, pipeline):
    d = pipeline[0]
    exp = _api(server, "experiments/get-by-name?experiment_name=ui-test")["experiment"]
    runs = _api(server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    ids = [r["info"]["run_id"] for r in runs if r["info"]["run_name"] in ("eval-image_mini", "eval-video_mini")]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp["experiment_id"]])})
    url = f"{server}/#/compare-runs?{query}"
    shot = d / "compare.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={d / 'chrome-profile'}", "--window-size=1400,1000", "--virtual-time-budget=15000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert "eval-image_mini" in dom and "eval-video_mini" in dom
    assert "Comparing 2 Runs" in dom
    # The page renders the shared metric names (its metric table is virtualised, so not all of them).
    assert any(name in dom for name in ("vcot/f3/gain", "iraven/acc", "shuffle/f3/drop_text"))
    from PIL import Image

    im = Image.open(shot).convert("L")
    assert im.size == (1400, 1000) and len(set(im.getdata())) > 20
    if os.environ.get("BETWEENFRAMES_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["BETWEENFRAMES_KEEP_SCREENSHOT"])  # to look at it by eye
