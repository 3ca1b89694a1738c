"""Models: loading by name without a network, the one log-prob function, saving."""

from posttrain.models.load import (
    KNOWN,
    check_model_name,
    load_model,
    load_policy,
    load_tokenizer,
    save_pretrained,
    torch_dtype,
)
from posttrain.models.logprobs import (
    TokenLogprobs,
    entropy_of_logits,
    forward_logprobs,
    forward_packed_logprobs,
    gather_logprobs,
    position_ids_from_mask,
)

__all__ = [
    "KNOWN",
    "TokenLogprobs",
    "check_model_name",
    "entropy_of_logits",
    "forward_logprobs",
    "forward_packed_logprobs",
    "gather_logprobs",
    "load_model",
    "load_policy",
    "load_tokenizer",
    "position_ids_from_mask",
    "save_pretrained",
    "torch_dtype",
]
