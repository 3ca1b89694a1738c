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
    PairLogps,
    TokenLogprobs,
    forward_logprobs,
    forward_packed_logprobs,
    gather_logprobs,
    pair_logps,
    position_ids_from_mask,
)

__all__ = [
    "KNOWN",
    "PairLogps",
    "TokenLogprobs",
    "check_model_name",
    "forward_logprobs",
    "forward_packed_logprobs",
    "gather_logprobs",
    "load_model",
    "load_policy",
    "load_tokenizer",
    "pair_logps",
    "position_ids_from_mask",
    "save_pretrained",
    "torch_dtype",
]
