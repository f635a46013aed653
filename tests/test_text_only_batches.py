"""Micro-batches without images on some processes only (real image recipes hold text-only records).

Such a process would skip the vision tower and projector that the others run: under ZeRO-3 their
weights are gathered as they run, and a trained projector's gradients are reduced in buckets, so the
collectives would stop matching (a hang on NCCL). The trainer forwards, on a process that keeps no
sample of a micro-batch, a sample with images when it has one; under DDP it lets parameters go unused;
under DeepSpeed every process forwards an image in every micro-batch: a sample it does not keep, or the
stream's filler row (a blank image under masked labels), so the run trains through and learns exactly
what DDP learns from the same samples.
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from data_recipes.build import build
from fixtures_real_data import mix665k
from helpers import run_lora
from train import accounting
from train.data import FILLER_KEY, ShardStream, filler_sample, shard_counts_from_manifest
from train.families import FAMILIES, get_module, load_model
from train.toy.tiny import build_tiny

IMAGES = accounting.COUNTERS.index("images")


def _counts(per_rank: list[list[int]], batch: int) -> torch.Tensor:
    """(ranks, batch, counters): each sample's image count as given, 10 of everything else; absent = -1."""
    m = torch.full((len(per_rank), batch, len(accounting.COUNTERS)), -1, dtype=torch.long)
    for r, images in enumerate(per_rank):
        for i, n in enumerate(images):
            m[r, i] = 10
            m[r, i, IMAGES] = n
    return m


def test_a_process_that_keeps_nothing_forwards_a_sample_with_images():
    counts = _counts([[0, 0, 2], [1, 0, 0]], 3)
    assert accounting.forward_rows(counts, [0, 2]) == [[2], [0, 1]]
    assert accounting.forward_rows(counts, [3, 0]) == [[0, 1, 2], [0]]
    # nothing with images: the first sample, as before; a process without samples: row 0
    assert accounting.forward_rows(_counts([[0, 0], []], 2), [0, 0]) == [[0], [0]]


def test_an_image_row_is_a_present_sample_with_images_not_already_forwarded():
    counts = _counts([[0, 2, 0, 1]], 4)[0]
    assert accounting.image_row(counts, [0]) == 1
    assert accounting.image_row(counts, [0, 1]) == 3
    assert accounting.image_row(counts, [1, 3]) is None
    assert accounting.image_row(_counts([[0, 0]], 3)[0], [0]) is None  # row 2 is absent (-1)
    assert accounting.has_images(counts, [0, 3]) and not accounting.has_images(counts, [0, 2])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """LLaVA mix665k-shaped records (some text-only) built into shards, and the recipe: one sample per
    micro-batch, the projector trained."""
    work = tmp_path_factory.mktemp("text_only")
    fx = mix665k(work / "data")
    recipe = work / "mix.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "image", "samples": fx.good, "image_size": 32, "max_bad_fraction": 0.5, "shard_size": 4, "seed": 0,
        "sources": [{"type": "llava_image", "path": str(fx.annotations), "media_root": str(fx.media_root)}],
        "train": {"base_model": "tiny:llava", "per_device_batch_size": 1, "gradient_accumulation_steps": 1,
                  "num_workers": 0, "save_steps": 0, "freeze_projector": False}}))
    manifest = build(str(recipe), work / "shards" / "mix")
    assert 0 < manifest["kinds"]["text_only"] < fx.good
    return work, recipe, manifest


def _text_only(shards: Path) -> set[str]:
    """The keys of the shards' samples that have no image member."""
    members = defaultdict(set)
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as t:
            for name in t.getnames():
                members[name.split(".")[0]].add(name.rsplit(".", 1)[-1])
    return {key for key, exts in members.items() if "jpg" not in exts}


def test_the_filler_row_ends_a_batch_without_images_and_is_no_sample(mixed, tmp_path):
    """The stream's filler: only in a batch whose samples have no image, last, with every label masked and
    no count in the step's matrix; selecting the samples keeps it; a batch with images never has one."""
    from transformers import AutoProcessor

    work, _, manifest = mixed
    model = build_tiny("llava", tmp_path / "tiny")
    urls, counts = shard_counts_from_manifest(work / "shards" / "mix")
    text_only = _text_only(work / "shards" / "mix")
    assert len(text_only) == manifest["kinds"]["text_only"]
    stream = ShardStream(urls, AutoProcessor.from_pretrained(model), batch_size=1, seed=0, shard_counts=counts,
                         image_filler=True)
    seen = {"filler": 0, "plain": 0}
    for batch in stream.reader_batches(0, 1):
        if batch.pass_index:  # one pass
            break
        assert batch.filler == all(k in text_only for k in batch.keys[:batch.samples]), batch.keys
        labels = batch.inputs["labels"]
        matrix = accounting.step_matrix([batch], 1)[0, :-1]
        assert int((matrix[:, 0] >= 0).sum()) == batch.samples  # the matrix counts samples only
        if not batch.filler:
            seen["plain"] += 1
            assert batch.keys[-1] != FILLER_KEY and len(labels) == batch.samples
            continue
        seen["filler"] += 1
        assert batch.keys[-1] == FILLER_KEY and len(labels) == batch.samples + 1
        assert bool((labels[-1] == -100).all()) and bool((labels[:-1] != -100).any())
        assert batch.counts["images"][-1] == 1 and matrix[:, accounting.COUNTERS.index("images")].max() <= 0
        assert batch.inputs["pixel_values"].shape[0] == 1  # the filler's image alone
        kept = accounting.image_row(matrix, [0])
        assert kept is None  # no sample of this batch has an image: the trainer takes the filler row
    assert seen["filler"] and seen["plain"], seen


TEXT_ONLY = {"__key__": "t0", "json": json.dumps({"kind": "image", "messages": [
    {"role": "user", "content": [{"type": "text", "text": "Summarize: the meeting moved to Thursday."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "The meeting is on Thursday now."}]}]}).encode()}


def _grads(model, parts) -> dict[str, torch.Tensor]:
    """The vision tower's and projector's parameters that got a gradient, by name."""
    return {f"{part}.{n}": p.grad.clone() for part in parts for n, p in get_module(model, part).named_parameters()
            if p.grad is not None}


def _forward_backward(model, inputs) -> float:
    from train.lora import token_loss_sum

    model.zero_grad(set_to_none=True)
    loss = token_loss_sum(model(**{k: v for k, v in inputs.items() if k != "labels"}).logits, inputs["labels"])
    loss.backward()
    return loss.item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_filler_changes_nothing_a_text_only_sample_learns_in_any_family(family, tmp_path):
    """Each family's processor lays out the filler's image beside a text-only sample (Qwen2-VL's patches,
    LLaVA-NeXT's tiles, InternVL's, the text-only sample first): the sample's loss is the one it has alone,
    and the vision tower and projector run as for an image sample (the same parameters get gradients, so
    the collectives match) but learn nothing from it (those gradients are zeros)."""
    model, processor, fam = load_model(build_tiny(family, tmp_path / family))
    parts = (fam.vision_tower, fam.projector)
    alone, _, _ = ShardStream([], processor, batch_size=1, seed=0).collate([TEXT_ONLY])
    filled, counts, keys = ShardStream([], processor, batch_size=1, seed=0, image_filler=True).collate([TEXT_ONLY])
    image, _, _ = ShardStream([], processor, batch_size=1, seed=0, image_filler=True).collate([filler_sample()])
    assert keys == ["t0", FILLER_KEY] and counts["images"] == [0, 1] and counts["visual_tokens"][1] > 0
    assert not any(k.startswith("pixel_values") for k in alone) and "pixel_values" in filled
    model.eval()  # no dropout: the forwards compare exactly
    _forward_backward(model, image)  # the filler's image with its answer supervised: what an image sample trains
    used = _grads(model, parts)
    assert used and any(g.any() for g in used.values())
    assert _forward_backward(model, filled) == pytest.approx(_forward_backward(model, alone), rel=1e-5)
    _forward_backward(model, filled)
    grads = _grads(model, parts)
    assert grads.keys() == used.keys()
    assert not any(g.any() for g in grads.values())


def test_a_batch_whose_first_sample_is_text_only_encodes_in_every_family(tmp_path):
    """InternVL's processor failed on such a batch (its placeholder offsets: an empty list first); each
    sample's counts are those of the other order."""
    from PIL import Image

    from train.chat import encode

    text = json.loads(TEXT_ONLY["json"])["messages"]
    image = json.loads(filler_sample()["json"])["messages"]
    frame = Image.new("RGB", (64, 64), (30, 60, 90))
    for family in sorted(FAMILIES):
        _, processor, _ = load_model(build_tiny(family, tmp_path / family))
        first = encode(processor, [text, image], [[], [frame]])
        second = encode(processor, [image, text], [[frame], []])
        assert first.visual_tokens == second.visual_tokens[::-1] and first.visual_tokens[0] == 0, family
        assert first.supervised_tokens == second.supervised_tokens[::-1], family
        assert torch.equal(first.inputs["pixel_values"], second.inputs["pixel_values"]), family


@pytest.fixture(scope="module")
def ddp(mixed):
    """The reference: the mixed recipe under DDP (projector trained, find_unused_parameters), every sample once."""
    work, recipe, manifest = mixed
    run_lora(work, "--recipe", str(recipe), "--run_name", "ddp", "--ds_config", "none", "--max_samples",
             str(manifest["counts"]["samples"]), "--record_samples", "true", procs=2)
    return work / "ckpt" / "ddp"


def _steps(run_dir: Path) -> dict[int, dict[int, list[str]]]:
    """step -> rank -> the keys that rank trained on (samples/rank-*.txt)."""
    by = defaultdict(dict)
    for f in sorted((run_dir / "samples").glob("rank-*.txt")):
        for line in f.read_text().splitlines():
            step, key = line.split("\t")
            by[int(step)].setdefault(int(f.stem.split("-")[1]), []).append(key)
    return dict(by)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_ddp_trains_through_micro_batches_without_images(mixed, ddp):
    """DDP is told that the projector may go without gradients (on one process or on all): the run ends."""
    work, recipe, manifest = mixed
    info = json.loads((ddp / "run.json").read_text())
    assert info["consumed"]["samples"] == manifest["counts"]["samples"]
    assert info["consumed"]["images"] == manifest["counts"]["images"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["cpu_zero2_2proc.yaml", "cpu_zero3_2proc.yaml"])
def test_deepspeed_trains_through_them_as_ddp_does(mixed, ddp, launcher):
    """Under ZeRO-2 (projector trained) and ZeRO-3, micro-batches in which one process has only text-only
    samples while the other has images (the run before the filler stopped at the first one) train through:
    the same samples step by step as DDP, every count the same (the filler row counts for nothing), and
    the same losses to 1%: a filler whose labels reached the loss would move a step's loss by several
    percent. Not closer, as the arithmetic differs: ZeRO-3 alone drifts from DDP (an image-only recipe, 7
    steps: 4e-4), and on a step where no process has images DDP leaves the projector without a gradient
    (Adam skips it) while DeepSpeed gives it zeros (Adam's momentum still moves it)."""
    work, recipe, manifest = mixed
    name = launcher.split("_")[1]
    run_lora(work, "--recipe", str(recipe), "--run_name", name, "--max_samples", str(manifest["counts"]["samples"]),
             "--record_samples", "true", launcher=launcher)
    run = work / "ckpt" / name
    text_only = _text_only(work / "shards" / "mix")
    steps = _steps(run)
    assert steps == _steps(ddp)
    split = [s for s, ranks in steps.items()
             if len({all(k in text_only for k in keys) for keys in ranks.values()}) == 2]
    assert split, "no step in which one process had only text-only samples and the other had images"
    info, reference = json.loads((run / "run.json").read_text()), json.loads((ddp / "run.json").read_text())
    assert info["consumed"] == reference["consumed"]
    assert info["consumed"]["samples"] == manifest["counts"]["samples"]
    losses, expected = _losses(run), _losses(ddp)
    assert losses.keys() == expected.keys()
    assert losses == pytest.approx(expected, rel=1e-2), (losses, expected)


def test_a_budget_takes_the_samples_of_the_earlier_pass_first():
    """Two readers' shares of 23 samples are 11 and 12: after 11 steps reader 0 is in its second pass while
    reader 1 still has its last sample. A budget of 23 takes that sample, not reader 0's repeat (it took the
    repeat, ranks in order, and left one sample unseen: the DDP run above trained on 000000015 twice)."""
    import torch

    from train import accounting

    counts = torch.ones(2, 1, len(accounting.COUNTERS), dtype=torch.long)  # one sample per rank, 1 of each unit
    assert accounting.plan(counts, "samples", 1, passes=[1, 0]).keep == [0, 1]
    assert accounting.plan(counts, "samples", 1, passes=[0, 0]).keep == [1, 0]  # one pass: rank order
    assert accounting.plan(counts, "samples", 2, passes=[1, 0]).keep == [1, 1]
