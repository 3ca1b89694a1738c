"""Data: formats and validation, chat templates with response-only masks, batching."""

from posttrain.data.chat import Encoded, encode_example, encode_prompt, encode_response
from posttrain.data.collate import collate, pad
from posttrain.data.formats import (
    TIES,
    Example,
    detect_kind,
    load_examples,
    split_ties,
    strength,
    to_preference_pairs,
)
from posttrain.data.io import Record, read_records, write_jsonl
from posttrain.data.pairs import (
    fit_bradley_terry,
    parse_ranking,
    ranking_to_pairs,
    scored_to_pairs,
    wins_to_probabilities,
)

__all__ = [
    "TIES",
    "Encoded",
    "Example",
    "Record",
    "collate",
    "detect_kind",
    "encode_example",
    "encode_prompt",
    "encode_response",
    "fit_bradley_terry",
    "load_examples",
    "pad",
    "parse_ranking",
    "ranking_to_pairs",
    "read_records",
    "scored_to_pairs",
    "split_ties",
    "strength",
    "to_preference_pairs",
    "wins_to_probabilities",
    "write_jsonl",
]
