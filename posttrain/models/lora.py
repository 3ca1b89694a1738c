"""LoRA adapters through peft; with them the reference model is the policy with adapters off."""

from __future__ import annotations

import contextlib

import torch


def apply_lora(model, lora):
    """Wrap ``model`` with LoRA adapters when ``lora.enabled`` (a LoraConfig section); else
    return it as is."""
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in names]
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return compute_in_input_dtype(get_peft_model(model, config))


class InputDtypeLinear(torch.nn.Linear):
    """A LoRA ``A`` or ``B`` matrix that computes in its input's dtype: in a bfloat16 model the
    (tokens x r) and (tokens x out) products are bfloat16, with the weight cast on the way in;
    the weight stays float32 and its gradient arrives in float32 through the cast (mixed
    precision, as ``torch.autocast`` does). peft otherwise casts each adapted layer's input to
    float32 and adds a float32 (tokens x out) product to the bfloat16 output: on SmolLM2 that
    was ~10% of a LoRA training step (``benchmarks/bench_ppo_smollm2.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        return torch.nn.functional.linear(x, weight, bias)


COMPUTE_IN_INPUT_DTYPE = True
"""Off: peft's own float32 adapter products (``benchmarks/bench_ppo_smollm2.py``'s old path)."""


def compute_in_input_dtype(model):
    """Make every LoRA layer of the peft ``model`` keep its input's dtype (no cast to the
    adapter's float32) and its ``A`` / ``B`` matrices compute in it (:class:`InputDtypeLinear`).
    A float32 model computes exactly as before. Returns ``model``."""
    if not COMPUTE_IN_INPUT_DTYPE:
        return model
    from peft.tuners.lora.layer import LoraLayer

    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        module.cast_input_dtype_enabled = False  # peft >= 0.15; older peft casts (still right)
        for layers in (module.lora_A, module.lora_B):
            for linear in layers.values():
                if type(linear) is torch.nn.Linear:
                    linear.__class__ = InputDtypeLinear
    return model


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter")


def lora_scalings(model) -> dict[str, float]:
    """Name of every module with an adapter -> its active adapter's scale (alpha / r)."""
    adapter = model.active_adapter
    return {
        name: module.scaling[adapter]
        for name, module in model.named_modules()
        if isinstance(getattr(module, "scaling", None), dict) and adapter in module.scaling
    }


def merge_lora_state(state: dict, scalings: dict[str, float], adapter: str = "default") -> dict:
    """A peft LoRA model's whole state dict as the plain model's: each adapted module's weight
    ``W + (B @ A) * scale`` (``B`` its ``lora_B``, ``A`` its ``lora_A``), the adapter tensors
    dropped, peft's names undone (``base_model.model.`` prefix, ``.base_layer.``). A pure function
    of the tensors: the model's own weights are not touched, so unlike peft's merge-then-unmerge
    no rounding is left behind in them."""
    merged = {}
    for name, value in state.items():
        if ".lora_" in name or "modules_to_save" in name:
            continue
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module.endswith(".base_layer"):
            owner = module.removesuffix(".base_layer")
            if owner in scalings:
                a = state[f"{owner}.lora_A.{adapter}.weight"]
                b = state[f"{owner}.lora_B.{adapter}.weight"]
                dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
                delta = (b.to(dtype) @ a.to(dtype)) * scalings[owner]  # at least float32
                value = value + delta.to(value.dtype)
        merged[plain_name(name)] = value
    return merged


def plain_state_dict(model, state: dict | None = None) -> dict:
    """``state`` (default: ``model``'s own) as the plain model's: a LoRA model's adapters merged
    (:func:`merge_lora_state`), any other model's as is."""
    state = model.state_dict() if state is None else state
    if not is_lora(model):
        return state
    return merge_lora_state(state, lora_scalings(model), model.active_adapter)


def plain_name(name: str) -> str:
    """A peft LoRA model's name of a tensor as the plain model names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@contextlib.contextmanager
def adapters_disabled(model):
    """Inside this block a peft model computes with its base weights (the reference policy)."""
    if is_lora(model):
        with model.disable_adapter():
            yield model
    else:
        yield model
