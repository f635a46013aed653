"""The families' video processors, without torchvision: same settings in, same tensors out.

`video_input: native` feeds a clip through the path its family was built with: LLaVA-NeXT-Video and
LLaVA-OneVision take `pixel_values_videos` (frames x channels x height x width per clip, pooled into
fewer tokens per frame than an image), Qwen2-VL / Qwen2.5-VL take patches grouped two frames at a time
(`temporal_patch_size`) with `video_grid_thw`, InternVL writes one `Frame k:` label per frame. In
transformers, every one of these video processors is built on torchvision, which a CPU-only torch
often cannot import. This module gives the same computation in plain torch:

- the output size of each frame from the saved settings, with transformers' own size helpers
  (`smart_resize` for Qwen, shortest edge / fixed height-width for the others);
- the resize itself: torchvision resizes a uint8 CHW tensor with `torch.nn.functional.interpolate`
  (antialiased, `align_corners=False`), which is what is called here;
- center crop, the fused rescale-and-normalise, and Qwen's temporal patchify in the same order of
  operations, so the floats come out the same.

`video_processor_for(settings)` returns transformers' own class when torchvision imports (a GPU
install), and `TorchVideoProcessor` otherwise. `tests/test_video_processors.py` checks this module
against reference outputs of transformers' processors, written by `tests/scripts/video_references.py`
in an environment that has torchvision.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch

# Settings of transformers' video processor classes (their class defaults), keyed by class name: a
# checkpoint that saved no video processor gets its family's defaults, as AutoVideoProcessor would.
_CLIP_NORM = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
_COMMON = {"do_convert_rgb": True, "do_resize": True, "resample": 3, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "do_center_crop": None, "crop_size": None}
CLASS_DEFAULTS: dict[str, dict] = {
    "Qwen2VLVideoProcessor": {**_COMMON, **_CLIP_NORM, "size": {"shortest_edge": 128 * 28 * 28,
                                                                "longest_edge": 28 * 28 * 768},
                              "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2},
    "LlavaNextVideoVideoProcessor": {**_COMMON, **_CLIP_NORM, "size": {"shortest_edge": 224},
                                     "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
    "LlavaOnevisionVideoProcessor": {**_COMMON, **_CLIP_NORM, "size": {"height": 384, "width": 384}},
    "InternVLVideoProcessor": {**_COMMON, **_CLIP_NORM, "size": {"height": 384, "width": 384}},
}
# The video processor class transformers pairs with each family that has a video path.
FAMILY_VIDEO_PROCESSOR = {
    "llava_next_video": "LlavaNextVideoVideoProcessor",
    "llava_onevision": "LlavaOnevisionVideoProcessor",
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "internvl": "InternVLVideoProcessor",
}
_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes the video processors use
_SETTINGS = ("do_convert_rgb", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
             "image_mean", "image_std", "do_center_crop", "crop_size", "patch_size", "temporal_patch_size",
             "merge_size")


class VideoProcessorError(ValueError):
    """Settings this module cannot reproduce exactly (it refuses rather than approximates)."""


def torchvision_usable() -> bool:
    """Whether transformers' own (torchvision-based) video processors can run here."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception:  # ImportError, or the operator-registration RuntimeError of a mismatched build
        return False
    return True


class TorchVideoProcessor:
    """A family's video processor in plain torch (see the module docstring).

    Called like transformers' video processors: `proc(videos, return_tensors="pt")` with each video a
    list of PIL frames, a (T, H, W, C) uint8 array or a (T, C, H, W) tensor. Returns a BatchFeature with
    `pixel_values_videos` (and `video_grid_thw` for Qwen), plus `video_metadata` when asked.
    """

    def __init__(self, video_processor_type: str, **settings):
        if video_processor_type not in CLASS_DEFAULTS:
            raise VideoProcessorError(
                f"video_processor_type '{video_processor_type}' has no torchvision-free implementation "
                f"(known: {', '.join(sorted(CLASS_DEFAULTS))}); install torchvision to use transformers' own")
        self.video_processor_type = video_processor_type
        merged = {**CLASS_DEFAULTS[video_processor_type], **{k: v for k, v in settings.items() if k in _SETTINGS}}
        # Qwen's min_pixels / max_pixels are an older spelling of size's shortest / longest edge.
        if settings.get("min_pixels") is not None or settings.get("max_pixels") is not None:
            merged["size"] = dict(merged["size"])
            if settings.get("min_pixels") is not None:
                merged["size"]["shortest_edge"] = settings["min_pixels"]
            if settings.get("max_pixels") is not None:
                merged["size"]["longest_edge"] = settings["max_pixels"]
        if int(merged["resample"]) not in _MODES:
            raise VideoProcessorError(f"resample={merged['resample']} is not supported without torchvision "
                                      f"(supported: {sorted(_MODES)} = nearest, bilinear, bicubic)")
        for k, v in merged.items():
            setattr(self, k, v)
        self.is_qwen = video_processor_type == "Qwen2VLVideoProcessor"

    @classmethod
    def from_dict(cls, cfg: dict) -> "TorchVideoProcessor":
        cfg = dict(cfg)
        return cls(cfg.pop("video_processor_type"), **cfg)

    def to_dict(self) -> dict:
        out = {k: copy.deepcopy(getattr(self, k)) for k in _SETTINGS if k in CLASS_DEFAULTS[self.video_processor_type]}
        return {"video_processor_type": self.video_processor_type, **out}

    def save_pretrained(self, path) -> None:
        (Path(path) / "video_preprocessor_config.json").write_text(json.dumps(self.to_dict(), indent=2))

    def __repr__(self) -> str:
        return f"TorchVideoProcessor({json.dumps(self.to_dict())})"

    # --- sizes -------------------------------------------------------------------------------------
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) each frame is resized to, before any crop."""
        size = self.size or {}
        if self.is_qwen:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            return smart_resize(height, width, factor=self.patch_size * self.merge_size,
                                min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        from transformers.image_transforms import get_size_with_aspect_ratio
        from transformers.image_utils import get_image_size_for_max_height_width

        if size.get("shortest_edge") and size.get("longest_edge"):
            return tuple(get_size_with_aspect_ratio((height, width), size["shortest_edge"], size["longest_edge"]))
        if size.get("shortest_edge"):
            from transformers.image_transforms import get_resize_output_image_size
            from transformers.image_utils import ChannelDimension

            return tuple(get_resize_output_image_size(np.empty((1, height, width)), size["shortest_edge"],
                                                      default_to_square=False,
                                                      input_data_format=ChannelDimension.FIRST))
        if size.get("max_height") and size.get("max_width"):
            return tuple(get_image_size_for_max_height_width((height, width), size["max_height"], size["max_width"]))
        if size.get("height") and size.get("width"):
            return size["height"], size["width"]
        raise VideoProcessorError(f"size {size} must have height and width, max_height and max_width, or shortest_edge")

    def frame_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a frame as the model receives it (after resize and crop)."""
        h, w = self.output_size(height, width) if self.do_resize else (height, width)
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        return h, w

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
        """Qwen: patches of a video (before merging), as transformers' processor counts them."""
        h, w = self.frame_shape(height, width)
        t = -(-num_frames // self.temporal_patch_size)
        return t * (h // self.patch_size) * (w // self.patch_size)

    # --- the computation ---------------------------------------------------------------------------
    def _as_tensor(self, video) -> torch.Tensor:
        """One video as a uint8 (T, C, H, W) tensor, RGB."""
        from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

        if isinstance(video, np.ndarray):
            video = torch.from_numpy(video).contiguous()
        if infer_channel_dimension_format(video) == ChannelDimension.LAST:
            video = video.permute(0, 3, 1, 2).contiguous()
        if self.do_convert_rgb and video.shape[1] == 1:
            video = video.expand(-1, 3, -1, -1)
        if video.shape[1] != 3:
            raise VideoProcessorError(f"frames must be RGB (3 channels) or grey, got {video.shape[1]} channels")
        return video

    def _resize(self, video: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if (height, width) == tuple(video.shape[-2:]):
            return video
        mode = _MODES[int(self.resample)]
        smooth = mode != "nearest"
        x = video if video.dtype in (torch.uint8, torch.float32, torch.float64) else video.float()
        out = torch.nn.functional.interpolate(x, size=[height, width], mode=mode,
                                              align_corners=False if smooth else None, antialias=smooth)
        if x.dtype != video.dtype:
            out = out.round_().to(video.dtype)
        return out

    @staticmethod
    def _center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = video.shape[-2:]
        if width > w or height > h:
            pad = [(width - w) // 2 if width > w else 0, (width - w + 1) // 2 if width > w else 0,
                   (height - h) // 2 if height > h else 0, (height - h + 1) // 2 if height > h else 0]
            video = torch.nn.functional.pad(video, pad, value=0)
            h, w = video.shape[-2:]
            if (h, w) == (height, width):
                return video
        top, left = int((h - height) / 2.0), int((w - width) / 2.0)
        return video[..., top:top + height, left:left + width]

    def _rescale_and_normalize(self, video: torch.Tensor) -> torch.Tensor:
        if self.do_rescale and self.do_normalize:
            mean = torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)
            std = torch.tensor(self.image_std) * (1.0 / self.rescale_factor)
            return video.to(torch.float32).sub(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        if self.do_normalize:
            mean, std = torch.tensor(self.image_mean), torch.tensor(self.image_std)
            return video.to(torch.float32).sub(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        if self.do_rescale:
            return video * self.rescale_factor
        return video

    def _patchify(self, video: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Qwen: (T, C, H, W) -> (grid_t * grid_h * grid_w, C * tps * ps * ps), frames padded by repeating the last."""
        ps, ms, tps = self.patch_size, self.merge_size, self.temporal_patch_size
        if pad := -video.shape[0] % tps:
            video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)), dim=0)
        t, c, h, w = video.shape
        gt, gh, gw = t // tps, h // ps, w // ps
        patches = video.reshape(gt, tps, c, gh // ms, ms, ps, gw // ms, ms, ps)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(gt * gh * gw, c * tps * ps * ps), [gt, gh, gw]

    def __call__(self, videos, return_tensors=None, return_metadata: bool = False, video_metadata=None,
                 **kwargs):
        from transformers.image_processing_utils import BatchFeature
        from transformers.video_utils import make_batched_metadata, make_batched_videos

        batched = make_batched_videos(videos)
        processed, grids = [], []
        for video in batched:
            x = self._as_tensor(video)
            if self.do_resize:
                x = self._resize(x, *self.output_size(*x.shape[-2:]))
            if self.do_center_crop and self.crop_size:
                x = self._center_crop(x, self.crop_size["height"], self.crop_size["width"])
            x = self._rescale_and_normalize(x)
            if self.is_qwen:
                x, grid = self._patchify(x)
                grids.append(grid)
            processed.append(x)
        if self.is_qwen:
            data = {"pixel_values_videos": torch.cat(processed, dim=0), "video_grid_thw": torch.tensor(grids)}
        else:
            same = len({tuple(v.shape) for v in processed}) == 1
            data = {"pixel_values_videos": torch.stack(processed) if same and return_tensors else processed}
        if return_metadata:
            data["video_metadata"] = make_batched_metadata(batched, video_metadata=video_metadata)
        return BatchFeature(data=data)


def read_video_processor_settings(path: str | Path, processor_cfg: dict) -> dict | None:
    """The saved video processor of a checkpoint: nested in processor_config.json (transformers 5) or
    video_preprocessor_config.json (older); None when neither holds one."""
    nested = processor_cfg.get("video_processor")
    if isinstance(nested, dict):
        return nested
    file = Path(path) / "video_preprocessor_config.json"
    if file.is_file():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VideoProcessorError(f"{file}: not valid JSON ({e}); expected the video processor settings") from None
        if not isinstance(data, dict):
            raise VideoProcessorError(f"{file}: expected a JSON object with the video processor settings")
        return data
    return None


def video_processor_for(settings: dict, family: str | None = None, *, prefer_torchvision: bool | None = None):
    """The video processor for saved `settings` (or the family's defaults when settings is empty).

    transformers' own class when torchvision is usable (unless `prefer_torchvision=False`), else
    `TorchVideoProcessor`. Both take the same settings and give the same tensors.
    """
    type_name = (settings or {}).get("video_processor_type") or FAMILY_VIDEO_PROCESSOR.get(family or "")
    settings = {k: v for k, v in (settings or {}).items() if k in _SETTINGS or k in ("min_pixels", "max_pixels")}
    if type_name is None:
        raise VideoProcessorError(f"family '{family}' has no video path (families with one: "
                                  f"{', '.join(sorted(FAMILY_VIDEO_PROCESSOR))})")
    settings["video_processor_type"] = type_name
    if prefer_torchvision is None:
        prefer_torchvision = torchvision_usable()
    if prefer_torchvision:
        import transformers

        cls = getattr(transformers, type_name)
        return cls.from_dict({k: v for k, v in settings.items() if k != "video_processor_type"})
    return TorchVideoProcessor.from_dict(settings)


def video_tokens(family: str, processor, num_frames: int, height: int, width: int) -> int:
    """Visual tokens one clip of `num_frames` frames of (height, width) costs on the native path.

    The families' own arithmetic (what their processors write into the prompt): Qwen, patches over
    merge_size**2; LLaVA-NeXT-Video, (frame / patch)**2 pooled by 2 in each direction per frame;
    LLaVA-OneVision, the tower's patch grid ceil-pooled by 2 per frame plus one newline; InternVL,
    image_seq_length per frame.
    """
    vp = processor.video_processor
    h, w = vp.frame_shape(height, width) if isinstance(vp, TorchVideoProcessor) else _frame_shape_hf(vp, height, width)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        t = -(-num_frames // vp.temporal_patch_size)
        return t * (h // vp.patch_size) * (w // vp.patch_size) // vp.merge_size ** 2
    if family == "llava_next_video":
        per = (h // processor.patch_size) * (w // processor.patch_size)
        return per // 4 * num_frames
    if family == "llava_onevision":  # the tower's patch grid, from the processor's tokens per image
        pooled = math.ceil(int(math.sqrt(processor.num_image_tokens)) / 2)
        return num_frames * pooled * pooled + 1
    if family == "internvl":
        return num_frames * processor.image_seq_length
    raise VideoProcessorError(f"family '{family}' has no video path")


def _frame_shape_hf(vp, height: int, width: int) -> tuple[int, int]:
    """`TorchVideoProcessor.frame_shape` for transformers' own class (same settings)."""
    return TorchVideoProcessor.from_dict({**vp.to_dict(), "video_processor_type": type(vp).__name__}).frame_shape(
        height, width)
