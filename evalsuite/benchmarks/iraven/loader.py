"""Load I-RAVEN data in the official directory layout, with validation.

Layout: ``<root>/<config>/RAVEN_<k>_<split>.npz``, one directory per configuration (see
:data:`~.layouts.CONFIG_NAMES`), as written by the original generator and by
:mod:`.generate`. Every file is checked field by field against the official format and a
malformed one raises :class:`IRavenFormatError` naming the file, the field and what was
expected, instead of failing later inside an evaluation.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .item import IMAGE_SHAPE, SPLITS
from .layouts import CONFIG_NAMES, get_config

_NAME = re.compile(r"^RAVEN_(\d+)_(train|val|test)\.npz$")
LAYOUT_HINT = ("<root>/<config>/RAVEN_<k>_<split>.npz with <config> one of "
               + ", ".join(CONFIG_NAMES) + " and <split> one of train, val, test")

# field -> (accepted dtype kinds, expected dtype in words, allowed shapes). "u1" means
# exactly uint8; "iu" any integer (the official files hold int64).
FIELDS: dict[str, tuple[str, str, tuple[tuple[int, ...], ...]]] = {
    "image": ("u1", "uint8", (IMAGE_SHAPE,)),
    "target": ("iu", "an integer dtype (int64)", ((),)),
    "predict": ("iu", "an integer dtype (int64)", ((),)),
    "meta_matrix": ("u1", "uint8", ((8, 9),)),
    "meta_target": ("u1", "uint8", ((9,),)),
    # Byte strings in the official data; unicode accepted from Python 3 re-generations.
    "structure": ("SU", "a byte-string array (|S..)", ((8,), (12,))),
    "meta_structure": ("u1", "uint8", ((21,),)),
}


def _dtype_ok(dtype: np.dtype, accepted: str) -> bool:
    return dtype == np.uint8 if accepted == "u1" else dtype.kind in accepted


class IRavenFormatError(ValueError):
    """A file or directory does not follow the official I-RAVEN format."""


@dataclass
class RavenRecord:
    """One puzzle as stored on disk.

    ``image[0:8]`` are the context panels (row-major, the 9th cell missing),
    ``image[8:16]`` the candidates; ``image[8 + target]`` is the answer. ``predict`` is
    the original generator's heuristic solver output, not ground truth.
    """

    config: str
    k: int
    split: str
    path: Path
    image: np.ndarray
    target: int
    predict: int
    meta_matrix: np.ndarray
    meta_target: np.ndarray
    structure: list[str]
    meta_structure: np.ndarray

    @property
    def context(self) -> np.ndarray:
        return self.image[:8]

    @property
    def candidates(self) -> np.ndarray:
        return self.image[8:]

    @property
    def answer_image(self) -> np.ndarray:
        return self.image[8 + self.target]


def validate_arrays(arrays: Mapping[str, np.ndarray], source: str | Path = "<arrays>") -> None:
    """Raise :class:`IRavenFormatError` unless ``arrays`` has the official fields.

    Checks presence, dtype and shape of each field, and that target/predict are in 0..7.
    """
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise IRavenFormatError(
            f"{source}: missing field(s) {', '.join(missing)}; an I-RAVEN .npz must hold "
            f"{', '.join(FIELDS)} (found: {', '.join(sorted(arrays)) or 'nothing'})")
    for name, (kinds, dtype_text, shapes) in FIELDS.items():
        arr = np.asarray(arrays[name])
        if not _dtype_ok(arr.dtype, kinds):
            raise IRavenFormatError(
                f"{source}: field {name!r} has dtype {arr.dtype}, expected {dtype_text}")
        if arr.shape not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise IRavenFormatError(
                f"{source}: field {name!r} has shape {arr.shape}, expected {want}")
    for name in ("target", "predict"):
        value = int(np.asarray(arrays[name]))
        if not 0 <= value < 8:
            raise IRavenFormatError(f"{source}: field {name!r} is {value}, expected 0..7")


def read_npz(path: str | Path, config: str | None = None) -> RavenRecord:
    """Read and validate one ``RAVEN_<k>_<split>.npz`` file."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise IRavenFormatError(f"{path}: file name should be RAVEN_<k>_<split>.npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # empty (EOFError), cut short (BadZipFile) or with damaged compressed data (zlib.error)
        raise IRavenFormatError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    validate_arrays(arrays, path)
    structure = [t.decode("ascii") if isinstance(t, bytes) else str(t)
                 for t in arrays["structure"].tolist()]
    return RavenRecord(
        config=config or path.parent.name, k=int(match.group(1)), split=match.group(2),
        path=path, image=arrays["image"], target=int(arrays["target"]),
        predict=int(arrays["predict"]), meta_matrix=arrays["meta_matrix"],
        meta_target=arrays["meta_target"], structure=structure,
        meta_structure=arrays["meta_structure"])


def split_files(root: str | Path, split: str,
                configs: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """The files of ``split`` per configuration, sorted by k.

    With ``configs=None`` every configuration directory present under ``root`` is used
    (at least one must exist); named configurations must all exist.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"I-RAVEN directory {root} does not exist; expected {LAYOUT_HINT}")
    if configs is None:
        names = [c for c in CONFIG_NAMES if (root / c).is_dir()]
        if not names:
            raise FileNotFoundError(
                f"{root} holds no I-RAVEN configuration directory; expected {LAYOUT_HINT}")
    else:
        names = list(configs)
        for name in names:
            get_config(name)  # unknown names: error with "did you mean"
            if not (root / name).is_dir():
                raise FileNotFoundError(
                    f"configuration directory {root / name} does not exist; expected {LAYOUT_HINT}")
    out = {}
    for name in names:
        files = []
        for path in (root / name).glob(f"RAVEN_*_{split}.npz"):
            match = _NAME.match(path.name)
            if match:
                files.append((int(match.group(1)), path))
        out[name] = [p for _, p in sorted(files)]
    return out


def load_split(root: str | Path, split: str, configs: Iterable[str] | None = None,
               limit: int | None = None) -> Iterator[RavenRecord]:
    """Yield the validated puzzles of one split, configuration by configuration.

    ``limit`` caps the number of puzzles *per configuration* (the first ones by k), so a
    quick evaluation stays balanced across configurations.
    """
    for config, files in split_files(root, split, configs).items():
        for path in files[:limit]:
            yield read_npz(path, config)
