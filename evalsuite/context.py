"""Sequences longer than the checkpoint's context, counted per task.

A prompt of frames can pass a language model's context without any error: LLaVA-NeXT's anyres frames
cost 1,176 tokens each at 336 px, so five pass Vicuna's 4,096 positions, and RoPE computes positions
past the trained ones as readily as any other. The answers are then read at positions the model never
trained on, and nothing says so. So every prediction row records `sequence_tokens`, the longest
sequence its answer made the model run, from the tokens the processor gave:
- loglik scoring (`evalsuite.scoring.score_options`): the prompt, then the longest option but its last
  token, which is predicted, not fed;
- a generated answer (`evalsuite.generation.ChatModel.generate`): the prompt, then `max_new_tokens` - 1,
  whether or not it stopped early;
- an I-RAVEN item judged candidate by candidate: the longest of its candidates' prompts.
The same in any batch and after any resume. Infills the checkpoint writes itself are not counted: their
prompts are two frames. `summary` turns the rows into metrics.json's `context`: the limit
(`train.families.context_length`: `max_position_embeddings`, stretched by a RoPE scaling), the longest
sequence, and the items one of whose rows passed the limit; the runner says so on stderr and the report
lists them.

Counted in tokens, the conservative measure: Qwen2-VL's M-RoPE gives an image's tokens fewer positions
than tokens. Nothing is refused: a user may know the model holds more than its config says.
"""

from __future__ import annotations

EXAMPLES = 5
"""Item ids listed in metrics.json's `context` (the first ones past the limit)."""


def summary(rows: list[dict], limit: int) -> dict:
    """metrics.json's `context` from prediction rows: {limit, longest, items, items_over, examples}; `items`
    counts the items whose rows carry a measured length (rows written before the measure have none)."""
    longest: dict[str, int] = {}
    for r in rows:
        n = r.get("sequence_tokens")
        if isinstance(n, int) and n > 0:
            longest[str(r.get("item"))] = max(n, longest.get(str(r.get("item")), 0))
    over = [item for item, n in longest.items() if limit and n > limit]
    return {"limit": limit, "longest": max(longest.values(), default=0), "items": len(longest),
            "items_over": len(over), "examples": over[:EXAMPLES]}


def overrun(context: dict) -> str | None:
    """What metrics.json's `context` says when items passed the limit, as the report and stderr say it (None
    when none did)."""
    if not context.get("items_over"):
        return None
    return (f"{context['items_over']} of {context['items']} item(s) ran sequences longer than the model's context "
            f"of {context['limit']:,} positions (longest {context['longest']:,} tokens; e.g. "
            f"{', '.join(map(str, context.get('examples', [])[:3]))}): their answers read positions the model was "
            "not trained on")


def warning(task: str, checkpoint: str, context: dict) -> str | None:
    """The stderr line for a task whose items passed the limit (None when none did)."""
    said = overrun(context)
    return None if said is None else (f"[{task}] {checkpoint}: {said}. Fewer frames (--frames), a smaller "
                                      "--max_pixels or another --iraven_layout shortens them")
