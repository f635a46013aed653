"""I-RAVEN generator: official file format, determinism, atomic writes, rule constraints, CLI."""

import json
from collections import Counter

import numpy as np
import pytest

from evalsuite.benchmarks.iraven import CONFIG_NAMES, generate_dataset, generate_item, item_rng, save_npz, split_of
from evalsuite.benchmarks.iraven.__main__ import main as cli_main
from evalsuite.benchmarks.iraven.layouts import CONFIGS, LAYOUTS, UnknownConfigError, get_config
from evalsuite.benchmarks.iraven.rules import narrow_ranges, sample_admissible_rules


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Ten puzzles per configuration (so every split exists), generated once."""
    out = tmp_path_factory.mktemp("iraven")
    summary = generate_dataset(out, per_config=10, seed=99)
    return out, summary


def test_npz_fields_match_reference_field_for_field(dataset, iraven_reference):
    out, _ = dataset
    for config in CONFIG_NAMES:
        for ref_file in sorted((iraven_reference / config).glob("*.npz")):
            mine_file = out / config / ref_file.name  # same k and split exist in ours
            with np.load(ref_file) as ref, np.load(mine_file) as mine:
                assert set(mine.files) == set(ref.files)
                for field in ref.files:
                    assert mine[field].dtype == ref[field].dtype, (config, field)
                    assert mine[field].shape == ref[field].shape, (config, field)
                # Configuration-level encodings must be identical, not just shaped alike.
                assert np.array_equal(mine["structure"], ref["structure"])
                assert np.array_equal(mine["meta_structure"], ref["meta_structure"])


def test_written_arrays_are_consistent(dataset):
    out, summary = dataset
    assert summary["total"] == 70 and summary["solver_misses"] == 0
    for path in out.rglob("*.npz"):
        with np.load(path) as d:
            assert d["image"].dtype == np.uint8 and d["image"].shape == (16, 160, 160)
            assert 0 <= int(d["target"]) < 8
            assert np.array_equal(d["meta_target"], np.bitwise_or.reduce(d["meta_matrix"], axis=0))
            # Every used meta_matrix row names one rule and at least one attribute.
            used = d["meta_matrix"][d["meta_matrix"].any(axis=1)]
            assert len(used) in (4, 8)
            assert (used[:, :4].sum(axis=1) == 1).all() and (used[:, 4:].sum(axis=1) >= 1).all()
            assert d["image"][:, 0, 0].min() == 255  # white background in the corner


def test_split_naming_and_file_layout(dataset):
    out, summary = dataset
    assert [split_of(k) for k in range(10)] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert split_of(13) == "train" and split_of(17) == "val" and split_of(28) == "test"
    for config in CONFIG_NAMES:
        names = sorted(p.name for p in (out / config).iterdir())
        expected = sorted(f"RAVEN_{k}_{split_of(k)}.npz" for k in range(10))
        assert names == expected  # no stray temporary files either
        assert summary["files"][config] == {"train": 6, "val": 2, "test": 2}


def test_same_seed_gives_identical_arrays(tmp_path):
    configs = ["distribute_four", "in_distribute_four_out_center_single"]
    generate_dataset(tmp_path / "a", 3, seed=5, configs=configs)
    generate_dataset(tmp_path / "b", 3, seed=5, configs=configs)
    generate_dataset(tmp_path / "c", 3, seed=6, configs=configs)
    differs = False
    for path in (tmp_path / "a").rglob("*.npz"):
        rel = path.relative_to(tmp_path / "a")
        with np.load(path) as a, np.load(tmp_path / "b" / rel) as b, np.load(tmp_path / "c" / rel) as c:
            for field in a.files:
                assert a[field].dtype == b[field].dtype
                assert a[field].tobytes() == b[field].tobytes(), (rel, field)
            differs |= not np.array_equal(a["image"], c["image"])
    assert differs, "a different seed should give different puzzles"


def test_puzzle_does_not_depend_on_other_configs_or_count():
    """Each puzzle has its own stream: generating fewer puzzles or configs changes nothing."""
    a = generate_item("distribute_nine", item_rng(3, "distribute_nine", 4))
    b = generate_item("distribute_nine", item_rng(3, "distribute_nine", 4))
    assert np.array_equal(a.image, b.image) and a.target == b.target
    c = generate_item("distribute_nine", item_rng(3, "distribute_nine", 4), render=False)
    assert c.target == a.target and c.candidates == a.candidates  # rendering draws no randomness


def test_save_npz_is_atomic(tmp_path):
    target = tmp_path / "RAVEN_0_train.npz"
    save_npz(target, {"x": np.arange(3)})

    class Boom:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        save_npz(target, {"x": np.arange(5), "y": Boom()})
    # The old file is intact and no temporary file is left behind.
    with np.load(target) as d:
        assert d["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["RAVEN_0_train.npz"]


def test_layout_slots_and_value_ranges_match_reference(iraven_reference):
    ref = json.loads((iraven_reference / "answers.json").read_text())
    for name, slots in ref["layout_slots"].items():
        assert [list(s) for s in LAYOUTS[name].slots] == [list(map(float, s)) for s in slots]
    assert set(ref["layout_slots"]) == set(LAYOUTS)
    for key, puzzle in ref["puzzles"].items():
        tokens = CONFIGS[puzzle["config"]].structure_tokens()
        assert tokens == puzzle["structure"], key


def test_rule_ranges_keep_every_value_valid():
    """Sampled rules and the puzzles they make stay inside the value tables and ranges."""
    rng = np.random.default_rng(11)
    for config in CONFIG_NAMES:
        spec = get_config(config)
        for _ in range(60):
            item = generate_item(config, rng, render=False)
            for group, layout in zip(item.rules, spec.layouts):
                assert not narrow_ranges(layout, group).is_empty()
                for rule in group:
                    if rule.name == "Progression":
                        assert rule.value in (-2, -1, 1, 2)
                    if rule.name == "Arithmetic":
                        assert rule.value in (-1, 1)
            for panel in item.panels:
                for comp, layout in zip(panel.components, spec.layouts):
                    slots = comp.positions
                    assert 1 <= len(slots) <= layout.n_slots and len(set(slots)) == len(slots)
                    assert all(0 <= s < layout.n_slots for s in slots)
                    for e in comp.entities:
                        for attr in ("Type", "Size", "Color"):
                            lo, hi = layout.range_of(attr)
                            assert lo <= e.level(attr) <= hi, (config, attr, e)
                        assert 0 <= e.angle <= 7


def test_every_layout_rule_occurs_where_admissible():
    rng = np.random.default_rng(2)
    seen = Counter()
    for _ in range(400):
        group, _ = sample_admissible_rules(LAYOUTS["Distribute_Four"], 0, rng)
        seen[(group[0].name, group[0].attr)] += 1
    assert len(seen) == 7  # all Number/Position rules are possible on a 2x2 grid
    for _ in range(50):  # a single slot only admits Constant Number/Position
        group, _ = sample_admissible_rules(LAYOUTS["Center_Single"], 0, rng)
        assert (group[0].name, group[0].attr) == ("Constant", "Number/Position")
        group, _ = sample_admissible_rules(LAYOUTS["Out_Center_Single"], 0, rng)
        assert group[3].name == "Constant"  # the outer shape is always white


def test_unknown_config_suggests_a_name(tmp_path, capsys):
    with pytest.raises(UnknownConfigError, match=r"(?i)did you mean 'distribute_nine'"):
        get_config("distribute_nien")
    with pytest.raises(UnknownConfigError, match="Did you mean"):
        generate_dataset(tmp_path, 1, configs=["center_singel"])
    with pytest.raises(SystemExit):
        cli_main(["generate", "--out", str(tmp_path), "--per-config", "1",
                  "--configs", "distribute_nien"])
    assert "Did you mean 'distribute_nine'" in capsys.readouterr().err


def test_cli_generate_writes_official_layout(tmp_path, capsys):
    rc = cli_main(["generate", "--out", str(tmp_path), "--per-config", "2", "--seed", "1",
                   "--configs", "center_single", "up_center_single_down_center_single",
                   "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 4 puzzles" in printed and "center_single" in printed
    assert sorted(p.name for p in (tmp_path / "center_single").iterdir()) == \
        ["RAVEN_0_train.npz", "RAVEN_1_train.npz"]
