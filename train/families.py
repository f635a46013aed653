"""The model-family registry: what the toolkit knows about each supported VLM family.

One dict, written out in one place (`FAMILIES`), maps a family name to a `Family`: its HF model and
processor classes, the PIL-backed image processor (torchvision is unusable beside the CPU torch, and
every HF *video* processor needs it, so frames always go in as images), where its language model,
projector and vision tower live, and how its tiny stand-in is shaped.

    from train.families import get_family, detect_family
    fam = detect_family("ckpt/base")          # reads config.json's model_type
    model, processor = fam.load("ckpt/base")  # safetensors only; remote code only if asked
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import transformers
from safetensors import SafetensorError

from data_recipes.hints import did_you_mean
from data_recipes.processors import load_processor


class FamilyError(ValueError):
    """An unknown family, or a checkpoint directory the registry cannot make sense of."""


@dataclass(frozen=True)
class Family:
    name: str
    """Registry key, equal to the HF `config.model_type` of the family."""
    model_class: str
    processor_class: str
    image_processor_class: str
    """A PIL-backed image processor: no torchvision needed."""
    prompt_style: str
    """Shape of the tiny model's chat template (`train.toy.templates`): vicuna, mistral or chatml."""
    image_placeholder: str
    """What the chat template writes for one `{"type": "image"}` part (before expansion)."""
    projector: str
    """Dotted module name of the vision-to-language projector, relative to the top model."""
    vision_tower: str
    """Dotted module name of the vision encoder."""
    language_model: str = "model.language_model"
    video_placeholder: str | None = None
    """What the chat template writes for one `{"type": "video"}` part; None: no video path."""

    @property
    def lora_target_regex(self) -> str:
        """peft `target_modules` regex: attention projections of the language model only."""
        lm = self.language_model.replace(".", r"\.")
        return rf"^{lm}\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$"

    def model_cls(self):
        return getattr(transformers, self.model_class)

    def processor_cls(self):
        return getattr(transformers, self.processor_class)

    def image_processor_cls(self):
        return getattr(transformers, self.image_processor_class)

    def load_processor(self, path: str | os.PathLike, trust_remote_code: bool = False):
        """The processor of a local checkpoint, built without torchvision (`data_recipes.processors`).

        Either layout (transformers 5's processor_config.json with the image processor nested, or the
        hub's older preprocessor_config.json); the class the checkpoint names, else the family's.
        """
        return load_processor(path, trust_remote_code=trust_remote_code, default_class=self.processor_class,
                              default_image_processor=self.image_processor_class)

    def load(self, path: str | os.PathLike, *, trust_remote_code: bool = False, dtype=None,
             attn_implementation: str | None = None, device: str | None = None):
        """Load model and processor from a local checkpoint directory (safetensors weights only); on a GPU
        `device` the weights load straight onto it (not first into host memory, once per process)."""
        path = Path(path)
        check_checkpoint_dir(path)
        # The processor first: it is read in a moment, the weights of a 7B model take minutes.
        processor = self.load_processor(path, trust_remote_code=trust_remote_code)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            model = self.model_cls().from_pretrained(
                path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype or "auto", **extra,
                **onto_device(device))
        except (OSError, ValueError, TypeError, KeyError, SafetensorError) as e:
            # A config.json the family's class rejects, a truncated or foreign .safetensors file, a shard
            # index naming missing files: the user's to fix, so say what and where, not a traceback.
            raise FamilyError(f"'{path}': {self.model_class} could not load this checkpoint (expected "
                              f"config.json of model_type '{self.name}' and its *.safetensors weights): "
                              f"{type(e).__name__}: {e}") from None
        return model, processor


FAMILIES: dict[str, Family] = {
    "llava": Family(
        "llava", "LlavaForConditionalGeneration", "LlavaProcessor", "LlavaImageProcessorPil",
        prompt_style="vicuna", image_placeholder="<image>\n",
        projector="model.multi_modal_projector", vision_tower="model.vision_tower",
    ),
    "llava_next": Family(
        "llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LlavaNextImageProcessorPil",
        prompt_style="mistral", image_placeholder="<image>\n",
        projector="model.multi_modal_projector", vision_tower="model.vision_tower",
    ),
    "llava_next_video": Family(
        "llava_next_video", "LlavaNextVideoForConditionalGeneration", "LlavaNextVideoProcessor",
        "LlavaNextImageProcessorPil", prompt_style="vicuna", image_placeholder="<image>\n",
        video_placeholder="<video>\n", projector="model.multi_modal_projector", vision_tower="model.vision_tower",
    ),
    "llava_onevision": Family(
        "llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessorPil", prompt_style="chatml", image_placeholder="<image>\n",
        video_placeholder="<video>\n", projector="model.multi_modal_projector", vision_tower="model.vision_tower",
    ),
    "qwen2_vl": Family(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessorPil",
        prompt_style="chatml", image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        video_placeholder="<|vision_start|><|video_pad|><|vision_end|>",
        projector="model.visual.merger", vision_tower="model.visual",
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessorPil",
        prompt_style="chatml", image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        video_placeholder="<|vision_start|><|video_pad|><|vision_end|>",
        projector="model.visual.merger", vision_tower="model.visual",
    ),
    "internvl": Family(
        "internvl", "InternVLForConditionalGeneration", "InternVLProcessor", "GotOcr2ImageProcessorPil",
        prompt_style="chatml", image_placeholder="<IMG_CONTEXT>\n",
        video_placeholder="<video>\n", projector="model.multi_modal_projector", vision_tower="model.vision_tower",
    ),
}


def get_family(name: str) -> Family:
    """The registry entry for `name`; an unknown name lists the supported ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(
            f"Unknown model family '{name}'.{did_you_mean(name, FAMILIES, sentence=True)} "
            f"Supported families: {', '.join(sorted(FAMILIES))}."
        ) from None


def check_checkpoint_dir(path: Path) -> None:
    """A clear error for the usual ways a model directory is unusable."""
    if not path.is_dir():
        raise FamilyError(f"Model directory '{path}' does not exist (expected a local HF checkpoint folder).")
    if not (path / "config.json").exists():
        raise FamilyError(f"'{path}' has no config.json: not an HF model directory.")
    if not any(path.glob("*.safetensors")):
        extra = " It holds .bin weights only: convert them to safetensors." if any(path.glob("*.bin")) else ""
        raise FamilyError(f"'{path}' has no *.safetensors weights.{extra}")


def detect_family(path: str | os.PathLike) -> Family:
    """The family of a local checkpoint, read from `config.json` (`model_type`)."""
    if not Path(path).is_dir():
        raise FamilyError(f"Model directory '{path}' does not exist (expected a local HF checkpoint folder).")
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise FamilyError(f"'{path}' has no config.json: cannot tell which model family it is.")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FamilyError(f"{cfg_file}: not valid JSON ({e}); expected the model's config with a "
                          f"'model_type' field.") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise FamilyError(f"{cfg_file}: field 'model_type' missing (expected a JSON object with model_type one of: "
                          f"{', '.join(sorted(FAMILIES))}).")
    model_type = cfg["model_type"]
    if model_type == "internvl_chat":
        # OpenGVLab's own format (InternVL 1.x, 2, 2.5 and 3 without an -hf suffix): modeling code shipped
        # with the checkpoint, a chat() API instead of the HF processor + generate. Not run here, even with
        # trust_remote_code: the converted -hf checkpoints load with the HF-native `internvl` family.
        raise FamilyError(
            f"{cfg_file}: model_type 'internvl_chat' is InternVL's remote-code format (e.g. OpenGVLab/InternVL2-8B, "
            f"the paper's checkpoints): its own modeling code and chat() API are not supported yet, with or "
            f"without trust_remote_code. Use a checkpoint converted to the HF-native InternVL classes "
            f"(model_type 'internvl'): OpenGVLab/InternVL2_5-8B-MPO-hf (InternViT-300M + InternLM2.5-7B, the "
            f"design of InternVL2-8B) or OpenGVLab/InternVL3-8B-hf (InternViT-300M + Qwen2.5-7B); InternVL2 "
            f"itself has no official -hf conversion."
        )
    if model_type not in FAMILIES:
        raise FamilyError(
            f"{cfg_file}: model_type '{model_type}' is not a supported family. "
            f"Supported families: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[model_type]


def onto_device(device: str | None) -> dict:
    """`from_pretrained` arguments that load the weights straight onto a GPU `device` (none for the CPU)."""
    return {"device_map": {"": str(device)}} if device is not None and str(device) != "cpu" else {}


def load_model(path: str | os.PathLike, *, trust_remote_code: bool = False, dtype=None,
               attn_implementation: str | None = None, device: str | None = None):
    """Detect the family of `path` and load (model, processor, family)."""
    fam = detect_family(path)
    model, processor = fam.load(path, trust_remote_code=trust_remote_code, dtype=dtype,
                                attn_implementation=attn_implementation, device=device)
    return model, processor, fam


def get_module(model, dotted: str):
    """`model.get_submodule`, tolerant of a peft wrapper around the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(dotted)


SCALED_ROPE = ("linear", "dynamic", "yarn", "longrope", "llama3")
"""RoPE scalings whose `factor` stretches the positions a language model was trained on."""


def context_length(config) -> int:
    """Positions the language model of `config` handles (0: not said): `max_position_embeddings`, or, under a
    RoPE scaling that stretches positions (`SCALED_ROPE`), the length it stretches to: the pre-scaling length
    (`original_max_position_embeddings`, else `max_position_embeddings`, where transformers keeps it for
    linear and dynamic scaling) times `factor`. A Vicuna-based LLaVA-NeXT-Video with linear scaling 2.0 takes
    8,192 positions, not the 4,096 its config names."""
    text = getattr(config, "text_config", None) or config
    n = int(getattr(text, "max_position_embeddings", 0) or 0)
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if not isinstance(rope, dict) or not n:
        return n
    kind, factor = rope.get("rope_type") or rope.get("type"), rope.get("factor")
    if kind not in SCALED_ROPE or not isinstance(factor, (int, float)) or factor <= 1:
        return n
    original = rope.get("original_max_position_embeddings") or getattr(text, "original_max_position_embeddings", None)
    return max(n, int((original or n) * factor))
