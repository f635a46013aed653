"""Checkpoints as they exist: written by transformers' own classes, in both layouts transformers reads.

For every family in `train.families.FAMILIES` a tiny random model is saved with `model.save_pretrained`
and its processor, the family's HF processor class built from the PIL image processor and a tiny
tokenizer, with `processor.save_pretrained`. That is transformers 5's layout: one processor_config.json
with the image (and video) processor nested inside, chat_template.jinja. A second copy is rewritten to
the hub's older layout, as checkpoints saved by older transformers look (e.g. Qwen/Qwen2-VL-7B-Instruct):
preprocessor_config.json holding the image processor and `processor_class`, no processor_config.json,
chat_template.json. Both must load with `train.families.load_model`, encode a conversation with one
image identically, run a forward pass, and be accepted by evalsuite's checkpoint discovery.

The video-capable processors (LLaVA-NeXT-Video, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, InternVL) are
saved with a stand-in for their video processor (the real ones need torchvision, which is not
installed): it writes the nested `video_processor` entry a real save would, which the loader must skip.

Broken checkpoints give `error: ...` naming the file and what was expected, from both CLIs, exit 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from transformers.utils import PushToHubMixin

from data_recipes.processors import ProcessorLoadError, without_video_processor
from evalsuite.checkpoints import checkpoint_ref, discover
from train.chat import encode
from train.families import FAMILIES, FamilyError, load_model
from train.smoke import demo_frames
from train.toy.templates import chat_template
from train.toy.tiny import build_config, build_image_processor, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
ALL = sorted(FAMILIES)
CORPUS = ["what moves in the picture?", "the red circle moves right.", "a blue square stays still.",
          "describe the frame", "which shape is green?"] * 4

# What a processor's settings look like in a real checkpoint (they are per family, not per layout).
_SETTINGS = {
    "llava": dict(patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    "llava_next": dict(patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    "llava_next_video": dict(patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    "llava_onevision": dict(num_image_tokens=16, vision_feature_select_strategy="full"),
    "internvl": dict(image_seq_length=16),
}
_VIDEO_PROCESSOR = {"llava_next_video": "LlavaNextVideoVideoProcessor",
                    "llava_onevision": "LlavaOnevisionVideoProcessor", "qwen2_vl": "Qwen2VLVideoProcessor",
                    "qwen2_5_vl": "Qwen2VLVideoProcessor", "internvl": "InternVLVideoProcessor"}


class _SavedVideoProcessor(PushToHubMixin):
    """Stands in for a torchvision video processor when the processor is saved: what it serialises."""

    _auto_class = None

    def __init__(self, type_name: str):
        self.type_name = type_name

    def to_dict(self) -> dict:
        return {"video_processor_type": self.type_name, "do_resize": True, "do_sample_frames": False,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _conversation() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what moves in the picture?"}]},
            {"role": "assistant", "content": "the red circle moves right."}]


def write_hf_checkpoint(family_name: str, out: Path) -> Path:
    """A tiny checkpoint written by transformers' own `save_pretrained` (model and processor)."""
    fam = FAMILIES[family_name]
    tok = build_tokenizer(fam, CORPUS)
    torch.manual_seed(0)
    model = getattr(transformers, fam.model_class)(build_config(fam, tok, 64))
    model.save_pretrained(out)
    # The HF constructor type-checks the video part against a class that needs torchvision, even for
    # None: construct through the project's thin subclass (same class name), save with HF's own method.
    cls = without_video_processor(getattr(transformers, fam.processor_class))
    kwargs = dict(_SETTINGS.get(family_name, {}), chat_template=chat_template(fam.prompt_style, fam.image_placeholder))
    if family_name in _VIDEO_PROCESSOR:
        kwargs["video_processor"] = None
    processor = cls(image_processor=build_image_processor(fam, 64), tokenizer=tok, **kwargs)
    if family_name in _VIDEO_PROCESSOR:
        processor.video_processor = _SavedVideoProcessor(_VIDEO_PROCESSOR[family_name])
    processor.save_pretrained(out)
    assert not (out / "preprocessor_config.json").exists()
    saved = json.loads((out / "processor_config.json").read_text())
    assert saved["processor_class"] == fam.processor_class and isinstance(saved["image_processor"], dict)
    return out


def to_older_layout(src: Path, out: Path) -> Path:
    """The same checkpoint as hub repos saved by older transformers hold it."""
    shutil.copytree(src, out)
    cfg = json.loads((out / "processor_config.json").read_text())
    image = dict(cfg["image_processor"], processor_class=cfg["processor_class"])
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    if isinstance(cfg.get("video_processor"), dict):
        (out / "video_preprocessor_config.json").write_text(json.dumps(cfg["video_processor"], indent=2))
    (out / "processor_config.json").unlink()
    template = (out / "chat_template.jinja").read_text()
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    (out / "chat_template.jinja").unlink()
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    made = {}
    for name in ALL:
        hf = write_hf_checkpoint(name, root / "v5" / name)
        made[name] = {"transformers5": hf, "older": to_older_layout(hf, root / "older" / name)}
    return root, made


@pytest.mark.parametrize("family", ALL)
def test_both_layouts_load_encode_and_run(checkpoints, family):
    _, made = checkpoints
    encoded = {}
    for layout, d in made[family].items():
        model, processor, fam = load_model(d)
        assert fam.name == family and type(model).__name__ == FAMILIES[family].model_class
        assert type(processor).__name__ == FAMILIES[family].processor_class
        assert type(processor.image_processor).__name__.endswith("Pil")
        enc = encode(processor, [_conversation()], [demo_frames(1)])
        assert enc.visual_tokens[0] > 0 and enc.supervised_tokens[0] > 0
        with torch.no_grad():
            loss = model(**enc.inputs).loss
        assert math.isfinite(loss.item()), (layout, loss)
        encoded[layout] = enc.inputs
    a, b = encoded["transformers5"], encoded["older"]
    assert a.keys() == b.keys()
    for k in a:  # the two layouts are the same processor
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_same_tokens_as_transformers_auto_processor(checkpoints, family):
    """Where AutoProcessor works without torchvision, it encodes exactly as the project's loader does."""
    d = checkpoints[1][family]["transformers5"]
    _, ours, _ = load_model(d)
    auto = transformers.AutoProcessor.from_pretrained(d)
    text = ours.apply_chat_template(_conversation(), tokenize=False)
    want = auto(text=[text], images=[demo_frames(1)], return_tensors="pt")
    got = ours(text=[text], images=[demo_frames(1)], return_tensors="pt")
    assert torch.equal(want["input_ids"], got["input_ids"])
    assert torch.allclose(want["pixel_values"], got["pixel_values"])


def test_processor_class_named_nowhere_falls_back_to_the_model_type(checkpoints, tmp_path):
    from data_recipes.processors import load_processor

    d = shutil.copytree(checkpoints[1]["qwen2_vl"]["older"], tmp_path / "q")
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        cfg = json.loads((d / name).read_text())
        cfg.pop("processor_class", None)
        (d / name).write_text(json.dumps(cfg))
    assert type(load_processor(d)).__name__ == "Qwen2VLProcessor"


def test_evalsuite_discovers_both_layouts_as_base_models(checkpoints):
    root, made = checkpoints
    refs = discover(root)
    want = {d.resolve() for layouts in made.values() for d in layouts.values()}
    assert {r.model_path for r in refs} == want
    assert all(r.kind == "model" and r.is_base for r in refs)
    for layouts in made.values():
        for d in layouts.values():
            assert checkpoint_ref(d).kind == "model"


# --- checkpoints that cannot be loaded ------------------------------------------------------------

def _no_config(d: Path):
    (d / "config.json").unlink()


def _unknown_model_type(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="no_such_vlm")))


def _no_safetensors(d: Path):
    for f in d.glob("*.safetensors"):
        f.unlink()


def _unknown_processor_class(d: Path):
    cfg = json.loads((d / "processor_config.json").read_text())
    (d / "processor_config.json").write_text(json.dumps(dict(cfg, processor_class="NoSuchProcessor")))


def _corrupt_processor_json(d: Path):
    (d / "processor_config.json").write_text('{"processor_class": "LlavaProcessor", ')


def _corrupt_config_json(d: Path):
    (d / "config.json").write_text("{not json")


def _corrupt_preprocessor_json(d: Path):  # older layout
    (d / "preprocessor_config.json").write_text("[1, 2")


def _truncated_safetensors(d: Path):
    f = next(d.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:100])


# name -> (break it, layout, exception of load_model, what the message must say)
BROKEN = {
    "no_config": (_no_config, "transformers5", FamilyError, "config.json"),
    "unknown_model_type": (_unknown_model_type, "transformers5", FamilyError, "no_such_vlm"),
    "no_safetensors": (_no_safetensors, "transformers5", FamilyError, "safetensors"),
    "unknown_processor_class": (_unknown_processor_class, "transformers5", ProcessorLoadError, "NoSuchProcessor"),
    "corrupt_processor_config": (_corrupt_processor_json, "transformers5", ProcessorLoadError,
                                 "processor_config.json: not valid JSON"),
    "corrupt_config": (_corrupt_config_json, "transformers5", FamilyError, "config.json: not valid JSON"),
    "corrupt_preprocessor_config": (_corrupt_preprocessor_json, "older", ProcessorLoadError,
                                    "preprocessor_config.json: "),
    "truncated_safetensors": (_truncated_safetensors, "transformers5", FamilyError, "safetensors"),
}


@pytest.fixture(scope="module")
def broken(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for name, (breaker, layout, _, _) in BROKEN.items():
        d = root / name
        shutil.copytree(checkpoints[1]["llava"][layout], d)
        breaker(d)
        out[name] = d
    return out


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_checkpoint_raises_a_clear_error(broken, name):
    _, _, exc, says = BROKEN[name]
    with pytest.raises(exc) as e:
        load_model(broken[name])
    assert says in str(e.value)


# Each CLI start costs seconds of imports, so every broken checkpoint goes through one CLI in a
# subprocess (both CLIs see model, config and processor errors) and through evalsuite's CLI in-process.
SUBPROCESS = {
    "train": ["no_config", "unknown_processor_class", "corrupt_config", "truncated_safetensors"],
    "eval": ["unknown_model_type", "no_safetensors", "corrupt_processor_config", "corrupt_preprocessor_config"],
}
assert sorted(SUBPROCESS["train"] + SUBPROCESS["eval"]) == sorted(BROKEN)


@pytest.fixture(scope="module")
def cli_runs(broken, tmp_path_factory):
    """The subprocess runs of SUBPROCESS, concurrently."""
    work = tmp_path_factory.mktemp("cli")
    recipe = work / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 4,
                                      "frames": 2, "shard_size": 4, "image_size": 64}))
    from data_recipes.build import build
    from data_recipes.recipe import load_recipe

    build(load_recipe(str(recipe)), work / "shards" / "tiny", workers=1)  # so the trainer reaches the model
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    commands = {}
    for name in SUBPROCESS["train"]:
        commands[("train", name)] = [sys.executable, str(REPO / "train" / "lora.py"), "--recipe", str(recipe),
                                     "--base_model", str(broken[name]), "--ds_config", "none", "--max_steps", "1",
                                     "--shards_root", str(work / "shards"), "--run_name", name]
    for name in SUBPROCESS["eval"]:
        commands[("eval", name)] = [sys.executable, "-m", "evalsuite", "vcot", str(broken[name]), "--limit", "2",
                                    "--no-tracking", "--no-progress", "--frames", "2"]

    def run(cmd):
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(commands, pool.map(run, commands.values())))


def _check_error_output(stderr: str, name: str, d: Path, cli: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert lines, stderr[-3000:]
    message = "\n".join(lines)
    assert d.name in message  # names the checkpoint or the file in it
    if not (cli == "train" and name == "no_config"):  # the trainer's resolver says "not found; looked in ..."
        assert BROKEN[name][3] in message, message


@pytest.mark.parametrize("cli,name", [(c, n) for c, names in SUBPROCESS.items() for n in names])
def test_cli_subprocess_reports_error_without_traceback(cli_runs, broken, cli, name):
    p = cli_runs[(cli, name)]
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    _check_error_output(p.stderr, name, broken[name], cli)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_eval_cli_reports_error(broken, name, capsys):
    from evalsuite.cli import main

    code = main(["vcot", str(broken[name]), "--limit", "2", "--no-tracking", "--no-progress", "--frames", "2"])
    assert code == 2
    _check_error_output(capsys.readouterr().err, name, broken[name], "eval")
