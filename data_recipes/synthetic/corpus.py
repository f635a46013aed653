"""The text corpus the tiny models' tokenizer is trained on: everything the generator can say.

It is the enumeration of every template phrase (so rare combinations such as "the purple diamond
shrinks." or "the orange square changes colour to green." are covered), options' and narration's
alike, followed by the texts of a fixed set of generated samples and evaluation items (so the BPE
merges follow the real frequency of words and phrasings): image and video samples, the base stage's
reading items and still clips (with captions between frames), evaluation items of both kinds, and the
narrations an evaluator asks for. Deterministic, so the tokenizer, and hence the tiny model, is
reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from .language import TOGETHER, template_texts, transition_caption
from .narration import narration_texts, oracle_transition
from .reading import reading_record, still_record
from .samples import eval_record, image_record, item_scene, video_record

# Enough samples to cover every question type and layout many times; takes about a second.
N_IMAGE, N_VIDEO, N_EVAL = 300, 300, 100
N_READING, N_STILL, N_STATIC = 100, 100, 50


def record_texts(record: dict) -> Iterator[str]:
    """Every text in a sample JSON or evaluation item: turns, options, captions, transitions."""
    for message in record.get("messages", ()):
        for part in message["content"]:
            if part["type"] == "text":
                yield part["text"]
    if "question" in record:
        yield record["question"]
    meta = record.get("meta", {})
    yield from record.get("options") or meta.get("options") or ()
    yield from meta.get("captions", ())
    yield from meta.get("transitions", ())
    for event in meta.get("events", ()):
        yield event["text"]


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    texts = list(template_texts()) + narration_texts() + [TOGETHER]
    for i in range(N_IMAGE):
        texts.extend(record_texts(image_record(0, i, "train")[0]))
    for i in range(N_VIDEO):
        texts.extend(record_texts(video_record(0, i, "train", frames=5)[0]))
    for i in range(N_READING):
        texts.extend(record_texts(reading_record(0, i, "train")))
    for i in range(N_STILL):
        texts.extend(record_texts(still_record(0, i, "train", interleaved=True)[0]))
    evals = [eval_record(0, i, "test") for i in range(N_EVAL)]
    evals += [eval_record(0, i, "test", kind="static") for i in range(N_STATIC)]
    for record in evals:
        texts.extend(record_texts(record))
        # What a caller captioning or narrating sampled frames will see: changes spanning several events.
        scene = item_scene(record["meta"])
        texts.append(transition_caption(scene, 0, scene.n_frames - 1))
        texts.append(oracle_transition(scene, 0, scene.n_frames - 1))
    return tuple(texts)


def vocabulary_corpus() -> list[str]:
    """A representative list of all texts the generator emits (questions, answers, options, captions,
    infills)."""
    return list(_corpus())
