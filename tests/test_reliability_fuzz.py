"""Fuzzing the parsers of samples, conversations, recipes and training settings with hypothesis.

Whatever a shard, an annotation file, a recipe YAML or a `--config` file holds, these functions either
return something well-formed or raise the toolkit's own error (ConversationError, ValueError naming
the record, RecipeError, ConfigError), never a TypeError/KeyError/OverflowError from deep inside.
Inputs are what `json.loads` / `yaml.safe_load` can produce (plus a few near-valid shapes, so the
search also reaches the code behind the first checks).
"""

from __future__ import annotations

import datetime
import json
import math
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_recipes.recipe import Recipe, RecipeError, parse_recipe
from data_recipes.sources import conversation_to_messages
from train.chat import ConversationError, validate_messages
from train.config import FIELDS, ConfigError, TrainConfig, apply_layer

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what JSON / YAML can hold -----------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["", "image", "text", "user", "assistant", "human", "gpt",
                                                     "<image>", "<video>", "1e400", "-1", "true"]))
yaml_scalars = scalars | st.dates() | st.datetimes()
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.text(max_size=8) | st.integers(), c, max_size=3), max_leaves=8)

# --- near-valid chat messages ------------------------------------------------------------------------
parts = st.one_of(
    st.just({"type": "image"}),
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=10)),
    st.dictionaries(st.sampled_from(["type", "text", "image"]), json_values, max_size=3),
    json_values,
)
turns = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "user", "assistant"]) | json_values,
    st.text(max_size=10) | st.lists(parts, max_size=4) | json_values,
)
messages = st.lists(turns, max_size=5) | json_values


@FUZZ
@given(messages, st.none() | st.integers(-1, 6))
def test_validate_messages_raises_only_conversation_errors(msgs, n_images):
    try:
        markers = validate_messages(msgs, n_images)
    except ConversationError as e:
        assert str(e).startswith("sample: ")  # names where it happened
        return
    assert isinstance(msgs, (list, tuple)) and msgs
    assert n_images is None or markers == n_images
    assert markers == sum(1 for m in msgs if isinstance(m["content"], list)
                          for p in m["content"] if p.get("type") == "image")


# --- LLaVA conversations -----------------------------------------------------------------------------
llava_turns = st.builds(
    lambda who, value: {"from": who, "value": value},
    st.sampled_from(["human", "gpt"]) | json_values,
    st.lists(st.sampled_from(["a", "b", " ", "\n", "<", ">", "<image>", "<video>", "<image>\n"]), max_size=6).map("".join)
    | json_values,
)
conversations = st.lists(llava_turns, max_size=5) | json_values


@FUZZ
@given(conversations, st.integers(0, 5))
@example([{"from": "human", "value": " "}, {"from": "gpt", "value": "x"}], 0)  # was: an empty user turn
def test_conversation_to_messages_output_always_validates(conv, n_images):
    try:
        out = conversation_to_messages(conv, n_images, "ann.json record r1")
    except ValueError as e:
        assert "ann.json record r1" in str(e)  # names the file and record
        return
    assert validate_messages(out, n_images) == n_images  # what the build writes is a valid sample
    assert [m["role"] for m in out] == ["user", "assistant"] * (len(out) // 2)
    assert all(m["content"] for m in out)


# --- recipes -----------------------------------------------------------------------------------------
RECIPE_KEYS = ["kind", "sources", "samples", "size_from", "match", "frames", "image_size", "seed", "split",
               "max_bad_fraction", "shard_size", "model", "description", "train", "name", "path", "max_pixels",
               "video_input", "bogus"]
sources = st.lists(st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["synthetic_image", "synthetic_video", "llava_image", "llava_video"]) | yaml_values,
    "weight": st.floats(allow_nan=True) | st.integers() | yaml_values,
    "path": st.text(max_size=8) | yaml_values,
    "media_root": st.text(max_size=8) | yaml_values,
    "wieght": yaml_values,
}) | yaml_values, max_size=3)
recipes = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["image", "video"]) | yaml_values,
    "sources": sources | yaml_values,
    "samples": st.integers() | yaml_values,
    "size_from": st.fixed_dictionaries({}, optional={"recipe": st.text(max_size=6) | yaml_values,
                                                     "unit": st.sampled_from(["samples", "images"]) | yaml_values,
                                                     "to": yaml_values}) | yaml_values,
    "match": st.fixed_dictionaries({}, optional={"to": st.text(max_size=6) | yaml_values,  # size_from's old spelling
                                                 "by": st.sampled_from(["samples", "images"]) | yaml_values}),
    "frames": st.integers(-2, 10) | yaml_values,
    "image_size": st.integers(0, 100) | yaml_values,
    "seed": st.integers() | yaml_values,
    "split": st.sampled_from(["train", "test"]) | yaml_values,
    "max_bad_fraction": st.floats() | yaml_values,
    "shard_size": st.integers(-1, 5) | yaml_values,
    "max_pixels": st.integers(-1, 10**7) | st.floats() | yaml_values,
    "video_input": st.sampled_from(["images", "native"]) | yaml_values,
    "model": yaml_values,
    "description": yaml_values,
    "train": st.dictionaries(st.text(max_size=6), yaml_values, max_size=2) | yaml_values,
    "name": st.sampled_from(["ok_name", "../up", "a/b", ".hidden", ""]) | yaml_values,
    "bogus": yaml_values,
}) | yaml_values


@FUZZ
@given(recipes)
# What the fuzzer and a review of its reports found (each was a TypeError or a silently accepted value):
@example(None)                                                            # YAML file holding a scalar
@example({"kind": "image", "sources": [{}], "samples": 1})                # a source without 'type'
@example({"kind": "video", "sources": [{"type": "synthetic_video"}], "match": {"to": "x", "by": 5}})
@example({"kind": "video", "sources": [{"type": "synthetic_video"}], "size_from": {"recipe": "x", "unit": [1]}})
@example({"kind": "video", "sources": [{"type": "synthetic_video", "weight": float("inf")}], "samples": True})
@example({"kind": "video", "sources": [{"type": "llava_video", "path": 5, "media_root": [1]}], "samples": 3})
def test_parse_recipe_raises_only_recipe_errors(data):
    try:
        r = parse_recipe(data, "fuzzed", "fuzzed.yaml")
    except RecipeError as e:
        assert str(e).startswith("fuzzed.yaml")  # names the file (and the field)
        return
    assert isinstance(r, Recipe) and "/" not in r.name and not r.name.startswith(".")
    assert isinstance(r.samples, int) or r.size_from is not None
    assert all(math.isfinite(s.weight) and s.weight > 0 for s in r.sources)
    assert len(r.content_hash()) == 64  # what the build hashes is plain JSON


# --- training settings -------------------------------------------------------------------------------
def _config_patch_pending() -> bool:
    """train/config.py's `_coerce` before the fix (lets OverflowError out, turns None or a mapping into text).

    That file is outside this change; the fix is in the issue-9 report. Until it lands the two tests
    below are expected failures; once it lands they run as plain tests.
    """
    try:
        apply_layer({}, {"run_name": None}, "probe")
        apply_layer({}, {"learning_rate": 10**400}, "probe")
    except ConfigError:
        return False
    except OverflowError:
        return True
    return True


CONFIG_PATCH_PENDING = pytest.mark.xfail(_config_patch_pending(), strict=True,
                                         reason="needs the train/config.py _coerce fix (issue 9 report)")

layers = st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=8), yaml_values | st.integers(), max_size=4) \
    | st.dictionaries(st.sampled_from(sorted(FIELDS)), st.integers(min_value=2**1030) | st.floats(), max_size=3) \
    | yaml_values


@CONFIG_PATCH_PENDING
@FUZZ
@given(layers)
def test_apply_layer_raises_only_config_errors(layer):
    base = {k: f.default for k, f in FIELDS.items()}
    try:
        out = apply_layer(base, layer, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml")
        return
    cfg = TrainConfig(**out)  # every value now has its field's type
    for k, want in typing.get_type_hints(TrainConfig).items():
        assert type(getattr(cfg, k)) is want, (k, getattr(cfg, k))
    json.dumps(cfg.to_dict())  # logged to MLflow as params and written to run.json


@CONFIG_PATCH_PENDING
@pytest.mark.parametrize("layer", [
    {"learning_rate": 10**400},         # float(int) -> OverflowError
    {"max_grad_norm": -(10**400)},
    {"run_name": None},                 # YAML `run_name:` (empty) became the string 'None'
    {"recipe": {"a": 1}},               # a mapping silently became the string "{'a': 1}"
    {"tracking_uri": datetime.date(2024, 1, 2)},
])
def test_ill_typed_layers_are_config_errors(layer):
    with pytest.raises(ConfigError, match=f"fuzz.yaml: '{next(iter(layer))}' must be"):
        apply_layer({}, layer, "fuzz.yaml")
