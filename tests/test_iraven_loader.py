"""Loader for I-RAVEN directories in the official layout."""

import json

import numpy as np
import pytest

from evalsuite.benchmarks.iraven import (CONFIG_NAMES, IRavenFormatError, generate_dataset, generate_item,
                                         item_rng, load_split, read_npz)


def test_loads_all_reference_files(iraven_reference):
    answers = json.loads((iraven_reference / "answers.json").read_text())["puzzles"]
    seen = {}
    for split in ("train", "val", "test"):
        for rec in load_split(iraven_reference, split):
            key = f"{rec.config}/RAVEN_{rec.k}_{rec.split}.npz"
            seen[key] = rec
            assert rec.split == split and rec.image.shape == (16, 160, 160)
            assert rec.image.dtype == np.uint8 and rec.target == answers[key]["target"]
            assert rec.structure == answers[key]["structure"]
            assert np.array_equal(rec.answer_image, rec.image[8 + rec.target])
            assert rec.context.shape == (8, 160, 160) and rec.candidates.shape == (8, 160, 160)
    assert set(seen) == set(answers) and len(seen) == 42


def test_configs_and_limit_select_files(iraven_reference):
    recs = list(load_split(iraven_reference, "train", configs=["distribute_nine", "center_single"], limit=1))
    assert [(r.config, r.k) for r in recs] == [("distribute_nine", 0), ("center_single", 0)]
    # Files come in numeric order of k.
    assert [r.k for r in load_split(iraven_reference, "test", configs=["center_single"])] == [8, 9]
    with pytest.raises(ValueError, match="(?i)did you mean 'center_single'"):
        list(load_split(iraven_reference, "train", configs=["centre_single"]))
    with pytest.raises(ValueError, match="split must be one of"):
        list(load_split(iraven_reference, "validation"))


def _write_bad(tmp_path, **changes):
    """A copy of a valid generated file with some fields replaced (None removes one)."""
    item = generate_item("center_single", np.random.default_rng(0))
    arrays = item.to_arrays()
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    path = tmp_path / "center_single" / "RAVEN_0_test.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_wrong_image_shape_names_file_field_and_expectation(tmp_path):
    path = _write_bad(tmp_path, image=np.zeros((16, 80, 80), np.uint8))
    with pytest.raises(IRavenFormatError) as err:
        list(load_split(tmp_path, "test"))
    msg = str(err.value)
    assert str(path) in msg and "'image'" in msg
    assert "(16, 80, 80)" in msg and "(16, 160, 160)" in msg


def test_wrong_dtype_and_missing_field_are_reported(tmp_path):
    path = _write_bad(tmp_path, image=np.zeros((16, 160, 160), np.float32))
    with pytest.raises(IRavenFormatError, match=r"'image' has dtype float32, expected uint8"):
        read_npz(path)
    path = _write_bad(tmp_path, meta_matrix=None)
    with pytest.raises(IRavenFormatError, match="missing field.*meta_matrix") as err:
        read_npz(path)
    assert str(path) in str(err.value)
    path = _write_bad(tmp_path, target=np.array(9, np.int64))
    with pytest.raises(IRavenFormatError, match="'target' is 9, expected 0..7"):
        read_npz(path)


def test_missing_directory_explains_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"<root>/<config>/RAVEN_<k>_<split>\.npz"):
        list(load_split(tmp_path / "nowhere", "test"))
    with pytest.raises(FileNotFoundError, match="no I-RAVEN configuration directory"):
        list(load_split(tmp_path, "test"))
    (tmp_path / "center_single").mkdir()
    with pytest.raises(FileNotFoundError, match="distribute_four"):
        list(load_split(tmp_path, "test", configs=["distribute_four"]))


def test_generated_dataset_round_trips(tmp_path):
    configs = list(CONFIG_NAMES[:3])
    generate_dataset(tmp_path, 10, seed=8, configs=configs)
    recs = list(load_split(tmp_path, "val"))
    assert [(r.config, r.k) for r in recs] == [(c, k) for c in configs for k in (6, 7)]
    for rec in recs:
        item = generate_item(rec.config, item_rng(8, rec.config, rec.k))
        arrays = item.to_arrays()
        assert np.array_equal(rec.image, arrays["image"]) and rec.target == item.target
        assert np.array_equal(rec.meta_matrix, arrays["meta_matrix"])
        assert rec.structure == [t.decode() for t in arrays["structure"]]


def test_uncompressed_files_load_too(tmp_path, iraven_reference):
    """The original writes plain np.savez; the loader reads both kinds."""
    src = iraven_reference / "distribute_four" / "RAVEN_0_train.npz"
    dst = tmp_path / "distribute_four" / src.name
    dst.parent.mkdir()
    with np.load(src) as d:
        np.savez(dst, **{k: d[k] for k in d.files})
    rec = read_npz(dst)
    assert rec.config == "distribute_four" and rec.k == 0 and rec.split == "train"
