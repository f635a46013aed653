"""Reference outputs of transformers' own video processors, for `tests/test_video_processors.py`.

transformers' video processors need torchvision, which the CPU test environment cannot import; the
toolkit's `data_recipes.video_processors.TorchVideoProcessor` reproduces them in plain torch. This
script runs transformers' classes on deterministic frames and writes what they returned (shapes,
grids, sums and the values at fixed positions) to `tests/fixtures/video_references.json`.
Run it where torchvision works, with the same transformers version as the project:

    python -m venv ../tv && ../tv/bin/pip install torch torchvision transformers pillow numpy
    ../tv/bin/python tests/scripts/video_references.py            # writes the fixture
    ../tv/bin/python tests/scripts/video_references.py --compare  # also compares element-wise

`--compare` runs `TorchVideoProcessor` beside transformers' class on every case plus random ones and
prints the largest absolute difference (it imports the project from this checkout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "video_references.json"
SAMPLES = 256  # values kept per output tensor, at positions drawn from a fixed seed

TINY_QWEN = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2,
             "size": {"shortest_edge": 64 * 64, "longest_edge": 64 * 64},
             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

# (name, video processor class, settings over the class defaults, frames as (seed, T, H, W))
CASES = [
    ("qwen2_vl default, upscaled to min_pixels, 4 frames", "Qwen2VLVideoProcessor", {}, (1, 4, 48, 80)),
    ("qwen2_vl default, 3 frames (odd: last frame repeated)", "Qwen2VLVideoProcessor", {}, (2, 3, 240, 320)),
    ("qwen2_vl max_pixels below the frame: downscaled", "Qwen2VLVideoProcessor",
     {"size": {"shortest_edge": 3136, "longest_edge": 28 * 28 * 16}}, (3, 5, 200, 300)),
    ("qwen2_vl tiny (patch 8, 64x64 budget), non-square frames", "Qwen2VLVideoProcessor", TINY_QWEN, (4, 3, 50, 70)),
    ("qwen2_vl older min/max_pixels spelling", "Qwen2VLVideoProcessor",
     {"min_pixels": 3136, "max_pixels": 28 * 28 * 20}, (5, 2, 90, 120)),
    ("llava_next_video default, shortest edge up to 224 then crop", "LlavaNextVideoVideoProcessor", {},
     (6, 8, 120, 160)),
    ("llava_next_video default, portrait, downscaled", "LlavaNextVideoVideoProcessor", {}, (7, 3, 300, 200)),
    ("llava_next_video tiny (64 px), bilinear", "LlavaNextVideoVideoProcessor",
     {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, "resample": 2,
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, (8, 4, 72, 96)),
    ("llava_next_video crop larger than the frame (padded)", "LlavaNextVideoVideoProcessor",
     {"do_resize": False, "crop_size": {"height": 64, "width": 64}}, (9, 2, 40, 50)),
    ("llava_onevision default, 384x384", "LlavaOnevisionVideoProcessor", {}, (10, 4, 90, 160)),
    ("internvl default, downscaled to 384x384", "InternVLVideoProcessor", {}, (11, 2, 500, 300)),
    ("internvl tiny 64x64", "InternVLVideoProcessor",
     {"size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
     (12, 3, 64, 64)),
]


def frames(seed: int, t: int, h: int, w: int):
    """T RGB PIL frames: smooth gradients with noise, so resizing has edges and flats to get right."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(t):
        base = np.stack([(xx * (3 + k) + yy) % 256, (yy * 2 + 40 * k) % 256, (xx + yy * 5) % 256], -1)
        noise = rng.integers(-30, 31, size=(h, w, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return out


def positions(size: int) -> np.ndarray:
    """The fixed positions (in the flattened tensor) whose values the fixture keeps."""
    return np.random.default_rng(0).integers(0, size, size=min(SAMPLES, size))


def summarize(x) -> dict:
    """Shape, sums and the values at `positions` of one output tensor."""
    a = np.asarray(x, dtype=np.float64)
    flat = a.reshape(-1)
    return {"shape": list(a.shape), "sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum()),
            "values": [round(float(v), 6) for v in flat[positions(flat.size)]]}


def run(processor, case) -> dict:
    _, _, _, spec = case
    out = processor([frames(*spec)], return_tensors="pt")
    res = {"pixel_values_videos": summarize(out["pixel_values_videos"])}
    if "video_grid_thw" in out:
        res["video_grid_thw"] = out["video_grid_thw"].tolist()
    return res


def hf_processor(cls_name: str, settings: dict):
    import transformers

    return getattr(transformers, cls_name)(**settings)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args(argv)
    import torch
    import transformers

    refs = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": {}}
    for case in CASES:
        name, cls_name, settings, spec = case
        refs["cases"][name] = {"class": cls_name, "settings": settings, "frames": list(spec),
                               **run(hf_processor(cls_name, settings), case)}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(refs) + "\n")
    print(f"wrote {len(CASES)} cases to {FIXTURE}")
    if args.compare:
        sys.path.insert(0, str(ROOT))
        from data_recipes.video_processors import TorchVideoProcessor

        rng = np.random.default_rng(123)
        extra = []
        for i in range(40):  # random sizes and frame counts over the four classes
            cls_name = ["Qwen2VLVideoProcessor", "LlavaNextVideoVideoProcessor", "LlavaOnevisionVideoProcessor",
                        "InternVLVideoProcessor"][i % 4]
            spec = (1000 + i, int(rng.integers(1, 6)), int(rng.integers(20, 400)), int(rng.integers(20, 400)))
            extra.append((f"random {i}", cls_name, {}, spec))
        worst = 0.0
        for name, cls_name, settings, spec in CASES + extra:
            a = hf_processor(cls_name, settings)([frames(*spec)], return_tensors="pt")
            b = TorchVideoProcessor(cls_name, **settings)([frames(*spec)], return_tensors="pt")
            assert a.keys() == b.keys(), (name, a.keys(), b.keys())
            for k in a:
                ta, tb = torch.as_tensor(a[k]), torch.as_tensor(b[k])
                assert ta.shape == tb.shape, (name, k, ta.shape, tb.shape)
                d = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
                worst = max(worst, d)
                print(f"{name:<62}{k:<22}{str(tuple(ta.shape)):<24} max |diff| {d:.3g}")
        print(f"{len(CASES) + len(extra)} cases, largest absolute difference {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
