"""The one log-prob function: alignment, masking, padding-side invariance, temperature."""

from __future__ import annotations

import math

import torch

from posttrain.data import collate, encode_example
from posttrain.models import forward_logprobs, gather_logprobs, load_policy


def test_gather_matches_log_softmax_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[2, 1]])
    # log softmax([1,2,3])[2] = 3 - log(e^1 + e^2 + e^3); uniform row -> log(1/3)
    expected = torch.tensor(
        [[3 - math.log(math.e + math.e**2 + math.e**3), -math.log(3.0)]], dtype=torch.float64
    )
    torch.testing.assert_close(gather_logprobs(logits, labels), expected, atol=1e-12, rtol=0)
    # temperature 2 halves the logits first
    torch.testing.assert_close(
        gather_logprobs(logits, labels, 2.0), gather_logprobs(logits / 2, labels)
    )


def _batch(tok, side):
    encs = [
        encode_example(tok, "The movie", " was great", 64),
        encode_example(tok, "A much longer prompt here", " bad", 64),
    ]
    return collate(encs, tok.pad_token_id, side=side)


def test_left_and_right_padding_agree_and_match_unpadded():
    model, tok = load_policy("tiny-llama", dtype="float64")
    right, left = _batch(tok, "right"), _batch(tok, "left")
    lr = forward_logprobs(
        model, right["input_ids"], right["attention_mask"], right["response_mask"]
    )
    ll = forward_logprobs(model, left["input_ids"], left["attention_mask"], left["response_mask"])
    torch.testing.assert_close(lr.sum(), ll.sum(), atol=1e-10, rtol=0)
    torch.testing.assert_close(lr.lengths(), ll.lengths())
    # each row alone, no padding at all
    for i in range(2):
        n = int(right["attention_mask"][i].sum())
        alone = forward_logprobs(
            model,
            right["input_ids"][i : i + 1, :n],
            right["attention_mask"][i : i + 1, :n],
            right["response_mask"][i : i + 1, :n],
        )
        torch.testing.assert_close(alone.sum()[0], lr.sum()[i], atol=1e-10, rtol=0)


def test_only_response_tokens_count_and_values_are_real_logprobs():
    model, tok = load_policy("tiny-llama", dtype="float64")
    b = _batch(tok, "right")
    out = forward_logprobs(
        model, b["input_ids"], b["attention_mask"], b["response_mask"], with_entropy=True
    )
    # response of row 0 is " was great" + EOS
    n_resp = int(b["response_mask"][0].sum())
    assert int(out.lengths()[0]) == n_resp
    logits = model(input_ids=b["input_ids"][:1]).logits[0, :-1]
    manual = torch.log_softmax(logits, -1).gather(-1, b["input_ids"][0, 1:, None]).squeeze(-1)
    mask = b["response_mask"][0, 1:].bool()
    torch.testing.assert_close(out.logps[0][mask], manual[mask], atol=1e-10, rtol=0)
    assert (out.logps[0][~mask] == 0).all() and (out.entropy[0][~mask] == 0).all()
    assert (out.entropy[0][mask] > 0).all()


def test_forward_packed_logprobs_places_labels_by_hand(monkeypatch):
    """Rows [[1 2 3 4 2 5], [6 7 6 8 9 -]] of pairs A (1 2|3 4 vs 1 2|5) and B (6|7 vs 6|8 9), as
    in ``test_shared_prefix_layout_by_hand``. With fixed logits, the log-prob of each response token
    is log-softmax at the position predicting it, placed as in a right-padded batch."""
    from types import SimpleNamespace

    from posttrain.data.chat import Encoded
    from posttrain.data.collate import collate_shared_prefix
    from posttrain.models import forward_packed_logprobs, logprobs

    a = (Encoded([1, 2, 3, 4], 2, False), Encoded([1, 2, 5], 2, False))
    b = (Encoded([6, 7], 1, False), Encoded([6, 8, 9], 1, False))
    batch = collate_shared_prefix([a, b], pad_id=0)
    logits = torch.randn(2, 6, 10, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)

    def model(logits_to_keep=None, **kw):  # the positions asked for, or all of them
        return SimpleNamespace(logits=logits if logits_to_keep is None else logits[logits_to_keep])

    model.parameters = lambda: iter([logits])  # the dtype attention computes in

    out = forward_packed_logprobs(model, batch)
    monkeypatch.setattr(logprobs, "_keeps_by_mask", lambda: False)  # older transformers
    every_position = forward_packed_logprobs(model, batch)
    assert torch.equal(out.logps, every_position.logps)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    expected[0, 1], expected[0, 2] = logp[0, 1, 3], logp[0, 2, 4]  # A chosen: 3 after 2, 4 after 3
    expected[2, 1] = logp[0, 4, 5]  # A rejected: 5 after its copy of 2
    expected[1, 0] = logp[1, 0, 7]  # B chosen: 7 after 6
    expected[3, 0], expected[3, 1] = logp[1, 2, 8], logp[1, 3, 9]  # B rejected: 8 after its 6, 9
    torch.testing.assert_close(out.logps, expected, atol=1e-12, rtol=0)
    assert out.mask.tolist() == [[0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert out.lengths().tolist() == [2, 1, 1, 2]
