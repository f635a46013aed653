"""Log-likelihood scoring of the options of a multiple-choice prompt, with a shared prefix.

Each option is scored as the assistant turn that follows the prompt, exactly as training supervised
it: the option text plus the template's end-of-turn tokens (`train.chat` labels the whole assistant
span). The prompt (frames + question) is encoded once with `use_cache=True`; the options' continuations
then run one after another against that ONE cache: each extends it by its own tokens, and
`Cache.crop` drops them again before the next option. Nothing is repeated along the batch dimension,
so peak memory stays at one prompt cache whatever the number of options (at 7B and 10 frames, k
copies of the cache were the largest allocation of the evaluation); `make bench` measures it.

Why no attention mask on a continuation: the prefix is one unpadded sequence and each option runs
alone, so there is nothing to mask. Passing a mask would also send Qwen2-VL into a branch that
rebuilds M-RoPE positions from the mask's full length; without it the model continues positions from
the cache's length and its cached rope deltas, as in generation (cropping restores that length).
Tests check that this gives the same log-probabilities as scoring each option from scratch.

Which option wins depends on the normalisation (`--loglik-norm`, `LOGLIK_NORMS`): `sum`, the total
log-probability of the turn (favours short options); `mean`, per scored token (the default); `chars`,
per character of the option's text. `OptionScores` keeps the raw totals and the token counts.

A prompt may hold `{"type": "video"}` parts (`video_input: native`): their clips go through the
family's video processor (`train.chat.processor_inputs`), exactly as the trainer feeds them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from evalsuite import prompts
from evalsuite.config import LOGLIK_NORMS
from train.chat import processor_inputs, render


@dataclass
class OptionScores:
    logliks: list[float]
    """Total log-probability of each option's assistant turn (raw, whatever the normalisation)."""
    n_tokens: list[int]
    """Scored tokens of each option: its text's tokens plus the template's end-of-turn tokens."""
    n_chars: list[int] | None = None
    """Characters of each option's text (needed by `chars`)."""
    norm: str = "mean"
    """`sum` | `mean` | `chars`: what `scores` divides each total by (nothing, n_tokens, n_chars)."""

    def __post_init__(self) -> None:
        if self.norm not in LOGLIK_NORMS:
            raise ValueError(f"unknown loglik normalisation {self.norm!r}; known: {', '.join(LOGLIK_NORMS)}")

    @property
    def scores(self) -> list[float]:
        """The compared values: each option's log-likelihood under `norm`."""
        if self.norm == "sum":
            return list(self.logliks)
        counts = self.n_tokens if self.norm == "mean" else self.n_chars
        if counts is None or len(counts) != len(self.logliks):
            raise ValueError(f"loglik normalisation {self.norm!r} needs one "
                             f"{'token' if self.norm == 'mean' else 'character'} count per option")
        return [ll / max(1, n) for ll, n in zip(self.logliks, counts)]

    @property
    def choice(self) -> int:
        # ties go to the first option: deterministic, and the answer slot is balanced in the benchmark
        scores = self.scores
        return max(range(len(scores)), key=lambda i: (scores[i], -i))

    def as_row(self) -> dict:
        """What a prediction row records: the choice, the raw totals and the counts they are normalised by."""
        row = {"pred": self.choice, "logliks": list(self.logliks), "n_tokens": list(self.n_tokens)}
        if self.n_chars is not None:
            row["n_chars"] = list(self.n_chars)
        return row


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


def forward_passes(n_options: int) -> int:
    """Model calls of one `score_options` with `n_options` options, at most: the prompt, then one continuation
    per option (an option whose assistant turn is a single token needs none)."""
    return 1 + n_options


def _cache_kwarg(model) -> str:
    """The forward's name for a past cache: `cache` (transformers >= 5.24), else `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@torch.no_grad()
def score_options(model, processor, content: list[dict], images: list, options: list[str],
                  videos: list[list] | None = None, image_options: dict | None = None,
                  video_fps: list | None = None, norm: str = "mean") -> OptionScores:
    """Log-likelihood of every option after the user turn `content` (with `images`, and `videos`: one clip
    of frames per `{"type": "video"}` part). `image_options` go to the image processor (a clip's frames
    fed as images take `data_recipes.processors.frame_options`); `video_fps` the clips' sampled frame
    rates (None where unknown); `norm` how `choice` compares the options (`LOGLIK_NORMS`)."""
    if norm not in LOGLIK_NORMS:
        raise ValueError(f"unknown loglik normalisation {norm!r}; known: {', '.join(LOGLIK_NORMS)}")
    prefix, conts = option_continuations(processor, prompts.conversation(content), options)
    enc = processor_inputs(processor, [prefix], [list(images)], [list(videos)] if videos else None,
                           video_fps=[video_fps] if videos else None, return_tensors="pt", **(image_options or {}))
    enc = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in dict(enc).items()}
    # Only the last prefix position predicts an option token: at real scale the full logits of a
    # 2k-token prefix over a 32k vocabulary would cost a large matmul and ~256 MB for nothing.
    out = model(**enc, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    del out, enc  # the pixels and the prefix's outputs are not needed by the continuations
    logliks = [float(first[c[0]]) for c in conts]
    prompt_length, cache_kwarg = cache.get_seq_length(), _cache_kwarg(model)
    if hasattr(cache, "activate_past_recording"):
        # sliding-window layers keep what `crop` needs to roll an option back (a no-op for full attention)
        cache.activate_past_recording()
    for i, c in enumerate(conts):
        if len(c) == 1:  # its only token was predicted by the prefix
            continue
        ids = torch.tensor([c[:-1]], dtype=torch.long, device=model.device)
        logits = model(input_ids=ids, use_cache=True, **{cache_kwarg: cache}).logits
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        target = torch.tensor(c[1:], device=logp.device)
        logliks[i] += float(logp[torch.arange(len(c) - 1, device=logp.device), target].sum())
        del logits, logp
        cache.crop(-(len(c) - 1))  # back to the prompt alone for the next option
        if cache.get_seq_length() != prompt_length:
            raise RuntimeError(f"{type(cache).__name__} did not roll back to the prompt's {prompt_length} tokens "
                               f"after option {i} (it holds {cache.get_seq_length()}): cannot score the options "
                               "against one shared prompt cache")
    return OptionScores(logliks, [len(c) for c in conts], [len(o) for o in options], norm)
