"""Checkpoints to evaluate: finding them under a directory, identifying them, loading them.

Three kinds of directory are a checkpoint:
- an adapter made by the trainer: `run.json` + `adapter_config.json` (+ the processor);
- a plain HF model directory (`config.json` + safetensors): a base model, or a full finetune when it
  also holds `run.json`;
- `base.json` (`{"model": PATH}`): written by `evalsuite all` for a base model named in a run.json
  that lives outside CKPT_DIR, so its evaluation outputs have a home without writing into the model.

A directory in a format the suite cannot run is refused when it is classified, with what to use instead:
InternVL's remote-code checkpoints (`model_type: internvl_chat`, e.g. OpenGVLab/InternVL2-8B) name the
converted `-hf` checkpoints (`train.families.detect_family` words it).

    refs = discover("ckpt/")                  # bases first, then the runs, sorted by name
    model, processor, info = load_checkpoint("ckpt/video_100k")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_recipes.files import atomic_write_text, shareable_path
from train.run_record import RunRecord, RunRecordError

REPO = Path(__file__).resolve().parents[1]
# never checkpoints, never descended into (lmms-eval: the default output of `python -m evalsuite export`)
SKIP_DIRS = {"eval", "checkpoints", "report", ".infill_cache", "lmms-eval"}
REMOTE_CODE_ONLY = ("internvl_chat",)
"""model_types whose checkpoints only run through their own remote code: refused with the -hf alternative."""
_FULL_HASH_LIMIT = 64 << 20
_SAMPLE = 1 << 20


class CheckpointError(ValueError):
    pass


@dataclass
class CheckpointRef:
    path: Path
    """Where the evaluation outputs go (`path/eval/<task>/`)."""
    model_path: Path
    """What is loaded: the adapter or model directory (a base.json dir points elsewhere)."""
    kind: str
    """`adapter` or `model`."""
    base_model: Path | None = None
    """The base model of an adapter (from run.json)."""
    run: RunRecord | None = None
    """run.json of a trained checkpoint; None for a base model."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_base(self) -> bool:
        return self.run is None

    def identity(self) -> dict:
        """What the checkpoint is, for metrics.json and MLflow params."""
        role = "base" if self.is_base else ("adapter" if self.kind == "adapter" else "full")
        out = {"name": self.name, "kind": self.kind, "role": role, "model_path": shareable_path(self.model_path),
               "fingerprint": fingerprint(self.model_path)}
        if self.base_model is not None:
            out["base_model"] = shareable_path(self.base_model)
            out["base_fingerprint"] = fingerprint(self.base_model)
        return out


def made_on_other_weights(path: str | os.PathLike, metrics: dict) -> bool:
    """Whether an evaluation's results (`metrics`: its metrics.json) were made on other weights than checkpoint
    directory `path` holds now: a run trained again in place (a larger budget, a restart) keeps its `eval/`.

    True when the directory holds loadable weights whose `fingerprint` differs from the one the evaluation
    recorded, or when it holds none and no run.json although the evaluation was of a trained run (training
    in place has moved its adapter and run.json aside). Results kept without their weights (eval/ and
    run.json copied off a cluster) and evaluations older than the recorded fingerprint are not judged."""
    recorded = ((metrics.get("settings") or {}).get("checkpoint") or {}).get("fingerprint")
    if not recorded:
        return False
    p = Path(path)
    try:
        return fingerprint(checkpoint_ref(p).model_path) != recorded
    except CheckpointError:
        trained = (metrics.get("checkpoint") or {}).get("role") in ("adapter", "full")
        return trained and not (p / "run.json").is_file()


def weights_identity(info: dict) -> str:
    """The identity of a checkpoint's weights from its `CheckpointRef.identity()`: its fingerprint, plus
    its base model's for an adapter (the key of the infill cache and of `ChatModel.identity`)."""
    return info["fingerprint"] + info.get("base_fingerprint", "")


def is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def resolve_base_model(spec: str, ckpt: Path) -> Path:
    """The directory a run.json's `base_model` names (absolute, or relative to cwd, repo or run)."""
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p, ckpt / p, ckpt.parent / p]
    for c in candidates:
        if is_model_dir(c):
            return c.resolve()
    try:  # the trainer's own resolver knows `tiny:FAMILY`, $MODEL_ROOT and models/
        from train.models import resolve_base_model as train_resolve

        found = train_resolve(spec, build=False)
        if is_model_dir(found):
            return Path(found).resolve()
    except Exception:  # noqa: BLE001 - fall through to the error that lists where we looked
        pass
    raise CheckpointError(f"{ckpt / 'run.json'}: base_model '{spec}' not found (looked in "
                          f"{', '.join(str(c) for c in candidates)}); nothing is downloaded")


def _base_of(run: RunRecord, ckpt: Path) -> Path:
    """An adapter's base model: the directory run.json records (the trainer's resolved path); where that is gone
    (an evaluation on other nodes, $MODEL_ROOT mounted elsewhere), the model as the trainer was told it
    (`config.base_model`, e.g. `llava-hf/LLaVA-NeXT-Video-7B-hf`), looked up the same way, under $MODEL_ROOT too."""
    try:
        return resolve_base_model(run.base_model, ckpt)
    except CheckpointError as recorded:
        named = (run.config or {}).get("base_model")
        if isinstance(named, str) and named and named != run.base_model:
            with contextlib.suppress(CheckpointError):
                return resolve_base_model(named, ckpt)
        raise recorded from None


def checkpoint_ref(path: str | os.PathLike) -> CheckpointRef:
    """Classify one directory as a checkpoint (see the module docstring)."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is not a directory")
    try:
        run = RunRecord.read(p / "run.json") if (p / "run.json").is_file() else None
    except RunRecordError as e:
        raise CheckpointError(str(e)) from None
    if remote_code_only(p):
        from train.families import FamilyError, detect_family

        try:
            detect_family(p)
        except FamilyError as e:  # the registry's words: not supported, and which -hf checkpoints to use
            raise CheckpointError(str(e)) from None
    if (p / "adapter_config.json").is_file():
        if run is None or run.base_model is None:
            raise CheckpointError(f"{p}: an adapter needs run.json with 'base_model' to know what to load it on")
        if not (p / "adapter_model.safetensors").is_file():
            # weights load from safetensors only: a pickled .bin can run code when it is unpickled
            extra = " It holds adapter_model.bin only: convert it to safetensors." if any(p.glob("*.bin")) else ""
            raise CheckpointError(f"{p}: no adapter_model.safetensors (the adapter's weights).{extra}")
        return CheckpointRef(p, p, "adapter", _base_of(run, p), run)
    if (p / "base.json").is_file():
        try:
            target = Path(json.loads((p / "base.json").read_text())["model"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p / 'base.json'}: expected {{\"model\": PATH}} ({type(e).__name__}: {e})") from None
        if not is_model_dir(target):
            raise CheckpointError(f"{p / 'base.json'}: model {target} is not an HF model directory any more")
        return CheckpointRef(p, target, "model")
    if is_model_dir(p):
        return CheckpointRef(p, p, "model", run=run)
    has_config, has_weights = (p / "config.json").is_file(), any(p.glob("*.safetensors"))
    if has_config and any(p.glob("*.bin")) and not has_weights:
        extra = " It holds .bin weights only: weights load from safetensors only, convert them."
    elif has_config and not has_weights:
        extra = " It has config.json but no *.safetensors weights."
    elif has_weights and not has_config:
        extra = " It has *.safetensors weights but no config.json (the model's config, with its model_type)."
    else:
        extra = ""
    raise CheckpointError(f"'{p}' is not a checkpoint: no adapter_config.json + run.json, no config.json + "
                          f"*.safetensors, no base.json.{extra}")


def remote_code_only(p: Path) -> str | None:
    """The model_type of a directory whose config.json names a remote-code-only format, else None."""
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # no config.json, or one the loader will complain about in its own words
    return model_type if model_type in REMOTE_CODE_ONLY else None


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(directory, its subfolder names) for `root` and every folder below it, depth first by name, never
    into `SKIP_DIRS` or hidden folders; the caller clears the names to skip a directory's subfolders."""
    for dirpath, dirnames, _ in os.walk(root):
        yield Path(dirpath), dirnames
        dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS and not n.startswith("."))


def evaluated(root: str | os.PathLike, task: str = "*") -> list[Path]:
    """Every directory under `root` (root included) holding `eval/<task>/metrics.json` (`task` may be a
    glob), sorted: the checkpoints `evalsuite.runner` wrote results of `task` for, as `evalsuite.report.export`
    finds them."""
    return sorted(d for d, _ in _walk(Path(root)) if any((d / "eval").glob(f"{task}/metrics.json")))


def discover(root: str | os.PathLike, broken: list[str] | None = None) -> list[CheckpointRef]:
    """Every checkpoint under `root`, plus a base.json entry for each outside base model (bases first).

    A directory that looks like a checkpoint but cannot be used (run.json without weights, an adapter
    whose base model is gone, an InternVL remote-code model) raises, or, when a `broken` list is given,
    is described there and skipped.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CheckpointError(f"CKPT_DIR '{root}' is not a directory")
    found: list[CheckpointRef] = []
    for d, dirnames in _walk(root):
        try:
            found.append(checkpoint_ref(d))
            dirnames.clear()  # a checkpoint's subfolders (training states, eval outputs) are not checkpoints
        except CheckpointError as e:
            marked = any((d / f).is_file() for f in ("adapter_config.json", "base.json", "run.json"))
            if marked or remote_code_only(d):
                if broken is None:
                    raise  # looks like a checkpoint but is broken: say so rather than skip it
                broken.append(str(e))
                dirnames.clear()
    known = {r.model_path for r in found if r.kind == "model"}
    for ref in list(found):
        base = ref.base_model
        if base is not None and base not in known:
            home = root / f"base-{base.name}"
            home.mkdir(exist_ok=True)
            # atomically: every rank of an evaluation discovers the checkpoints at once, and one reading the file
            # while another had truncated it to write it would fail on half a JSON
            atomic_write_text(home / "base.json", json.dumps({"model": str(base)}, indent=1) + "\n")
            found.append(checkpoint_ref(home))
            known.add(base)
    return sorted(found, key=lambda r: (not r.is_base, str(r.path)))


def file_digest(path: Path) -> str:
    """sha256 of a file; for big files of its size, its first, middle and last MiB.

    Hashing every shard of a 7B model would cost minutes on each run; the safetensors header
    (tensor names, shapes, offsets) plus samples of the data already change when the weights do.
    """
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            h.update(f.read())
        else:
            h.update(str(size).encode())
            for offset in (0, size // 2, size - _SAMPLE):
                f.seek(offset)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(model_dir: str | os.PathLike) -> str:
    """A short identity of a model or adapter directory's weights and config (cached per process)."""
    p = Path(model_dir).resolve()
    files = sorted(f for f in p.iterdir() if f.is_file() and (f.suffix == ".safetensors" or f.name in (
        "config.json", "adapter_config.json")))
    key = (p,) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + file_digest(f).encode())
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]


def load_checkpoint(path: str | os.PathLike, trust_remote_code: bool = False, dtype=None, device: str | None = None):
    """(model, processor, info) of any checkpoint kind; an adapter is merged into its base for speed. `dtype`:
    the torch dtype to load in (None: the checkpoint's config says); `device`: where the model runs (on a GPU
    the weights load straight onto it, and the merge happens there)."""
    from train.families import load_model

    ref = path if isinstance(path, CheckpointRef) else checkpoint_ref(path)
    if ref.kind == "adapter":
        from peft import PeftModel

        model, processor, family = load_model(ref.base_model, trust_remote_code=trust_remote_code, dtype=dtype,
                                              device=device)
        with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6: noise on every load
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, ref.model_path).merge_and_unload()
        from data_recipes.processors import has_processor

        if has_processor(ref.model_path):
            # the trainer saves the processor beside the adapter; prefer it (it may add tokens)
            processor = family.load_processor(ref.model_path, trust_remote_code=trust_remote_code)
    else:
        model, processor, family = load_model(ref.model_path, trust_remote_code=trust_remote_code, dtype=dtype,
                                              device=device)
    if device is not None:
        model.to(device)
    model.eval()
    info = {**ref.identity(), "family": family.name}
    return model, processor, info
