"""Train a short LoRA run, then write the trained model's logits on a fixed batch (rank 0).

    accelerate launch --config_file ds_configs/accelerate/cpu_zero3_2proc.yaml tests/scripts/trained_logits.py \
        OUT.pt --recipe R --max_steps 3 ...

Used by `tests/test_train.py::test_zero3_adapter_reproduces_the_trained_model` to check that the
adapter the trainer wrote reproduces the model it trained (under ZeRO-3 the forward runs on every rank
with partitioned weights).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_recipes.recipe import load_recipe  # noqa: E402
from train.chat import encode  # noqa: E402
from train.config import resolve  # noqa: E402
from train.lora import LoRATrainer  # noqa: E402


def fixed_inputs(processor) -> dict:
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "what happens ?"}]
    conv = [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": "it moves left"}]}]
    frames = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    return encode(processor, [conv], [frames]).inputs


if __name__ == "__main__":
    out, argv = sys.argv[1], sys.argv[2:]
    trainer = LoRATrainer(resolve(argv, recipe_train=lambda r: load_recipe(r).train)).setup()
    trainer.train()
    trainer.finish()
    trainer.model.eval()
    inputs = {k: v for k, v in fixed_inputs(trainer.processor).items() if k != "labels"}
    with torch.no_grad():
        logits = trainer.model(**inputs).logits.float()
    if trainer.acc.is_main_process:
        torch.save(logits, out)
    trainer.acc.wait_for_everyone()
    trainer.acc.end_training()
