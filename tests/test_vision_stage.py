"""The base stage's vision stage (train/toy/vision.py): the tiny tower learns to name each patch's object."""

from __future__ import annotations

import pytest
import torch

from data_recipes.synthetic.sampler import split_of
from data_recipes.synthetic.scenes import Obj, Scene
from train.families import get_module, load_model
from train.toy import vision as Vs
from train.toy.tiny import build_tiny


def _scene(*objects: Obj) -> Scene:
    return Scene(tuple(objects), (), 5)


def test_labels_name_the_object_centred_in_each_patch():
    """Row-major patches of a 4 x 4 grid: an object centred at (0.1, 0.9) is in column 0, row 3 (patch
    12), one at (0.6, 0.3) in column 2, row 1 (patch 6); an invisible object gets no label."""
    scene = _scene(Obj("circle", "red", "large", 0.1, 0.9, True), Obj("triangle", "blue", "small", 0.6, 0.3, True),
                   Obj("square", "green", "small", 0.35, 0.35, False))
    labels = Vs.patch_labels(scene, 0, 4)
    assert labels.shape == (3, 16)
    colour, shape, size = labels
    assert colour[12] == Vs.COLOUR_NAMES.index("red") + 1 and shape[12] == 1 and size[12] == 2
    assert colour[6] == Vs.COLOUR_NAMES.index("blue") + 1 and shape[6] == 3 and size[6] == 1
    assert int((labels.sum(0) > 0).sum()) == 2, "only the two visible objects are labelled"


def test_frames_belong_to_their_split_and_pool():
    """The stage's frames are drawn from its own pool's streams and from the split asked for, so the
    held-out accuracy is measured on scenes the stage never trained on."""
    train = [Vs.frame(1, i, "train") for i in range(40)]
    val = [Vs.frame(1, i, "val") for i in range(40)]
    assert all(split_of(s.signature()) == "train" for s, _ in train)
    assert all(split_of(s.signature()) == "val" for s, _ in val)
    assert not {s.signature() for s, _ in train} & {s.signature() for s, _ in val}
    assert len({(s.signature(), t) for s, t in train}) > 30, "the pool repeats itself"
    assert Vs.frame(1, 3, "train")[0].signature() == train[3][0].signature(), "not a pure function of its arguments"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "internvl", "llava_onevision"])
def test_the_tower_learns_to_name_patches_and_only_the_tower_changes(tmp_path, family):
    """A short stage on each kind of tower (CLIP; Qwen2-VL's, Qwen2.5-VL's windowed and InternVL's merged
    patches; SigLIP): the held-out colour of object patches is named far better than by heads on the
    random tower, which only works if the labels line up with the family's tokens; the language model
    is untouched and the tower (with the merger for merged families) is frozen afterwards."""
    model, processor, fam = load_model(build_tiny(family, tmp_path / family, seed=1))
    tower_ids = {id(p) for p in get_module(model, fam.vision_tower).parameters()}
    if family in Vs.MERGED:  # trained through the merger of 2 x 2 patches, which InternVL keeps apart
        tower_ids |= {id(p) for p in get_module(model, fam.projector).parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = Vs.train_vision(model, processor, fam, steps=300, batch=16, seed=1, log_every=1000)
    acc, acc0 = stats["val_patch_accuracy"], stats["val_patch_accuracy_before"]
    print(f"\n{family}: held-out object patches, before -> after: "
          + ", ".join(f"{a} {acc0[a]:.2f} -> {acc[a]:.2f}" for a in Vs.ATTRIBUTES))
    assert acc["colour"] > 0.7 and acc["colour"] > acc0["colour"] + 0.3
    assert acc["size"] > acc0["size"]
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert not changed or id(p) in tower_ids, f"{name} changed outside the tower"
        assert not p.requires_grad or id(p) not in tower_ids, f"{name}: the tower is left trainable"
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if id(p) in tower_ids)
