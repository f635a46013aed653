"""Build a checkpoint's HF processor from a local directory, without torchvision.

This is the one piece of model plumbing that sits at the bottom of the stack, because both the data
recipes (counting visual and text tokens for scale matching) and the family layer in `train` need it,
and `data_recipes` imports nothing from `train`.

Why not `AutoProcessor.from_pretrained`: every HF *video* processor needs torchvision, which does not
work beside the CPU torch (README, Troubleshooting), and a folder saved without a video part can come back as the
bare tokenizer. So the parts are assembled explicitly: the tokenizer, the PIL-backed variant of the
saved image processor, the processor's own settings, and the video processor below.

Both layouts transformers reads are understood: the one transformers 5's `save_pretrained` writes (one
processor_config.json with the image and video processors nested inside, chat_template.jinja) and the
hub's older one (preprocessor_config.json for the image processor, processor_config.json with the
settings only or absent, chat_template.json or .jinja).

The video part (families with a video path, for `video_input: native`) comes from
`data_recipes.video_processors`: transformers' own class where torchvision works, the torch-only
equivalent elsewhere, built from the saved video processor settings or, when the checkpoint saved
none, from its image processor's (as transformers' AutoVideoProcessor falls back to them).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import transformers

from data_recipes.video_processors import (FAMILY_VIDEO_PROCESSOR, TorchVideoProcessor, VideoProcessorError,
                                           read_video_processor_settings, video_processor_for)

PROCESSOR_CONFIG = "processor_config.json"
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"
_PARTS = {"image_processor", "tokenizer", "video_processor", "feature_extractor", "audio_tokenizer"}


class ProcessorLoadError(ValueError):
    pass


# Processor options for the frames of a clip fed as images (`video_input: images`), by model_type.
# InternVL tiles a large image into up to 12 crops plus a thumbnail (13 x 256 tokens); the frames of a
# video go in as one tile each, as InternVL's own video prompt feeds them.
FRAME_OPTIONS: dict[str, dict] = {"internvl": {"crop_to_patches": False}}


def frame_options(processor) -> dict:
    """`FRAME_OPTIONS` of the family whose processor class `processor` is (empty for the others)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = type(processor).__name__
    return next((dict(opts) for model_type, opts in FRAME_OPTIONS.items()
                 if PROCESSOR_MAPPING_NAMES.get(model_type) == name), {})


def _pil_image_processor_class(type_name: str):
    """The PIL-backed class for a saved image processor type (`CLIPImageProcessorFast` -> `...Pil`)."""
    base = type_name.removesuffix("Fast").removesuffix("Pil")
    cls = getattr(transformers, base + "Pil", None) or getattr(transformers, base, None)
    if cls is None:
        raise ProcessorLoadError(f"image processor type '{type_name}' is not known to transformers")
    return cls


def without_video_processor(cls):
    """`cls` accepting `video_processor=None` or a `TorchVideoProcessor`.

    The HF constructor type-checks each part against its base class, and the video base class cannot be
    resolved without torchvision, so the check fails even for None.
    """
    if "video_processor" not in inspect.signature(cls.__init__).parameters:
        return cls

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and (argument is None or isinstance(argument, TorchVideoProcessor)):
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "__module__": cls.__module__, "__doc__": cls.__doc__})


def make_processor(processor_class, image_processor, tokenizer, video_processor=None, **settings):
    """Instantiate `processor_class` (a class or its transformers name); `video_processor` may be None."""
    cls = getattr(transformers, processor_class) if isinstance(processor_class, str) else processor_class
    cls = without_video_processor(cls)
    if "video_processor" in inspect.signature(cls.__init__).parameters:
        settings["video_processor"] = video_processor
    return cls(image_processor=image_processor, tokenizer=tokenizer, **settings)


def video_processor_from_image(image_processor, model_type: str | None):
    """The family's video processor with the image processor's settings (size, patching, normalisation):
    what a checkpoint that saved no video processor gets. None for a family without a video path."""
    if model_type not in FAMILY_VIDEO_PROCESSOR:
        return None
    return video_processor_for(image_processor.to_dict(), model_type)


def _read_json(file: Path, what: str) -> dict:
    """A JSON object from `file`, or a ProcessorLoadError naming the file and what it should hold."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ProcessorLoadError(f"{file}: cannot be read ({e}); expected {what}") from None
    except json.JSONDecodeError as e:
        raise ProcessorLoadError(f"{file}: not valid JSON ({e}); expected {what}") from None
    if not isinstance(data, dict):
        raise ProcessorLoadError(f"{file}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def has_processor(path: str | os.PathLike) -> bool:
    """Whether `path` holds a saved processor in either layout (see `load_processor`)."""
    path = Path(path)
    return (path / PROCESSOR_CONFIG).is_file() or (path / IMAGE_PROCESSOR_CONFIG).is_file()


def _processor_class(path: Path, configs: dict[str, dict], default: str | None):
    """The processor class the checkpoint names, and the file that names it."""
    for name, cfg in configs.items():
        value = cfg.get("processor_class")
        if value is None:
            continue
        cls = getattr(transformers, value, None) if isinstance(value, str) else None
        if cls is None or not (isinstance(cls, type) and issubclass(cls, transformers.ProcessorMixin)):
            raise ProcessorLoadError(
                f"{path / name}: processor_class {value!r} is not a processor class of transformers "
                f"{transformers.__version__} (expected e.g. 'LlavaProcessor', 'Qwen2VLProcessor')")
        return cls
    if default is None:
        raise ProcessorLoadError(
            f"'{path}' names no processor class: expected 'processor_class' in {PROCESSOR_CONFIG}, "
            f"{IMAGE_PROCESSOR_CONFIG} or tokenizer_config.json")
    return getattr(transformers, default)


def _image_processor(path: Path, processor_cfg: dict, default: str | None):
    """The PIL-backed image processor, from the nested entry of processor_config.json (transformers 5's
    layout) or from preprocessor_config.json (the older one)."""
    nested = processor_cfg.get("image_processor")
    if nested is not None:
        where = f"{path / PROCESSOR_CONFIG} ('image_processor' entry)"
        if not isinstance(nested, dict):
            raise ProcessorLoadError(f"{where}: expected an object with the image processor settings, "
                                     f"got {type(nested).__name__}")
        cfg = nested
    elif (path / IMAGE_PROCESSOR_CONFIG).is_file():
        where = str(path / IMAGE_PROCESSOR_CONFIG)
        cfg = _read_json(path / IMAGE_PROCESSOR_CONFIG, "the image processor settings")
    else:
        raise ProcessorLoadError(
            f"'{path}' has no image processor: expected {IMAGE_PROCESSOR_CONFIG}, or an 'image_processor' "
            f"entry in {PROCESSOR_CONFIG} (as transformers 5 saves it)")
    type_name = cfg.get("image_processor_type") or default
    if not type_name:
        raise ProcessorLoadError(f"{where}: field 'image_processor_type' is missing")
    try:
        cls = _pil_image_processor_class(type_name)
    except ProcessorLoadError as e:
        raise ProcessorLoadError(f"{where}: {e}") from None
    settings = {k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class", "auto_map")}
    try:
        return cls.from_dict(settings)
    except (TypeError, ValueError, KeyError) as e:
        raise ProcessorLoadError(f"{where}: {cls.__name__} does not accept these settings ({e})") from None


def _chat_template(path: Path, processor_cfg: dict, tokenizer) -> str | None:
    """chat_template.jinja (transformers 5), chat_template.json (older), the processor config, the tokenizer."""
    jinja, legacy = path / "chat_template.jinja", path / "chat_template.json"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ProcessorLoadError(f"{jinja}: cannot be read ({e}); expected a Jinja chat template") from None
    if legacy.is_file():
        template = _read_json(legacy, '{"chat_template": "..."}').get("chat_template")
        if not isinstance(template, str):
            raise ProcessorLoadError(f'{legacy}: expected {{"chat_template": "<jinja text>"}}')
        return template
    if isinstance(processor_cfg.get("chat_template"), str):
        return processor_cfg["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def _model_config(path: Path) -> dict:
    """config.json of the checkpoint, or {} (the model loader reports a missing or broken one)."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _defaults_for_model_type(path: Path) -> tuple[str | None, str | None]:
    """transformers' own processor and PIL image processor names for the checkpoint's model_type."""
    model_type = _model_config(path).get("model_type")
    if not isinstance(model_type, str):
        return None, None
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    image = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if isinstance(image, dict):
        image = image.get("pil") or next(iter(image.values()), None)
    elif isinstance(image, (tuple, list)):
        image = next((n for n in image if n), None)
    return PROCESSOR_MAPPING_NAMES.get(model_type), image


def _settings_from_model(path: Path, accepted) -> dict:
    """Processor settings an older checkpoint may not have saved, derived from its config.json.

    Hub checkpoints saved before processors had their own config (no processor_config.json) leave
    e.g. LlavaProcessor's `patch_size` unset; transformers then cannot count the image tokens.
    """
    cfg = _model_config(path)
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else {}
    out = {}
    strategy = cfg.get("vision_feature_select_strategy")
    if strategy is not None:
        out["vision_feature_select_strategy"] = strategy
    patch, size = vision.get("patch_size"), vision.get("image_size")
    if isinstance(patch, int):
        out["patch_size"] = patch
        if vision.get("model_type") == "clip_vision_model":
            out["num_additional_image_tokens"] = 1  # CLIP's class token
        if isinstance(size, int):
            out["num_image_tokens"] = (size // patch) ** 2
    patch = patch[0] if isinstance(patch, list) and patch else patch
    size = size[0] if isinstance(size, list) and size else size
    ratio = cfg.get("downsample_ratio")
    if isinstance(patch, int) and isinstance(size, int) and isinstance(ratio, (int, float)):
        out["image_seq_length"] = int((size // patch) ** 2 * ratio ** 2)
    return {k: v for k, v in out.items() if k in accepted}


def load_processor(path: str | os.PathLike, trust_remote_code: bool = False, *,
                   default_class: str | None = None, default_image_processor: str | None = None):
    """The processor of a local checkpoint directory, in either layout transformers reads.

    - transformers 5's `save_pretrained`: processor_config.json holds the processor's settings and the
      image (and video) processor nested inside it; chat_template.jinja.
    - the older hub layout: preprocessor_config.json (the image processor, often with processor_class),
      processor_config.json with the settings only or no processor_config.json at all,
      chat_template.json or chat_template.jinja.

    The processor class is the one the checkpoint names (processor_config.json, preprocessor_config.json
    or tokenizer_config.json; else `default_class`, else transformers' choice for config.json's
    model_type), built with the PIL variant of the saved image processor and no video part. Settings
    an older checkpoint did not save (LLaVA's patch_size, ...) come from config.json. Errors name the
    file and what was expected.
    """
    path = Path(path)
    if not path.is_dir():
        raise ProcessorLoadError(f"'{path}' is not a directory (expected a checkpoint with a saved processor)")
    configs: dict[str, dict] = {}
    for name, what in ((PROCESSOR_CONFIG, "the processor settings"),
                       (IMAGE_PROCESSOR_CONFIG, "the image processor settings"),
                       ("tokenizer_config.json", "the tokenizer settings")):
        if (path / name).is_file():
            configs[name] = _read_json(path / name, what)
    if PROCESSOR_CONFIG not in configs and IMAGE_PROCESSOR_CONFIG not in configs:
        raise ProcessorLoadError(
            f"'{path}' has no saved processor: expected {PROCESSOR_CONFIG} (transformers 5) or "
            f"{IMAGE_PROCESSOR_CONFIG} (older checkpoints)")
    processor_cfg = configs.get(PROCESSOR_CONFIG, {})
    if default_class is None or default_image_processor is None:
        by_type = _defaults_for_model_type(path)
        default_class, default_image_processor = default_class or by_type[0], default_image_processor or by_type[1]
    cls = _processor_class(path, configs, default_class)
    image_processor = _image_processor(path, processor_cfg, default_image_processor)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ProcessorLoadError(
            f"'{path}': the tokenizer did not load (expected tokenizer.json, or tokenizer.model / vocab.json "
            f"with tokenizer_config.json): {type(e).__name__}: {e}") from None
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in _settings_from_model(path, accepted).items() if processor_cfg.get(k) is None}
    settings.update({k: v for k, v in processor_cfg.items()
                     if k in accepted and k not in _PARTS | {"self", "chat_template", "kwargs"} and v is not None})
    template = _chat_template(path, processor_cfg, tokenizer)
    if template is not None:
        settings["chat_template"] = template
    video_processor = None
    if "video_processor" in accepted:
        model_type = _model_config(path).get("model_type")
        try:
            saved = read_video_processor_settings(path, processor_cfg)
            video_processor = (video_processor_for(saved, model_type) if saved is not None
                               else video_processor_from_image(image_processor, model_type))
        except (VideoProcessorError, TypeError, ValueError, KeyError) as e:
            raise ProcessorLoadError(f"'{path}': the video processor could not be built ({e})") from None
    try:
        return make_processor(cls, image_processor, tokenizer, video_processor, **settings)
    except (AttributeError, TypeError, ValueError, KeyError) as e:
        raise ProcessorLoadError(
            f"'{path}': {cls.__name__} could not be built from the saved tokenizer and image processor "
            f"({type(e).__name__}: {e})") from None


def save_processor(processor, path: str | os.PathLike) -> None:
    """Save a processor made by `make_processor` (HF's own save trips over the missing video part)."""
    path = Path(path)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(path)
    if processor.chat_template:
        (path / "chat_template.jinja").write_text(processor.chat_template)
    accepted = inspect.signature(type(processor).__init__).parameters
    settings = {k: getattr(processor, k) for k in accepted
                if k not in _PARTS | {"self", "chat_template", "kwargs"} and getattr(processor, k, None) is not None}
    settings = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, list))}
    (path / "processor_config.json").write_text(
        json.dumps({"processor_class": type(processor).__name__, **settings}, indent=2))
