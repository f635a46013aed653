"""Micro-batches without images on some processes only (real image recipes hold text-only records).

Such a process skips the vision tower and projector that the others run: under ZeRO-3 their weights are
gathered as they run, and a trained projector's gradients are reduced, so the collectives stop matching
(a hang on NCCL). The trainer forwards, on a process that keeps no sample of a micro-batch, a sample
with images when it has one; under DDP it lets parameters go unused; under DeepSpeed it stops with a
clear error when a micro-batch would still split the processes, on every process at once (they all see
the same gathered counts).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from data_recipes.build import build
from fixtures_real_data import mix665k
from helpers import run_lora
from train import accounting

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


def test_processes_without_images_are_named_only_when_others_have_some():
    counts = _counts([[0, 0], [1, 0], [0, 3]], 2)
    assert accounting.ranks_without_images(counts, [[0, 1], [0], [1]]) == [0]
    assert accounting.ranks_without_images(counts, [[0], [1], [0]]) == []  # no process runs the tower
    assert accounting.ranks_without_images(counts, [[0, 1], [0, 1], [0, 1]]) == [0]
    assert accounting.ranks_without_images(_counts([[1], [2]], 1), [[0], [0]]) == []


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


@pytest.mark.slow
def test_ddp_trains_through_micro_batches_without_images(mixed):
    """DDP is told that the projector may go without gradients (on one process or on all): the run ends."""
    work, recipe, manifest = mixed
    run_lora(work, "--recipe", str(recipe), "--run_name", "ddp", "--ds_config", "none", "--max_samples",
             str(manifest["counts"]["samples"]), procs=2)
    info = json.loads((work / "ckpt" / "ddp" / "run.json").read_text())
    assert info["consumed"]["samples"] == manifest["counts"]["samples"]
    assert info["consumed"]["images"] == manifest["counts"]["images"]


@pytest.mark.slow
def test_zero2_stops_with_a_clear_error_instead_of_hanging(mixed):
    """Under ZeRO-2 a trained projector's gradients are reduced in buckets: the first micro-batch whose
    processes differ stops both with the error, instead of a hang or mixed-up gradients."""
    work, recipe, manifest = mixed
    p = run_lora(work, "--recipe", str(recipe), "--run_name", "z2", "--max_steps", "20",
                 launcher="cpu_zero2_2proc.yaml", check=False)
    # Both ranks print the error and stop (a rank still tearing down its connections when the other has
    # gone may end on gloo's abort rather than its own exit 2: the launcher reports either).
    assert p.returncode != 0, p.stderr[-4000:]
    assert p.stderr.count("error: step 5, micro-batch 1: process(es) 1 have only text-only samples while the "
                          "others have images") == 2, p.stderr[-4000:]
    assert f"The shards hold {manifest['kinds']['text_only']} text-only samples" in p.stderr
    assert not re.search(r"\[rank\d\]: Traceback", p.stderr)
