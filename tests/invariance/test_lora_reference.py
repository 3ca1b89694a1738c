"""LoRA as the reference: with adapters disabled the policy IS the base model (log-probs equal
exactly, not approximately), and merge-and-save gives an HF directory whose log-probs are the
adapted policy's."""

from __future__ import annotations

import torch

from posttrain.config import LoraConfig
from posttrain.data import collate, encode_example
from posttrain.models import forward_logprobs, load_model, load_tokenizer, save_pretrained
from posttrain.models.lora import adapters_disabled, apply_lora

PAIRS = [
    ("The movie was", " wonderful and lovely."),
    ("Two plus two is", " four."),
    ("Hi", " there"),
]


def _batch(tok):
    encoded = [encode_example(tok, p, r, 64) for p, r in PAIRS]
    return collate(encoded, tok.pad_token_id)


def _policy(dtype="float64"):
    base = load_model("tiny-llama", dtype=dtype)
    policy = apply_lora(load_model("tiny-llama", dtype=dtype), LoraConfig(enabled=True, r=4))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():  # trained-looking adapters (B starts at zero)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return base, policy


def _logps(model, batch):
    with torch.no_grad():
        return forward_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        ).logps


def test_adapters_disabled_gives_the_base_models_logprobs_exactly():
    tok = load_tokenizer("tiny-llama")
    batch = _batch(tok)
    for dtype in ("float64", "float32"):
        base, policy = _policy(dtype)
        with adapters_disabled(policy) as reference:
            ref = _logps(reference, batch)
        assert torch.equal(ref, _logps(base, batch)), dtype  # bit for bit
        adapted = _logps(policy, batch)
        assert (adapted - ref).abs().max() > 1e-3  # the adapters do change the policy
        assert torch.equal(_logps(policy, batch), adapted)  # and are back on after the block


def test_merge_and_save_round_trip_loads_in_transformers_with_the_same_logprobs(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer("tiny-llama")
    batch = _batch(tok)
    _, policy = _policy("float64")
    expected = _logps(policy, batch)
    save_pretrained(policy, tok, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64)
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(_logps(loaded, batch), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(_logps(policy, batch), expected, rtol=0, atol=0)  # unmerged
    # saved for generation; the training model's own config keeps use_cache off
    assert loaded.config.use_cache and not policy.get_base_model().config.use_cache
