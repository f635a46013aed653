"""Write a random-init tiny model of a family, with a locally trained tokenizer, offline.

    python -m train.toy.tiny --family llava_next_video --out models/tiny-llava_next_video [--image-size 64] [--seed 0]

The result loads with `AutoModelForImageTextToText.from_pretrained(DIR)` and with the family layer
(`train.families.load_model`). Shapes are chosen for CPU speed: a 64-wide, 2-layer vision encoder
giving 16 tokens per 64-px frame and a 128-wide, 2-layer language model, so that LoRA steps take tens
of milliseconds on a CPU. Same family, size and seed -> the same weights (the tokenizer's BPE training
is deterministic for a fixed corpus).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_recipes.files import atomic_dir
from data_recipes.processors import make_processor, save_processor, video_processor_from_image
from train.families import FAMILIES, Family, get_family
from train.toy.templates import STYLE_SPECIAL_TOKENS, chat_template

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
VISION_HIDDEN = 64

# Family-specific multimodal tokens; they become single special tokens of the tokenizer.
_MM_TOKENS = {
    "llava": {"image_token": "<image>"},
    "llava_next": {"image_token": "<image>"},
    "llava_next_video": {"image_token": "<image>", "video_token": "<video>"},
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
    "qwen2_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    "internvl": {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                 "end_image_token": "</img>", "video_token": "<video>"},
}
_MM_TOKENS["qwen2_5_vl"] = _MM_TOKENS["qwen2_vl"]


def default_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: everything the synthetic data generator can say."""
    from data_recipes.synthetic import vocabulary_corpus

    return list(vocabulary_corpus())


def build_tokenizer(family: Family, corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE trained on `corpus`, with the family's chat and image tokens as specials."""
    specials = ["<unk>", "<s>", "</s>", "<pad>"] + STYLE_SPECIAL_TOKENS[family.prompt_style]
    mm = _MM_TOKENS[family.name]
    specials += list(mm.values())
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=mm, padding_side="right",
    )
    return tok


def _text_config(family: Family, vocab_size: int, tok) -> dict:
    cfg = dict(TEXT, vocab_size=vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if family.name in ("qwen2_vl", "qwen2_5_vl"):
        # mrope splits the rotary half-dimension (head_dim 32 -> 16) into temporal/height/width parts.
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 4, 4]}
    return cfg


def build_config(family: Family, tok, image_size: int):
    """The tiny HF config of a family (random init, same wiring as the 7B checkpoints)."""
    V = len(tok)
    text = _text_config(family, V, tok)
    clip = dict(hidden_size=VISION_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=16, projection_dim=VISION_HIDDEN)
    n = family.name
    img_id = tok.convert_tokens_to_ids(_MM_TOKENS[n].get("image_token", _MM_TOKENS[n].get("context_image_token")))
    if n == "llava":
        return transformers.LlavaConfig(
            vision_config=dict(clip, model_type="clip_vision_model"), text_config=dict(text, model_type="llama"),
            image_token_id=img_id, vision_feature_select_strategy="default", vision_feature_layer=-1,
        )
    if n in ("llava_next", "llava_next_video"):
        cls = transformers.LlavaNextConfig if n == "llava_next" else transformers.LlavaNextVideoConfig
        extra = {} if n == "llava_next" else dict(
            video_token_id=tok.convert_tokens_to_ids("<video>"), spatial_pool_stride=2)
        return cls(
            vision_config=dict(clip, model_type="clip_vision_model"), text_config=dict(text, model_type="llama"),
            image_token_id=img_id, image_grid_pinpoints=[[image_size, image_size]],
            vision_feature_select_strategy="default", vision_feature_layer=-1, **extra,
        )
    if n == "llava_onevision":
        siglip = {k: v for k, v in clip.items() if k != "projection_dim"}
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(siglip, model_type="siglip_vision_model"), text_config=dict(text, model_type="qwen2"),
            image_token_id=img_id, video_token_id=tok.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=[[image_size, image_size]], vision_feature_select_strategy="full",
            vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        )
    if n in ("qwen2_vl", "qwen2_5_vl"):
        vision = dict(depth=2, embed_dim=VISION_HIDDEN, hidden_size=VISION_HIDDEN, num_heads=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=TEXT["hidden_size"],
                      mlp_ratio=2, intermediate_size=128)
        if n == "qwen2_vl":
            vision["hidden_size"] = TEXT["hidden_size"]  # Qwen2-VL names the merger's output width hidden_size
        if n == "qwen2_5_vl":
            vision["fullatt_block_indexes"] = [1]
            vision["window_size"] = 32
        cls = transformers.Qwen2VLConfig if n == "qwen2_vl" else transformers.Qwen2_5_VLConfig
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in _MM_TOKENS[n].items()}
        return cls(
            text_config=dict(text, model_type=f"{n}_text"), vision_config=vision,
            image_token_id=ids["image_token"], video_token_id=ids["video_token"],
            vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"],
        )
    if n == "internvl":
        vision = dict(hidden_size=VISION_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=[image_size, image_size], patch_size=[8, 8], use_mask_token=False,
                      use_absolute_position_embeddings=True)
        return transformers.InternVLConfig(
            vision_config=vision, text_config=dict(text, model_type="qwen2"), image_token_id=img_id,
            downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    raise AssertionError(f"no tiny config for {n}")  # every registry entry has one above


def build_image_processor(family: Family, image_size: int):
    """A PIL-backed image processor that keeps a 64-px frame at 16 visual tokens (or so)."""
    cls = family.image_processor_cls()
    n = family.name
    norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if n in ("qwen2_vl", "qwen2_5_vl"):
        px = image_size * image_size
        return cls(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=px, max_pixels=px,
                   size={"shortest_edge": px, "longest_edge": px}, **norm)
    if n == "internvl":
        return cls(size={"height": image_size, "width": image_size}, crop_to_patches=False, **norm)
    if n in ("llava_next", "llava_next_video", "llava_onevision"):
        return cls(size={"height": image_size, "width": image_size} if n == "llava_onevision"
                   else {"shortest_edge": image_size},
                   crop_size={"height": image_size, "width": image_size},
                   image_grid_pinpoints=[[image_size, image_size]], do_center_crop=n != "llava_onevision", **norm)
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **norm)


def build_processor(family: Family, tok, image_size: int):
    template = chat_template(family.prompt_style, family.image_placeholder, family.video_placeholder)
    kwargs = {"chat_template": template}
    n = family.name
    if n in ("llava", "llava_next", "llava_next_video"):
        kwargs.update(patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    elif n == "llava_onevision":
        kwargs.update(num_image_tokens=(image_size // 16) ** 2, vision_feature_select_strategy="full")
    elif n == "internvl":
        kwargs.update(image_seq_length=(image_size // 8) ** 2 // 4)
    image_processor = build_image_processor(family, image_size)
    return make_processor(family.processor_class, image_processor, tok,
                          video_processor_from_image(image_processor, family.name), **kwargs)


def build_tiny(family_name: str, out: str | Path, image_size: int = 64, seed: int = 0,
               corpus: list[str] | None = None) -> Path:
    """Write the tiny model of `family_name` to `out` (atomically: a crash leaves no half model)."""
    family = get_family(family_name)
    out = Path(out)
    tok = build_tokenizer(family, corpus if corpus is not None else default_corpus())
    config = build_config(family, tok, image_size)
    torch.manual_seed(seed)
    model = family.model_cls()(config)
    model.eval()
    if family.prompt_style == "chatml":
        # A ChatML turn ends with <|im_end|>: generation must stop there, not only at </s>.
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    processor = build_processor(family, tok, image_size)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_processor(processor, tmp)
        (tmp / "tiny.json").write_text(json.dumps(
            {"family": family.name, "image_size": image_size, "seed": seed,
             "parameters": sum(p.numel() for p in model.parameters())}, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.toy.tiny", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, help=f"one of: {', '.join(FAMILIES)}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = build_tiny(args.family, args.out, image_size=args.image_size, seed=args.seed)
    info = json.loads((out / "tiny.json").read_text())
    print(f"wrote tiny {info['family']} ({info['parameters']:,} parameters) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
