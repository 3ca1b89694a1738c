"""Distinct-n, unigram entropy, ECE and multiple-choice scoring, worked by hand."""

import math

import pytest
import torch

from posttrain.evaluation.capability import (
    ChoiceItem,
    choice_logprobs,
    cloze_items,
    expected_calibration_error,
    heldout_nll,
    multiple_choice,
)
from posttrain.evaluation.diversity import distinct_n, diversity, unigram_entropy


def test_distinct_n_by_hand():
    """["a b a", "a c"]: unigrams a b a a c -> 3 unique / 5 = 0.6;
    bigrams (a b) (b a) (a c) -> 3 / 3 = 1.0; trigrams (a b a) only -> 1.0."""
    words = [["a", "b", "a"], ["a", "c"]]
    assert distinct_n(words, 1) == pytest.approx(0.6)
    assert distinct_n(words, 2) == pytest.approx(1.0)
    assert distinct_n(words, 3) == pytest.approx(1.0)
    assert distinct_n([["a", "a", "a", "a"]], 2) == pytest.approx(1 / 3)  # (a a) x3
    assert distinct_n([[]], 1) == 0.0


def test_unigram_entropy_by_hand():
    """Counts a:3 b:1 c:1 -> H = -(0.6 ln 0.6 + 2 * 0.2 ln 0.2) = 0.950271 nats."""
    h = unigram_entropy([["a", "b", "a"], ["a", "c"]])
    assert h == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.2)), abs=1e-12)
    assert h == pytest.approx(0.950271, abs=1e-6)
    assert unigram_entropy([["x", "x"]]) == 0.0


def test_diversity_of_texts():
    d = diversity(["a b a", "a c"])
    assert d["length_mean"] == 2.5 and d["length_std"] == 0.5
    assert d["distinct_1"] == pytest.approx(0.6) and d["distinct_2"] == pytest.approx(1.0)
    collapsed = diversity(["great film"] * 10)
    assert collapsed["distinct_1"] == pytest.approx(0.1) and collapsed[
        "unigram_entropy"
    ] == pytest.approx(math.log(2))


def test_ece_by_hand():
    """conf [0.9, 0.9, 0.6, 0.6], correct [T, F, T, T]: bin 0.9 has acc 0.5 -> |0.5 - 0.9| * 2/4
    = 0.2; bin 0.6 has acc 1.0 -> |1 - 0.6| * 2/4 = 0.2; ECE = 0.4. A perfectly calibrated set
    (conf 0.75, 3 of 4 right) has ECE 0."""
    assert expected_calibration_error(
        [0.9, 0.9, 0.6, 0.6], [True, False, True, True]
    ) == pytest.approx(0.4)
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0], [True]) == pytest.approx(
        0.0
    )  # 1.0 goes in the last bin


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models.tiny import build_tiny_llama, build_tokenizer

    tok = build_tokenizer()
    return build_tiny_llama(tok, dtype=torch.float64), tok


def test_choice_logprobs_match_a_manual_forward(tiny):
    model, tok = tiny
    item = ChoiceItem("The film was", [" good", " bad movie"], 0)
    scores = choice_logprobs(model, tok, [item])[0]
    prompt = tok("The film was", add_special_tokens=False)["input_ids"]
    for choice, score in zip(item.choices, scores):
        cont = tok(choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        manual = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))
        assert score == pytest.approx(manual, abs=1e-9)


def test_multiple_choice_accuracy_and_confidence(tiny):
    """Two items whose answers are the model's own preferred choice and its dispreferred one:
    accuracy 1/2, and confidence is the softmax of the choice scores."""
    model, tok = tiny
    base = ChoiceItem("The film was", [" good", " bad"], 0)
    s = choice_logprobs(model, tok, [base])[0]
    best = int(s[1] > s[0])
    items = [
        ChoiceItem(base.prompt, base.choices, best),
        ChoiceItem(base.prompt, base.choices, 1 - best),
    ]
    res = multiple_choice(model, tok, items)
    conf = float(torch.softmax(torch.tensor(s, dtype=torch.float64), 0).max())
    assert res.accuracy == 0.5 and res.confidence == pytest.approx(conf)
    assert res.ece == pytest.approx(abs(0.5 - conf))


def test_heldout_nll_is_mean_token_nll(tiny):
    model, tok = tiny
    nll = heldout_nll(model, tok, [{"prompt": "The film", "completion": " was good"}])
    assert 0 < nll < 2 * math.log(len(tok))


def test_cloze_items_are_well_formed():
    texts = ["the film was really good and fun", "the plot was dull and slow to the end"]
    items = cloze_items(texts, 50, seed=0)
    assert len(items) == 50
    for it in items:
        assert len(it.choices) == 2 and it.choices[0] != it.choices[1]
        truth = it.choices[it.answer].strip()
        assert any((it.prompt + " " + truth) in t for t in texts)
    assert {it.answer for it in items} == {0, 1}
    assert [i.prompt for i in cloze_items(texts, 5, seed=1)] == [
        i.prompt for i in cloze_items(texts, 5, seed=1)
    ]
