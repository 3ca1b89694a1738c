"""What must not change the result of DPO/KTO: gradient accumulation (8 x 1 == 2 x 4), the way
the reference log-probs are obtained (frozen copy, precomputed cache, LoRA adapters disabled),
padding (side, batch-mates, padding-free rows). tiny-llama in float64, 1e-6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.data.preference import collate_pairs, encode_pairs
from posttrain.models import PairLogps, load_model, load_tokenizer, pair_logps
from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows

ARGS = ["--model", "tiny-llama", "--learning_rate", "1e-3", "--progress", "false"]
ARGS += ["--dtype", "float64", "--max_steps", "4", "--logging_steps", "1"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "final" / "model.safetensors"))


def _assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in preference_rows(64, seed=1)))
    return str(path)


def test_dpo_batch_8x1_equals_2x4_and_precomputed_equals_frozen_copy(cli, train, tmp_path):
    args = [*ARGS, "--train_data", train, "--beta", "0.1"]
    runs = {
        "8x1": ["--batch_size", "8"],
        "2x4": ["--batch_size", "8", "--gradient_accumulation_steps", "4"],
        "frozen_copy": ["--batch_size", "8", "--reference", "model"],  # default: precomputed
        "padded": ["--batch_size", "8", "--padding_free", "false"],  # the default is padding-free
        "padding_free_eval": ["--batch_size", "8", "--eval_data", train],
        "padded_eval": ["--batch_size", "8", "--padding_free", "false", "--eval_data", train],
    }
    for name, extra in runs.items():
        code, _, err = cli("dpo", *args, *extra, "--output_dir", tmp_path / name)
        assert code == 0, err
    base = _weights(tmp_path / "8x1")
    start = load_model("tiny-llama", dtype="float64").state_dict()
    assert any(not torch.equal(base[k], start[k]) for k in base)  # training moved the weights
    _assert_same(base, _weights(tmp_path / "2x4"))
    _assert_same(base, _weights(tmp_path / "frozen_copy"))
    _assert_same(base, _weights(tmp_path / "padded"))
    padded = read_metrics(tmp_path / "padded_eval" / "metrics.jsonl")
    free = read_metrics(tmp_path / "padding_free_eval" / "metrics.jsonl")
    # the same losses, rewards and held-out numbers; to 1e-7 relative, not float64 rounding: HF's
    # RMSNorm works in float32, and a prompt shared by chosen and rejected sums its two gradients
    # before that rounding instead of after (exact in float64: the gradient test below)
    for a, b in zip(padded, free, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if not (k.endswith("per_s") or k.startswith("time/")):
                assert b[k] == pytest.approx(a[k], rel=1e-7, abs=1e-9), k


def test_kto_batch_8x1_equals_2x4(cli, train, tmp_path):
    args = [*ARGS, "--train_data", train, "--beta", "0.1", "--batch_size", "8"]
    for name, extra in {"8x1": [], "2x4": ["--gradient_accumulation_steps", "4"]}.items():
        code, _, err = cli("kto", *args, *extra, "--output_dir", tmp_path / name)
        assert code == 0, err
    base = _weights(tmp_path / "8x1")
    start = load_model("tiny-llama", dtype="float64").state_dict()
    moved = max(float((base[k] - start[k]).abs().max()) for k in base)
    assert moved > 1e-4, moved  # training moved the weights (so equal runs are not both idle)
    _assert_same(base, _weights(tmp_path / "2x4"))


@pytest.fixture(scope="module")
def encoded():
    from posttrain.data import Example

    tok = load_tokenizer("tiny-llama")
    rows = preference_rows(6, seed=2)
    rows[1]["chosen"] = " great and lovely and wonderful, truly, a brilliant night out."  # long
    rows[2]["rejected"] = rows[2]["chosen"] + " Not."  # responses sharing their start
    rows[3]["rejected"] = rows[3]["chosen"]  # identical: the whole sequence is shared
    examples = [Example("preference", "t", r["prompt"], **_responses(r)) for r in rows]
    return tok, encode_pairs(tok, examples, 64)[0]


def _responses(row: dict) -> dict:
    return {"chosen": row["chosen"], "rejected": row["rejected"]}


def test_pair_logps_ignore_padding_side_and_batch_mates(encoded):
    tok, pairs = encoded
    model = load_model("tiny-llama", dtype="float64", tokenizer=tok)
    with torch.no_grad():
        right = pair_logps(model, collate_pairs(pairs, tok.pad_token_id))
        left = pair_logps(model, collate_pairs(pairs, tok.pad_token_id, side="left"))
        free = pair_logps(model, collate_pairs(pairs, tok.pad_token_id, padding_free=True))
    for name in PairLogps.__dataclass_fields__:
        torch.testing.assert_close(getattr(free, name), getattr(right, name), atol=1e-10, rtol=0)
    with torch.no_grad():
        alone = [pair_logps(model, collate_pairs([p], tok.pad_token_id)) for p in pairs]
    torch.testing.assert_close(right.chosen, left.chosen, atol=1e-10, rtol=0)
    torch.testing.assert_close(right.rejected, left.rejected, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        right.chosen, torch.cat([a.chosen for a in alone]), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        right.rejected, torch.cat([a.rejected for a in alone]), atol=1e-10, rtol=0
    )


def test_shared_prompt_gives_the_padded_gradients(encoded, monkeypatch):
    """Padding-free rows hold each prompt once for chosen and rejected; the gradient of a DPO-like
    objective equals the padded batch's to float64 rounding. HF's RMSNorm computes in float32
    even in a float64 model, which would round the shared prompt's summed gradient differently
    (about 1e-8 relative), so the norm is computed in float64 here."""
    from transformers.models.llama import modeling_llama

    def norm64(self, hidden):
        return (
            self.weight
            * hidden
            * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", norm64)
    tok, pairs = encoded
    model = load_model("tiny-llama", dtype="float64", tokenizer=tok)
    grads = []
    for padding_free in (False, True):
        model.zero_grad()
        lp = pair_logps(model, collate_pairs(pairs, tok.pad_token_id, padding_free=padding_free))
        (lp.chosen.sum() - 0.7 * lp.rejected.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert any(g.abs().max() > 0.1 for g in grads[0].values())
    _assert_same(grads[0], grads[1], atol=1e-12)


def test_lora_policy_with_adapters_disabled_is_the_starting_model(encoded):
    """After the adapters have moved (so the policy differs), the reference the recipe uses —
    ``Reference("lora", ...)`` — gives exactly the starting model's log-probs."""
    import copy

    from posttrain.config import LoraConfig
    from posttrain.models.lora import apply_lora
    from posttrain.training.reference import Reference

    tok, pairs = encoded
    base = load_model("tiny-llama", dtype="float64", tokenizer=tok)
    start = copy.deepcopy(base)
    policy = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # as if trained
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        moved, want = pair_logps(policy, batch), pair_logps(start, batch)
    assert not torch.allclose(moved.chosen, want.chosen)
    ref_chosen, ref_rejected = Reference("lora", policy=policy).pair_logps(batch)
    torch.testing.assert_close(ref_chosen, want.chosen, atol=1e-10, rtol=0)
    torch.testing.assert_close(ref_rejected, want.rejected, atol=1e-10, rtol=0)
    after = pair_logps(policy, batch)  # adapters back on afterwards
    torch.testing.assert_close(after.chosen, moved.chosen, atol=0, rtol=0)
