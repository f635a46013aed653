"""Check that a checkpoint directory works: load it, run one interleaved forward pass, generate.

    python -m train.smoke models/tiny-llava [--frames 5]

Prints the family, parameter count, visual/text/supervised token counts, the loss of a short
interleaved conversation (frames with text between them) and a few greedy tokens. Useful before
pointing a week of GPU time at a local 7B checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from PIL import Image, ImageDraw

from train.chat import encode
from train.families import load_model


def demo_frames(n: int, size: int = 64) -> list[Image.Image]:
    """A red disc crossing the frame left to right: something for the vision tower to look at."""
    frames = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (235, 235, 235))
        x = int((i + 0.5) * size / n)
        ImageDraw.Draw(im).ellipse([x - 6, size // 2 - 6, x + 6, size // 2 + 6], fill=(220, 30, 30))
        frames.append(im)
    return frames


def interleaved_conversation(n: int) -> list[dict]:
    content: list[dict] = []
    for i in range(n):
        content.append({"type": "image"})
        if i < n - 1:
            content.append({"type": "text", "text": f" frame {i + 1}, then "})
    content.append({"type": "text", "text": " what happens to the red circle?"})
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": "the red circle moves right."}]}]


@torch.no_grad()
def smoke(path: str, frames: int = 5, max_new_tokens: int = 8) -> dict:
    model, processor, family = load_model(path)
    model.eval()
    conv = interleaved_conversation(frames)
    enc = encode(processor, [conv], [demo_frames(frames)])
    loss = float(model(**enc.inputs).loss)
    prompt = encode(processor, [conv[:1]], [demo_frames(frames)], with_labels=False)
    out = model.generate(**prompt.inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, prompt.inputs["input_ids"].shape[1]:]
    return {
        "family": family.name, "parameters": sum(p.numel() for p in model.parameters()),
        "visual_tokens": enc.visual_tokens[0], "text_tokens": enc.text_tokens[0],
        "supervised_tokens": enc.supervised_tokens[0], "loss": loss,
        "generated": processor.tokenizer.decode(new, skip_special_tokens=False),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.smoke", description=__doc__.splitlines()[0])
    p.add_argument("model_dirs", nargs="+")
    p.add_argument("--frames", type=int, default=5)
    args = p.parse_args(argv)
    print(f"{'family':<18}{'params':>10}{'visual':>8}{'text':>6}{'sup':>5}{'loss':>8}  generated")
    ok = True
    for d in args.model_dirs:
        r = smoke(d, args.frames)
        ok &= math.isfinite(r["loss"])
        print(f"{r['family']:<18}{r['parameters']:>10,}{r['visual_tokens']:>8}{r['text_tokens']:>6}"
              f"{r['supervised_tokens']:>5}{r['loss']:>8.3f}  {r['generated']!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
