"""Rollouts: batched sampling with a KV cache, the Rollout record, the generation-backend
interface, and (``posttrain.rollout.online``) collect: K scored samples per prompt with the
policy's and reference's log-probs (``Experience``)."""

from posttrain.rollout.generate import (
    EngineBackend,
    GenerationBackend,
    Rollout,
    SamplingParams,
    decode_responses,
    filter_logits,
    generate,
)

__all__ = [
    "EngineBackend",
    "GenerationBackend",
    "Rollout",
    "SamplingParams",
    "decode_responses",
    "filter_logits",
    "generate",
]
