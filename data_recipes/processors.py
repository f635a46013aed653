"""Build a checkpoint's HF processor from a local directory, without torchvision.

This is the one piece of model plumbing that sits at the bottom of the stack, because both the data
recipes (counting visual and text tokens for scale matching) and the family layer in `train` need it,
and `data_recipes` imports nothing from `train`.

Why not `AutoProcessor.from_pretrained`: every HF *video* processor needs torchvision, which does not
work beside the CPU torch (STACK.md), and a folder saved without a video part can come back as the
bare tokenizer. So the parts are assembled explicitly: the tokenizer, the PIL-backed variant of the
saved image processor, the processor's own settings, and `video_processor=None` (frames are always
fed as images).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import transformers

_PARTS = {"image_processor", "tokenizer", "video_processor", "feature_extractor", "audio_tokenizer"}


class ProcessorLoadError(ValueError):
    pass


def _pil_image_processor_class(type_name: str):
    """The PIL-backed class for a saved image processor type (`CLIPImageProcessorFast` -> `...Pil`)."""
    base = type_name.removesuffix("Fast").removesuffix("Pil")
    cls = getattr(transformers, base + "Pil", None) or getattr(transformers, base, None)
    if cls is None:
        raise ProcessorLoadError(f"image processor type '{type_name}' is not known to transformers")
    return cls


def without_video_processor(cls):
    """`cls` accepting `video_processor=None`.

    The HF constructor type-checks each part against its base class, and the video base class cannot be
    resolved without torchvision, so the check fails even for None.
    """
    if "video_processor" not in inspect.signature(cls.__init__).parameters:
        return cls

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is None and argument_name == "video_processor":
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "__module__": cls.__module__, "__doc__": cls.__doc__})


def make_processor(processor_class, image_processor, tokenizer, **settings):
    """Instantiate `processor_class` (a class or its transformers name) with no video part."""
    cls = getattr(transformers, processor_class) if isinstance(processor_class, str) else processor_class
    cls = without_video_processor(cls)
    if "video_processor" in inspect.signature(cls.__init__).parameters:
        settings["video_processor"] = None
    return cls(image_processor=image_processor, tokenizer=tokenizer, **settings)


def load_processor(path: str | os.PathLike, trust_remote_code: bool = False):
    """The processor of a local checkpoint directory (see the module docstring)."""
    path = Path(path)
    cfg_file = path / "processor_config.json"
    img_file = path / "preprocessor_config.json"
    for f in (cfg_file, img_file):
        if not f.exists():
            raise ProcessorLoadError(f"{f} is missing: '{path}' has no saved processor")
    cfg = json.loads(cfg_file.read_text())
    if "processor_class" not in cfg:
        raise ProcessorLoadError(f"{cfg_file}: field 'processor_class' is missing")
    cls = getattr(transformers, cfg["processor_class"], None)
    if cls is None:
        raise ProcessorLoadError(f"{cfg_file}: processor_class '{cfg['processor_class']}' is not in transformers")
    img_type = json.loads(img_file.read_text()).get("image_processor_type")
    if not img_type:
        raise ProcessorLoadError(f"{img_file}: field 'image_processor_type' is missing")
    image_processor = _pil_image_processor_class(img_type).from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in cfg.items() if k in accepted and k not in _PARTS}
    template = path / "chat_template.jinja"
    if template.exists():
        settings["chat_template"] = template.read_text()
    elif getattr(tokenizer, "chat_template", None):
        settings["chat_template"] = tokenizer.chat_template
    return make_processor(cls, image_processor, tokenizer, **settings)


def save_processor(processor, path: str | os.PathLike) -> None:
    """Save a processor made by `make_processor` (HF's own save trips over the missing video part)."""
    path = Path(path)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    if processor.chat_template:
        (path / "chat_template.jinja").write_text(processor.chat_template)
    accepted = inspect.signature(type(processor).__init__).parameters
    settings = {k: getattr(processor, k) for k in accepted
                if k not in _PARTS | {"self", "chat_template", "kwargs"} and getattr(processor, k, None) is not None}
    settings = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, list))}
    (path / "processor_config.json").write_text(
        json.dumps({"processor_class": type(processor).__name__, **settings}, indent=2))
