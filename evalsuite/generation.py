"""Greedy, batched answers from a local model: the evaluated VLM, an infill generator, a rephraser, a judge.

`ChatModel` wraps a loaded model with its processor (a VLM) or its tokenizer (a text-only model) and
answers a batch of user turns (interleaved content lists) in one `generate` call. Prompts are
left-padded so that every sequence's new tokens start at the same column; tests check that a batch
gives the same texts as one prompt at a time. Generation stops at the chat template's end-of-turn
token as well as at EOS, since tiny and some real templates close a turn with their own token.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from transformers import GenerationConfig

from train.chat import processor_inputs, render


def _joined_text(content: list[dict]) -> str:
    if any(p["type"] in ("image", "video") for p in content):
        raise ValueError("a text-only model was given an image or a video")
    return "".join(p["text"] for p in content)


class ChatModel:
    def __init__(self, model, processor=None, tokenizer=None, name: str = "model", identity: str = ""):
        if (processor is None) == (tokenizer is None):
            raise ValueError("give a processor (VLM) or a tokenizer (text-only model)")
        self.model, self.processor, self.name, self.identity = model, processor, name, identity
        self.tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        if self.tokenizer.pad_token is None:
            # Llama-3 and Mistral instruct tokenizers have none, and `padding=True` then refuses even a batch of
            # one. Left padding is masked out, so the end-of-sequence token serves (as in their model cards).
            if self.tokenizer.eos_token is None:
                raise ValueError(f"{name}: the tokenizer has neither a pad nor an end-of-sequence token to pad with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id
        self.stop_ids = self._stop_ids()
        self.batch_cap: int | None = None
        """The largest batch that fitted after one ran out of memory (None: none has)."""

    @classmethod
    def load(cls, path: str | os.PathLike, trust_remote_code: bool = False, name: str | None = None,
             device: str | None = None, dtype=None) -> "ChatModel":
        """A VLM checkpoint (adapter or model dir of a known family) or a text-only causal LM."""
        from evalsuite.checkpoints import (CheckpointError, checkpoint_ref, fingerprint, load_checkpoint,
                                           weights_identity)
        from train.families import FamilyError

        path = Path(path).expanduser().resolve()
        try:
            ref = checkpoint_ref(path)
            model, processor, info = load_checkpoint(ref, trust_remote_code=trust_remote_code, dtype=dtype,
                                                     device=device)
            return cls(model, processor=processor, name=name or path.name, identity=weights_identity(info))
        except (FamilyError, CheckpointError) as e:
            from evalsuite.checkpoints import remote_code_only

            if remote_code_only(path):
                raise  # InternVL's remote-code format: the error names the -hf checkpoints to use
            if not (path / "config.json").is_file():
                raise CheckpointError(f"{path}: neither a VLM checkpoint nor a text model ({e})") from None
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        from train.families import onto_device

        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code,
                                                     dtype=dtype or "auto", **onto_device(device))
        if device is not None:
            model.to(device)
        model.eval()
        return cls(model, tokenizer=tok, name=name or path.name, identity=fingerprint(path))

    # ------------------------------------------------------------------ rendering

    def render(self, content: list[dict]) -> str:
        messages = [{"role": "user", "content": content}]
        if self.processor is not None:
            return render(self.processor, messages, add_generation_prompt=True)
        text = _joined_text(content)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\n"

    def _stop_ids(self) -> list[int]:
        """EOS plus the special token the chat template writes right after an assistant turn."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        try:
            user = [{"type": "text", "text": "q"}]
            msgs = [{"role": "user", "content": user if self.processor else "q"}]
            template = self.processor.apply_chat_template if self.processor else self.tokenizer.apply_chat_template
            prefix = template(msgs, tokenize=False, add_generation_prompt=True)
            answer = [{"type": "text", "text": "zz"}] if self.processor else "zz"
            full = template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        except Exception:  # noqa: BLE001 - no chat template: EOS alone
            return ids
        tail = full[len(prefix):].split("zz", 1)[-1] if full.startswith(prefix) else ""
        tail_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        # an added token (chat markers are added tokens even when not flagged special) ends the turn
        marks = set(self.tokenizer.all_special_ids) | set(self.tokenizer.get_added_vocab().values())
        if tail_ids and tail_ids[0] in marks and tail_ids[0] not in ids:
            ids.append(tail_ids[0])
        return ids

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, contents: Sequence[list[dict]], images: Sequence[list] | None = None, *,
                 max_new_tokens: int, batch_size: int = 8, videos: Sequence[list] | None = None,
                 image_options: dict | None = None, video_fps: Sequence[list | None] | None = None,
                 lengths: list | None = None) -> list[str]:
        """Greedy answers to `contents` (one user turn each; `images[i]` fills the image markers of turn i,
        `videos[i]` its `{"type": "video"}` parts, one clip of frames each: the family's video path;
        `video_fps[i]` their sampled frame rates; `image_options` go to the image processor). `lengths`, when
        given, is extended with each prompt's longest sequence: its tokens, then `max_new_tokens` - 1 (the
        most a generation feeds back, whether or not it stops early: the same in any batch)."""
        images = list(images) if images is not None else [[] for _ in contents]
        if len(images) != len(contents):
            raise ValueError(f"{len(contents)} prompts but {len(images)} image lists")
        if videos is not None and len(videos) != len(contents):
            raise ValueError(f"{len(contents)} prompts but {len(videos)} clip lists")
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_id, eos_token_id=self.stop_ids or None)

        def run(chunk: list[int]) -> list[str]:
            return self._generate_batch(chunk, contents, images, videos, video_fps, image_options, config,
                                        max_new_tokens, lengths)

        return self._in_batches(list(range(len(contents))), batch_size, run)

    def _in_batches(self, indices: list[int], size: int, run) -> list[str]:
        """`run` over `indices` in batches of `size`, or of `batch_cap` when running out of memory has set
        a smaller one (read again for each batch: a batch that fails lowers it)."""
        out, start = [], 0
        while start < len(indices):
            chunk = indices[start:start + min(size, self.batch_cap or size)]
            out += self._fitting(chunk, run)
            start += len(chunk)
        return out

    def _fitting(self, chunk: list[int], run) -> list[str]:
        """`run(chunk)`, one batch; one that runs out of accelerator memory (ten anyres frames of a 7B model
        in a batch of 8 can) is split in halves and retried, down to one prompt, and the size that fitted
        caps this model's later batches (`batch_cap`), so a long evaluation goes on instead of dying hours
        in. A prompt that does not fit alone raises, naming the model."""
        try:
            texts = run(chunk)
        except torch.OutOfMemoryError as e:
            if len(chunk) == 1:
                raise torch.OutOfMemoryError(f"{self.name}: one prompt alone does not fit in memory: {e}") from e
            texts = None  # retried outside this handler, whose traceback still holds the failed batch's tensors
        if texts is not None:
            return texts
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batch_cap = (len(chunk) + 1) // 2
        print(f"[generate] {self.name}: out of memory on a batch of {len(chunk)} prompts; "
              f"retrying in batches of {self.batch_cap} (and no larger from now on)", file=sys.stderr, flush=True)
        return self._in_batches(chunk, self.batch_cap, run)

    def _generate_batch(self, chunk: list[int], contents, images, videos, video_fps, image_options,
                        config: GenerationConfig, max_new_tokens: int, lengths: list | None) -> list[str]:
        texts = [self.render(contents[i]) for i in chunk]
        imgs = [list(images[i]) for i in chunk]
        if self.processor is not None:
            clips = [list(videos[i]) for i in chunk] if videos is not None else None
            rates = [video_fps[i] for i in chunk] if video_fps is not None else None
            enc = processor_inputs(self.processor, texts, imgs, clips, video_fps=rates, padding=True,
                                   padding_side="left", return_tensors="pt", **(image_options or {}))
        else:  # a chat template writes the special tokens it needs (BOS included): none added twice
            enc = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                                 add_special_tokens=not getattr(self.tokenizer, "chat_template", None))
        enc = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in dict(enc).items()}
        gen = self._plain_generate(enc, config)
        if lengths is not None:  # after the call: a batch that ran out of memory is retried, not counted twice
            lengths += [int(n) + max_new_tokens - 1 for n in enc["attention_mask"].sum(1).tolist()]
        new = gen[:, enc["input_ids"].shape[1]:]
        return [self._decode(row) for row in new.tolist()]

    def _plain_generate(self, enc: dict, config: GenerationConfig):
        """`model.generate` with `config` alone: transformers fills every field a passed config leaves unset
        from the checkpoint's own generation_config.json, and published ones set decoding options
        (Qwen2-VL-7B-Instruct: repetition_penalty 1.05, top_k 1...), so "greedy" answers, infills and judge
        replies would depend on the checkpoint's file. Its generation config is set aside for the call."""
        holder = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        own = getattr(holder, "generation_config", None)
        holder.generation_config = GenerationConfig()
        try:
            return self.model.generate(**enc, generation_config=config)
        finally:
            holder.generation_config = own

    def _decode(self, ids: list[int]) -> str:
        for i, t in enumerate(ids):
            if t in self.stop_ids:
                ids = ids[:i]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
