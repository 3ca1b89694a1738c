"""Annotation quality: agreement with gold items and between annotators (pure functions).

A ranking of K completions is compared pair by pair: for every pair of completions (i, j), i < j,
its relation is ``">"`` (i preferred), ``"<"`` (j preferred) or ``"="`` (tie). A two-completion vote
is one such pair, so A / B / tie votes and full rankings are measured the same way.

- Gold agreement of one vote = share of pairs whose relation matches the gold ranking (0 or 1 for a
  two-completion item). Per annotator: the mean over the gold items they answered. The InstructGPT
  labeller screening used a soft cutoff of 75% agreement with researcher labels; the dashboard flags
  annotators below ``GOLD_THRESHOLD``.
- Inter-annotator agreement is measured on non-gold items that two or more annotators answered;
  each (task, pair) is one item whose category is the relation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import combinations

from posttrain.data.pairs import letter_index, parse_ranking

GOLD_THRESHOLD = 0.75


def pair_relations(ranking: str) -> dict[tuple[int, int], str]:
    """``"B > A = C"`` -> ``{(0, 1): "<", (0, 2): "=", (1, 2): ">"}`` (completion indices, i < j)."""
    tier_of = {
        letter_index(name): depth
        for depth, tier in enumerate(parse_ranking(ranking))
        for name in tier
    }
    relations = {}
    for i, j in combinations(sorted(tier_of), 2):
        a, b = tier_of[i], tier_of[j]  # smaller depth = better
        relations[(i, j)] = ">" if a < b else "<" if a > b else "="
    return relations


def gold_agreement(ranking: str, gold: str) -> float:
    """Share of completion pairs on which ``ranking`` and ``gold`` have the same relation."""
    mine, theirs = pair_relations(ranking), pair_relations(gold)
    if mine.keys() != theirs.keys():
        raise ValueError(f"rankings {ranking!r} and {gold!r} order different completions")
    return sum(mine[key] == theirs[key] for key in theirs) / len(theirs)


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa (Cohen 1960) of two raters over the same items, in the same order.

    kappa = (p_o - p_e) / (1 - p_e), p_o = share of items with equal labels,
    p_e = sum_k (share of a's labels that are k) * (share of b's labels that are k).
    ``None`` when undefined: no items, or p_e = 1 (both raters always used the same one label).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError("both raters must label the same items")
    n = len(labels_a)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(items: Sequence[Counter | dict]) -> float | None:
    """Fleiss' kappa (Fleiss 1971) for items each holding {category: number of raters}.

    P_i = (sum_k n_ik^2 - n_i) / (n_i (n_i - 1)), P_bar = mean_i P_i,
    p_k = sum_i n_ik / sum_i n_i, P_e = sum_k p_k^2, kappa = (P_bar - P_e) / (1 - P_e).
    Deviation: Fleiss assumes the same number of raters n on every item; here n_i may vary per
    item (items with fewer than 2 raters are dropped). With a constant n this is exactly Fleiss.
    ``None`` when no item has 2 raters or P_e = 1.
    """
    usable = [Counter(item) for item in items if sum(item.values()) >= 2]
    if not usable:
        return None
    p_items = []
    totals: Counter = Counter()
    for item in usable:
        n_i = sum(item.values())
        p_items.append((sum(c * c for c in item.values()) - n_i) / (n_i * (n_i - 1)))
        totals.update(item)
    grand = sum(totals.values())
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((c / grand) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def agreement_items(votes: Sequence[tuple[Hashable, str, str]]) -> dict[tuple, dict[str, str]]:
    """Votes ``(task, annotator, ranking)`` -> ``{(task, i, j): {annotator: relation}}``,
    keeping only items that two or more annotators labelled."""
    items: dict[tuple, dict[str, str]] = {}
    for task, annotator, ranking in votes:
        for (i, j), relation in pair_relations(ranking).items():
            items.setdefault((task, i, j), {})[annotator] = relation
    return {key: labels for key, labels in items.items() if len(labels) >= 2}


def inter_annotator(votes: Sequence[tuple[Hashable, str, str]]) -> dict:
    """Fleiss' kappa over all overlapping items, and Cohen's kappa for each pair of annotators.

    Returns ``{"items": n, "fleiss_kappa": k, "observed_agreement": share of rater pairs agreeing,
    "pairs": [{"a", "b", "items", "cohen_kappa", "observed_agreement"}, ...]}``.
    """
    items = agreement_items(votes)
    fleiss = fleiss_kappa([Counter(labels.values()) for labels in items.values()])
    agree = total = 0
    shared: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for labels in items.values():
        for a, b in combinations(sorted(labels), 2):
            shared.setdefault((a, b), []).append((labels[a], labels[b]))
            agree += labels[a] == labels[b]
            total += 1
    pairs = []
    for (a, b), labelled in sorted(shared.items()):
        la, lb = [x for x, _ in labelled], [y for _, y in labelled]
        pairs.append(
            {
                "a": a,
                "b": b,
                "items": len(labelled),
                "cohen_kappa": cohen_kappa(la, lb),
                "observed_agreement": sum(x == y for x, y in labelled) / len(labelled),
            }
        )
    return {
        "items": len(items),
        "fleiss_kappa": fleiss,
        "observed_agreement": agree / total if total else None,
        "pairs": pairs,
    }


# ---------------------------------------------------------------------------------------------
# the admin's quality view: disagreement per task, habits per annotator


def disagreement(rankings: Sequence[str]) -> float:
    """How much the votes on one task disagree: the mean over completion pairs of
    1 - (share of votes holding the most common relation on that pair). 0 when all votes agree;
    two votes that differ on every pair give 0.5; ``n`` votes split evenly over 3 relations give 2/3.
    """
    if len(rankings) < 2:
        return 0.0
    tallies: dict[tuple[int, int], Counter] = {}
    for ranking in rankings:
        for key, relation in pair_relations(ranking).items():
            tallies.setdefault(key, Counter())[relation] += 1
    shares = [1 - max(t.values()) / sum(t.values()) for t in tallies.values()]
    return sum(shares) / len(shares)


def median(values: Sequence[float]) -> float | None:
    """The middle value (the mean of the two middle ones for an even count); None when empty."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    return float(ordered[n // 2]) if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def annotator_habits(votes: Sequence[dict]) -> dict:
    """Habits of one annotator from their votes, each ``{"kind", "shown_ranking", "confidence",
    "elapsed_ms"}`` (``shown_ranking`` in the letters the annotator saw).

    - ``position_a_rate``: of their A / B choices that were not ties, the share that chose the
      response shown first. Display order is shuffled per annotator, so a careful annotator sits
      near 0.5; far from it is a position bias. None without such votes.
    - ``tie_rate``: share of all the response pairs they compared that they called a tie.
    - ``confidence``: how many A / B choices had confidence 1, 2, 3.
    - ``median_ms``: median time per task (``elapsed_ms``; revisions add up), None if unrecorded.
    """
    first = strict = ties = pairs = 0
    confidence = {1: 0, 2: 0, 3: 0}
    for vote in votes:
        relations = pair_relations(vote["shown_ranking"])
        ties += sum(r == "=" for r in relations.values())
        pairs += len(relations)
        if vote["kind"] == "choice" and relations[(0, 1)] != "=":
            strict += 1
            first += relations[(0, 1)] == ">"
        if vote["kind"] == "choice" and vote.get("confidence") in confidence:
            confidence[vote["confidence"]] += 1
    times = [v["elapsed_ms"] for v in votes if v.get("elapsed_ms") is not None]
    return {
        "votes": len(votes),
        "position_a_rate": first / strict if strict else None,
        "tie_rate": ties / pairs if pairs else None,
        "confidence": confidence,
        "median_ms": median(times),
    }
