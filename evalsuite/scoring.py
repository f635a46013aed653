"""Log-likelihood scoring of the options of a multiple-choice prompt, with a shared prefix.

Each option is scored as the assistant turn that follows the prompt, exactly as training supervised
it: the option text plus the template's end-of-turn tokens (`train.chat` labels the whole assistant
span). The prompt (frames + question) is encoded once with `use_cache=True`; the options' continuations
then run against that prompt cache in one of two ways, by what copies of it would cost:
- options batched (when the k copies take at most `option_batch_bytes`, `--option_batch_mb`, 256 MiB
  by default): the cache is repeated along the batch dimension and every option's continuation runs in
  ONE forward, right-padded (under the causal mask no scored position sees a pad). For a small model a
  forward's cost is mostly its fixed overhead: with 2 forwards per prompt instead of 1 + k, evaluating
  the demo's video checkpoint (vcot, shuffle and I-RAVEN tasks) ran 1.26x faster (runs interleaved in
  one process), and all 10,320 prediction rows of the demo's three checkpoints kept their choice;
- one option at a time (a cache too large to copy): each option extends the ONE cache by its own
  tokens, and `Cache.crop` drops them again before the next option. Peak memory stays at one prompt
  cache whatever the number of options (at 7B and 10 frames, k copies of the cache would be the
  largest allocation of the evaluation); `make bench` measures both.
The two ways agree to float rounding (about 1e-5 nats on the tiny models; tests check both against
scoring each option from scratch).

Why no attention mask on a continuation: the prefix is one unpadded sequence, and a continuation's pads
(batched) come after every position that is scored, so there is nothing to mask. Passing a mask would
also send Qwen2-VL into a branch that rebuilds M-RoPE positions from the mask's full length; without it
the model continues positions from the cache's length and its cached rope deltas (repeated over the
batch), as in generation (cropping restores that length).

Which option wins depends on the normalisation (`--loglik-norm`, `LOGLIK_NORMS`): `sum`, the total
log-probability of the turn (favours short options); `mean`, per scored token (the default); `chars`,
per character of the option's text. `OptionScores` keeps the raw totals and the token counts.

A prompt may hold `{"type": "video"}` parts (`video_input: native`): their clips go through the
family's video processor (`train.chat.processor_inputs`), exactly as the trainer feeds them.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import torch

from evalsuite import prompts
from evalsuite.config import LOGLIK_NORMS, OPTION_BATCH_MB
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
    sequence_tokens: int = 0
    """The longest sequence the model ran: the prompt, then the longest option but its last token (predicted,
    not fed). What `evalsuite.context` compares with the model's context."""

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
        row = {"pred": self.choice, "logliks": list(self.logliks), "n_tokens": list(self.n_tokens),
               "sequence_tokens": self.sequence_tokens}
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
        cont = _without_trailing_space(tok, cont)
        if not cont:
            raise ValueError(f"option {option!r} gives no tokens to score")
        conts.append(cont)
    return prefix, conts


def _without_trailing_space(tok, ids: list[int]) -> list[int]:
    """`ids` without the plain whitespace tokens that end it when no end-of-turn special token comes before
    them. llava-hf's vicuna templates end an assistant turn with a space and no `</s>`: every option would be
    scored with P(lone space | option), which a model trained to end its answers with `</s>` finds unlikely by
    an amount that depends on the option. After an end-of-turn token (ChatML's `<|im_end|>` then a newline)
    the whitespace is what the model was trained to write there, and it stays, as the trainer labels it."""
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    end = len(ids)
    while end > 0 and ids[end - 1] not in special and tok.decode(ids[end - 1:end]).strip() == "":
        end -= 1
    return ids if end < len(ids) and end > 0 and ids[end - 1] in special else ids[:end]


def forward_passes(n_options: int) -> int:
    """Model calls of one `score_options` with `n_options` options, at most: the prompt, then one continuation
    per option (an option whose assistant turn is a single token needs none; batched options take one)."""
    return 1 + n_options


OPTION_BATCH_BYTES = int(OPTION_BATCH_MB * 2**20)
"""Default bound on the copies of a prompt cache that batched options may take (`--option_batch_mb`)."""


def cache_bytes(cache) -> int:
    """Bytes of a cache's keys and values over every layer (0 for a cache whose layers hold no tensors)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def options_batched(cache, n_continuations: int, option_batch_bytes: int) -> bool:
    """Whether `n_continuations` run in one forward over copies of the prompt cache `cache`: when there are
    several and their copies take at most `option_batch_bytes` (a cache whose layers hide their tensors,
    size 0, is not copied on a guess)."""
    return n_continuations > 1 and 0 < n_continuations * cache_bytes(cache) <= option_batch_bytes


def _cache_kwarg(model) -> str:
    """The forward's name for a past cache: `cache` (transformers >= 5.24), else `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


_ROPE_HOLDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget_positions(model) -> None:
    """Clear what a model keeps of the previous prompt's positions before a new prompt.

    Qwen2-VL and Qwen2.5-VL keep the last multimodal prompt's M-RoPE offset (`rope_deltas`) and add it to
    the positions of every forward that continues a cache. A prompt without images or video does not
    replace it, so the options after a text-only prompt (the blind and text-only conditions) were scored
    at positions shifted by the previous frames' offset (at 7B, about -240 a frame). `generate` resets it
    itself; the options' forwards over the prompt cache do not."""
    if model not in _ROPE_HOLDERS:
        _ROPE_HOLDERS[model] = [m for m in model.modules() if hasattr(m, "rope_deltas")]
    for m in _ROPE_HOLDERS[model]:
        m.rope_deltas = None


@torch.no_grad()
def score_options(model, processor, content: list[dict], images: list, options: list[str],
                  videos: list[list] | None = None, image_options: dict | None = None,
                  video_fps: list | None = None, norm: str = "mean",
                  option_batch_bytes: int = OPTION_BATCH_BYTES) -> OptionScores:
    """Log-likelihood of every option after the user turn `content` (with `images`, and `videos`: one clip
    of frames per `{"type": "video"}` part). `image_options` go to the image processor (a clip's frames
    fed as images take `data_recipes.processors.frame_options`); `video_fps` the clips' sampled frame
    rates (None where unknown); `norm` how `choice` compares the options (`LOGLIK_NORMS`);
    `option_batch_bytes` the most that copies of the prompt cache may take to score the options in one
    forward (0: one option at a time against one cache)."""
    if norm not in LOGLIK_NORMS:
        raise ValueError(f"unknown loglik normalisation {norm!r}; known: {', '.join(LOGLIK_NORMS)}")
    prefix, conts = option_continuations(processor, prompts.conversation(content), options)
    enc = processor_inputs(processor, [prefix], [list(images)], [list(videos)] if videos else None,
                           video_fps=[video_fps] if videos else None, return_tensors="pt", **(image_options or {}))
    enc = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in dict(enc).items()}
    longest = enc["input_ids"].shape[1] + max(len(c) for c in conts) - 1
    forget_positions(model)
    # Only the last prefix position predicts an option token: at real scale the full logits of a
    # 2k-token prefix over a 32k vocabulary would cost a large matmul and ~256 MB for nothing.
    out = model(**enc, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    del out, enc  # the pixels and the prefix's outputs are not needed by the continuations
    logliks = [float(first[c[0]]) for c in conts]
    rest = [i for i, c in enumerate(conts) if len(c) > 1]  # a one-token option was predicted by the prompt
    if options_batched(cache, len(rest), option_batch_bytes):
        more = _batched_continuations(model, cache, [conts[i] for i in rest])
    else:
        more = _continuations_one_by_one(model, cache, [conts[i] for i in rest])
    for i, ll in zip(rest, more):
        logliks[i] += ll
    return OptionScores(logliks, [len(c) for c in conts], [len(o) for o in options], norm, longest)


def _loglik_of(logits: torch.Tensor, cont: list[int]) -> float:
    """Log-probability of `cont[1:]` from the logits of the positions fed `cont[:-1]`."""
    logp = torch.log_softmax(logits[: len(cont) - 1].float(), dim=-1)
    target = torch.tensor(cont[1:], device=logp.device)
    return float(logp[torch.arange(len(cont) - 1, device=logp.device), target].sum())


def _batched_continuations(model, cache, conts: list[list[int]]) -> list[float]:
    """Every continuation in one forward, over one copy of the prompt cache per continuation."""
    ids = torch.zeros((len(conts), max(len(c) for c in conts) - 1), dtype=torch.long)
    for row, c in enumerate(conts):
        ids[row, : len(c) - 1] = torch.tensor(c[:-1])  # right-padded with token 0: no scored position sees it
    cache.batch_repeat_interleave(len(conts))
    logits = model(input_ids=ids.to(model.device), use_cache=True, **{_cache_kwarg(model): cache}).logits
    return [_loglik_of(logits[row], c) for row, c in enumerate(conts)]


def _continuations_one_by_one(model, cache, conts: list[list[int]]) -> list[float]:
    """Each continuation against the one prompt cache, cropped back to the prompt after each."""
    prompt_length, cache_kwarg = cache.get_seq_length(), _cache_kwarg(model)
    if hasattr(cache, "activate_past_recording"):
        # sliding-window layers keep what `crop` needs to roll an option back (a no-op for full attention)
        cache.activate_past_recording()
    out = []
    for i, c in enumerate(conts):
        ids = torch.tensor([c[:-1]], dtype=torch.long, device=model.device)
        logits = model(input_ids=ids, use_cache=True, **{cache_kwarg: cache}).logits
        out.append(_loglik_of(logits[0], c))
        del logits
        cache.crop(-(len(c) - 1))  # back to the prompt alone for the next option
        if cache.get_seq_length() != prompt_length:
            raise RuntimeError(f"{type(cache).__name__} did not roll back to the prompt's {prompt_length} tokens "
                               f"after continuation {i} (it holds {cache.get_seq_length()}): cannot score the "
                               "options against one shared prompt cache")
    return out
