"""What a task runs with: the evaluated checkpoint (`Subject`) and what checkpoints share (`Resources`).

Models load at their first use and are freed as soon as they are not needed, so that at 7B the
evaluated model, the infill generator and the judge are not all held at once for nothing:

- a checkpoint whose evaluations are all done is never loaded; it is freed once its tasks are done;
- the fixed infill generator (`--infills model:DIR`) and the rephraser load at the first infill the cache
  lacks (a run whose infills are all cached never loads them), the judge at the first answer that
  extraction cannot read; `release()`, called by the runner when a task of a checkpoint is done, frees
  them (and rereads the infill cache next time, so texts other ranks generated are seen);
- their names and identities (the infill cache key) are known without loading (`LazyChat`).

`Resources` also holds the frame cache (`<cache_dir>/frames`, `evalsuite.framecache`) every task's
benchmark reads decoded frames through.
"""

from __future__ import annotations

import gc
import hashlib
from functools import cached_property
from pathlib import Path
from typing import Callable

from evalsuite import prompts
from evalsuite.checkpoints import CheckpointRef, fingerprint, load_checkpoint, weights_identity
from evalsuite.config import EvalConfig, FrameInputs, eval_precision, resolve_frame_inputs, torch_dtype
from evalsuite.framecache import FrameCache
from evalsuite.generation import ChatModel
from evalsuite.infills import FileSource, InfillSource, ModelSource, NoisyOracleSource, OracleSource


def as_run(identity: str, precision: str) -> str:
    """A model's identity as it runs: its weights', and the precision unless fp32 (the key of the infills it
    generates, which differ between precisions)."""
    return identity if precision == "fp32" else f"{identity}@{precision}"


def model_identity(path: str | Path) -> str:
    """The `identity` `ChatModel.load(path)` gives its model, computed without loading it: the weights'
    fingerprint, plus the base model's for an adapter; a plain text model's directory fingerprint."""
    from evalsuite.checkpoints import CheckpointError, checkpoint_ref

    p = Path(path).expanduser().resolve()
    try:
        return weights_identity(checkpoint_ref(p).identity())
    except CheckpointError:
        return fingerprint(p)


class LazyChat:
    """A `ChatModel` loaded by `load()` at its first use (`generate`, `processor`, ...) and dropped by
    `release()`; `name` and `identity` are known without loading, so an infill cache can be looked up
    (and a run whose texts are all cached never loads the model)."""

    def __init__(self, name: str, identity: str, load: Callable[[], ChatModel]):
        self.name, self.identity, self._load = name, identity, load
        self._chat: ChatModel | None = None
        self.loads = 0

    @property
    def loaded(self) -> bool:
        return self._chat is not None

    def get(self) -> ChatModel:
        if self._chat is None:
            self._chat = self._load()
            self.loads += 1
        return self._chat

    @property
    def model(self):
        return self.get().model

    @property
    def processor(self):
        return self.get().processor

    @property
    def tokenizer(self):
        return self.get().tokenizer

    def generate(self, *args, **kwargs) -> list[str]:
        return self.get().generate(*args, **kwargs)

    def release(self) -> bool:
        """Drop the model (True if one was held); the next use loads it again."""
        held, self._chat = self._chat is not None, None
        return held


class Subject:
    """The checkpoint under evaluation."""

    def __init__(self, ref: CheckpointRef, cfg: EvalConfig, device: str = "cpu"):
        self.ref, self.cfg, self.device = ref, cfg, device
        self._loaded = None

    @cached_property
    def info(self) -> dict:
        return self.ref.identity()

    @cached_property
    def precision(self) -> str:
        """The precision the checkpoint is evaluated in (`evalsuite.config.eval_precision`); in the settings."""
        return eval_precision(self.cfg.precision, self.device)

    @cached_property
    def inputs(self) -> FrameInputs:
        """How this checkpoint's frames are fed (video_input, max_pixels): the flags, else its run.json."""
        return resolve_frame_inputs(self.cfg, self.ref.run, self.ref.path / "run.json")

    @cached_property
    def family(self):
        """The checkpoint's model family (`train.families.Family`), read from config.json without loading."""
        from train.families import detect_family

        return detect_family(self.ref.base_model or self.ref.model_path)

    @cached_property
    def context(self) -> int:
        """Positions the checkpoint's language model handles (`train.families.context_length`), from its
        config.json, without loading weights."""
        from transformers import AutoConfig

        from train.families import context_length

        path = self.ref.base_model or self.ref.model_path
        return context_length(AutoConfig.from_pretrained(path, trust_remote_code=self.cfg.trust_remote_code))

    def _load(self):
        if self._loaded is None:
            model, processor, info = load_checkpoint(self.ref, trust_remote_code=self.cfg.trust_remote_code,
                                                     dtype=torch_dtype(self.precision), device=self.device)
            chat = ChatModel(model, processor=processor, name=self.ref.name,
                             identity=as_run(weights_identity(info), self.precision))
            self._loaded = (model, processor, chat)
        return self._loaded

    @property
    def model(self):
        return self._load()[0]

    @property
    def processor(self):
        return self._load()[1]

    @property
    def chat(self) -> ChatModel:
        return self._load()[2]

    @property
    def lazy_chat(self) -> LazyChat:
        """`chat` as a `LazyChat`: the checkpoint loads at the first generation (a self-infill source whose
        texts are all cached does not load it); it is freed by `release()` below, not by the LazyChat's."""
        return LazyChat(self.ref.name, as_run(weights_identity(self.info), self.precision), lambda: self.chat)

    def release(self) -> None:
        held, self._loaded = self._loaded is not None, None
        if held:
            free_memory()


def free_memory() -> None:
    """Give dropped models' memory back (CPU: collect reference cycles; GPU: also empty torch's cache)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Resources:
    def __init__(self, cfg: EvalConfig, cache_dir: Path, device: str = "cpu"):
        self.cfg, self.cache_dir, self.device = cfg, Path(cache_dir), device
        self._models: dict[str, LazyChat] = {}
        self._sources: dict[str, InfillSource] = {}
        self.frame_cache = FrameCache(self.cache_dir / "frames")

    def model(self, role: str, path: str) -> LazyChat:
        """The shared generator/rephraser/judge model, loaded at its first use (and again after `release`). Roles
        given the same checkpoint share one copy (the paper's rephraser and judge are both Qwen2.5-7B-Instruct:
        two copies were 15 GB more on the GPU beside the evaluated model and the generator)."""
        key = str(Path(path).expanduser().resolve())
        if key not in self._models:
            precision = eval_precision(self.cfg.precision, self.device)
            self._models[key] = LazyChat(role, as_run(model_identity(path), precision), lambda: ChatModel.load(
                path, trust_remote_code=self.cfg.trust_remote_code, name=role, device=self.device,
                dtype=torch_dtype(precision)))
        return self._models[key]

    def release(self) -> list[str]:
        """Free the generator, rephraser and judge (the runner calls this when a checkpoint's task is done)
        and forget the infill sources, whose caches are reread on next use; returns the roles freed."""
        freed = [m.name for m in self._models.values() if m.release()]
        self._sources.clear()
        if freed:
            free_memory()
        return freed

    def describe(self, role: str) -> str | None:
        """Identity of the optional rephraser or judge, for the settings."""
        path = getattr(self.cfg, role)
        if not path:
            return None
        p = Path(path).expanduser().resolve()
        extra = f"+{prompts.JUDGE_HASH}" if role == "judge" else ""
        return f"{p}@{fingerprint(p)}{extra}"

    def describe_infills(self) -> str:
        """The infill source for the settings: its kind and what its texts depend on (a file's hash, a
        generator's fingerprint, the rephraser, oracle_noisy's share P)."""
        spec = self.cfg.infill_spec
        if spec.kind == "file":
            return f"file:{spec.path}@{hashlib.sha256(spec.path.read_bytes()).hexdigest()[:12]}"
        desc = str(spec) if spec.kind != "model" else f"model:{spec.path}@{fingerprint(spec.path)}"
        if spec.kind in ("self", "model", "file") and self.cfg.rephraser:
            desc += f"+rephraser:{self.describe('rephraser')}"
        return desc

    def _model_source(self, generator: LazyChat, max_pixels: int | None) -> ModelSource:
        rephraser = self.model("rephraser", self.cfg.rephraser) if self.cfg.rephraser else None
        return ModelSource(generator, self.cache_dir, rephraser=rephraser, max_new_tokens=self.cfg.infill_tokens,
                           batch_size=self.cfg.batch_size, size=self.cfg.image_size, max_pixels=max_pixels)

    def infill_source(self, subject: Subject) -> InfillSource:
        """Infills and captions for `subject`'s items; a generator sees the frames that checkpoint is shown
        (its max_pixels), so its texts are cached per frame budget."""
        spec = self.cfg.infill_spec
        if spec.kind == "oracle":
            return OracleSource()
        if spec.kind == "oracle_noisy":
            return NoisyOracleSource(spec.p)
        max_pixels = subject.inputs.max_pixels
        if spec.kind == "model":
            key = f"model|{max_pixels}"  # one generator for every checkpoint
            if key not in self._sources:
                self._sources[key] = self._model_source(self.model("generator", str(spec.path)), max_pixels)
            return self._sources[key]
        key = f"{subject.ref.path}|{max_pixels}"
        if key not in self._sources:
            # drop the previous checkpoint's source: it holds that model
            self._sources = {k: v for k, v in self._sources.items() if k.startswith("model|")}
            own = self._model_source(subject.lazy_chat, max_pixels)
            self._sources[key] = FileSource(spec.path, own) if spec.kind == "file" else own
        return self._sources[key]

    def judge_for(self, question: str, options: list[str]):
        """`answer -> judge's reply` for one question, or None without --judge. The judge loads at the first
        answer asked about (extraction asks only about answers it cannot read)."""
        if not self.cfg.judge:
            return None
        judge = self.model("judge", self.cfg.judge)

        def ask(answer: str) -> str:
            return judge.generate([prompts.judge_prompt(question, options, answer)], None, max_new_tokens=8)[0]

        return ask

    def infill_work(self, subject: Subject, item, pairs: list[tuple[int, int]], frames: list[int],
                    seen: set) -> dict[str, int]:
        """Generations the infill source will make for `item`'s transitions over `pairs` and captions of
        `frames`: those neither cached nor already in `seen` (which collects them across a plan).

        {"infills": generator prompts (2 per transition, 1 per caption), "rephrasings": ...}; nothing is
        loaded (generator identities are known without loading)."""
        source = self.infill_source(subject)
        if isinstance(source, FileSource):
            if all((item.video, (t,)) in source.texts for t in frames):
                return {"infills": 0, "rephrasings": 0}
            pairs, source = [], source.fallback  # transitions come from the file, captions from the model
        if not isinstance(source, ModelSource):
            return {"infills": 0, "rephrasings": 0}
        todo = []
        asked = [("transition", p) for p in dict.fromkeys(pairs)] + [("caption", (t,)) for t in dict.fromkeys(frames)]
        for kind, at in asked:
            key = source._key(item, at, kind)
            if key not in seen and source.cache.get(key) is None:
                seen.add(key)
                todo.append(kind)
        n_pairs = todo.count("transition")
        return {"infills": 2 * n_pairs + todo.count("caption"),
                "rephrasings": n_pairs if source.rephraser is not None else 0}

