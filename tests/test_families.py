"""The model-family layer on tiny random-init models of every family."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from train.chat import IGNORE_INDEX, ConversationError, encode, validate_messages
from train.families import FAMILIES, FamilyError, detect_family, get_family, get_module, load_model
from train.smoke import demo_frames, interleaved_conversation
from train.toy.tiny import build_tiny

ALL = sorted(FAMILIES)


@pytest.fixture(scope="module", params=ALL)
def tiny(request, tmp_path_factory):
    d = build_tiny(request.param, tmp_path_factory.mktemp("m") / request.param)
    model, processor, family = load_model(d)
    return d, model, processor, family


def _two_turns():
    conv = interleaved_conversation(5)
    return conv + [{"role": "user", "content": "and the blue square?"},
                   {"role": "assistant", "content": "it stays still."}]


def test_forward_backward_and_label_mask(tiny):
    d, model, processor, family = tiny
    conv = _two_turns()
    enc = encode(processor, [conv, conv[:2]], [demo_frames(5), demo_frames(5)])
    ids, labels = enc.inputs["input_ids"], enc.inputs["labels"]
    model.train()
    out = model(**enc.inputs)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)

    tok = processor.tokenizer
    for b, answers in enumerate([["the red circle moves right.", "it stays still."], ["the red circle moves right."]]):
        sup = labels[b] != IGNORE_INDEX
        # Supervised tokens are exactly the assistant turns (plus their end-of-turn token).
        text = tok.decode(ids[b][sup], skip_special_tokens=True)
        assert text.replace("\n", "").replace(" ", "") == "".join(answers).replace(" ", "")
        # ...and nothing that belongs to the user: no image token, no question word, no padding.
        assert not (ids[b][sup] == processor.image_token_id).any()
        assert "circle?" not in text and "frame" not in text
        assert (labels[b][enc.inputs["attention_mask"][b] == 0] == IGNORE_INDEX).all()
        assert labels[b][sup].eq(ids[b][sup]).all()
        assert enc.supervised_tokens[b] == int(sup.sum())
    # 5 frames in the user turn: the visual tokens are a whole multiple of 5 frames' worth.
    assert enc.visual_tokens[0] > 0 and enc.visual_tokens[0] % 5 == 0


def test_generate(tiny):
    _, model, processor, _ = tiny
    prompt = encode(processor, [interleaved_conversation(5)[:1]], [demo_frames(5)], with_labels=False)
    out = model.generate(**prompt.inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == prompt.inputs["input_ids"].shape[1] + 4


def test_lora_adapter_round_trip(tiny, tmp_path):
    d, _, processor, family = tiny
    model, _, _ = load_model(d)
    model.eval()
    enc = encode(processor, [interleaved_conversation(5)], [demo_frames(5)])
    with torch.no_grad():
        base_logits = model(**enc.inputs).logits.clone()
    torch.manual_seed(0)
    # init_lora_weights=False gives a non-zero B, so the adapter really changes the logits and a
    # reload that silently dropped it would be caught.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_target_regex, init_lora_weights=False,
                     modules_to_save=[family.projector.split(".")[-1]])
    peft_model = get_peft_model(model, cfg)
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    # q/k/v/o of the two language-model layers, none from the vision tower
    assert len(wrapped) == 8 and all("language_model" in n for n in wrapped)
    with torch.no_grad():
        adapted = peft_model(**enc.inputs).logits.clone()
    assert not torch.allclose(adapted, base_logits)
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved) and not any("vision" in k and "lora" in k for k in saved)

    fresh, _, _ = load_model(d)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(**enc.inputs).logits
    torch.testing.assert_close(again, adapted)


def test_a_trained_vision_tower_and_projector_are_each_wrapped_once(tiny):
    """With the vision tower trained too, every family's tower and projector are trained fully, and no copy
    sits inside another: Qwen's projector (visual.merger) lies inside its tower, and naming both to peft
    nested a second merger copy inside the tower's."""
    from train.models import lora_config

    d, _, _, family = tiny
    model, _, _ = load_model(d)
    peft_model = get_peft_model(model, lora_config(family, r=4, alpha=8, dropout=0.0, freeze_vision_tower=False))
    wrappers = [n for n, m in peft_model.named_modules() if type(m).__name__ == "ModulesToSaveWrapper"]
    assert wrappers and not [a for a in wrappers for b in wrappers if a != b and a.startswith(b + ".")]
    trained = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    for part in (family.projector, family.vision_tower):
        assert any(f".{part.split('.')[-1]}." in f".{n}." for n in trained), part


def test_projector_and_vision_tower_names(tiny):
    _, model, _, family = tiny
    assert sum(p.numel() for p in get_module(model, family.projector).parameters()) > 0
    assert sum(p.numel() for p in get_module(model, family.vision_tower).parameters()) > 0


def test_auto_class_loads_and_family_is_detected(tiny):
    d, model, _, family = tiny
    auto = AutoModelForImageTextToText.from_pretrained(d)
    assert type(auto).__name__ == family.model_class
    assert detect_family(d) is family
    n = sum(p.numel() for p in auto.parameters())
    assert 200_000 <= n <= 5_000_000


def test_same_seed_same_weights(tmp_path):
    a = build_tiny("llava", tmp_path / "a", seed=3)
    b = build_tiny("llava", tmp_path / "b", seed=3)
    c = build_tiny("llava", tmp_path / "c", seed=4)
    wa, wb, wc = (load_file(x / "model.safetensors") for x in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_unknown_family_lists_supported(tmp_path):
    with pytest.raises(FamilyError, match="Did you mean 'qwen2_vl'.*Supported families: internvl, llava"):
        get_family("qwen2vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    with pytest.raises(FamilyError, match="model_type 'blip_2' is not a supported family"):
        detect_family(tmp_path)


def test_checkpoint_without_safetensors_is_refused(tmp_path):
    d = build_tiny("llava", tmp_path / "m")
    weights = d / "model.safetensors"
    torch.save(load_file(weights), d / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(FamilyError, match="no \\*.safetensors weights.*convert"):
        load_model(d)
    with pytest.raises(FamilyError, match="does not exist"):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize("bad, msg", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role system\\|user\\|assistant"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "content\\[0\\] must be"),
    ([{"role": "assistant", "content": [{"type": "image"}]}], "assistant turn with an image"),
    ([{"role": "assistant", "content": [{"type": "video"}]}], "assistant turn with a video"),
])
def test_bad_conversations(bad, msg):
    with pytest.raises(ConversationError, match=msg):
        validate_messages(bad)


def test_video_marker_count_must_match_clips():
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    assert validate_messages(conv, 0, num_videos=1) == 0
    with pytest.raises(ConversationError, match="1 video markers in 'messages' but 0 clips"):
        validate_messages(conv, 0, num_videos=0)


def test_marker_count_must_match_images():
    conv = interleaved_conversation(3)
    with pytest.raises(ConversationError, match="3 image markers in 'messages' but 2 images"):
        validate_messages(conv, 2)
