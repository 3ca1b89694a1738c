"""Reward-model formulas worked by hand: the centering term, RewardBench-style metrics (subsets,
sections, calibration, length bias) and Bradley–Terry scores from win counts."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.data.formats import Example
from posttrain.evaluation.reward_model import (
    bradley_terry_probability,
    evaluate_reward_model,
    fit_bradley_terry,
    pair_metrics,
)
from posttrain.losses import reward_centering_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_reward_centering_term_by_hand():
    # (r_c + r_r)^2: (1 + 0.5)^2 = 2.25, (-2 + 1)^2 = 1, (3 - 3)^2 = 0
    rc = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    rr = torch.tensor([0.5, 1.0, -3.0], dtype=torch.float64)
    out = reward_centering_loss(rc, rr)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([2.25, 1.0, 0.0], dtype=torch.float64))


# Four pairs, worked by hand:
#   r_c = [2, 0, 1, 3], r_r = [0, 1, 1, 1] -> wins [1, 0, 1/2 (tie), 1]; accuracy 2.5 / 4
#   subsets [a, b, b, a]: a = (1 + 1) / 2 = 1, b = (0 + 0.5) / 2 = 0.25; section {a, b} = 0.625
#   confidence sigmoid(|r_c - r_r|) = [s(2), s(1), 0.5, s(2)], correct [1, 0, 0.5, 1]
#     bins: [0.8, 0.9) holds s(2) twice, all right -> |1 - s(2)|, weight 2/4
#           [0.7, 0.8) holds s(1), wrong -> |0 - s(1)|, weight 1/4; [0.5, 0.6): |0.5 - 0.5| = 0
#   lengths c [10, 9, 7, 2], r [4, 8, 7, 3]: pair 3 has equal lengths and is left out;
#     RM prefers the longer in pair 1 only (pair 2: longer chosen loses; pair 4: longer rejected
#     loses) -> 1/3; the data's chosen is longer in pairs 1, 2 -> 2/3
#   Pearson(rewards [2,0,1,3,0,1,1,1], lengths [10,9,7,2,4,8,7,3]): means 1.125, 6.25;
#     Sxy = -5.25, Sxx = 6.875, Syy = 59.5
RC = [2.0, 0.0, 1.0, 3.0]
RR = [0.0, 1.0, 1.0, 1.0]
LEN_C, LEN_R = [10, 9, 7, 2], [4, 8, 7, 3]
SUBSETS = ["a", "b", "b", "a"]


def test_pair_metrics_by_hand():
    m = pair_metrics(
        torch.tensor(RC, dtype=torch.float64),
        torch.tensor(RR, dtype=torch.float64),
        torch.tensor(LEN_C),
        torch.tensor(LEN_R),
        SUBSETS,
        {"both": ["a", "b", "not-in-data"], "just_a": ["a"], "none": ["zzz"]},
    )
    assert m["pairs"] == 4
    assert m["accuracy"] == pytest.approx(0.625, abs=1e-12)
    assert m["accuracy/a"] == pytest.approx(1.0) and m["accuracy/b"] == pytest.approx(0.25)
    assert m["section/both"] == pytest.approx(0.625) and m["section/just_a"] == pytest.approx(1.0)
    assert "section/none" not in m  # a section with no subset in the data has no score
    assert m["ece"] == pytest.approx(0.5 * (1 - sigmoid(2)) + 0.25 * sigmoid(1), abs=1e-12)
    assert m["mean_confidence"] == pytest.approx((2 * sigmoid(2) + sigmoid(1) + 0.5) / 4)
    assert m["length_bias/rm_prefers_longer"] == pytest.approx(1 / 3)
    assert m["length_bias/data_chosen_longer"] == pytest.approx(2 / 3)
    assert m["length_bias/reward_length_corr"] == pytest.approx(
        -5.25 / math.sqrt(6.875 * 59.5), abs=1e-12
    )


def test_a_calibrated_rm_has_zero_ece():
    # every pair at margin log(3): P = 0.75, and the RM is right on 3 of 4 -> calibrated
    d = math.log(3)
    rc = torch.tensor([d, d, d, 0.0], dtype=torch.float64)
    rr = torch.tensor([0.0, 0.0, 0.0, d], dtype=torch.float64)
    lens = torch.tensor([1, 1, 1, 1])
    m = pair_metrics(rc, rr, lens, lens)
    assert m["accuracy"] == pytest.approx(0.75) and m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert "length_bias/rm_prefers_longer" not in m  # no pair differs in length


class ByTable:
    """A stand-in reward source: fixed rewards per completion text."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def score(self, prompts, completions):
        return [self.table[c] for c in completions]


def _examples():
    """The four pairs above as texts whose lengths are LEN_C / LEN_R."""
    chosen, rejected = ["c" * n for n in LEN_C], ["r" * n for n in LEN_R]
    table = dict(zip(chosen, RC)) | dict(zip(rejected, RR))
    exs = [
        Example("preference", f"t:{i}", "p", chosen=c, rejected=r, subset=s)
        for i, (c, r, s) in enumerate(zip(chosen, rejected, SUBSETS))
    ]
    return exs, table


def test_evaluate_reward_model_on_examples_or_a_file_matches_the_hand_numbers(jsonl):
    exs, table = _examples()
    by_hand = pair_metrics(
        torch.tensor(RC, dtype=torch.float64),
        torch.tensor(RR, dtype=torch.float64),
        torch.tensor(LEN_C),
        torch.tensor(LEN_R),
        SUBSETS,
        {"both": ["a", "b"]},
    )
    got = evaluate_reward_model(ByTable(table), exs, sections={"both": ["a", "b"]})
    assert got == pytest.approx(by_hand)
    path = jsonl(
        "bench.jsonl",
        [
            {"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected, "subset": e.subset}
            for e in exs
        ],
    )
    assert evaluate_reward_model(ByTable(table), path, sections={"both": ["a", "b"]}) == got


def test_bradley_terry_from_win_counts_by_hand():
    # two players, 7 wins of 10: P(A beats B) = sigmoid(s_A - s_B) = 0.7 -> s_A - s_B = log(7/3)
    s = fit_bradley_terry({("A", "B"): 7, ("B", "A"): 3})
    assert s["A"] - s["B"] == pytest.approx(math.log(7 / 3), abs=1e-9)
    assert s["A"] + s["B"] == pytest.approx(0.0, abs=1e-12)  # scores have mean 0
    assert bradley_terry_probability(s, "A", "B") == pytest.approx(0.7, abs=1e-9)
    # a table generated from strengths 4 : 2 : 1 (1000 games per pair) gives them back
    p = {"A": 4.0, "B": 2.0, "C": 1.0}
    wins = {(a, b): 1000 * p[a] / (p[a] + p[b]) for a in p for b in p if a != b}
    s = fit_bradley_terry(wins)
    assert s["A"] - s["B"] == pytest.approx(math.log(2), abs=1e-8)
    assert s["B"] - s["C"] == pytest.approx(math.log(2), abs=1e-8)


def test_bradley_terry_on_a_chain_without_a_direct_game():
    # A-B: 2 of 3 to A; B-C: 2 of 3 to B; A and C never meet. The log-likelihood
    # 2 log s(a-b) + log s(b-a) + 2 log s(b-c) + log s(c-b) splits into d1 = a-b and d2 = b-c,
    # each maximised at sigmoid(d) = 2/3 -> d = log 2; so s_A - s_C = 2 log 2 (P = 0.8)
    s = fit_bradley_terry({("A", "B"): 2, ("B", "A"): 1, ("B", "C"): 2, ("C", "B"): 1})
    assert s["A"] - s["B"] == pytest.approx(math.log(2), abs=1e-8)
    assert s["B"] - s["C"] == pytest.approx(math.log(2), abs=1e-8)
    assert bradley_terry_probability(s, "A", "C") == pytest.approx(0.8, abs=1e-8)


@pytest.mark.parametrize(
    "wins, message",
    [
        ({("A", "B"): 3, ("B", "A"): 0}, "B never"),  # B never wins: s_B = -infinity
        ({("A", "B"): 1, ("B", "A"): 1, ("C", "D"): 1, ("D", "C"): 1}, "never"),  # two islands
        ({("A", "B"): 1, ("B", "A"): 1, ("C", "A"): 1, ("C", "B"): 2}, "never"),  # C never loses
        ({("A", "A"): 1}, "players must differ"),
    ],
)
def test_bradley_terry_refuses_tables_without_finite_scores(wins, message):
    with pytest.raises(ValueError, match=message):
        fit_bradley_terry(wins)
