"""Data layer: kinds, record-by-record validation with file:line, pairs, templates and masks."""

from __future__ import annotations

import pytest

from posttrain.data import (
    collate,
    detect_kind,
    encode_example,
    encode_prompt,
    load_examples,
    ranking_to_pairs,
    scored_to_pairs,
    to_preference_pairs,
)
from posttrain.data.chat import join_truncated
from posttrain.data.collate import pack
from posttrain.errors import UserError
from posttrain.models import load_tokenizer


def test_ranking_to_pairs_matches_design_example():
    assert set(ranking_to_pairs("D > C > A = B")) == {
        ("D", "C"),
        ("D", "A"),
        ("D", "B"),
        ("C", "A"),
        ("C", "B"),
    }


@pytest.mark.parametrize(
    "ranking, expected",
    [
        ("A > B", 1),
        ("A = B", 0),  # a tie yields no pair
        ("A > B > C > D", 6),  # K(K-1)/2 for a full order
        ("A = B > C = D", 4),  # 2 * 2
        ("A > B = C = D > E", 1 * 3 + 1 * 1 + 3 * 1),  # sum_{i<j} n_i n_j
    ],
)
def test_ranking_pair_count_follows_the_formula(ranking, expected):
    assert len(ranking_to_pairs(ranking)) == expected


@pytest.mark.parametrize("bad", ["A > A", "A >> B", "a > b", "", "A > 1"])
def test_malformed_rankings_are_refused(bad):
    with pytest.raises(ValueError):
        ranking_to_pairs(bad)


def test_scored_to_pairs_by_hand():
    # helpfulness weight 1, harmlessness weight 2:
    # c0 = 4 + 2*1 = 6, c1 = 2 + 2*3 = 8, c2 = 3 + 2*1.5 = 6 -> pairs 1>0 (2), 1>2 (2); 0 = 2 is a tie
    scores = [{"help": 4, "harm": 1}, {"help": 2, "harm": 3}, {"help": 3, "harm": 1.5}]
    pairs = scored_to_pairs(scores, {"help": 1.0, "harm": 2.0})
    assert sorted(pairs) == [(1, 0, 2.0), (1, 2, 2.0)]


def test_detect_kind_for_every_design_kind():
    assert detect_kind({"prompt": "p", "completion": "c"}) == "sft"
    assert detect_kind({"messages": []}) == "sft"
    assert detect_kind({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_kind({"prompt": "p", "completions": ["a", "b"], "ranking": "A > B"}) == "ranked"
    assert detect_kind({"prompt": "p", "completions": ["a", "b"], "scores": []}) == "scored"
    assert detect_kind({"prompt": "p", "completion": "c", "label": True}) == "unpaired"
    assert detect_kind({"prompt": "p"}) == "prompt"
    assert detect_kind({"text": "p"}) == "text"  # raw text (PPO-ptx)
    assert detect_kind({"txt": "p"}) is None


def _error(fn) -> str:
    with pytest.raises(UserError) as info:
        fn()
    return str(info.value)


def test_errors_name_file_and_line(jsonl):
    path = jsonl(
        "pref.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a"},
        ],
    )
    msg = _error(lambda: load_examples(path, ["preference"]))
    assert msg.startswith(f"{path}:3:") and '"rejected"' in msg


def test_bad_json_line(jsonl):
    path = jsonl("x.jsonl", [{"prompt": "p", "completion": "c"}, "{not json"])
    assert _error(lambda: load_examples(path, ["sft"])).startswith(f"{path}:2: not valid JSON")


def test_missing_and_empty_files(tmp_path):
    assert "no such file" in _error(lambda: load_examples(str(tmp_path / "nope.jsonl"), ["sft"]))
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "no records" in _error(lambda: load_examples(str(tmp_path / "empty.jsonl"), ["sft"]))


def test_wrong_kind_says_what_was_expected(jsonl):
    path = jsonl("p.jsonl", [{"prompt": "p"}])
    msg = _error(lambda: load_examples(path, ["preference"], what="--train_data"))
    assert (
        "--train_data must be preference (prompt, chosen, rejected)" in msg
        and "found prompt" in msg
    )


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": ""}], "content must be a non-empty string"),
        ([{"role": "user"}], 'must be an object with "role" and "content"'),
        ([{"role": "user", "content": "hi"}], "must end with an assistant message"),
    ],
)
def test_message_lists_are_validated(jsonl, messages, fragment):
    path = jsonl("m.jsonl", [{"messages": messages}])
    assert fragment in _error(lambda: load_examples(path, ["sft"]))


def test_ranking_letter_without_completion(jsonl):
    path = jsonl("r.jsonl", [{"prompt": "p", "completions": ["a", "b"], "ranking": "A > C"}])
    assert (
        _error(lambda: load_examples(path, ["ranked"]))
        == f"{path}:1: ranking names C but there are only 2 completions"
    )


def test_margin_must_be_a_number(jsonl):
    path = jsonl("m.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}])
    assert '"margin" must be a number' in _error(lambda: load_examples(path, ["preference"]))


def test_scored_record_missing_aspect(jsonl):
    path = jsonl(
        "s.jsonl",
        [{"prompt": "p", "completions": ["a", "b"], "scores": [{"help": 1}, {"harm": 2}]}],
    )
    examples = load_examples(path, ["scored"])
    msg = _error(lambda: to_preference_pairs(examples, {"help": 1.0}))
    assert msg.startswith(f"{path}:1:") and "help" in msg


def test_ranked_and_scored_expand_to_pairs(jsonl):
    ranked = load_examples(
        jsonl(
            "r.jsonl",
            [{"prompt": "p", "completions": ["a", "b", "c", "d"], "ranking": "D > C > A = B"}],
        ),
        ["ranked"],
    )
    pairs = to_preference_pairs(ranked)
    assert {(p.chosen, p.rejected) for p in pairs} == {
        ("d", "c"),
        ("d", "a"),
        ("d", "b"),
        ("c", "a"),
        ("c", "b"),
    }


def test_parquet_and_datasets_dir(tmp_path):
    import datasets

    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": ""}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "dsdir"))
    for path in (tmp_path / "d.parquet", tmp_path / "dsdir"):
        assert (
            _error(lambda p=path: load_examples(str(p), ["sft"]))
            == f'{path}:2: "completion" is empty'
        )
    ok = datasets.Dataset.from_list(rows[:1])
    ok.to_parquet(str(tmp_path / "ok.parquet"))
    assert load_examples(str(tmp_path / "ok.parquet"), ["sft"])[0].response == "c1"


def test_plain_concatenation_masks_response_and_ends_with_eos():
    tok = load_tokenizer("tiny-llama")
    enc = encode_example(tok, "The movie was", " great fun", max_length=64)
    prompt = encode_prompt(tok, "The movie was")
    assert enc.input_ids[: len(prompt)] == prompt
    assert enc.input_ids[-1] == tok.eos_token_id
    assert enc.response_mask == [0] * len(prompt) + [1] * (len(enc.input_ids) - len(prompt))
    assert tok.decode(enc.input_ids[len(prompt) : -1]) == " great fun"


def test_chat_template_prompt_is_user_turn_and_response_assistant_turn():
    tok = load_tokenizer("tiny-llama-chat")
    enc = encode_example(tok, "hi", "hello", max_length=64)
    text = tok.decode(enc.input_ids)
    assert text == "<|user|>\nhi\n<|assistant|>\nhello</s>"
    # the mask starts exactly at the assistant's words
    first = enc.response_mask.index(1)
    assert tok.decode(enc.input_ids[first:]) == "hello</s>"
    # same as the template renders a full conversation (up to the template's trailing newline)
    full = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False,
    )
    assert full.rstrip("\n") == text


def test_truncation_keeps_prompt_end_and_response_start():
    enc = join_truncated(list(range(10)), [100, 101, 102, 103, 104, 105], max_length=8)
    assert enc.truncated and len(enc.input_ids) == 8
    assert enc.input_ids == [6, 7, 8, 9, 100, 101, 102, 103]
    assert enc.response_start == 4
    assert not join_truncated([1, 2], [3], max_length=3).truncated


def test_a_truncated_pair_keeps_one_prompt_for_both(monkeypatch):
    """Prompt 0..9, chosen 2 tokens, rejected 6, max_length 8. Alone, chosen would keep 6 prompt
    tokens and rejected 4 (half of max_length, its response cut to 4); as a pair both keep the
    last 4, so the two responses follow the same context."""
    from types import SimpleNamespace

    from posttrain.data import preference

    responses = {"c": [100, 101], "r": [200, 201, 202, 203, 204, 205]}
    tok = SimpleNamespace()
    example = SimpleNamespace(prompt="p", chosen="c", rejected="r", margin=None)
    monkeypatch.setattr(preference, "encode_prompt", lambda tok, prompt: list(range(10)))
    monkeypatch.setattr(preference, "encode_response", lambda tok, response: responses[response])
    pair = preference.encode_pair(tok, example, max_length=8)
    assert pair.chosen.input_ids == [6, 7, 8, 9, 100, 101]
    assert pair.rejected.input_ids == [6, 7, 8, 9, 200, 201, 202, 203]
    assert pair.chosen.response_start == pair.rejected.response_start == 4
    assert pair.chosen.truncated and pair.rejected.truncated


def test_collate_right_pads_with_masks():
    tok = load_tokenizer("tiny-llama")
    a = encode_example(tok, "a", "b", 32)
    b = encode_example(tok, "a longer prompt", "and a longer answer", 32)
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["response_mask"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == len(a.input_ids)
    assert batch["input_ids"][0, len(a.input_ids) :].eq(tok.pad_token_id).all()
    assert tok.pad_token_id != tok.eos_token_id


def test_pack_respects_max_length():
    from posttrain.data.chat import Encoded

    examples = [Encoded(list(range(n)), 1, False) for n in (5, 3, 4, 2, 6)]
    rows = pack(examples, max_length=8)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum(len(examples[i].input_ids) for i in row) <= 8 for row in rows)
    assert len(rows) == 3  # 20 tokens need at least 3 rows of 8


def test_shared_prefix_layout_by_hand():
    """Pair A: chosen 1 2|3 4, rejected 1 2|5 (| = response start); pair B: chosen 6|7, rejected
    6|8 9. The shared prefix ends before the first position that predicts a response token (the
    prompt's last token), so every position predicts at most one label: A shares 1 and each
    remainder repeats the 2; B's one-token prompt leaves nothing to share. A takes 1 + 3 + 2 = 6
    tokens, B 2 + 3 = 5, so with width 6 each gets a row. A remainder's positions continue from
    the prefix, and it sees the prefix and itself, not the other remainder. Sequences are numbered
    member-major: A chosen 0, B chosen 1, A rejected 2, B rejected 3; labels land where a
    right-padded (4, 4) batch would have them, in a (4, 3) layout."""
    from posttrain.data.chat import Encoded
    from posttrain.data.collate import collate_shared_prefix

    a = (Encoded([1, 2, 3, 4], 2, False), Encoded([1, 2, 5], 2, False))
    b = (Encoded([6, 7], 1, False), Encoded([6, 8, 9], 1, False))
    out = collate_shared_prefix([a, b], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 2, 5], [6, 7, 6, 8, 9, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2], [0, 1, 0, 1, 2, 0]]
    assert out["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 1, 0],  # rejected's 2 5 see the shared 1 and themselves, not chosen's 2 3 4
        [1, 0, 0, 0, 1, 1],
    ]
    assert out["attention_mask"][1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],  # nothing shared: rejected's 6 8 9 see only themselves
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees padding only
    ]
    assert out["label_mask"].tolist() == [[0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    # each remainder's copy of the prompt's last token (A: flat 1 and 4, B: 6 and 8) predicts its
    # response's first token; one label per position, in row-major order
    assert out["label_from"].tolist() == [1, 2, 4, 6, 8, 9]
    assert out["label_ids"].tolist() == [3, 4, 5, 7, 8, 9]
    assert out["label_to"].tolist() == [1, 2, 7, 3, 9, 10]
    # groups of one: plain padding-free packing, each sequence after its own first token
    single = collate_shared_prefix([(a[0],), (b[1],)], pad_id=0)
    assert single["input_ids"].tolist() == [[1, 2, 3, 4], [6, 8, 9, 0]]
    assert single["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
