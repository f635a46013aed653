"""Log-likelihood scoring of the options of a multiple-choice prompt, with a shared prefix.

Each option is scored as the assistant turn that follows the prompt, exactly as training supervised
it: the option text plus the template's end-of-turn tokens (`train.chat` labels the whole assistant
span). The prompt (frames + question) is encoded once with `use_cache=True`; its KV cache is then
repeated along the batch dimension and the options' continuations run in one batch.

Why no attention mask on the continuation batch: the prefix is one unpadded sequence and the options
are right-padded, so under causal attention padding only follows the real tokens and never changes
them. Passing a mask would also send Qwen2-VL into a branch that rebuilds M-RoPE positions from the
mask's full length; without it the model continues positions from its cached rope deltas, as in
generation. Tests check that this gives the same log-probabilities as scoring each option from scratch.

A prompt may hold `{"type": "video"}` parts (`video_input: native`): their clips go through the
family's video processor (`train.chat.processor_inputs`), exactly as the trainer feeds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evalsuite import prompts
from train.chat import processor_inputs, render


@dataclass
class OptionScores:
    logliks: list[float]
    """Total log-probability of each option's assistant turn."""
    n_tokens: list[int]

    @property
    def choice(self) -> int:
        # ties go to the first option: deterministic, and the answer slot is balanced in the benchmark
        return max(range(len(self.logliks)), key=lambda i: (self.logliks[i], -i))


def continuation_ids(processor, messages: list[dict], option: str) -> tuple[str, list[int]]:
    """(prefix text, token ids of the assistant turn `option`), tokenized as the full conversation is."""
    prefix, conts = option_continuations(processor, messages, [option])
    return prefix, conts[0]


def option_continuations(processor, messages: list[dict], options: list[str]) -> tuple[str, list[list[int]]]:
    """(prefix text, the token ids of each option's assistant turn); the prefix is rendered once."""
    tok = processor.tokenizer
    prefix = render(processor, messages, add_generation_prompt=True)
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    conts = []
    for option in options:
        full = render(processor, list(messages) + [prompts.answer_turn(option)])
        if not full.startswith(prefix):
            raise ValueError("chat template is not prefix-consistent: the prompt with the generation prompt is not "
                             "a prefix of the prompt with the answer; shared-prefix scoring cannot be used")
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        if full_ids[:len(prefix_ids)] == prefix_ids:
            cont = full_ids[len(prefix_ids):]
        else:  # a merge across the boundary: fall back to tokenizing the continuation alone
            cont = tok(full[len(prefix):], add_special_tokens=False)["input_ids"]
        if not cont:
            raise ValueError(f"option {option!r} gives no tokens to score")
        conts.append(cont)
    return prefix, conts


@torch.no_grad()
def score_options(model, processor, content: list[dict], images: list, options: list[str],
                  videos: list[list] | None = None, image_options: dict | None = None,
                  video_fps: list | None = None) -> OptionScores:
    """Log-likelihood of every option after the user turn `content` (with `images`, and `videos`: one clip
    of frames per `{"type": "video"}` part). `image_options` go to the image processor (a clip's frames
    fed as images take `data_recipes.processors.frame_options`); `video_fps` the clips' sampled frame
    rates (None where unknown)."""
    prefix, conts = option_continuations(processor, prompts.conversation(content), options)
    enc = processor_inputs(processor, [prefix], [list(images)], [list(videos)] if videos else None,
                           video_fps=[video_fps] if videos else None, return_tensors="pt", **(image_options or {}))
    enc = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in dict(enc).items()}
    # Only the last prefix position predicts an option token: at real scale the full logits of a
    # 2k-token prefix over a 32k vocabulary would cost a large matmul and ~256 MB for nothing.
    out = model(**enc, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = out.past_key_values
    k, longest = len(conts), max(len(c) for c in conts)
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    ids = torch.full((k, longest), pad, dtype=torch.long, device=model.device)
    for i, c in enumerate(conts):
        ids[i, :len(c)] = torch.tensor(c)
    logliks = [float(first[c[0]]) for c in conts]
    if longest > 1:
        cache.batch_repeat_interleave(k)
        logits = model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for i, c in enumerate(conts):
            if len(c) > 1:
                target = torch.tensor(c[1:], device=logp.device)
                logliks[i] += float(logp[i, torch.arange(len(c) - 1), target].sum())
    return OptionScores(logliks, [len(c) for c in conts])
