"""LoRA adapters compute in their input's dtype (posttrain.models.lora.InputDtypeLinear): a float32
model exactly as peft does, a bfloat16 one in bfloat16 with float32 weights and gradients, as close
to the float64 answer as peft's float32 adapter products are."""

from __future__ import annotations

import pytest
import torch

import posttrain.models.lora as lora
from posttrain.config import LoraConfig
from posttrain.data import collate, encode_example
from posttrain.models import forward_logprobs, load_policy


def _model(dtype: str, fast: bool, monkeypatch, state=None, weights: str | None = None):
    """tiny-llama in ``dtype`` (its weights rounded to ``weights``' dtype first) with LoRA r 4
    (the adapters from ``state``, else random)."""
    monkeypatch.setattr(lora, "COMPUTE_IN_INPUT_DTYPE", fast)
    model, tok = load_policy("tiny-llama", dtype=weights or dtype)
    model = model.to(getattr(torch, dtype))
    model = lora.apply_lora(model, LoraConfig(enabled=True, r=4))
    if state is None:
        gen = torch.Generator().manual_seed(0)
        state = {
            n: torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.2
            for n, p in model.named_parameters()
            if p.requires_grad
        }
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
    return model, tok, state


def _loss_and_grads(model, tok):
    encs = [
        encode_example(tok, "The movie", " was great and long enough", 64),
        encode_example(tok, "A longer prompt here", " bad", 64),
    ]
    b = collate(encs, tok.pad_token_id, side="right")
    out = forward_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])
    loss = out.logps.sum()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if n in names])
    return out.logps.detach(), dict(zip(names, grads))


def test_float32_model_computes_exactly_as_peft(monkeypatch):
    model, tok, state = _model("float32", False, monkeypatch)
    ref_logps, ref_grads = _loss_and_grads(model, tok)
    model, tok, _ = _model("float32", True, monkeypatch, state)
    assert any(isinstance(m, lora.InputDtypeLinear) for m in model.modules())
    logps, grads = _loss_and_grads(model, tok)
    assert torch.equal(logps, ref_logps)
    for n, g in grads.items():
        assert torch.equal(g, ref_grads[n]), n


def test_bfloat16_model_computes_adapters_in_bfloat16_as_accurately_as_peft(monkeypatch):
    # the answer: the same bfloat16 weights and adapters, computed in float64
    exact_model, tok, state = _model("float64", True, monkeypatch, weights="bfloat16")
    exact_logps, exact_grads = _loss_and_grads(exact_model, tok)

    peft_model, _, _ = _model("bfloat16", False, monkeypatch, state)
    peft_logps, peft_grads = _loss_and_grads(peft_model, tok)

    model, _, _ = _model("bfloat16", True, monkeypatch, state)
    seen = []
    a = next(m for m in model.modules() if isinstance(m, lora.InputDtypeLinear))
    a.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    logps, grads = _loss_and_grads(model, tok)
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen)  # no float32 product
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(g.dtype == torch.float32 for g in grads.values())

    def rel_err(got, want):
        return float((got.double() - want).norm() / want.norm())

    # bfloat16 rounding either way: within a few percent of float64, and not worse than peft's
    peft_err, err = rel_err(peft_logps, exact_logps), rel_err(logps, exact_logps)
    assert err < 0.05 and err <= 2 * peft_err + 1e-3, (err, peft_err)
    # the gradients: bfloat16 backward passes are ~5-15% off per tensor either way; all together
    flat = {
        k: torch.cat([g.flatten() for g in d.values()])
        for k, d in (("exact", exact_grads), ("peft", peft_grads), ("ours", grads))
    }
    peft_err, err = rel_err(flat["peft"], flat["exact"]), rel_err(flat["ours"], flat["exact"])
    print(f"gradients: peft {peft_err:.2e}, ours {err:.2e}")
    assert err < 0.1 and err <= 1.5 * peft_err, (err, peft_err)


@pytest.mark.parametrize("fast", [True, False])
def test_flag_off_leaves_peft_layers_alone(fast, monkeypatch):
    model, _, _ = _model("bfloat16", fast, monkeypatch)
    patched = [m for m in model.modules() if isinstance(m, lora.InputDtypeLinear)]
    assert bool(patched) == fast
