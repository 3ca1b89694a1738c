"""Preference strength (p_chosen, votes, ties, win matrices) and data as the hub publishes it
(HH-RLHF and TRL implicit prompts, UltraFeedback ratings, Parquet shards, datasets dirs)."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.cli import main
from posttrain.data import (
    load_examples,
    split_ties,
    strength,
    to_preference_pairs,
    wins_to_probabilities,
)
from posttrain.errors import UserError

PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load_pairs(path):
    return to_preference_pairs(load_examples(path, ["preference", "ranked", "scored"]))


def test_strength_from_p_chosen_votes_and_tie(tmp_path):
    rows = [
        PAIR,  # no strength: certain
        {**PAIR, "p_chosen": 0.7},
        {**PAIR, "chosen_votes": 7, "rejected_votes": 3},
        {**PAIR, "tie": True},
        {**PAIR, "p_chosen": 0.5, "tie": False},  # p = 0.5 is a tie whatever the flag says
        {**PAIR, "p_chosen": 0.2},  # the rejected side is preferred: turned round, p = 0.8
        {**PAIR, "p_chosen": 0.9, "tie": False, "annotator": "ann1", "elapsed_ms": 5300},
    ]
    exs = load_pairs(write(tmp_path / "d.jsonl", rows))
    assert [strength(ex) for ex in exs] == pytest.approx([1.0, 0.7, 0.7, 0.5, 0.5, 0.8, 0.9])
    assert [ex.tie for ex in exs] == [False, False, False, True, True, False, False]
    assert (exs[5].chosen, exs[5].rejected) == ("Go away.", "Hi!")
    assert exs[6].extra == {"annotator": "ann1", "elapsed_ms": 5300}
    kept, n_ties = split_ties(exs)
    assert n_ties == 2 and len(kept) == 5 and not any(ex.tie for ex in kept)
    kept, n_ties = split_ties(exs, "soft")
    assert n_ties == 2 and len(kept) == 7


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"p_chosen": 1.5}, '"p_chosen" must be in [0, 1]'),
        ({"p_chosen": "high"}, '"p_chosen" must be a number'),
        ({"chosen_votes": 3}, "go together"),
        ({"chosen_votes": 0, "rejected_votes": 0}, "not both 0"),
        ({"chosen_votes": -1, "rejected_votes": 2}, "must be >= 0"),
        ({"p_chosen": 0.9, "chosen_votes": 1, "rejected_votes": 1}, "disagrees with the votes"),
        ({"tie": True, "p_chosen": 0.8}, "a tie is 0.5"),
        ({"tie": "yes"}, '"tie" must be true or false'),
    ],
)
def test_bad_strength_is_a_file_line_error(tmp_path, extra, message):
    path = write(tmp_path / "d.jsonl", [PAIR, {**PAIR, **extra}])
    with pytest.raises(UserError, match=r"d\.jsonl:2: ") as err:
        load_pairs(path)
    assert message in str(err.value)


def test_bad_strength_through_the_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path / "d.jsonl", [PAIR, {**PAIR, "p_chosen": 1.5}])
    out = tmp_path / "out"
    for recipe in ("rm", "dpo"):
        code = main(
            [recipe, "--model", "tiny-llama", "--train_data", path, "--output_dir", str(out)]
            + ([] if recipe == "rm" else ["--beta", "0.1"])
        )
        assert code == 2
        assert 'd.jsonl:2: "p_chosen" must be in [0, 1]' in capsys.readouterr().err
        assert not out.exists()


def test_wins_matrix_gives_bradley_terry_probabilities():
    # two completions, 7 wins to 3: P = 0.7
    assert wins_to_probabilities([[0, 7], [3, 0]]) == [(0, 1, pytest.approx(0.7, abs=1e-9))]
    # A beats B 2:1, B beats C 2:1, A and C never met: s_A - s_B = s_B - s_C = log 2, so
    # P(A > C) = 4 / 5 (Hunter's MM fit of the same table as the existing RM-eval test)
    probs = {(i, j): p for i, j, p in wins_to_probabilities([[0, 2, 0], [1, 0, 2], [0, 1, 0]])}
    assert probs[(0, 1)] == pytest.approx(2 / 3, abs=1e-8)
    assert probs[(1, 2)] == pytest.approx(2 / 3, abs=1e-8)
    assert probs[(0, 2)] == pytest.approx(0.8, abs=1e-8)


def test_ranked_wins_records_become_soft_pairs(tmp_path):
    rows = [
        {"prompt": "p", "completions": ["a", "b"], "wins": [[0, 3], [7, 0]]},
        {"prompt": "q", "completions": ["x", "y"], "wins": [[0, 2], [2, 0]]},  # a tie
        {"prompt": "r", "completions": ["u", "v"], "ranking": "B > A"},  # rankings still work
    ]
    exs = load_pairs(write(tmp_path / "w.jsonl", rows))
    assert [(ex.chosen, ex.rejected) for ex in exs] == [("b", "a"), ("x", "y"), ("v", "u")]
    assert [strength(ex) for ex in exs] == pytest.approx([0.7, 0.5, 1.0])
    assert [ex.tie for ex in exs] == [False, True, False]


@pytest.mark.parametrize(
    "wins, message",
    [
        ([[0, 1]], "must be a 2 x 2 matrix"),
        ([[0, -1], [1, 0]], '"wins"[0][1] must be a count >= 0'),
        ([[0, 3], [0, 0]], "no finite Bradley-Terry scores"),  # B never wins
    ],
)
def test_bad_wins_are_file_line_errors(tmp_path, wins, message):
    good = {"prompt": "p", "completions": ["a", "b"], "wins": [[0, 1], [1, 0]]}
    path = write(tmp_path / "w.jsonl", [good, {**good, "wins": wins}])
    with pytest.raises(UserError, match=r"w\.jsonl:2: ") as err:
        load_pairs(path)
    assert message in str(err.value)


# --- data as the hub publishes it ----------------------------------------------------------

HH = {
    "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5.\n\nHuman: Really?"
    "\n\nAssistant: Sorry, it is 4.",
    "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5.\n\nHuman: Really?"
    "\n\nAssistant: Yes, 5.",
}


def test_hh_rlhf_implicit_prompt_records(tmp_path):
    exs = load_pairs(write(tmp_path / "hh.jsonl", [HH]))
    (ex,) = exs
    assert ex.prompt == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "Really?"},
    ]
    assert (ex.chosen, ex.rejected) == ("Sorry, it is 4.", "Yes, 5.")


def test_trl_implicit_prompt_conversational_records(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Hello."}],
        "rejected": [*turns, {"role": "assistant", "content": "What do you want"}],
    }
    (ex,) = load_pairs(write(tmp_path / "trl.jsonl", [row]))
    assert ex.prompt == turns
    assert (ex.chosen, ex.rejected) == ("Hello.", "What do you want")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": "just text", "rejected": "more text"}, "is not an HH-RLHF transcript"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
            "share no first turn",
        ),
        (
            {"chosen": HH["chosen"] + "\n\nHuman: more?", "rejected": HH["rejected"]},
            'must end with an "Assistant:" turn',
        ),
        ({"chosen": [{"role": "user", "content": "x"}], "rejected": "y"}, "both strings or both"),
        (
            {
                "chosen": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "more"},
                    {"role": "assistant", "content": "b"},
                ],
                "rejected": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "c"},
                ],
            },
            "followed by ONE assistant turn",
        ),
    ],
)
def test_bad_implicit_prompt_records_are_file_line_errors(tmp_path, bad, message):
    path = write(tmp_path / "hh.jsonl", [HH, bad])
    with pytest.raises(UserError, match=r"hh\.jsonl:2: ") as err:
        load_pairs(path)
    assert message in str(err.value)


def ultrafeedback_row(ratings):
    return {
        "source": "evol_instruct",
        "instruction": "Name a prime.",
        "models": ["m1", "m2"],
        "completions": [
            {
                "model": f"m{i}",
                "response": text,
                "annotations": {
                    "helpfulness": {"Rating": h, "Rationale": "...", "Type": ["1"]},
                    "honesty": {"Rating": o, "Rationale": "..."},
                },
                "overall_score": overall,
                "fine-grained_score": 3.5,
                "critique": "...",
            }
            for i, (text, h, o, overall) in enumerate(ratings)
        ],
    }


def test_ultrafeedback_records_are_scored(tmp_path):
    row = ultrafeedback_row([("7", "5", "N/A", 8.0), ("9", "2", "4", 3.5)])
    (ex,) = load_examples(write(tmp_path / "uf.jsonl", [row]), ["scored"])
    assert ex.kind == "scored" and ex.prompt == "Name a prime." and ex.completions == ["7", "9"]
    assert ex.scores == [
        {"helpfulness": 5.0, "overall": 8.0},
        {"helpfulness": 2.0, "honesty": 4.0, "overall": 3.5},
    ]
    (pair,) = to_preference_pairs([ex], {"helpfulness": 1.0})
    assert (pair.chosen, pair.rejected) == ("7", "9")
    with pytest.raises(
        UserError, match=r"uf\.jsonl:1: completion 0 has no score for aspect 'honesty'"
    ):
        to_preference_pairs([ex], {"honesty": 1.0})


def test_bad_ultrafeedback_rating_is_a_file_line_error(tmp_path):
    good = ultrafeedback_row([("7", "5", "4", 8.0), ("9", "2", "4", 3.5)])
    bad = ultrafeedback_row([("7", "five", "4", 8.0), ("9", "2", "4", 3.5)])
    with pytest.raises(
        UserError, match=r'uf\.jsonl:2: "completions"\[0\]: rating of "helpfulness"'
    ):
        load_examples(write(tmp_path / "uf.jsonl", [good, bad]), ["scored"])


def test_parquet_shards_and_datasets_dirs(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**PAIR, "p_chosen": 0.6 + 0.1 * i} for i in range(3)]
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), hub / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), hub / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([PAIR] * 5), hub / "test-00000-of-00001.parquet")
    exs = load_pairs(str(tmp_path / "hub"))
    assert [strength(ex) for ex in exs] == pytest.approx([0.6, 0.7, 0.8])  # train split only
    assert exs[2].where.endswith("train-00001-of-00002.parquet:1")

    ds = datasets.Dataset.from_list([{**HH, "p_chosen": None}, {**HH, "p_chosen": 0.75}])
    ds.save_to_disk(str(tmp_path / "saved"))
    exs = load_pairs(str(tmp_path / "saved"))
    assert [strength(ex) for ex in exs] == [1.0, 0.75] and exs[1].chosen == "Sorry, it is 4."

    bad = [{**PAIR, "p_chosen": None}, {**PAIR, "p_chosen": 2.0}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"bad\.parquet:2: \"p_chosen\" must be in \[0, 1\]"):
        load_pairs(str(tmp_path / "bad.parquet"))


def test_an_export_may_mix_pairs_and_scored_ratings(tmp_path):
    rows = [
        {**PAIR, "p_chosen": 0.75, "annotator": "ann1"},
        {"prompt": "p", "completions": ["a", "b"], "scores": [{"overall": 4}, {"overall": 2}]},
    ]
    exs = load_examples(write(tmp_path / "mix.jsonl", rows), ["preference", "scored"])
    assert [ex.kind for ex in exs] == ["preference", "scored"]
    # a record of another kind than accepted is still reported as the first record's kind
    rows.append({"prompt": "p", "completions": ["a", "b"]})
    with pytest.raises(UserError, match=r'mix\.jsonl:3: "chosen" is missing'):
        load_examples(write(tmp_path / "mix.jsonl", rows), ["preference", "scored"])
    assert math.isclose(strength(exs[0]), 0.75)
