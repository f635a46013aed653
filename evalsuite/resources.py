"""What a task runs with: the evaluated checkpoint (`Subject`) and what checkpoints share (`Resources`).

Both load models lazily: a checkpoint whose evaluations are all done is never loaded, and a fixed
infill generator (`--infills model:DIR`), the rephraser and the judge are loaded once per command and
reused for every checkpoint.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from evalsuite import prompts
from evalsuite.checkpoints import CheckpointRef, fingerprint, load_checkpoint
from evalsuite.config import EvalConfig, FrameInputs, resolve_frame_inputs
from evalsuite.generation import ChatModel
from evalsuite.infills import FileSource, InfillSource, ModelSource, OracleSource


class Subject:
    """The checkpoint under evaluation."""

    def __init__(self, ref: CheckpointRef, cfg: EvalConfig, device: str = "cpu"):
        self.ref, self.cfg, self.device = ref, cfg, device
        self._loaded = None

    @cached_property
    def info(self) -> dict:
        return self.ref.identity()

    @cached_property
    def inputs(self) -> FrameInputs:
        """How this checkpoint's frames are fed (video_input, max_pixels): the flags, else its run.json."""
        return resolve_frame_inputs(self.cfg, self.ref.run, self.ref.path / "run.json")

    @cached_property
    def family(self):
        """The checkpoint's model family (`train.families.Family`), read from config.json without loading."""
        from train.families import detect_family

        return detect_family(self.ref.base_model or self.ref.model_path)

    def _load(self):
        if self._loaded is None:
            model, processor, info = load_checkpoint(self.ref, trust_remote_code=self.cfg.trust_remote_code,
                                                     device=self.device)
            chat = ChatModel(model, processor=processor, name=self.ref.name,
                             identity=info["fingerprint"] + info.get("base_fingerprint", ""))
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

    def release(self) -> None:
        self._loaded = None


class Resources:
    def __init__(self, cfg: EvalConfig, cache_dir: Path, device: str = "cpu"):
        self.cfg, self.cache_dir, self.device = cfg, Path(cache_dir), device
        self._models: dict[str, ChatModel] = {}
        self._sources: dict[str, InfillSource] = {}

    def model(self, role: str, path: str) -> ChatModel:
        """A shared generator/rephraser/judge model, loaded once."""
        key = f"{role}:{path}"
        if key not in self._models:
            self._models[key] = ChatModel.load(path, trust_remote_code=self.cfg.trust_remote_code, name=role,
                                                device=self.device)
        return self._models[key]

    def describe(self, role: str) -> str | None:
        """Identity of the optional rephraser or judge, for the settings."""
        path = getattr(self.cfg, role)
        if not path:
            return None
        p = Path(path).expanduser().resolve()
        extra = f"+{prompts.JUDGE_HASH}" if role == "judge" else ""
        return f"{p}@{fingerprint(p)}{extra}"

    def describe_infills(self) -> str:
        spec = self.cfg.infill_spec
        if spec.kind == "file":
            return f"file:{spec.path}@{hashlib.sha256(spec.path.read_bytes()).hexdigest()[:12]}"
        desc = str(spec) if spec.kind != "model" else f"model:{spec.path}@{fingerprint(spec.path)}"
        if spec.kind in ("self", "model", "file") and self.cfg.rephraser:
            desc += f"+rephraser:{self.describe('rephraser')}"
        return desc

    def _model_source(self, generator: ChatModel, max_pixels: int | None) -> ModelSource:
        rephraser = self.model("rephraser", self.cfg.rephraser) if self.cfg.rephraser else None
        return ModelSource(generator, self.cache_dir, rephraser=rephraser, max_new_tokens=self.cfg.infill_tokens,
                           batch_size=self.cfg.batch_size, size=self.cfg.image_size, max_pixels=max_pixels)

    def infill_source(self, subject: Subject) -> InfillSource:
        """Infills and captions for `subject`'s items; a generator sees the frames that checkpoint is shown
        (its max_pixels), so its texts are cached per frame budget."""
        spec = self.cfg.infill_spec
        if spec.kind == "oracle":
            return OracleSource()
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
            own = self._model_source(subject.chat, max_pixels)
            self._sources[key] = FileSource(spec.path, own) if spec.kind == "file" else own
        return self._sources[key]

    def judge_for(self, question: str, options: list[str]):
        """`answer -> judge's reply` for one question, or None without --judge."""
        if not self.cfg.judge:
            return None
        judge = self.model("judge", self.cfg.judge)

        def ask(answer: str) -> str:
            return judge.generate([prompts.judge_prompt(question, options, answer)], None, max_new_tokens=8)[0]

        return ask

