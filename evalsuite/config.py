"""The evaluation settings: one typed dataclass whose field names are the CLI flags and MLflow params.

`evalsuite/cli.py` makes one flag per field with `train.config.add_field_flags`, as the trainer does from
`TrainConfig`: `--n_boot`, `--iraven_limit`, ... (the dashed `--n-boot` works, with a deprecation warning),
each field's docstring its `--help`. Messages here name flags that way.

Names that pick something from a fixed set (tasks, benchmarks, infill sources, scoring modes) are
checked here, and an unknown name answers with the closest known ones instead of a guessed default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from data_recipes import hints
from data_recipes.clips import VIDEO_INPUT_SETTINGS, VIDEO_INPUTS
from data_recipes.resize import check_max_pixels
from train.config import field_docs
from train.run_record import RunRecord, RunRecordError

BENCHMARKS = ("synthetic", "egoschema")
SCORINGS = ("loglik", "generate")
LOGLIK_NORMS = ("sum", "mean", "chars")
OPTION_BATCH_MB = 256.0  # the default bound on the prompt-cache copies of batched options (`option_batch_mb`)
"""How loglik scoring compares options (`--loglik-norm`, `evalsuite.scoring.OptionScores`)."""
PROTOCOLS = ("paper", "custom")
PAPER_FRAMES = (5, 10)
"""The numbers of frames of the paper's EgoSchema table."""
INFILL_KINDS = ("self", "oracle", "oracle_noisy", "file", "model")
IRAVEN_LAYOUTS = ("composite", "separate", "candidates")
"""How an I-RAVEN puzzle is shown (`--iraven-layout`; `evalsuite.prompts`, its I-RAVEN section, renders each)."""


class ConfigError(ValueError):
    """A setting that cannot work (unknown name, missing path, incompatible combination)."""


def did_you_mean(kind: str, name: str, known) -> ConfigError:
    """`ConfigError("Unknown benchmark 'egoshema'. Did you mean 'egoschema'? Known: ...")`."""
    known = list(known)
    hint = hints.did_you_mean(name, known, n=2, cutoff=0.5, sentence=True)
    return ConfigError(f"Unknown {kind} '{name}'.{hint} Known: {', '.join(known)}.")


@dataclass(frozen=True)
class InfillSpec:
    """Where vCoT infills (and captions) come from: `self`, `oracle`, `oracle_noisy:P`, `file:PATH` or `model:DIR`.

    `oracle_noisy:P` (0 <= P <= 1) is the synthetic ground truth with a share P of the infills corrupted
    (`p`): a controlled dose of wrong infills between the perfect oracle (P = 0) and all wrong (P = 1)."""
    kind: str
    path: Path | None = None
    p: float | None = None

    @classmethod
    def parse(cls, spec: str) -> "InfillSpec":
        kind, _, rest = spec.partition(":")
        if kind not in INFILL_KINDS:
            raise did_you_mean("infill source", kind, ["self", "oracle", "oracle_noisy:P", "file:PATH", "model:DIR"])
        if kind in ("self", "oracle"):
            if rest:
                raise ConfigError(f"--infills {spec}: '{kind}' takes no path")
            return cls(kind)
        if kind == "oracle_noisy":
            return cls(kind, p=_share(spec, rest))
        if not rest:
            raise ConfigError(f"--infills {spec}: '{kind}' needs a path, e.g. {kind}:/path/to/it")
        path = Path(rest).expanduser().resolve()
        if kind == "file" and not path.is_file():
            raise ConfigError(f"--infills {spec}: no such file {path}")
        if kind == "model" and not path.is_dir():
            raise ConfigError(f"--infills {spec}: no such model directory {path}")
        return cls(kind, path)

    @property
    def oracle(self) -> bool:
        """Whether the texts come from the synthetic generator's ground truth (synthetic items only)."""
        return self.kind in ("oracle", "oracle_noisy")

    def __str__(self) -> str:
        if self.kind == "oracle_noisy":
            return f"{self.kind}:{self.p!r}"  # one spelling per share: 0.5, .5 and 0.50 are the same setting
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def _share(spec: str, text: str) -> float:
    """P of `oracle_noisy:P`: a number from 0 to 1."""
    try:
        p = float(text)
    except ValueError:
        p = None
    if p is None or not 0.0 <= p <= 1.0:  # also refuses nan
        raise ConfigError(f"--infills {spec}: oracle_noisy needs the share of corrupted infills, a number from 0 to "
                          f"1 (e.g. oracle_noisy:0.25), got {text!r}")
    return p + 0.0  # -0.0 -> 0.0


@dataclass
class EvalConfig:
    benchmark: str = "synthetic"
    """Item source: `synthetic` (generated test split) or `egoschema` (a directory, see `--data`)."""
    data: str | None = None
    """The data of what runs: with --benchmark egoschema its directory (questions.json, subset_answers.json,
    videos/<q_uid>.mp4); with the iraven task alone (`python -m evalsuite iraven CKPT --data DIR`), the puzzle
    directory, as --iraven_data."""
    frames: tuple[int, ...] = (5, 10)
    """Numbers of frames F sampled per video; every metric is reported per F."""
    limit: int | None = None
    """Evaluate only the first N items (synthetic default: 200 items); also N puzzles per I-RAVEN
    configuration unless iraven_limit is set."""
    iraven_limit: int | None = None
    """Puzzles per I-RAVEN configuration (overrides limit for the iraven task)."""
    protocol: str | None = None
    """`paper` | `custom`. `paper`, the paper's EgoSchema protocol: generate scoring with a letter-answer
    instruction after the options, rule extraction, then the --judge model for answers no rule reads;
    infills from one fixed generator (--infills model:DIR) shortened by --rephraser; F in {5, 10}, uniform
    frame sampling. A missing --judge, --rephraser or fixed generator is an error, and so is a --scoring or
    --frames that contradicts it. `custom`: whatever the other flags say. Default: paper for egoschema,
    custom for synthetic."""
    scoring: str | None = None
    """`loglik`: most likely option text; `generate`: greedy answer + option extraction. Default: the
    protocol's (paper: generate; custom: loglik)."""
    loglik_norm: str = "mean"
    """sum | mean | chars: how loglik scoring compares the options' log-likelihoods (each option's assistant turn
    after the prompt). `mean`: per scored token (the option's tokens and the template's end-of-turn tokens), so a
    long option is not penalised for its length; `chars`: per character of the option's text (independent of
    the tokenizer); `sum`: the total (the suite's behaviour before this flag; favours short options). Rows keep
    the raw totals and token counts either way."""
    infills: str = "self"
    """Infill generator: self | oracle | oracle_noisy:P | file:PATH | model:DIR (a fixed generator for every
    checkpoint). `oracle` is the synthetic generator's ground truth; `oracle_noisy:P` corrupts a share P
    (0..1) of those infills, each chosen by item and frame pair (synthetic benchmark only, like oracle)."""
    rephraser: str | None = None
    """Optional text model directory that shortens each generated infill."""
    judge: str | None = None
    """Optional local model that maps a free-form answer to an option (generate scoring only)."""
    seed: int = 0
    """Seed of the synthetic items and of every bootstrap."""
    image_size: int | None = None
    """Synthetic benchmark only: the size its square frames are rendered at (default 64). EgoSchema frames
    keep their aspect: bound them with --max_pixels."""
    video_input: str = "auto"
    """auto | images | native. How the frames of the `base` and `reversed` conditions (frames, then the question)
    reach the model: `images`, each frame as an image; `native`, the F frames as one clip through the family's
    video processor (families with a video path). caption and vcot put text between frames: always images;
    blind and text_only show no frame. auto: the checkpoint's run.json video_input (images for a model without
    one)."""
    max_pixels: int | None = None
    """The resize rule for every frame (at most N pixels, aspect kept, never upsampled). Default: the
    checkpoint's run.json max_pixels, else no limit; 0: no limit."""
    n_boot: int = 2000
    """Bootstrap replicates per confidence interval."""
    batch_size: int = 8
    """Prompts per batched generate call."""
    option_batch_mb: float = OPTION_BATCH_MB
    """Loglik scoring: score a prompt's options in one forward over copies of its prompt cache when the copies
    take at most this many MiB (small models, short prompts); above it, one option at a time against one
    cache (a 7B model's long prompts). 0: always one at a time. Results agree to float rounding either way."""
    precision: str = "auto"
    """The dtype every model is evaluated in: `fp32`, `bf16`, `fp16`, or `auto`: bf16 on a GPU that runs it
    natively, fp16 on one that would only emulate it (V100, T4), fp32 on CPU (the trainer's rule). Recorded in
    every metrics.json's settings: results made in another precision are not mixed with these."""
    infill_tokens: int = 48
    """max_new_tokens of each infill / caption generation step."""
    answer_tokens: int = 24
    """max_new_tokens of a generated answer (generate scoring)."""
    iraven_data: str | None = None
    """I-RAVEN directory in the official layout (<config>/RAVEN_<k>_test.npz); default: a generated test split."""
    iraven_layout: str = "composite"
    """I-RAVEN input: `composite` (one image: 3x3 grid with '?' above candidates A-H), `separate` (16 images),
    both answered with a letter; or `candidates` (each candidate judged on its own: the full matrix with it as
    the ninth panel, 9 images at the model's input size, answered yes/no; for small-input models)."""
    cache_dir: str | None = None
    """Infill cache directory (default: CKPT_DIR/.infill_cache, or beside the first checkpoint)."""
    tracking: bool = True
    """Log each checkpoint evaluation to MLflow."""
    experiment: str | None = None
    """MLflow experiment for evaluations without a training run in the store (default 'evalsuite')."""
    trust_remote_code: bool = False
    """Allow model code from checkpoint directories (off: HF-native classes only)."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise did_you_mean("benchmark", self.benchmark, BENCHMARKS)
        implicit_protocol, explicit_scoring = self.protocol is None, self.scoring
        if implicit_protocol:  # the paper's protocol for its benchmark; the suite's own on synthetic items
            self.protocol = "paper" if self.benchmark == "egoschema" else "custom"
        if self.protocol not in PROTOCOLS:
            raise did_you_mean("protocol", self.protocol, PROTOCOLS)
        if self.scoring is None:
            self.scoring = "generate" if self.protocol == "paper" else "loglik"
        if self.scoring not in SCORINGS:
            raise did_you_mean("scoring mode", self.scoring, SCORINGS)
        if self.loglik_norm not in LOGLIK_NORMS:
            raise did_you_mean("loglik normalisation", self.loglik_norm, LOGLIK_NORMS)
        self.frames = tuple(int(f) for f in self.frames)
        if not self.frames or any(f < 2 for f in self.frames):
            raise ConfigError(f"--frames {self.frames}: need at least 2 frames per video (infills go between frames)")
        if len(set(self.frames)) < len(self.frames):
            raise ConfigError(f"--frames {' '.join(map(str, self.frames))}: give each F once")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.iraven_limit is not None and self.iraven_limit < 1:
            raise ConfigError(f"--iraven_limit must be >= 1, got {self.iraven_limit}")
        if self.video_input not in VIDEO_INPUT_SETTINGS:
            raise did_you_mean("video input", self.video_input, VIDEO_INPUT_SETTINGS)
        mp = self.max_pixels
        if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or (mp != 0 and mp < 64)):
            raise ConfigError(f"--max_pixels must be 0 (no limit) or an integer of at least 64 (e.g. 200704 = "
                              f"448*448), got {self.max_pixels!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image_size must be >= 1, got {self.image_size}")
        spec = self.infill_spec  # validates the spelling and the path
        if self.benchmark == "egoschema":
            if not self.data:
                raise ConfigError("--benchmark egoschema needs --data DIR (questions.json, subset_answers.json, videos/)")
            if self.image_size is not None:
                raise ConfigError(f"--image_size {self.image_size} is the synthetic benchmark's render size; EgoSchema "
                                  f"frames are not squashed to a square any more. Bound their size with --max_pixels N "
                                  f"(at most N pixels, aspect kept, e.g. {self.image_size ** 2} = "
                                  f"{self.image_size}*{self.image_size})")
            if spec.oracle:
                raise ConfigError(f"--infills {self.infills} needs ground-truth transitions: synthetic benchmark only")
        elif self.data:
            raise ConfigError(f"--data {self.data}: the synthetic benchmark's items are generated, so nothing "
                              f"reads it. For EgoSchema give --benchmark egoschema --data DIR; for I-RAVEN puzzles, "
                              f"--iraven_data DIR (or --data DIR with the iraven task alone: python -m evalsuite "
                              f"iraven CKPT --data DIR)")
        if self.iraven_layout not in IRAVEN_LAYOUTS:
            raise did_you_mean("I-RAVEN layout", self.iraven_layout, IRAVEN_LAYOUTS)
        if self.iraven_data and not Path(self.iraven_data).expanduser().is_dir():
            raise ConfigError(f"--iraven_data {self.iraven_data}: no such directory (<config>/RAVEN_<k>_test.npz)")
        for name in ("rephraser", "judge"):
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_dir():
                raise ConfigError(f"--{name} {value}: no such model directory")
        if self.batch_size < 1 or self.n_boot < 1 or self.infill_tokens < 1 or self.answer_tokens < 1:
            raise ConfigError("--batch_size, --n_boot, --infill_tokens and --answer_tokens must be >= 1")
        if not self.option_batch_mb >= 0:
            raise ConfigError(f"--option_batch_mb must be a number of MiB >= 0, got {self.option_batch_mb}")
        if self.precision not in PRECISIONS:
            raise did_you_mean("precision", self.precision, PRECISIONS)
        if self.protocol == "paper":
            self._check_paper(spec, explicit_scoring, implicit_protocol)
        # A helper model that this run would not use is an error, not silently ignored: a user who names a
        # judge meant answers to be generated, one who names a rephraser meant generated infills.
        if self.judge and self.scoring != "generate":
            raise ConfigError(f"--judge {self.judge}: the judge maps a generated answer that no rule reads to an "
                              f"option; with --scoring {self.scoring} no answer is generated, so it would not be used. "
                              f"Pass --scoring generate, or leave --judge out")
        if self.rephraser and spec.kind not in ("self", "model"):
            raise ConfigError(f"--rephraser {self.rephraser}: the rephraser shortens infills a model generates "
                              f"(--infills self or model:DIR); --infills {self.infills} are not generated here, so it "
                              f"would not be used. Leave --rephraser out")

    @property
    def option_batch_bytes(self) -> int:
        """`option_batch_mb` in bytes, as `evalsuite.scoring.score_options` takes it."""
        return int(self.option_batch_mb * 2**20)

    def _check_paper(self, spec: "InfillSpec", explicit_scoring: str | None, implicit: bool) -> None:
        """--protocol paper with every piece it needs, and no flag that contradicts it.

        A contradicting flag is an error, not a warning plus an override: a run recorded as `paper` must be
        the paper's protocol, and a user who typed --scoring loglik must not get generate scoring (or the
        other way round) with a warning scrolled away above an hour of output."""
        missing, conflicts = [], []
        if not self.judge:
            missing.append("--judge DIR (the local chat model that maps an answer no rule can read to an option; "
                           "the paper used Qwen2.5-7B-Instruct)")
        if spec.kind != "model":
            missing.append(f"--infills model:DIR (one fixed infill generator shared by every checkpoint; got "
                           f"--infills {self.infills})")
        if not self.rephraser:
            missing.append("--rephraser DIR (the text model that shortens each generated infill; the paper used "
                           "a Qwen2.5 instruct model)")
        if explicit_scoring is not None and explicit_scoring != "generate":
            conflicts.append(f"--scoring {explicit_scoring} (the paper generates the answer: --scoring generate)")
        if not set(self.frames) <= set(PAPER_FRAMES):
            conflicts.append(f"--frames {' '.join(map(str, self.frames))} (the paper's table has F = "
                             f"{' and '.join(map(str, PAPER_FRAMES))}: give those, or one of them)")
        if missing or conflicts:
            origin = " (the default for --benchmark egoschema)" if implicit else ""
            parts = ([f"needs {'; '.join(missing)}"] if missing else []) + \
                    ([f"contradicts {'; '.join(conflicts)}"] if conflicts else [])
            raise ConfigError(f"--protocol paper{origin} {', and '.join(parts)}. Give them to reproduce the paper's "
                              f"table, or pass --protocol custom to run another protocol on purpose.")

    @property
    def infill_spec(self) -> InfillSpec:
        return InfillSpec.parse(self.infills)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class FrameInputs:
    """How one checkpoint's frames are fed: `--video_input` and `--max_pixels` resolved against its run.json."""
    video_input: str = "images"
    """`images` or `native` (what `base` and `reversed` use; caption and vcot always feed images)."""
    max_pixels: int | None = None
    """The resize rule's budget (None: frames as rendered or decoded)."""
    origin: str = "default"
    """Where video_input came from (`--video_input`, a run.json path, or `default`), for error messages."""


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def eval_precision(requested: str, device: str) -> str:
    """fp32 | bf16 | fp16 for `--precision` on `device` (see `EvalConfig.precision`)."""
    from train.runtime import resolve_precision

    on_gpu = str(device).startswith("cuda")
    if requested == "auto":
        picked = resolve_precision("auto", cuda=on_gpu)
        return "fp32" if picked == "no" else picked
    if requested == "fp16" and not on_gpu:
        raise ConfigError("--precision fp16 needs a GPU (CPU kernels for half precision are slow or missing); "
                          "use fp32 or bf16 on CPU")
    return requested


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision (`eval_precision`)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_frame_inputs(cfg: EvalConfig, run: RunRecord | dict | None,
                         where: str | os.PathLike = "run.json") -> FrameInputs:
    """`cfg.video_input` / `cfg.max_pixels` with `auto` and the default taken from a checkpoint's run.json
    (its record, or the decoded object; None for a base model).

    A run.json without the fields (older trainers, base models) means images and no limit; a value the
    trainer cannot have written is an error naming the file rather than a guess."""
    if not isinstance(run, RunRecord):
        try:
            run = RunRecord.from_dict(run or {}, where)
        except RunRecordError as e:
            raise ConfigError(str(e)) from None
    if cfg.video_input != "auto":
        video_input, origin = cfg.video_input, "--video_input"
    else:
        value = run.video_input
        if value is None:
            video_input, origin = "images", "default"
        elif value in VIDEO_INPUTS:
            video_input, origin = value, str(where)
        else:
            raise ConfigError(f"{where}: video_input {value!r} is not one of {', '.join(VIDEO_INPUTS)}; "
                              f"give --video_input images|native")
    if cfg.max_pixels is not None:
        max_pixels = cfg.max_pixels or None
    else:
        try:
            max_pixels = check_max_pixels(run.max_pixels, str(where))
        except ValueError as e:
            raise ConfigError(f"{e}; give --max_pixels N (0: no limit)") from None
    return FrameInputs(video_input, max_pixels, origin)


def field_help(name: str) -> str:
    """The docstring under an EvalConfig field: the start of its flag's `--help`."""
    return field_docs(EvalConfig).get(name, "")


__all__ = ["BENCHMARKS", "IRAVEN_LAYOUTS", "PAPER_FRAMES", "PROTOCOLS", "SCORINGS", "VIDEO_INPUT_SETTINGS",
           "ConfigError", "EvalConfig", "FrameInputs", "InfillSpec", "did_you_mean", "field_help", "resolve_frame_inputs"]
