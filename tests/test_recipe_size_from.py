"""A recipe's `size_from` (build time, once spelled `match: {to, by}`): renaming it left every recipe's hash,
and so every existing build, as it was; the old spelling still loads, with a warning naming the file and the
new field; the trainer's `--match_to/--match_by` keep their names."""

from __future__ import annotations

import pytest
import yaml

from data_recipes.recipe import RECIPES_DIR, RecipeError, load_recipe, parse_recipe

# Obtained before the rename, with the recipes' `match: {to, by}` and the recipe.py of commit 0e27f67,
# GENERATOR_VERSION 2, $DATA_ROOT and $MODEL_ROOT unset (the annotation file then hashes as "absent"):
#   python -c "from data_recipes.recipe import load_recipe; print(load_recipe('image_demo').content_hash())"
# and the same for image_vtok_video_100k. The manifests of builds made then record these values.
IMAGE_DEMO_HASH = "e83e82c61d254fa04d04df62562d07a939f7bb844fc5726c71f282de052f98b9"
IMAGE_VTOK_VIDEO_100K_HASH = "c922a3184c6a289e0677a7de86df894a3518d1508ab839d0b4ec959137a763fc"
PINNED = {"image_demo": IMAGE_DEMO_HASH, "image_vtok_video_100k": IMAGE_VTOK_VIDEO_100K_HASH}


def _old_spelling(name: str) -> dict:
    """The shipped recipe `name` as it was written before the rename: `match: {to, by}`."""
    data = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    sf = data.pop("size_from")
    return data | {"match": {"to": sf["recipe"], "by": sf["unit"]}}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_size_from_recipes_keep_the_hash_they_had_as_match(name, monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.delenv("MODEL_ROOT", raising=False)
    assert load_recipe(name).content_hash() == PINNED[name]
    assert parse_recipe(_old_spelling(name), name, f"{name}.yaml").content_hash() == PINNED[name]


def test_old_spelling_loads_with_a_warning_naming_file_and_new_field(tmp_path, capsys):
    old = tmp_path / "image_demo.yaml"
    old.write_text(yaml.safe_dump(_old_spelling("image_demo")))
    new = load_recipe("image_demo")
    capsys.readouterr()
    r = load_recipe(old)
    err = capsys.readouterr().err
    assert f"warning: {old}: field 'match' is deprecated, use 'size_from'" in err
    assert r.size_from == new.size_from and (r.size_from.recipe, r.size_from.unit) == ("video_demo", "images")
    assert r.content_hash() == new.content_hash() == IMAGE_DEMO_HASH
    load_recipe("image_demo")
    assert "warning" not in capsys.readouterr().err  # the new spelling loads silently


@pytest.mark.parametrize("data, msg", [
    ({"size_from": {"recipe": "x", "unit": "images"}, "match": {"to": "x", "by": "images"}},
     r"r\.yaml: give 'size_from' only; 'match' is its old spelling"),
    ({"size_from": {"to": "x", "unit": "images"}}, r"r\.yaml: size_from: unknown key 'to' \(did you mean 'recipe'\?"),
    ({"size_from": {"recipe": "x", "by": "images"}}, r"r\.yaml: size_from: unknown key 'by' \(did you mean 'unit'\?"),
    ({"size_from": {"recipe": "x", "unit": "imgaes"}},
     r"r\.yaml: size_from\.unit must be one of samples, images, visual_tokens, text_tokens, got 'imgaes' "
     r"\(did you mean 'images'\?\)"),
    ({"size_from": {"recipe": "x", "unit": "supervised_tokens"}}, r"size_from\.unit must be one of"),  # a trainer unit
    ({"size_from": {"recipe": "r", "unit": "images"}}, r"r\.yaml: size_from\.recipe names this recipe itself"),
    ({"size_form": {"recipe": "x", "unit": "images"}}, r"unknown key 'size_form' \(did you mean 'size_from'\?\)"),
    ({"match": {"to": "x", "by": "tokens"}}, r"r\.yaml: size_from\.unit must be one of"),  # old spelling, new name
    ({}, r"r\.yaml: give exactly one of 'samples' or 'size_from'"),
])
def test_bad_size_from_names_file_and_field(data, msg):
    with pytest.raises(RecipeError, match=msg):
        parse_recipe({"kind": "image", "sources": [{"type": "synthetic_image"}], **data}, "r", "r.yaml")


def test_the_trainer_keeps_its_match_flags():
    """Only the recipe's field was renamed: the trainer's flags are what users type."""
    from train.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    assert {"match_to", "match_by"} <= fields and "size_from" not in fields
