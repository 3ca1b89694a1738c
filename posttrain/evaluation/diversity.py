"""Length and diversity of a set of responses: signs of length bias and mode collapse.

Responses are compared as lists of tokens; :func:`diversity` splits text on whitespace ("words"),
so the numbers do not depend on a model's tokenizer and two models with different tokenizers are
comparable.

- ``distinct_n``: corpus-level distinct-n (Li et al. 2016, "A Diversity-Promoting Objective
  Function for Neural Conversation Models"): unique n-grams over all responses / total n-grams.
- ``unigram_entropy``: entropy (nats) of the empirical distribution of tokens over all responses.
  A policy that collapses onto a few phrases has low distinct-n and low entropy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(responses: Sequence[Sequence[Hashable]], n: int) -> float:
    """Unique n-grams / total n-grams over all responses (0 when there are no n-grams)."""
    all_grams = [g for r in responses for g in ngrams(r, n)]
    return len(set(all_grams)) / len(all_grams) if all_grams else 0.0


def unigram_entropy(responses: Sequence[Sequence[Hashable]]) -> float:
    """Entropy in nats of the token frequencies pooled over all responses."""
    counts = Counter(t for r in responses for t in r)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values())


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """``length_mean`` / ``length_std`` (words), ``distinct_1``, ``distinct_2``, ``unigram_entropy``."""
    words = [t.split() for t in texts]
    lengths = [len(w) for w in words]
    n = max(len(lengths), 1)
    mean = sum(lengths) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in lengths) / n)
    return {
        "length_mean": mean,
        "length_std": std,
        "distinct_1": distinct_n(words, 1),
        "distinct_2": distinct_n(words, 2),
        "unigram_entropy": unigram_entropy(words),
    }
