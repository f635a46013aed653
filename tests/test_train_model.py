"""The trained model's shape at 7B settings, in process on a tiny Llava: gradient checkpointing,
parameter groups and freezing, LoRA targets, the token-weighted loss and the schedule's length."""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image

from train.config import resolve
from train.families import get_module, load_model
from train.models import wrap_lora

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from train.toy.tiny import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava")


def cfg_of(*flags: str):
    return resolve(["--recipe", "video_demo", "--max_steps", "1", *flags])


def batch_of(processor, answers: list[str], frames: int = 3):
    from train.chat import encode

    convs, images = [], []
    for i, answer in enumerate(answers):
        content = [{"type": "image"} for _ in range(frames)] + [{"type": "text", "text": "what happens ?"}]
        convs.append([{"role": "user", "content": content},
                      {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        images.append([Image.new("RGB", (64, 64), (40 * i % 255, 90, 200 - 30 * f)) for f in range(frames)])
    return encode(processor, convs, images).inputs


def saved_activation_bytes(model, inputs) -> tuple[float, int]:
    """(loss, bytes of the tensors autograd keeps for backward) of one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**inputs).loss
    loss.backward()
    return loss.item(), total


def test_gradient_checkpointing_same_losses_less_activation_memory(tiny):
    """Three AdamW steps with and without checkpointing: the same losses (rel 1e-4), the same LoRA
    gradients flow (non-reentrant), and far fewer bytes held for backward."""
    results = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model, processor, family = load_model(tiny, dtype=torch.float32)
        model = wrap_lora(model, family, cfg_of("--lora_dropout", "0"), gradient_checkpointing=ckpt)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        inputs = batch_of(processor, ["it moves left and then turns red", "nothing", "a blue square appears"], 4)
        losses, saved = [], []
        for _ in range(3):
            loss, nbytes = saved_activation_bytes(model, inputs)
            lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A gets none while B = 0
            assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
            opt.step()
            opt.zero_grad()
            losses.append(loss)
            saved.append(nbytes)
        results[ckpt] = (losses, saved[0])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    assert results[True][1] < 0.6 * results[False][1], (results[True][1], results[False][1])


def test_checkpointing_leaves_the_frozen_vision_tower_out_of_the_backward(tiny):
    """With gradient checkpointing on and the tower frozen (the 7B defaults), nothing in the vision tower's
    output requires grad, so the backward stops at the projector. transformers' enable_input_require_grads
    hooked the tower's patch embedding too: every step backpropagated through the whole frozen tower."""
    from train.families import get_module

    model, processor, family = load_model(tiny, dtype=torch.float32)
    model = wrap_lora(model, family, cfg_of("--lora_dropout", "0"), gradient_checkpointing=True)
    model.train()
    tower = get_module(model.get_base_model(), family.vision_tower)
    assert not any(p.requires_grad for p in tower.parameters())
    seen = []
    tower.register_forward_hook(lambda m, i, out: seen.append(
        [t.requires_grad for t in (out.hidden_states or ()) + (out.last_hidden_state,) if t is not None]))
    loss = model(**batch_of(processor, ["it moves left", "nothing"], 2)).loss
    loss.backward()
    assert seen and not any(any(flags) for flags in seen)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_parameter_groups_freezing_and_targets(tiny):
    from train.schedule import make_optimizer

    model, _, family = load_model(tiny, dtype=torch.float32)
    cfg = cfg_of("--learning_rate", "2e-4", "--projector_lr", "2e-5", "--gradient_checkpointing", "false")
    peft = wrap_lora(model, family, cfg)
    opt = make_optimizer(peft, cfg, projector=family.projector)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["lora"]["lr"] == 2e-4 and groups["projector"]["lr"] == 2e-5
    names = {id(p): n for n, p in peft.named_parameters()}
    assert all("multi_modal_projector" in names[id(p)] for p in groups["projector"]["params"])
    assert all("lora_" in names[id(p)] for p in groups["lora"]["params"])
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert not any("vision_tower" in n for n in trainable)  # freeze_vision_tower is on by default
    assert not any("mlp" in n for n in trainable)

    model, _, _ = load_model(tiny, dtype=torch.float32)
    cfg = cfg_of("--freeze_projector", "true", "--lora_targets", "all_linear", "--gradient_checkpointing", "false")
    peft = wrap_lora(model, family, cfg)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert not any("multi_modal_projector" in n for n in trainable)
    assert any(".mlp.down_proj.lora_A" in n for n in trainable) and any(".self_attn.q_proj.lora_B" in n for n in trainable)
    assert [g["name"] for g in make_optimizer(peft, cfg, family.projector).param_groups] == ["lora"]

    model, _, _ = load_model(tiny, dtype=torch.float32)
    cfg = cfg_of("--freeze_vision_tower", "false", "--lora_targets", r".*\.self_attn\.v_proj$",
                 "--gradient_checkpointing", "false")
    peft = wrap_lora(model, family, cfg)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert any("vision_tower" in n for n in trainable)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in trainable if "lora_" in n} == {"v_proj"}
    assert get_module(peft, family.vision_tower) is not None


def test_token_weighted_loss_over_micro_batches(tiny):
    """The step's loss is sum of token losses / all supervised tokens: computed micro-batch by
    micro-batch with the trainer's scale, the gradient equals that of the whole step in one piece,
    and differs from the mean of per-micro-batch means when the token counts differ."""
    from train.lora import token_loss_sum

    model, processor, family = load_model(tiny, dtype=torch.float32)
    model = wrap_lora(model, family, cfg_of("--lora_dropout", "0", "--gradient_checkpointing", "false"))
    mb = [batch_of(processor, ["it moves left and then it turns red and grows"], 2),
          batch_of(processor, ["nothing", "red"], 2)]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in mb]
    assert counts[0] != counts[1] / 2  # different supervised tokens per sample
    total = sum(counts)

    def grads():
        return [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]

    def loss_sum(b):
        return token_loss_sum(model(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"])

    # What the trainer does for gas=2 on one process: backward(loss_sum * world * gas / total), and the
    # accelerate/DeepSpeed backward divides by gas.
    gas, world = 2, 1
    sums = []
    for b in mb:
        s = loss_sum(b)
        (s * world * gas / total / gas).backward()
        sums.append(s.item())
    g_trainer = grads()
    model.zero_grad()
    # By hand: every supervised token of the step weighted alike.
    by_hand = sum(loss_sum(b) for b in mb) / total
    by_hand.backward()
    g_hand = grads()
    model.zero_grad()
    for a, b in zip(g_trainer, g_hand):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert sum(sums) / total == pytest.approx(by_hand.item(), rel=1e-6)
    mean_of_means = (sums[0] / counts[0] + sums[1] / counts[1]) / 2
    assert abs(mean_of_means - by_hand.item()) > 1e-3  # the old normalisation would differ
    # HF's own loss of a micro-batch is its token mean: the sum agrees with it.
    hf = model(**mb[1]).loss.item()
    assert sums[1] / counts[1] == pytest.approx(hf, rel=1e-5)


def test_schedule_length_comes_from_the_budget():
    from train.budget import Budget, per_sample_from_manifest, plan_schedule

    cfg = cfg_of("--max_steps", "0", "--max_samples", "1000", "--per_device_batch_size", "4",
                 "--gradient_accumulation_steps", "2")
    b = plan_schedule(Budget("samples", 1000), cfg, samples_per_step=4 * 2 * 8)
    assert b.schedule_steps == 16 and "1000 samples" in b.schedule_source  # ceil(1000 / 64)
    b = plan_schedule(Budget("visual_tokens", 64_000), cfg, 64, per_sample=lambda: (80.0, "manifest counts"))
    assert b.schedule_steps == 13 and b.per_sample == 80.0  # 800 samples / 64 per step
    capped = resolve(["--recipe", "video_demo", "--max_steps", "5", "--max_samples", "1000"])
    assert plan_schedule(Budget("samples", 1000), capped, 64).schedule_steps == 5
    override = resolve(["--recipe", "video_demo", "--max_steps", "5", "--schedule_steps", "50"])
    assert plan_schedule(Budget(), override, 64).schedule_steps == 50
    manifest = {"counts": {"samples": 10, "visual_tokens": 800}, "tokens_model": "/m/llava"}
    assert per_sample_from_manifest(manifest, "visual_tokens", "/m/llava") == 80
    assert per_sample_from_manifest(manifest, "visual_tokens", "/m/other") is None  # counted for another model
    assert per_sample_from_manifest(manifest, "supervised_tokens", "/m/llava") is None


def test_multiprocess_job_refuses_to_build_real_data(tmp_path, monkeypatch):
    """A 16-rank job with a missing real-data shard set stops at once with the build command."""
    from train.lora import LoRATrainer, ShardsMissing

    ann = tmp_path / "ann.json"
    ann.write_text("[]")
    recipe = tmp_path / "real_images.yaml"
    recipe.write_text(f"kind: image\nsources:\n  - {{type: llava_image, path: {ann}, media_root: {tmp_path}}}\n"
                      "samples: 100\nimage_size: 336\n")
    cfg = resolve(["--recipe", str(recipe), "--max_steps", "1", "--shards_root", str(tmp_path / "shards")])
    trainer = LoRATrainer(cfg)
    trainer.acc = types.SimpleNamespace(num_processes=16, is_main_process=True, print=print,
                                        wait_for_everyone=lambda: None)
    from data_recipes.recipe import load_recipe

    trainer.recipe = load_recipe(recipe)
    with pytest.raises(ShardsMissing, match="python -m data_recipes build .*real_images.yaml --out .* --workers N"):
        trainer._setup_shards()


def test_a_missing_tiny_model_is_built_unpartitioned_inside_a_zero3_job(tmp_path, monkeypatch):
    """Under ZeRO-3 accelerate registers its DeepSpeed config with transformers, and a model constructed
    then is partitioned by `deepspeed.zero.Init`, a collective of all ranks. The trainer builds a missing
    tiny model on the main process while the other ranks wait at a barrier: a partitioned build there
    hung a 2-process ZeRO-3 job forever (and in one process it fails looking for MPI). The build must
    give full, unpartitioned weights and leave the registration as it found it."""
    from safetensors.torch import load_file
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    import train.models as models

    monkeypatch.setattr(models, "MODELS_ROOT", tmp_path)
    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})  # noqa: F841 (registered while alive)
    try:
        assert is_deepspeed_zero3_enabled()
        out = models.resolve_base_model("tiny:llava")
        assert is_deepspeed_zero3_enabled()  # restored for the job's own model loading
    finally:
        unset_hf_deepspeed_config()
    weights = load_file(out / "model.safetensors")
    embed = [t for k, t in weights.items() if k.endswith("embed_tokens.weight")]
    assert len(embed) == 1 and embed[0].shape[1] == 128 and embed[0].shape[0] > 100  # (vocabulary, width)
    assert all(t.numel() > 0 for t in weights.values())  # a partitioned model saves empty tensors
