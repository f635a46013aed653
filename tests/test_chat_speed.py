"""`train.chat.encode`'s fast path gives exactly what the straightforward algorithm gives.

The loader runs `encode` on every sample, so it renders a batch's conversations in two batched
chat-template calls (reusing the whole conversation for a final assistant turn) and picks labels
with tensor operations. The reference below is the plain algorithm: three renderings per assistant
turn, one `apply_chat_template` call each, and a Python loop over tokens. Every tensor and count
must be identical, on conversations with 1, 2 and 3 assistant turns, system and string turns, frames
in several user turns, in every family's prompt style, and for a template that is not
prefix-consistent (the fallback that searches for the answer's text).
"""

from __future__ import annotations

import bisect

import pytest
import torch

from train.chat import IGNORE_INDEX, ConversationError, encode, validate_messages
from train.families import FAMILIES, load_model
from train.smoke import demo_frames
from train.toy.tiny import build_tiny


# --- the reference: the straightforward algorithm ------------------------------------------------
def ref_render(processor, messages, add_generation_prompt=False):
    return processor.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def ref_spans(processor, messages):
    text = ref_render(processor, messages)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = ref_render(processor, messages[:i], add_generation_prompt=True) if i else ""
        through = ref_render(processor, messages[: i + 1])
        if text.startswith(before) and text.startswith(through) and len(before) >= cursor:
            start, end = len(before), len(through)
        else:
            answer = m["content"] if isinstance(m["content"], str) else "".join(
                p["text"] for p in m["content"] if p["type"] == "text")
            start = text.find(answer, cursor)
            assert start >= 0
            end = start + len(answer)
        spans.append((start, end))
        cursor = end
    return text, spans


def ref_encode(processor, conversations, images, with_labels=True):
    texts, spans = [], []
    for msgs, imgs in zip(conversations, images):
        validate_messages(msgs, len(imgs))
        if with_labels:
            t, s = ref_spans(processor, msgs)
        else:
            t, s = ref_render(processor, msgs, add_generation_prompt=True), []
        texts.append(t)
        spans.append(s)
    has_images = any(len(x) for x in images)
    out = dict(processor(text=texts, images=[list(x) for x in images] if has_images else None, padding=True,
                         return_tensors="pt", return_offsets_mapping=with_labels,
                         return_text_replacement_offsets=with_labels))
    ids, mask = out["input_ids"], out["attention_mask"]
    visual = (ids == processor.image_token_id).sum(1)
    if with_labels:
        offsets = out.pop("offset_mapping").tolist()
        replacements = out.pop("text_replacement_offsets", None) or [[] for _ in texts]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for b in range(len(texts)):
            ends = [r["span"][1] for r in replacements[b]]
            gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements[b]]
            moved = [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in spans[b]]
            for t, (ts, te) in enumerate(offsets[b]):
                if mask[b, t] and te > ts and any(ts < e and te > s for s, e in moved):
                    labels[b, t] = ids[b, t]
        out["labels"] = labels
    supervised = (out["labels"] != IGNORE_INDEX).sum(1).tolist() if with_labels else [0] * len(texts)
    return out, visual.tolist(), (mask.sum(1) - visual).tolist(), supervised


# --- conversations ---------------------------------------------------------------------------------
def user(text, frames=0):
    return {"role": "user", "content": [{"type": "image"}] * frames + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


ONE = [user("what happens to the red circle?", 3), assistant("it moves right.")]
TWO = ONE + [user("and the blue square?"), assistant("it stays still.")]
THREE = TWO + [user("and now?", 2), assistant("the circle is gone"), ]
SYSTEM_AND_STRINGS = [{"role": "system", "content": "answer briefly"}, user("what moves?", 2),
                      {"role": "assistant", "content": "the circle"}, {"role": "user", "content": "where to?"},
                      {"role": "assistant", "content": "right"}]
REPEATED_ANSWER = [user("a?", 1), assistant("yes"), user("b?"), assistant("yes"), user("c?"), assistant("yes")]
ENDS_WITH_USER = TWO + [user("thanks", 1)]  # a last user turn after the answers: not supervised

CASES = {  # name: conversations of one batch
    "1 turn": [ONE],
    "2 turns": [TWO],
    "3 turns": [THREE],
    "1, 2 and 3 turns in one batch": [ONE, TWO, THREE],
    "system, string content, repeated answers": [SYSTEM_AND_STRINGS, REPEATED_ANSWER, ENDS_WITH_USER],
    "same conversation twice": [TWO, TWO],
}


def frames_of(conv):
    return demo_frames(sum(p.get("type") == "image" for m in conv if isinstance(m["content"], list)
                           for p in m["content"]))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def processor(request, tmp_path_factory):
    d = build_tiny(request.param, tmp_path_factory.mktemp("chat") / request.param)
    return load_model(d)[1]


def assert_same(fast, reference):
    out, visual, text, supervised = reference
    assert fast.inputs.keys() == out.keys()
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(fast.inputs[k], v), k
        else:
            assert fast.inputs[k] == v, k
    assert (fast.visual_tokens, fast.text_tokens, fast.supervised_tokens) == (visual, text, supervised)


@pytest.mark.parametrize("case", list(CASES))
def test_encode_matches_the_reference(processor, case):
    convs = CASES[case]
    images = [frames_of(c) for c in convs]
    fast = encode(processor, convs, images)
    assert_same(fast, ref_encode(processor, convs, images))
    assert all(n > 0 for n in fast.supervised_tokens)
    prompts = [c[:-1] if c[-1]["role"] == "assistant" else c for c in convs]
    images = [frames_of(c) for c in prompts]
    assert_same(encode(processor, prompts, images, with_labels=False),
                ref_encode(processor, prompts, images, with_labels=False))


def test_a_template_that_is_not_prefix_consistent(tmp_path):
    """A header counting the messages changes every prefix: spans come from finding the answers."""
    _, processor, _ = load_model(build_tiny("llava", tmp_path / "llava"))
    processor.chat_template = "{{ messages | length }} messages\n" + processor.chat_template
    for convs in ([ONE], [ONE, TWO, THREE], [REPEATED_ANSWER, SYSTEM_AND_STRINGS]):
        images = [frames_of(c) for c in convs]
        fast = encode(processor, convs, images)
        assert_same(fast, ref_encode(processor, convs, images))
        assert all(n > 0 for n in fast.supervised_tokens)


def test_errors_are_unchanged(processor):
    with pytest.raises(ConversationError, match="batch item 1"):
        encode(processor, [ONE, TWO], [frames_of(ONE), []])
    with pytest.raises(ConversationError, match="2 image lists"):
        encode(processor, [ONE], [frames_of(ONE), []])
