"""The DPO recipe's reusable pieces: one concatenated forward, the loss dispatch (against the
losses contract, with numbers worked by hand), the reference cache, config checks, implicit
reward accuracy. tiny-llama in float64, a few short pairs: seconds."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.data import Example
from posttrain.data.preference import collate_pairs, encode_pairs
from posttrain.losses import (
    dpo_loss,
    orpo_loss,
    preference_loss,
    reward_accuracy,
    simpo_loss,
    unlikelihood_loss,
)
from posttrain.models import PairLogps, forward_logprobs, load_model, load_tokenizer, pair_logps
from posttrain.recipes import dpo
from posttrain.training import reference

PAIRS = [
    ("The movie was", " great and lovely.", " awful."),
    ("The plot was", " fine.", " terrible and boring and sad, really."),
    ("Music:", " wonderful", " poor and weak."),
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return load_model("tiny-llama", dtype="float64", tokenizer=tok)


@pytest.fixture(scope="module")
def pairs(tok):
    examples = [Example("preference", "t", p, chosen=c, rejected=r) for p, c, r in PAIRS]
    return encode_pairs(tok, examples, 64)[0]


def test_pair_logps_is_one_forward_and_equals_each_row_alone(model, tok, pairs):
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        lp = pair_logps(model, collate_pairs(pairs, tok.pad_token_id))
    hook.remove()
    assert len(calls) == 1  # chosen and rejected in ONE forward
    for i, p in enumerate(pairs):
        for enc, total, length in (
            (p.chosen, lp.chosen[i], lp.chosen_lengths[i]),
            (p.rejected, lp.rejected[i], lp.rejected_lengths[i]),
        ):
            ids = torch.tensor([enc.input_ids])  # alone: no padding at all
            with torch.no_grad():
                alone = forward_logprobs(
                    model, ids, torch.ones_like(ids), torch.tensor([enc.response_mask])
                )
            torch.testing.assert_close(total, alone.sum()[0], atol=1e-10, rtol=0)
            assert length == len(enc.input_ids) - enc.response_start  # response tokens only


def _logps(chosen, rejected, c_len=4.0, r_len=2.0):
    """A PairLogps of one pair with given summed log-probs and response lengths."""
    c, r = (
        torch.tensor([chosen], dtype=torch.float64),
        torch.tensor([rejected], dtype=torch.float64),
    )
    cl, rl = torch.tensor([c_len], dtype=torch.float64), torch.tensor([r_len], dtype=torch.float64)
    c_tok = torch.full((1, int(c_len)), chosen / c_len, dtype=torch.float64)
    r_tok = torch.full((1, int(r_len)), rejected / r_len, dtype=torch.float64)
    return PairLogps(c, r, cl, rl, c_tok, r_tok, torch.ones_like(c_tok), torch.ones_like(r_tok))


REF = torch.tensor([-2.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)


def test_sigmoid_dpo_by_hand():
    """policy (chosen, rejected) = (-1, -3), reference (-2, -2), beta 0.5:
    h = (-1 + 2) - (-3 + 2) = 2; loss = -log sigmoid(0.5 * 2) = log(1 + e^-1) = 0.3132616875;
    rewards = 0.5 * 1 = 0.5 and 0.5 * -1 = -0.5."""
    losses, rc, rr = preference_loss(_logps(-1.0, -3.0), *REF, loss_type="sigmoid", beta=0.5)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-12)
    assert (rc.item(), rr.item()) == (0.5, -0.5)
    assert not rc.requires_grad


def test_rpo_adds_the_length_normalised_chosen_nll():
    """rpo_alpha 2: + 2 * (-(-1) / 4) = 0.5 (chosen response of 4 tokens)."""
    base, _, _ = preference_loss(_logps(-1.0, -3.0), *REF, loss_type="sigmoid", beta=0.5)
    rpo, _, _ = preference_loss(
        _logps(-1.0, -3.0), *REF, loss_type="sigmoid", beta=0.5, rpo_alpha=2.0
    )
    assert (rpo - base).item() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    "loss_type, smoothing", [("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)]
)
def test_dpo_types_are_the_contract_loss(loss_type, smoothing):
    lp = _logps(-1.0, -3.0)
    got = preference_loss(lp, *REF, loss_type=loss_type, beta=0.5, label_smoothing=smoothing)
    want = dpo_loss(
        lp.chosen, lp.rejected, *REF, beta=0.5, loss_type=loss_type, label_smoothing=smoothing
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_no_reference_is_a_uniform_reference():
    """reference none: h = -1 - (-3) = 2 with log pi_ref = 0; same loss, rewards beta * log pi."""
    losses, rc, rr = preference_loss(_logps(-1.0, -3.0), None, None, loss_type="sigmoid", beta=0.5)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-12)
    assert (rc.item(), rr.item()) == (-0.5, -1.5)


def test_reference_free_types_dispatch_to_their_losses():
    lp = _logps(-1.0, -3.0)
    got, rc, rr = preference_loss(lp, None, None, loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    # SimPO by hand: 2 * (-1/4) - 2 * (-3/2) - 0.5 = 2.0; loss = log(1 + e^-2)
    assert got.item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-12)
    want = simpo_loss(
        lp.chosen, lp.rejected, lp.chosen_lengths, lp.rejected_lengths, beta=2.0, gamma=0.5
    )
    torch.testing.assert_close(got, want[0], atol=0, rtol=0)
    got, _, _ = preference_loss(lp, None, None, loss_type="orpo", beta=1.0, orpo_lambda=0.3)
    want = orpo_loss(lp.chosen, lp.rejected, lp.chosen_lengths, lp.rejected_lengths, lam=0.3)
    torch.testing.assert_close(got, want[0], atol=0, rtol=0)
    got, rc, _ = preference_loss(
        lp, None, None, loss_type="unlikelihood", beta=1.0, unlikelihood_alpha=0.7
    )
    want = unlikelihood_loss(
        lp.chosen_tokens, lp.rejected_tokens, lp.chosen_mask, lp.rejected_mask, alpha=0.7
    )
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert rc.item() == -1.0  # reference-free losses log beta * log pi


def test_win_counts_ties_half():
    assert reward_accuracy(
        torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 0.0])
    ).tolist() == [
        1.0,
        0.5,
        0.0,
    ]


def test_reference_logps_and_cache(model, tok, pairs, tmp_path):
    values = reference.reference_logps(model, pairs, tok.pad_token_id, batch_size=2)  # (N, 2)
    with torch.no_grad():
        lp = pair_logps(model, collate_pairs(pairs, tok.pad_token_id))
    torch.testing.assert_close(
        values, torch.stack([lp.chosen, lp.rejected], -1), atol=1e-10, rtol=0
    )
    assert reference.reference_logps(model, [], tok.pad_token_id, 2).shape == (0, 2)
    key = reference.data_key(pairs, "tiny-llama", "float64")
    assert key != reference.data_key(pairs[:2], "tiny-llama", "float64")
    assert key != reference.data_key(pairs, "tiny-llama", "float32")
    path = tmp_path / dpo.REFERENCE_CACHE
    assert reference.load_reference_cache(path, key) is None
    reference.save_reference_cache(path, {"key": key, "train": values})
    assert [p.name for p in tmp_path.iterdir()] == [dpo.REFERENCE_CACHE]  # no temp file left
    assert torch.equal(reference.load_reference_cache(path, key)["train"], values)
    assert reference.load_reference_cache(path, "other data") is None  # stale: recomputed


def test_precomputed_reference_covers_only_the_visited_pairs_and_fills_in_more():
    """A 2-step run of 3 pairs over 100 computes 6 rows (those Run's data order will serve); a
    resume to more steps computes the rows it adds, and only those."""
    from posttrain.training import DataOrder

    n = 100
    cfg = _config(beta=0.1, max_steps=2, batch_size=3)
    first = dpo.visited(n, cfg)
    order = DataOrder(n, cfg.seed)
    assert first == sorted(order.next(3) + order.next(3))
    cache = {"train": torch.full((n, 2), float("nan"), dtype=torch.float64)}
    asked = []

    def compute(rows):
        asked.append(list(rows))
        return torch.tensor([[-float(r), -float(r) - 0.5] for r in rows], dtype=torch.float64)

    items = list(range(n))  # stand-ins for pairs: compute(rows) sees the items themselves
    assert reference.fill_reference_cache(cache, {"train": (items, first)}, compute)
    assert asked == [first] and not cache["train"][first].isnan().any()
    assert int((~cache["train"][:, 0].isnan()).sum()) == 6
    more = dpo.visited(n, _config(beta=0.1, max_steps=4, batch_size=3))
    assert set(first) < set(more)
    assert reference.fill_reference_cache(cache, {"train": (items, more)}, compute)
    assert asked[1] == sorted(set(more) - set(first))
    assert not reference.fill_reference_cache(cache, {"train": (items, more)}, compute)  # all there
    assert dpo.visited(n, _config(beta=0.1, max_steps=40, batch_size=3)) == list(range(n))
    assert cache["train"][more[0]].tolist() == [-more[0], -more[0] - 0.5]


def test_precomputed_reference_serves_rows_by_index(pairs, tok):
    cache = {"train": torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])}
    ref = reference.Reference("precomputed", cache=cache)
    chosen, rejected = ref.pair_logps(None, "train", [2, 0])
    assert chosen.tolist() == [-5.0, -1.0] and rejected.tolist() == [-6.0, -2.0]
    assert reference.Reference("none").pair_logps(None, "train", [0]) == (None, None)


def _config(**kw):
    from posttrain.config import build

    return build(dpo.Config, {"model": "tiny-llama", "train_data": "x", "output_dir": "o", **kw})


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "--beta is required for loss_type sigmoid"),
        ({"loss_type": "simpo"}, "--beta is required for loss_type simpo"),
        ({"beta": 0}, "--beta: must be > 0"),
        ({"beta": 0.1, "label_smoothing": 0.5}, "--label_smoothing: must be in [0, 0.5)"),
        ({"beta": 0.1, "reference": "lora"}, "--reference: lora needs --lora.enabled"),
        ({"loss_type": "orpo", "reference": "model"}, "--reference: loss_type orpo uses no"),
        ({"beta": 0.1, "reference": "none", "reference_model": "m"}, "--reference_model: is not"),
    ],
)
def test_config_refuses(values, message):
    from posttrain.errors import UserError

    with pytest.raises(UserError, match=None) as err:
        _config(**values).validate()
    assert message in str(err.value)


def test_config_reference_kind():
    assert _config(beta=0.1).reference_kind() == "precomputed"
    assert _config(beta=0.1, distributed="fsdp").reference_kind() == "model"  # a sharded copy
    assert _config(beta=0.1, lora={"enabled": True}).reference_kind() == "lora"
    assert _config(beta=0.1, reference="model").reference_kind() == "model"
    assert _config(loss_type="orpo").reference_kind() == "none"
    _config(loss_type="unlikelihood").validate()  # no beta needed


def test_implicit_reward_accuracy_by_hand(model, tok, pairs):
    """Policy == reference: every reward 0, accuracy 0.5 (ties half). A policy that is the
    reference plus a bias on the first chosen response's tokens: accuracy equals the share of
    pairs whose beta * (log-ratio chosen - log-ratio rejected) > 0, computed here directly."""
    import copy

    from posttrain.evaluation.implicit_reward import implicit_reward_accuracy

    res = implicit_reward_accuracy(model, model, pairs, beta=0.1, tokenizer=tok)
    assert res == {
        "accuracy": 0.5,
        "margin_mean": 0.0,
        "chosen_reward_mean": 0.0,
        "rejected_reward_mean": 0.0,
        "pairs": 3,
    }
    policy = copy.deepcopy(model)
    with torch.no_grad():
        policy.lm_head.weight[pairs[0].chosen.input_ids[-2]] += 0.5
    res = implicit_reward_accuracy(policy, model, pairs, beta=0.1, tokenizer=tok)
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        p, r = pair_logps(policy, batch), pair_logps(model, batch)
    margins = 0.1 * ((p.chosen - r.chosen) - (p.rejected - r.rejected))
    assert res["accuracy"] == pytest.approx(float(reward_accuracy(margins, torch.zeros(3)).mean()))
    assert res["margin_mean"] == pytest.approx(float(margins.mean()), abs=1e-12)
    assert res["accuracy"] != 0.5
