"""Settings that would turn a run into another experiment without a word are refused before anything loads,
and YAML files the user writes may not give one key twice."""

from __future__ import annotations

import pytest
import yaml

from data_recipes.recipe import RecipeError, load_recipe
from evalsuite.study.run import StudyError, load_study
from train.config import ConfigError, resolve


def _train(*flags: str):
    return resolve(["--recipe", "video_demo", *flags], recipe_train=lambda r: {"max_samples": 100})


@pytest.mark.parametrize("flag, value, words", [
    ("max_grad_norm", "-1", "max_grad_norm must be > 0, got -1.0"),   # torch would scale the gradients by -1
    ("max_grad_norm", "0", "max_grad_norm must be > 0, got 0.0"),     # zero gradients, or no clipping under DeepSpeed
    ("learning_rate", "-0.0002", "learning_rate must be >= 0, got -0.0002"),
    ("projector_lr", "-1", "projector_lr must be >= 0, got -1.0"),   # AdamW does not check a group's rate
    ("lora_alpha", "0", "lora_alpha must be >= 1, got 0"),           # LoRA's scale alpha / r: nothing trains
    ("lora_dropout", "1.5", "lora_dropout must be in [0, 1), got 1.5"),
    ("weight_decay", "-0.1", "weight_decay must be >= 0"),
    ("max_steps", "-1", "max_steps must be >= 0, got -1"),           # planned a schedule of -1 steps
    ("max_samples", "-5", "max_samples must be >= 0, got -5"),
    ("warmup_steps", "-3", "warmup_steps must be >= 0"),
    ("logging_steps", "0", "logging_steps must be >= 1, got 0"),     # a ZeroDivisionError after the first step
    ("num_workers", "-1", "num_workers must be >= 0"),
    ("save_steps", "-50", "save_steps must be >= 0"),
])
def test_out_of_range_training_settings_are_refused_naming_the_field(flag, value, words):
    with pytest.raises(ConfigError) as e:
        _train(f"--{flag}={value}")
    assert words in str(e.value)


def test_the_defaults_and_the_edges_that_mean_something_are_accepted():
    cfg = _train("--projector_lr", "0", "--lora_dropout", "0", "--warmup_steps", "0", "--num_workers", "0",
                 "--save_steps", "0", "--max_grad_norm", "1e9")
    assert cfg.projector_lr == 0 and cfg.max_grad_norm == 1e9 and cfg.max_samples == 100


def test_a_training_config_file_that_is_not_yaml_or_names_no_recipe_string_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("learning_rate: [0.1\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        resolve(["--config", str(bad)])
    bad.write_text("recipe: 5\n")
    with pytest.raises(ConfigError, match=f"{bad}: field 'recipe' must be a recipe name or path, got 5"):
        resolve(["--config", str(bad)])


def test_a_key_given_twice_is_refused_in_recipes_studies_and_training_configs(tmp_path):
    """PyYAML keeps the last of two equal keys silently: `samples` twice in a recipe ran with the second,
    `learning_rate` twice in a train section with whichever came last."""
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("kind: video\nsources:\n  - {type: synthetic_video}\nsamples: 100\nframes: 5\n"
                      "samples: 5000\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(recipe))
    assert f"{recipe}: not valid YAML" in str(e.value)
    assert "duplicate key 'samples' (first on line 4, again on line 6)" in str(e.value)

    recipe.write_text("kind: video\nsources:\n  - {type: synthetic_video}\nsamples: 100\nframes: 5\n"
                      "train:\n  learning_rate: 0.002\n  learning_rate: 0.0002\n  max_samples: 10\n")
    with pytest.raises(RecipeError, match="duplicate key 'learning_rate' \\(first on line 7, again on line 8\\)"):
        load_recipe(str(recipe))

    study = tmp_path / "study.yaml"
    study.write_text("name: s\narms:\n  - {name: video, recipe: video_demo}\nbudgets: [1000]\nseeds: [0]\n"
                     "budgets: [2000]\n")
    with pytest.raises(StudyError, match="duplicate key 'budgets'"):
        load_study(study)

    config = tmp_path / "run.yaml"
    config.write_text("recipe: video_demo\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError) as e:
        resolve(["--config", str(config)], recipe_train=lambda r: {"max_samples": 100})
    assert str(e.value).startswith(f"{config}: not valid YAML")
    assert "duplicate key 'seed' (first on line 2, again on line 3)" in str(e.value)


def test_equal_keys_in_different_mappings_and_merges_are_not_duplicates(tmp_path):
    from data_recipes.yamlfile import load_yaml

    f = tmp_path / "ok.yaml"
    f.write_text("a: {x: 1}\nb: {x: 2}\nbase: &b {lr: 1, seed: 0}\nrun:\n  <<: *b\n  seed: 3\n")
    assert load_yaml(f) == yaml.safe_load(f.read_text()) == {"a": {"x": 1}, "b": {"x": 2}, "base": {"lr": 1, "seed": 0},
                                                             "run": {"lr": 1, "seed": 3}}


def test_a_study_arm_or_its_recipe_may_not_cap_the_studys_budget(tmp_path):
    """A study's runs stop at its budget and its report groups them by it: an arm's `train: {max_steps: 3}`
    (or its recipe's train section setting max_steps) would stop them early while the report showed the budget."""
    spec = tmp_path / "study.yaml"
    body = "name: s\nbudgets: [1000]\nunit: visual_tokens\nseeds: [0]\nbase_model: tiny-pretrained:llava\narms:\n"
    spec.write_text(body + "  - {name: video, recipe: video_demo, train: {max_steps: 3}}\n")
    with pytest.raises(StudyError, match="arms\\[0\\]: train: 'max_steps' would stop the arm's runs short of the "):
        load_study(spec)
    recipe = tmp_path / "capped.yaml"
    recipe.write_text("kind: video\nsources:\n  - {type: synthetic_video}\nsamples: 100\nframes: 5\n"
                      "train: {max_samples: 50, max_steps: 3}\n")
    spec.write_text(body + f"  - {{name: video, recipe: {recipe}}}\n")
    with pytest.raises(StudyError, match="its train section sets max_steps, which would stop"):
        load_study(spec)
    recipe.write_text("kind: video\nsources:\n  - {type: synthetic_video}\nsamples: 100\nframes: 5\n"
                      "train: {max_samples: 50}\n")
    assert load_study(spec).arms[0].recipe == str(recipe)  # max_samples yields to the budget


def test_a_unit_without_what_it_measures_is_refused():
    """`--budget 1000 --match_by samples` stopped at 1,000 visual tokens (budget_unit's default): match_by is
    the unit of match_to only."""
    with pytest.raises(ConfigError, match="match_by samples is the unit of match_to, which is not given: it would be "
                                          "ignored \\(a budget's unit is budget_unit\\)"):
        _train("--budget", "1000", "--match_by", "samples")
    with pytest.raises(ConfigError, match="budget_unit samples is the unit of budget, which is not given"):
        _train("--budget_unit", "samples")
    assert _train("--budget", "1000", "--budget_unit", "samples").budget_unit == "samples"
