"""The trainer's typed configuration and its precedence rules.

    defaults  <  the recipe's `train:` section  <  --config file.yaml  <  command-line flags

Flag names equal field names equal MLflow param names (`--lora_r 16` -> `lora_r`). An unknown key in
any layer is an error with a "did you mean"; every field's docstring is its `--help` text.

`add_field_flags` makes the flags of a settings dataclass; the evaluation CLI (`evalsuite/cli.py`) builds its
flags from `EvalConfig` with it too, so both CLIs spell flags one way: underscores, as the field names and as
HF's Trainer and TRL (`--output_dir`). The dashed spelling (`--output-dir`, `--n-boot`) is accepted with a
one-line deprecation warning on stderr naming the underscored one.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_recipes.clips import VIDEO_INPUT_SETTINGS
from data_recipes.counters import TRAIN_MATCH_UNITS
from data_recipes.hints import did_you_mean
from data_recipes.yamlfile import load_yaml

PRECISIONS = ("auto", "bf16", "fp16", "no")
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")


class ConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    recipe: str = ""
    """Data recipe name (data_recipes/recipes/NAME.yaml) or path to a recipe file."""
    base_model: str = ""
    """Local model directory, an HF-style id looked up under $MODEL_ROOT, or tiny:FAMILY /
    tiny-pretrained:FAMILY (built on demand under models/)."""
    run_name: str = ""
    """Name of the run and of its directory under output_root (default: the recipe name)."""
    output_root: str = "ckpt"
    """Where run directories go: ckpt/<run_name>/."""
    output_dir: str = ""
    """The run directory itself, as HF's Trainer and TRL name it (e.g. ckpt/video_demo; its last part names the
    MLflow run). Instead of output_root and run_name, not with them. Default: output_root/run_name."""
    shards_root: str = "shards"
    """Where the recipe's shards are (built first when missing)."""

    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_targets: str = "attention"
    """Modules that get LoRA: attention (the language model's q/k/v/o projections), all_linear (also its
    MLP), or a regex over module names."""
    freeze_vision_tower: bool = True
    """Keep the vision encoder frozen (a trainable random-init tower was seen to collapse; LLaVA freezes it)."""
    freeze_projector: bool = False
    """Keep the vision-to-language projector frozen (else it is trained fully and saved with the adapter)."""
    train_embeddings: bool = False
    """Train input embeddings and lm_head fully (lets LoRA emit words the base never produced)."""

    learning_rate: float = 2e-4
    """Peak learning rate of the LoRA (and embedding) parameters (AdamW)."""
    projector_lr: float = 2e-5
    """Peak learning rate of the projector (LLaVA trains it 10x slower than LoRA)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: str = "cosine"
    """cosine | linear | constant, after a linear warmup."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    per_device_batch_size: int = 4
    """Samples per micro-batch per process (4 with gradient checkpointing fits a 7B model on an 80 GB GPU:
    check with --dry_run)."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step."""
    mixed_precision: str = "auto"
    """auto | bf16 | fp16 | no. auto: bf16 on a GPU that supports it, fp16 (with dynamic loss scaling) on
    one that does not, fp32 on CPU. The same value goes to accelerate and to the DeepSpeed config."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (non-reentrant): less memory, about 30% more compute."""
    attn_implementation: str = "auto"
    """auto | sdpa | flash_attention_2 | eager. auto: flash_attention_2 on a GPU with flash-attn installed
    and 16-bit precision, else sdpa."""
    max_length: int = 0
    """Longest sample in tokens (text + visual); a longer one is dropped and counted, never cut
    (0: the language model's context)."""
    max_dropped_fraction: float = 0.05
    """The run stops with an error when more than this share of the samples it has taken (at least
    `MIN_SAMPLES_FOR_DROP_CHECK`) were dropped as longer than max_length or the context: what it trains on
    would no longer be the recipe's data (the long videos gone, say). 1: never."""
    video_input: str = "auto"
    """auto | images | native. How a video sample's frames reach the model: `images`, each frame as an
    image; `native`, the clip through the family's video processor (pooled video tokens, Qwen's temporal
    patches, InternVL's frame labels). auto: the recipe's (manifest) video_input."""
    max_pixels: int = -1
    """The resize rule's budget for every image and frame fed (aspect kept, never upsampled): -1, the
    build's (manifest); 0, no limit."""

    max_steps: int = 0
    """Stop after this many optimizer steps (0: no step limit)."""
    max_samples: int = 0
    """Stop after this many samples summed over processes (0: no sample limit)."""
    match_to: str = ""
    """Stop at the consumption of a reference run: its checkpoint directory (run.json) or MLflow run id
    (takes precedence over max_samples)."""
    match_by: str = "visual_tokens"
    """Unit of the match: samples | visual_tokens | text_tokens | supervised_tokens."""
    budget: int = 0
    """Stop at exactly this amount of budget_unit, counted and stopped as match_to is (0: none; not with
    match_to; takes precedence over max_samples). A study gives each of its runs its own."""
    budget_unit: str = "visual_tokens"
    """Unit of budget: samples | visual_tokens | text_tokens | supervised_tokens."""
    schedule_steps: int = 0
    """Steps the lr schedule spans (0: max_steps, or an estimate from the budget)."""

    seed: int = 0
    """Seeds model init of LoRA, data order and dropout."""
    ds_config: str = "zero2"
    """DeepSpeed config: zero2 | zero3 | zero3_offload | a JSON path | none. Ignored when the
    accelerate launcher already configured DeepSpeed (--use_deepspeed / --config_file)."""
    process_group_timeout_s: int = 1800
    """Seconds a collective may wait for the slowest process (gloo and NCCL) before the job fails."""
    num_workers: int = 2
    """Data loader worker processes per training process."""
    shuffle_buffer: int = 500
    """Samples held in the streaming shuffle buffer."""

    logging_steps: int = 1
    """Log metrics to MLflow every N steps."""
    save_steps: int = 50
    """Save a full resumable state every N steps (0: only at the end)."""
    save_total_limit: int = 2
    """Resumable states kept on disk (the newest ones)."""
    resume: str = ""
    """'latest', a checkpoints/step-N directory, or empty to start fresh."""
    record_samples: bool = False
    """Write the key of every consumed sample to RUN/samples/rank-R.txt (an audit of what each process saw)."""
    verify: bool = False
    """Re-hash the shards against their manifest before training."""

    experiment: str = "betweenframes"
    """MLflow experiment (one per study)."""
    tracking_uri: str = ""
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<repo>/mlruns/mlflow.db)."""
    system_metrics: bool = True
    """Log MLflow system metrics (CPU, memory; GPU utilisation and memory with nvidia-ml-py) on the run."""
    tracking_grace_s: float = 60.0
    """How long the end of a run waits for an MLflow store that stopped answering mid-run (the training
    itself never stops for it: metrics.jsonl keeps every point, `python -m train.tracking sync RUN_DIR`)."""
    trust_remote_code: bool = False
    """Allow model code shipped with a checkpoint to run (off unless you trust it)."""

    dry_run: bool = False
    """Print the plan (parameters, precision, DeepSpeed config, steps, sequence lengths, memory per GPU)
    from the model's config and the manifest, without loading weights or training."""
    gpus: int = 0
    """Planning only: GPUs per node to plan for (0: what this machine has)."""
    gpu_memory_gb: float = 80.0
    """Planning only: memory of one GPU."""
    nodes: int = 1
    """Planning only: number of nodes."""

    @property
    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path(self.output_root) / (self.run_name or Path(self.recipe).stem)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string right after each field), read from the class source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


MIN_SAMPLES_FOR_DROP_CHECK = 200
"""Samples a run takes before `max_dropped_fraction` is checked (the first batches' share is noise)."""

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def _settable(typ):
    """X of a field typed `X | None` (None is a default, never a value given), else `typ`."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return typ


def type_name(typ) -> str:
    typ = _settable(typ)
    if typing.get_origin(typ) is tuple:
        return f"one or more {type_name(typing.get_args(typ)[0])}"
    return typ.__name__


def coerce(typ, value):
    """`value` (a flag's text, or a YAML value) as a field of type `typ` (bool, int, float, str, `X | None` or
    `tuple[X, ...]`); ValueError when it is not one."""
    typ = _settable(typ)
    try:
        if typing.get_origin(typ) is tuple:
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(value)
            return tuple(coerce(typing.get_args(typ)[0], v) for v in value)
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        # Only scalars: str(None), str({...}) or str(a date) would pass silently as text.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(value)
        if typ is str:
            return value if isinstance(value, str) else str(value)  # `run_name: 2024` in YAML is an int
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        out = typ(value)
        if typ is float and not math.isfinite(out):
            raise ValueError(value)
        return out
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"must be {type_name(typ)}, got {value!r}") from None


def _coerce(key: str, value, where: str):
    try:
        return coerce(_TYPES[key], value)
    except ValueError as e:
        raise ConfigError(f"{where}: '{key}' {e}") from None


def apply_layer(values: dict, layer: dict, where: str) -> dict:
    """Overlay one layer of settings, refusing unknown keys and ill-typed values."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    out = dict(values)
    for k, v in layer.items():
        if k not in FIELDS:
            raise ConfigError(f"{where}: unknown key '{k}'{did_you_mean(str(k), FIELDS)}")
        out[k] = _coerce(k, v, where)
    return out


class FieldFlag(argparse.Action):
    """One spelling of a settings field's flag: types what it is given as the field is typed (an error names
    the field), and when it is the dashed spelling, warns on stderr which one to type (`canonical`)."""

    def __init__(self, option_strings, dest, *, typ, canonical: str | None = None, **kwargs):
        self.typ, self.canonical = typ, canonical
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.canonical:
            print(f"warning: {option_string} is deprecated, use {self.canonical}", file=sys.stderr)
        value = self.const if self.nargs == 0 else values
        try:
            setattr(namespace, self.dest, coerce(self.typ, value))
        except ValueError as e:
            raise argparse.ArgumentError(self, f"'{self.dest}' {e}") from None


def _spellings(name: str) -> list[tuple[str, str | None]]:
    """(flag, the canonical flag when this one is the deprecated dashed spelling, else None)."""
    flag = f"--{name}"
    return [(flag, None)] + ([(flag.replace("_", "-"), flag)] if "_" in name else [])


def add_field_flags(parser: argparse.ArgumentParser, cls, names=None, shown_defaults: dict | None = None) -> None:
    """One flag per field of the settings dataclass `cls` (or of the fields in `names`): `--NAME`, its `--help`
    the field's docstring and default (or the text `shown_defaults` gives for it, when the caller's default is
    not the field's); the dashed `--NA-ME` too, hidden, with a deprecation warning.

    A bool field takes an optional true/false (`--dry_run` = `--dry_run true`), and one that defaults to true
    also `--no_NAME`; a tuple field takes one or more values. Every flag's default is None, so a flag is
    "given" only when typed: the caller applies the dataclass's defaults (or its own layers)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        typ = hints[f.name]
        shape = ({"nargs": "?", "const": "true"} if typ is bool
                 else {"nargs": "+"} if typing.get_origin(_settable(typ)) is tuple else {})
        shown = (shown_defaults or {}).get(f.name, repr(f.default))
        helps = {f.name: f"{docs.get(f.name, '')} [default: {shown}]",
                 f"no_{f.name}": f"--{f.name} false"}
        flags = [(f.name, shape)] + ([(f"no_{f.name}", {"nargs": 0, "const": False})] if f.default is True else [])
        for name, kwargs in flags:
            for flag, canonical in _spellings(name):
                parser.add_argument(flag, dest=f.name, action=FieldFlag, typ=typ, canonical=canonical, default=None,
                                    help=argparse.SUPPRESS if canonical else helps[name].replace("%", "%%"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    # exit_on_error=False: a flag's error is a ConfigError (resolve), as every other bad setting is.
    p = argparse.ArgumentParser(prog="train/lora.py", description="LoRA finetuning over WebDataset shards.",
                                allow_abbrev=False, exit_on_error=False)
    p.add_argument("--config", help="YAML file of settings (overrides the recipe's train section)")
    add_field_flags(p, TrainConfig)
    return p


def resolve(argv: list[str], recipe_train: typing.Callable[[str], dict] | None = None) -> TrainConfig:
    """Parse argv into a TrainConfig following the precedence in the module docstring.

    `recipe_train(recipe_name) -> dict` returns the recipe's `train:` section; it is a callback so that
    this module stays free of data-loading imports.
    """
    p = build_parser()
    try:
        args, unknown = p.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ConfigError(f"command line: {e}") from None
    if unknown:
        flag = unknown[0].lstrip("-").split("=")[0].replace("-", "_")
        raise ConfigError(f"command line: unknown flag '{unknown[0]}'{did_you_mean(flag, FIELDS)}")
    cli = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    values = {k: f.default for k, f in FIELDS.items()}
    recipe = cli.get("recipe")
    file_layer = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"--config {path}: file not found")
        try:
            file_layer = load_yaml(path) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(file_layer, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        recipe = recipe or file_layer.get("recipe")
        if recipe is not None and not isinstance(recipe, str):
            raise ConfigError(f"{path}: field 'recipe' must be a recipe name or path, got {recipe!r}")
    if not recipe:
        raise ConfigError("no recipe: pass --recipe NAME (python -m data_recipes list shows them)")
    recipe_layer = recipe_train(recipe) if recipe_train is not None else {}
    values = apply_layer(values, recipe_layer, f"recipe {recipe}: train section")
    values = apply_layer(values, file_layer, f"{args.config}")
    values = apply_layer(values, cli, "command line")
    given = {k for layer in (recipe_layer, file_layer, cli) for k in layer}
    if "output_dir" in given and (clash := [k for k in ("output_root", "run_name") if k in given]):
        raise ConfigError(f"give output_dir (the run directory itself) or {' and '.join(clash)}, not both: "
                          f"--output_dir {values['output_dir']} and {' '.join(f'--{k} {values[k]}' for k in clash)}")
    cfg = TrainConfig(**values)
    validate(cfg)
    # A unit without what it measures would be ignored: `--budget 1000 --match_by samples` stopped at 1,000
    # visual tokens (budget_unit's default), not samples.
    for unit, needs in (("match_by", "match_to"), ("budget_unit", "budget")):
        if unit in given and not values[needs]:
            raise ConfigError(f"{unit} {values[unit]} is the unit of {needs}, which is not given: it would be ignored"
                              + (" (a budget's unit is budget_unit)" if unit == "match_by" and values["budget"] else ""))
    return cfg


def validate(cfg: TrainConfig) -> None:
    for name in ("match_by", "budget_unit"):
        if getattr(cfg, name) not in TRAIN_MATCH_UNITS:
            raise ConfigError(f"{name} must be one of {', '.join(TRAIN_MATCH_UNITS)}, got {getattr(cfg, name)!r}")
    if cfg.budget < 0:
        raise ConfigError(f"budget must be >= 0 (0: none), got {cfg.budget}")
    if cfg.budget and cfg.match_to:
        raise ConfigError("give budget or match_to, not both (each is where the run stops)")
    if cfg.lr_scheduler not in ("cosine", "linear", "constant"):
        raise ConfigError(f"lr_scheduler must be cosine, linear or constant, got {cfg.lr_scheduler!r}")
    if cfg.max_length < 0:
        raise ConfigError("max_length must be >= 0 (0: the language model's context)")
    if not 0 <= cfg.max_dropped_fraction <= 1:
        raise ConfigError(f"max_dropped_fraction must be between 0 and 1, got {cfg.max_dropped_fraction}")
    if not (cfg.max_steps or cfg.max_samples or cfg.match_to or cfg.budget):
        raise ConfigError("no budget: give max_steps, max_samples, match_to or budget (in the recipe, --config or flags)")
    if cfg.max_pixels < -1 or 0 < cfg.max_pixels < 64:
        raise ConfigError(f"max_pixels must be -1 (the build's), 0 (no limit) or at least 64, got {cfg.max_pixels}")
    for name, allowed in (("mixed_precision", PRECISIONS), ("attn_implementation", ATTENTION),
                          ("video_input", VIDEO_INPUT_SETTINGS)):
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for k in ("per_device_batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha", "process_group_timeout_s",
              "nodes", "logging_steps"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    # Values the optimizer or a launcher would take without a word and turn into another experiment: a negative
    # clipping norm flips the gradients (torch scales by it), 0 zeroes them without DeepSpeed and switches
    # clipping off under it; a negative learning rate ascends (0 is allowed: the weights stay, e.g. to measure
    # losses); LoRA's scale is alpha / r.
    for k in ("max_grad_norm", "gpu_memory_gb"):
        if not getattr(cfg, k) > 0:
            hint = " (for no clipping in effect, give a large norm such as 1e9)" if k == "max_grad_norm" else ""
            raise ConfigError(f"{k} must be > 0, got {getattr(cfg, k)}{hint}")
    for k in ("learning_rate", "projector_lr", "weight_decay", "warmup_steps", "schedule_steps", "max_steps", "max_samples",
              "save_steps", "save_total_limit", "num_workers", "shuffle_buffer", "gpus", "tracking_grace_s"):
        if getattr(cfg, k) < 0:
            raise ConfigError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    name = cfg.run_name or Path(cfg.recipe).stem
    if not name or "/" in name or name.startswith(".") or "\\" in name:
        raise ConfigError(f"run_name {name!r} must be a plain directory name (it cannot leave output_root)")
    if cfg.output_dir and Path(cfg.output_dir).name in ("", ".", ".."):
        raise ConfigError(f"output_dir {cfg.output_dir!r} must end in the run's own directory name "
                          f"(e.g. ckpt/video_demo)")
