"""`run.json`, a finished training run's record: the one definition its writer and its readers import.

Written once per run, last (so a run directory holding it is a finished run), by
`train.lora.LoRATrainer.finish`. Read by:
- `train.accounting.reference_consumption`: `--match_to RUN_DIR` stops at that run's `consumed`;
- `evalsuite.checkpoints.checkpoint_ref`: an adapter's `base_model`; the record rides on
  `CheckpointRef.run` to `evalsuite.config.resolve_frame_inputs` (`video_input`, `max_pixels`) and
  `evalsuite.tracking` (`mlflow_run_id`, `tracking_uri`, `recipe`);
- `evalsuite.report.evaluation.Checkpoint` (`kind`, `frame_order`, `recipe`, `match`, `consumed`), and through it
  `evalsuite.report.study`;
- `evalsuite.study.run.trained`: a run directory's `budget` and `config.seed`.

The file is JSON with sorted keys (`data_recipes.files.atomic_write_json`). The fields readers use are
typed; everything else the trainer records (steps, passes, dropped, precision, runtime, parameters, ...)
is kept as it is in `extra`, so a record the trainer wrote reads and writes back byte for byte. Every
field may be absent when read (older trainers and hand-made records wrote fewer): a reader names what
it needs (`require`) and gets an error naming the file and the field. A file without `version` is
version 1, the format the trainer wrote before it recorded a version; a later version is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from data_recipes.files import atomic_write_json

RUN_RECORD_VERSION = 1


class RunRecordError(ValueError):
    """A run.json that cannot be used; the message names the file and the field."""


_TYPES = {str: "a string", int: "an integer", dict: "an object"}


@dataclass(frozen=True)
class RunRecord:
    base_model: str | None = None
    """The base model the adapter was trained on, as the trainer was given it (a path or `tiny:FAMILY`)."""
    family: str | None = None
    """The model family (`train.families`)."""
    recipe: str | None = None
    """The data recipe's name."""
    kind: str | None = None
    """The recipe's kind: `image` or `video`."""
    frame_order: str | None = None
    """`ordered`, or `shuffled` for the shuffled-frames control."""
    video_input: str | None = None
    """How video frames were fed: `images` or `native`."""
    max_pixels: int | None = None
    """The resize rule's pixel budget; None: no limit."""
    seed: int | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    consumed: dict | None = None
    """{counter: total} over the run (`data_recipes.counters.CONSUMED_COUNTERS`)."""
    budget: dict | None = None
    """`train.budget.Budget.to_dict()`: unit, target, reference, schedule."""
    config: dict | None = None
    """`TrainConfig.to_dict()`: every setting of the run."""
    match: dict | None = None
    """Only for a run stopped at a reference run's consumption: reference, unit, target, achieved, rel_error."""
    extra: dict = field(default_factory=dict)
    """Every other key of the file, kept as it is."""
    version: int = RUN_RECORD_VERSION

    @classmethod
    def typed_fields(cls) -> dict[str, type]:
        """{field: the JSON type its value must have when present} of the typed fields."""
        kinds = {"consumed": dict, "budget": dict, "config": dict, "match": dict, "max_pixels": int, "seed": int}
        return {f.name: kinds.get(f.name, str) for f in fields(cls) if f.name not in ("extra", "version")}

    @classmethod
    def from_dict(cls, data, where: str | os.PathLike = "run.json") -> RunRecord:
        """The record of a decoded run.json; `where` names it in errors."""
        if not isinstance(data, dict):
            raise RunRecordError(f"{where}: expected an object (base_model, recipe, ...), got {type(data).__name__}")
        version = data.get("version", 1)
        _check(where, "version", version, int)
        if version is None or not 1 <= version <= RUN_RECORD_VERSION:
            raise RunRecordError(f"{where}: field 'version' is {version}; this code reads versions 1 to "
                                 f"{RUN_RECORD_VERSION} (a newer trainer wrote it?)")
        typed = cls.typed_fields()
        for name, kind in typed.items():
            _check(where, name, data.get(name), kind)
        for counter, n in (data.get("consumed") or {}).items():
            _check(where, f"consumed.{counter}", n, int)
        return cls(**{k: data[k] for k in typed if k in data}, version=version,
                   extra={k: v for k, v in data.items() if k not in typed and k != "version"})

    @classmethod
    def read(cls, path: str | os.PathLike, require: tuple[str, ...] = ()) -> RunRecord:
        """The record in `path`, with the fields `require` names present (an error naming file and field)."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise RunRecordError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, path).require(*require, where=path)

    def require(self, *names: str, where: str | os.PathLike = "run.json") -> RunRecord:
        """This record, if every field in `names` is present; else an error naming `where` and the field."""
        for name in names:
            if getattr(self, name) is None:
                raise RunRecordError(f"{where}: field '{name}' missing (a finished run's record has it)")
        return self

    def to_dict(self) -> dict:
        """The JSON object of the file: every typed field (`match` only when there is one), `extra`, `version`."""
        typed = {k: getattr(self, k) for k in self.typed_fields() if k != "match" or self.match is not None}
        return self.extra | typed | {"version": self.version}

    def write(self, path: str | os.PathLike) -> None:
        """`path` written atomically, keys sorted, as the readers expect."""
        atomic_write_json(path, self.to_dict())


def _check(where, name: str, value, kind: type) -> None:
    """An error naming file and field when `value` is present (not None) and not of the JSON type `kind`."""
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return
    raise RunRecordError(f"{where}: field '{name}' must be {_TYPES[kind]}, got {value!r}")
