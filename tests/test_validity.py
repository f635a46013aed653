"""The embedded world lets the study succeed: both routes to a temporal answer are learnable.

The demo asks whether the image run gains more from vCoT infills than the video run, and whether the
video run reads frames better. Either finding can only appear if (a) a tiny model can learn to answer
a temporal question from infills it is given, and (b) a tiny model can learn to answer it from the
frames. If either failed here, a null result of the demo would say nothing about the question. These
checks train tiny models (on small budgets; (b) also on a long one) and must beat the options-only floor
on the evaluation's own temporal items (the first 100 of the synthetic benchmark, seed 0, test split),
scored as the evaluation scores them (log-likelihood per token of each option's assistant turn).

(a) A random-init tiny llava trained only on the base stage's reading items (text-only: infills
    between sampled frames, then the question) answers from oracle infills alone, in the evaluation's
    `text_only` layout.
(b) A tiny llava after a short base stage and a short training on the video recipe's samples (seed 0,
    train split; language model and projector trained as in the base stage, the vision tower frozen)
    answers from 5 frames in the evaluation's `base` layout.

The thresholds are fixed in advance (accuracy above 0.35 and a 95% bootstrap CI low above 0.22 for (a);
a CI low above 0.22 for (b); chance is 0.20): a failure is reported as measured, never tuned away.

Status: (a) passes (about 0.68 here). (b) fails at the small budget above and passes on a longer one:
- small budget (strict expected failure, marker `known_invalid`): the vision stage, a 300-step base
  stage and 300 video steps give 0.21 [0.14, 0.29] (options-only floor on these items 0.24): a short
  base stage reads single frames too poorly for a short video training to build on;
- longer budget (marker `validity_long`): the demo's own base stage (vision stage included), then
  2,000 steps of 32 clips of the video recipe (language model and projector trained, cosine cycles of
  250 steps) answer at 0.38 [0.28, 0.47]. Measured after every cycle: 0.28, 0.31, 0.33, 0.32, 0.37,
  0.36, 0.37, 0.38 (after the base 0.14): above the floor from 750 steps on. About 14 minutes on one
  core; on two threads (`make validity-video`, which CI runs after `make test`) 0.42 [0.32, 0.51] in
  9m35s: other arithmetic, the same verdict. With the random tower the base stage had before its
  vision stage, the same training sat on a plateau: 0.23, 0.21, 0.19, 0.28 every 500 steps to 2,000,
  0.44 only after 4,000.
The demo's video run (LoRA, 10,000 clips) is at the start of that climb: the report says on each F1/F2
verdict whether it answers temporal items from frames above its floors
(`evalsuite.report.evaluation.sees_change`). With 25,000 clips (`studies/long_demo.yaml`, 3 seeds) the
video LoRA runs pass (b) pooled, 0.33 [0.26, 0.40] on 180 temporal items, and their shuffled-frames
control does not.
`make validity` runs every check here; `make test` runs (a) and the probe only; CI also runs (b) on the
long budget (`make validity-video`).
"""

from __future__ import annotations

import collections
import time

import pytest

from data_recipes.processors import frame_options
from data_recipes.synthetic import eval_record, item_scene, render_frames
from data_recipes.synthetic.narration import item_oracle_transition
from data_recipes.synthetic.samples import video_sample
from evalsuite import prompts
from evalsuite.floors import options_only_floor
from evalsuite.scoring import score_options
from evalsuite.stats import accuracy_ci
from train.toy import pretrain as P
from train.chat import encode
from train.families import load_model
from train.toy.tiny import build_tiny
from train.toy.vision import train_vision

N_ITEMS = 100
F = 5
EVAL_SEED = 0  # the evaluation's default seed (evalsuite.config.EvalConfig.seed)
CLIP_FRAMES = 32  # the synthetic benchmark's clips

READING_STEPS, READING_POOL = 200, 1600
"""(a): optimizer steps of 32 reading items, and how many distinct items they cycle through."""
BASE_STEPS, BASE_POOL = 300, 1536
VIDEO_STEPS, VIDEO_POOL = 300, 1600
"""(b): a short base stage (all parts), then steps of 32 video samples of the video recipe's source."""
VIDEO_LONG_STEPS, VIDEO_RESTART, VIDEO_LONG_POOL = 2000, 250, 8000
"""(b) on a long budget: steps of 32 clips in cosine cycles of `VIDEO_RESTART` steps, over 8,000 clips."""


def temporal_items(n: int = N_ITEMS) -> list[dict]:
    """The synthetic benchmark's first `n` temporal items (its static ones skipped)."""
    items, i = [], 0
    while len(items) < n:
        item = eval_record(EVAL_SEED, i, "test", CLIP_FRAMES)
        if item["meta"].get("kind", "temporal") == "temporal":
            items.append(item)
        i += 1
    return items


def _report(name: str, correct: list[bool], items: list[dict], seconds: float) -> tuple:
    est = accuracy_ci(correct, n_boot=2000, seed=0)
    floor = options_only_floor([_as_guess(i) for i in items], n_boot=1000, seed=0)
    print(f"\n{name}: accuracy {est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}] on {est.n} temporal items; "
          f"options-only floor {floor['value']:.3f} ({floor['best']}); {seconds:.0f} s")
    return est, floor


def _as_guess(item: dict):
    from types import SimpleNamespace

    return SimpleNamespace(question=item["question"], options=item["options"], answer=item["answer"], meta=item["meta"])


def _train(model, processor, fam, part_batches: dict, steps: int, seed: int):
    losses = P.pretrain(model, processor, fam, steps=steps, seed=seed, batches=part_batches,
                        mixture={p: 1.0 for p in part_batches} if len(part_batches) == 1 else None, log_every=steps)
    assert all(x == x for x in losses), "training diverged"
    return losses


@pytest.fixture(scope="module")
def items():
    return temporal_items()


def test_reading_items_teach_answering_from_infills(tmp_path, items):
    t0 = time.perf_counter()
    model, processor, fam = load_model(build_tiny("llava", tmp_path / "tiny", seed=P.BASE_SEED))
    pool = P.encode_pool(processor, P.BASE_SEED, "train", {"reading": READING_POOL}, P.BATCH)
    _train(model, processor, fam, pool, READING_STEPS, P.BASE_SEED)
    model.eval()
    correct = []
    for item in items:
        frames = item["meta"]["sampled_frames"][str(F)]
        infills = [item_oracle_transition(item["meta"], a, b) for a, b in zip(frames, frames[1:])]
        content = prompts.user_content("text_only", F, item["question"], item["options"], infills)
        assert not any(part["type"] == "image" for part in content)
        scores = score_options(model, processor, content, [], item["options"], norm="mean")
        correct.append(scores.choice == item["answer"])
    est, _ = _report("(a) reading only, text_only layout", correct, items, time.perf_counter() - t0)
    assert est.value > 0.35 and est.ci_low > 0.22


def _video_batches(processor, n: int) -> list[dict]:
    """The video recipe's first `n` training samples (seed 0, train split), encoded in batches of 32."""
    options, batches = frame_options(processor), []
    for start in range(0, n, P.BATCH):
        samples = [video_sample(0, start + i, "train") for i in range(P.BATCH)]
        batches.append(encode(processor, [js["messages"] for js, _ in samples], [ims for _, ims in samples],
                              image_options=options).inputs)
    return batches


def _answers_from_frames(model, processor, items: list[dict]) -> list[bool]:
    """Each item answered from its F sampled frames in the evaluation's `base` layout."""
    model.eval()
    options, correct = frame_options(processor), []
    for item in items:
        indices = item["meta"]["sampled_frames"][str(F)]
        frames = render_frames(item_scene(item["meta"]), indices, 64)
        content = prompts.user_content("base", F, item["question"], item["options"])
        scores = score_options(model, processor, content, frames, item["options"], image_options=options, norm="mean")
        correct.append(scores.choice == item["answer"])
    return correct


@pytest.mark.known_invalid
@pytest.mark.xfail(strict=True, reason="validity check (b) fails at this small budget: after a short base stage "
                   "the tiny model has not yet learned to compare frames (see the module docstring)")
def test_video_training_teaches_answering_from_frames(tmp_path, items):
    t0 = time.perf_counter()
    model, processor, fam = load_model(build_tiny("llava", tmp_path / "tiny", seed=P.BASE_SEED))
    train_vision(model, processor, fam, seed=P.BASE_SEED)
    base = P.encode_pool(processor, P.BASE_SEED, "train", P.pool_sizes(BASE_POOL, P.BATCH), P.BATCH)
    _train(model, processor, fam, base, BASE_STEPS, P.BASE_SEED)
    _train(model, processor, fam, {"video": _video_batches(processor, VIDEO_POOL)}, VIDEO_STEPS, 0)
    correct = _answers_from_frames(model, processor, items)
    est, _ = _report("(b) base stage + video samples, base layout", correct, items, time.perf_counter() - t0)
    assert est.ci_low > 0.22


@pytest.mark.validity_long
def test_video_training_teaches_answering_from_frames_past_the_plateau(tmp_path, items):
    """(b) on a long budget: the demo's own base stage, then training of the language model and projector
    (the vision tower frozen, as in the base stage) on 8,000 clips of the video recipe for
    `VIDEO_LONG_STEPS` steps of 32, as `VIDEO_LONG_STEPS // VIDEO_RESTART` cosine cycles (each with its
    own warmup). See the module docstring for the trajectory."""
    t0 = time.perf_counter()
    model, processor, fam = load_model(P.pretrain_tiny("llava", tmp_path / "base"))
    videos = _video_batches(processor, VIDEO_LONG_POOL)
    for cycle in range(VIDEO_LONG_STEPS // VIDEO_RESTART):
        _train(model, processor, fam, {"video": videos}, VIDEO_RESTART, cycle)
    correct = _answers_from_frames(model, processor, items)
    est, _ = _report(f"(b) demo base + {VIDEO_LONG_STEPS} video steps, base layout", correct, items,
                     time.perf_counter() - t0)
    assert est.ci_low > 0.22


# ------------------------------------------------------------- why (b) needed a long budget
#
# Two narrower checks, both on a fresh tiny llava with its random vision tower (no vision stage). The
# change is in the frozen features: a linear probe on the random vision tower's features of a clip's
# first and last frame, concatenated in order, tells six kinds of change apart (passes, in `make test`).
# And the language model learns to read it, after a plateau: one object, two frames, which way did it
# move (five fixed options, 32 new clips a step). For the first 600-1,000 steps the loss stays on the
# answer prior and every test clip gets "it does not change" (the longest option wins under per-token
# scoring when the model is unsure); then the loss falls, and after 2,000 steps the held-out accuracy
# was 0.81 (seed 0) and 1.00 (seed 1). Every 600-step variant tried before (4 layers, frame labels, a 3x
# learning rate, tiny qwen2_vl) stopped inside that plateau. A larger initial scale of the language
# model (std 1/sqrt(width)) ends it near step 300, but did not speed up the full task. What did is a
# tower that names what is in each patch (the base stage's vision stage):
# docs/toy_world.md, "Validity checks".

PROBE_CLASSES = ("left", "right", "up", "down", "recolour", "none")


def _change_scene(rng, label: str):
    """A one-object clip of 32 frames whose single event is `label` (a one-cell move, a recolour) or none."""
    from data_recipes.synthetic.scenes import COLOURS, DIRECTIONS, GRID, SHAPES, SIZES, Event, Obj, Scene, cell_centre

    dx, dy = DIRECTIONS.get(label, (0, 0))
    col, row = rng.choice([(c, r) for c in range(GRID) for r in range(GRID)
                           if 0 <= c + dx < GRID and 0 <= r + dy < GRID])
    colour = rng.choice(sorted(COLOURS))
    obj = Obj(rng.choice(sorted(SHAPES)), colour, rng.choice(sorted(SIZES)), *cell_centre(col, row))
    if label in DIRECTIONS:
        events = (Event("move", 0, 5, 25, direction=label, cells=1),)
    elif label == "recolour":
        events = (Event("recolour", 0, 15, 16, colour=rng.choice(sorted(set(COLOURS) - {colour}))),)
    else:
        events = ()
    return Scene(objects=(obj,), events=events, n_frames=32)


def test_frozen_vision_features_carry_the_change(tmp_path):
    import random

    import torch

    from train.families import get_module

    model, processor, fam = load_model(build_tiny("llava", tmp_path / "tiny", seed=P.BASE_SEED))
    tower, options = get_module(model, fam.vision_tower), frame_options(processor)
    rng, feats, labels = random.Random(0), [], []
    for i in range(1800):
        frames = render_frames(_change_scene(rng, PROBE_CLASSES[i % 6]), [0, 31], 64)
        px = processor.image_processor(frames, return_tensors="pt", **options)["pixel_values"]
        with torch.no_grad():
            h = tower(px, output_hidden_states=True).hidden_states[-1][:, 1:]  # the features llava's projector reads
        feats.append(h.flatten())  # first frame's tokens, then the last frame's: the order is in the layout
        labels.append(i % 6)
    x, y, n_fit = torch.stack(feats), torch.tensor(labels), 1500
    x = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-6)
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], len(PROBE_CLASSES))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[:n_fit]), y[:n_fit]).backward()
        opt.step()
    held_out = (probe(x[n_fit:]).argmax(1) == y[n_fit:]).float().mean().item()
    print(f"\nlinear probe on frozen first+last frame features, 6 kinds of change: {held_out:.3f} held out "
          f"({len(y) - n_fit} clips; chance {1 / 6:.3f})")
    assert held_out > 0.6


MOVES = {d: f"it moves {d}" for d in ("left", "right", "up", "down")} | {"none": "it does not change"}


def _two_frame_clip(rng, question: str):
    """One object, frames 0 and 31 of a clip with one event, and a 5-option question: "motion" (which way
    did it move, or not at all) or "first"/"last" (where it is in that frame; the clip has a one-cell move)."""
    from data_recipes.synthetic.language import position_phrase
    from data_recipes.synthetic.scenes import DIRECTIONS, GRID

    if question == "motion":
        label = rng.choice(sorted(MOVES))
        scene = _change_scene(rng, label)
        text, answer, opts = f"what happens to the {scene.objects[0].shape}?", MOVES[label], sorted(MOVES.values())
    else:
        scene = _change_scene(rng, rng.choice(sorted(DIRECTIONS)))
        answer = position_phrase(*scene.state(0 if question == "first" else 31)[0].cell)
        cells = [position_phrase(c, r) for r in range(GRID) for c in range(GRID)]
        opts = [answer] + rng.sample([c for c in cells if c != answer], 4)
        text = f"where is the {scene.objects[0].shape} in the {question} frame?"
    rng.shuffle(opts)
    content = prompts.user_content("base", 2, text, opts)
    return content, render_frames(scene, [0, 31], 64), opts, opts.index(answer)


def _train_two_frame(tmp_path, questions: tuple[str, ...], steps: int, seed: int = 0):
    """A fresh tiny llava trained for `steps` steps of 32 new clips (no clip seen twice), each asking one of
    `questions` (drawn), then its accuracy on 200 new clips asking "motion". ("first"/"last" are here for
    the experiments docs/toy_world.md reports: training them first shortened the plateau.)"""
    import random

    rng = random.Random(seed)
    model, processor, fam = load_model(build_tiny("llava", tmp_path / "tiny", seed=P.BASE_SEED))
    options = frame_options(processor)
    batches = []
    for _ in range(steps):
        clips = [_two_frame_clip(rng, rng.choice(questions)) for _ in range(P.BATCH)]
        messages = [prompts.conversation(c) + [prompts.answer_turn(o[a])] for c, _, o, a in clips]
        batches.append(encode(processor, messages, [f for _, f, _, _ in clips], image_options=options).inputs)
    losses = _train(model, processor, fam, {"two_frames": batches}, steps, seed)
    window = max(1, steps // 10)
    print("\ntraining loss by tenth of the run (the answer prior is about 0.39): "
          + " ".join(f"{sum(losses[i:i + window]) / len(losses[i:i + window]):.2f}" for i in range(0, steps, window)))
    model.eval()
    test = [_two_frame_clip(rng, "motion") for _ in range(200)]
    scores = [(score_options(model, processor, c, f, o, image_options=options, norm="mean"), o, a) for c, f, o, a in test]
    est = accuracy_ci([s.choice == a for s, _, a in scores], n_boot=2000, seed=0)
    picked = collections.Counter(o[s.choice] for s, o, _ in scores).most_common(1)[0]
    print(f"\none object, two frames, which way it moved, after {steps} steps of {'/'.join(questions)}: "
          f"{est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]; most picked {picked[0]!r} ({picked[1]} of 200)")
    return est


@pytest.mark.validity_long
def test_simplest_change_is_learned_from_frames_past_the_plateau(tmp_path):
    """Which way one object moved between two frames: learned, but only after a plateau. The loss sits at
    the answer prior ("it does not change" wins every test clip) for the first 600-1,000 steps, then
    falls; after 2,000 steps the held-out accuracy was 0.81 (seed 0) and 1.00 (seed 1) here."""
    assert _train_two_frame(tmp_path, ("motion",), 2000).ci_low > 0.3
