"""YAML files the user writes (recipes, study specs, training configs), read strictly.

PyYAML keeps the last of two equal keys in a mapping without a word: a recipe with `samples: 100` and, further
down, `samples: 5000`, or a `train:` section with `learning_rate` twice, would run with whichever came last.
`load_yaml` refuses that, naming the key and both lines; the callers report it, like any invalid YAML, with
the file's path.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml


class _UniqueKeys(yaml.SafeLoader):
    """The safe loader, with a mapping's keys each given once."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base: an override the document asks for, not a repeat
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                        f"{key_node.start_mark.line + 1}): which one was meant?", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike):
    """The document in `path`, as `yaml.safe_load` reads it, but a key repeated in one mapping is an error
    (`yaml.YAMLError`)."""
    with open(Path(path), encoding="utf-8") as f:  # a stream: the error's marks name the file, not "<unicode string>"
        return yaml.load(f, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
