"""Config-only 7B checkpoint directories (no weights) for planning tests.

Each directory holds a config.json written by transformers' own config class, shaped like the
published checkpoint, and the processor/tokenizer of the family's tiny model (`train.toy.tiny`: a locally
trained BPE and a 64-px image processor), so that `--dry_run` can tokenize shards without any
download. The config's image/video token ids are set to the tiny tokenizer's; the tokenizer's
512-token vocabulary against the config's 32k-152k is irrelevant to a plan (the vocabulary size
only enters through the embedding and lm_head shapes, which are the published ones).

Published shapes and parameter counts (config.json of each model card, "Model size" on its page):

    llava-hf/llava-v1.6-vicuna-7b-hf     CLIP ViT-L/14-336 + Vicuna-7B (Llama: 4096 x 32, 32 heads, MLP 11008,
                                         vocab 32064, context 4096)                              7.06 B
    llava-hf/LLaVA-NeXT-Video-7B-hf      the same towers (vocab 32064)                           7.06 B
    Qwen/Qwen2-VL-7B-Instruct            ViT 1280 x 32 (patch 14, merge 2) + Qwen2-7B (3584 x 28, 28 heads,
                                         4 kv heads, MLP 18944, vocab 152064)                     8.29 B
    OpenGVLab/InternVL3-8B-hf            InternViT-300M-448px-V2.5 (1024 x 24) + Qwen2.5-7B (3584 x 28,
                                         28 heads, 4 kv heads, MLP 18944, vocab 151674)           7.94 B
"""

from __future__ import annotations

from pathlib import Path

import transformers

PUBLISHED = {"llava_next": 7.06e9, "llava_next_video": 7.06e9, "qwen2_vl": 8.29e9, "internvl": 7.94e9}

_CLIP_L_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
_VICUNA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
_QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False)
_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def config_7b(family: str, tok):
    """The published 7B-class config of `family`, with the multimodal token ids of tokenizer `tok`."""
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    if family in ("llava_next", "llava_next_video"):
        common = dict(vision_config=_CLIP_L_336, text_config=_VICUNA_7B, image_grid_pinpoints=_PINPOINTS,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_token_id=ids("<image>"), tie_word_embeddings=False)
        if family == "llava_next":
            return transformers.LlavaNextConfig(**common)
        return transformers.LlavaNextVideoConfig(**common, video_token_id=ids("<video>"), spatial_pool_stride=2,
                                                 spatial_pool_mode="average")
    if family == "qwen2_vl":
        text = dict(_QWEN2_7B, model_type="qwen2_vl_text", vocab_size=152064,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                                          image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                                          vision_start_token_id=ids("<|vision_start|>"),
                                          vision_end_token_id=ids("<|vision_end|>"))
    if family == "internvl":
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=[448, 448], patch_size=[14, 14], attention_bias=True, use_qk_norm=False,
                      norm_type="layer_norm", use_absolute_position_embeddings=True, use_mask_token=False,
                      layer_scale_init_value=0.1, hidden_act="gelu")
        text = dict(_QWEN2_7B, model_type="qwen2", vocab_size=151674, rope_theta=1e6)
        return transformers.InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                                           projector_hidden_act="gelu", vision_feature_layer=-1,
                                           vision_feature_select_strategy="default",
                                           image_token_id=ids("<IMG_CONTEXT>"), tie_word_embeddings=False)
    raise ValueError(f"no 7B config for {family}")


def write_config_dir(family: str, out: Path, corpus: list[str] | None = None) -> Path:
    """A config-only 7B directory of `family` with the tiny model's processor (no weights)."""
    from data_recipes.processors import save_processor
    from train.families import get_family
    from train.toy.tiny import build_processor, build_tokenizer, default_corpus

    fam = get_family(family)
    tok = build_tokenizer(fam, corpus if corpus is not None else default_corpus())
    out.mkdir(parents=True, exist_ok=True)
    config_7b(family, tok).save_pretrained(out)
    save_processor(build_processor(fam, tok, 64), out)
    return out
