"""Turning (prompt, response) into token ids with a response-only loss mask.

The prompt is encoded the way generation will see it: with the tokenizer's chat template when it
has one (the prompt as the user turn(s), ``add_generation_prompt=True``), as plain text
otherwise. The response is encoded on its own and EOS appended, so the sequence is exactly
``prompt_ids + response_ids + [eos]`` — what the model produces at sampling time — and the mask
covers the response and its EOS only.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.data.formats import Prompt


@dataclass
class Encoded:
    input_ids: list[int]
    response_start: int  # index of the first response token
    truncated: bool

    @property
    def response_mask(self) -> list[int]:
        return [0] * self.response_start + [1] * (len(self.input_ids) - self.response_start)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt, ready for the response to follow."""
    if has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(
            as_messages(prompt), add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer versions
            ids = ids["input_ids"]
        return list(ids)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def encode_response(tokenizer, response: str, *, add_eos: bool = True) -> list[int]:
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.eos_token_id] if add_eos else ids


def encode_example(tokenizer, prompt: Prompt, response: str, max_length: int) -> Encoded:
    """``prompt_ids + response_ids + [eos]``, truncated to ``max_length``.

    Truncation keeps the end of the prompt (at most half the budget when the response needs the
    rest) and the start of the response; a truncated response loses its EOS.
    """
    return join_truncated(
        encode_prompt(tokenizer, prompt), encode_response(tokenizer, response), max_length
    )


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """Raw text (the ``text`` kind, e.g. pretraining data for PPO-ptx) with the loss on every
    token: ``[bos] + text_ids + [eos]`` (BOS when the tokenizer adds one), the mask on everything
    after BOS (without BOS the first token, which nothing predicts), cut to ``max_length``."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"]) + [tokenizer.eos_token_id]
    bos = getattr(tokenizer, "bos_token_id", None)
    start = 1 if bos is not None and ids[0] == bos and len(ids) > 1 else 0
    return Encoded(ids[:max_length], start, truncated=len(ids) > max_length)


def prompt_kept(n_prompt: int, n_response: int, max_length: int) -> int:
    """How many prompt tokens (from its end) a sequence of at most ``max_length`` keeps: all if
    prompt and response fit; else as many as leave room for the response, but at least half of
    ``max_length`` (the response is cut instead) and at least 1."""
    if n_prompt + n_response <= max_length:
        return n_prompt
    keep = min(n_prompt, max(max_length - n_response, max_length // 2))
    return max(keep, 1) if max_length > 1 else 0


def join_truncated(
    prompt_ids: list[int], response_ids: list[int], max_length: int, keep_prompt: int | None = None
) -> Encoded:
    """Prompt then response in at most ``max_length`` tokens: the prompt's last ``keep_prompt``
    tokens (default :func:`prompt_kept`), then as much of the response's start as fits."""
    if keep_prompt is None:
        keep_prompt = prompt_kept(len(prompt_ids), len(response_ids), max_length)
    prompt_part = prompt_ids[len(prompt_ids) - keep_prompt :]
    response_part = response_ids[: max_length - keep_prompt]
    truncated = len(prompt_part) + len(response_part) < len(prompt_ids) + len(response_ids)
    return Encoded(prompt_part + response_part, len(prompt_part), truncated=truncated)
