"""Shared-prefix loglik scoring equals naive scoring; batched greedy generation equals one at a time."""

from __future__ import annotations

import pytest
import torch

from data_recipes.synthetic import eval_item
from evalsuite import prompts
from evalsuite.generation import ChatModel
from evalsuite.scoring import continuation_ids, score_options
from test_eval_support import one_thread, tiny_model  # noqa: F401 - fixture

FAMILIES = ["llava", "qwen2_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
    from train.families import load_model

    model, processor, _ = load_model(tiny_model(request.param, tmp_path_factory))
    model.eval()
    return model, processor


@torch.no_grad()
def naive_logliks(model, processor, content, images, options):
    """Each option from scratch: the whole conversation through the model, sum over the answer tokens."""
    messages = prompts.conversation(content)
    out = []
    for option in options:
        _, cont = continuation_ids(processor, messages, option)
        full = processor.apply_chat_template(messages + [prompts.answer_turn(option)], tokenize=False)
        enc = processor(text=[full], images=[images], return_tensors="pt")
        ids = enc["input_ids"][0]
        assert ids[-len(cont):].tolist() == cont  # the continuation is the tail of the full encoding
        logp = torch.log_softmax(model(**enc).logits[0].float(), dim=-1)
        start = len(ids) - len(cont)
        out.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cont)))
    return out


@pytest.mark.parametrize("condition", ["base", "vcot"])
def test_shared_prefix_scoring_equals_naive_scoring(loaded, condition, one_thread):  # noqa: F811
    model, processor = loaded
    lengths = set()
    for index in (0, 3):  # item 3's options have different token lengths
        item = eval_item(0, index)
        idx = [6, 13, 20]
        frames = [item["frames"][i] for i in idx]
        texts = ["the square moves.", "nothing changes at all."] if condition == "vcot" else None
        content = prompts.user_content(condition, 3, item["question"], item["options"], texts)
        shared = score_options(model, processor, content, frames, item["options"])
        naive = naive_logliks(model, processor, content, frames, item["options"])
        assert shared.logliks == pytest.approx(naive, abs=1e-4)
        assert shared.choice == max(range(5), key=lambda i: naive[i])
        lengths.add(len(set(shared.n_tokens)))
    # options of different lengths were padded together: the padding did not leak into the scores
    assert max(lengths) > 1


def test_batched_generation_equals_one_at_a_time(loaded, one_thread):  # noqa: F811
    model, processor = loaded
    chat = ChatModel(model, processor=processor)
    items = [eval_item(0, i) for i in range(3)]
    # prompts of different lengths (so left padding is exercised), with 2, 1 and 2 images
    contents = [prompts.common_prompt(), prompts.describe_prompt(), prompts.between_prompt("both show a red circle")]
    images = [[items[0]["frames"][3], items[0]["frames"][9]], [items[1]["frames"][5]],
              [items[2]["frames"][1], items[2]["frames"][30]]]
    batched = chat.generate(contents, images, max_new_tokens=8, batch_size=3)
    single = [chat.generate([c], [i], max_new_tokens=8)[0] for c, i in zip(contents, images)]
    assert batched == single
    assert len(set(batched)) > 1 or batched[0]  # the model produced text, not only stop tokens
