"""Reward models and critics as the ecosystem saves them: ``final/`` of ``posttrain rm`` (and a
PPO critic) is a transformers sequence classifier whose logits are posttrain's scores; the older
posttrain layout and classifiers saved by plain transformers still load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from posttrain.data import collate, encode_example
from posttrain.models import load_policy
from posttrain.models.reward import CONFIG_FILE, HEAD_FILE, RewardModel, load_reward_model
from posttrain.models.value import build_value_model, load_critic
from tests.helpers_pref import preference_rows

PROMPTS = ["The film was", "Hi", "A much longer prompt than the others, to pad the rest"]
TEXTS = [" great and lovely.", " awful and sad and boring and weak and poor.", " ok"]


def hf_logits(path, tok, prompts, texts, side: str) -> torch.Tensor:
    """(B, K) logits of AutoModelForSequenceClassification on posttrain's tokens, padded on
    ``side`` with the tokenizer's pad (what a user of transformers would run)."""
    from transformers import AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    enc = [encode_example(tok, p, t, 1024) for p, t in zip(prompts, texts)]
    batch = collate(enc, tok.pad_token_id, side=side)
    with torch.no_grad():
        return clf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    """final/ of a short `posttrain rm` run (float32)."""
    from posttrain.cli import main

    d = tmp_path_factory.mktemp("rm_hf")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(64)))
    args = ["rm", "--model", "tiny-llama", "--train_data", str(d / "train.jsonl")]
    args += ["--output_dir", str(d / "out"), "--max_steps", "5", "--batch_size", "8"]
    args += ["--learning_rate", "1e-3", "--progress", "false"]
    assert main(args) == 0
    return d / "out" / "final"


def test_rm_final_scores_through_auto_sequence_classification(rm_run):
    rm = load_reward_model(rm_run)
    config = json.loads((rm_run / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {"0": "reward"} and config["pad_token_id"] == 0
    meta = json.loads((rm_run / CONFIG_FILE).read_text())
    assert set(meta) == {"heads", "weights", "mean", "std"} and meta["std"] > 0
    assert not (rm_run / HEAD_FILE).exists()
    ours = torch.tensor(rm.score(PROMPTS, TEXTS))
    assert ours.abs().max() > 1e-3  # the trained head is not zero
    for side in ("right", "left"):
        theirs = hf_logits(rm_run, rm.tokenizer, PROMPTS, TEXTS, side)  # (3, 1)
        assert theirs.shape == (3, 1)
        assert (theirs[:, 0] - ours).abs().max() < 1e-5, side


def test_multi_head_rm_gives_one_label_per_head(tmp_path):
    model, tok = load_policy("tiny-llama")
    rm = RewardModel(model, tok, ["helpful", "harmless"], [1.0, 0.5], mean=0.3, std=2.0)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.head.linear.weight)
    rm.save(tmp_path / "rm")
    theirs = hf_logits(tmp_path / "rm", tok, PROMPTS, TEXTS, "right")  # (3, 2)
    enc = [encode_example(tok, p, t, 1024) for p, t in zip(PROMPTS, TEXTS)]
    batch = collate(enc, tok.pad_token_id)
    with torch.no_grad():
        per_head = rm(batch["input_ids"], batch["attention_mask"])  # (3, 2)
    assert (theirs - per_head).abs().max() < 1e-5
    # the served reward = the heads' weighted sum, weights (and mean/std) in reward_config.json
    again = load_reward_model(tmp_path / "rm")
    assert again.heads == ["helpful", "harmless"] and (again.mean, again.std) == (0.3, 2.0)
    served = torch.tensor(again.score(PROMPTS, TEXTS))
    assert (theirs @ torch.tensor([1.0, 0.5]) - served).abs().max() < 1e-5
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["id2label"] == {"0": "helpful", "1": "harmless"}


def test_older_posttrain_layout_still_loads(tmp_path):
    """A causal LM beside reward_head.safetensors (what posttrain rm wrote before), with a head
    bias: its scores are trunk -> last token -> W h + b, and a re-save keeps them."""
    from posttrain.models import save_pretrained

    model, tok = load_policy("tiny-llama")
    old = tmp_path / "old"
    save_pretrained(model, tok, old)
    torch.manual_seed(1)
    w, b = torch.randn(1, 64), torch.tensor([0.7])
    save_file({"linear.weight": w, "linear.bias": b}, str(old / HEAD_FILE))
    meta = {"heads": ["reward"], "weights": [1.0], "mean": 0.1, "std": 3.0}
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    rm = load_reward_model(old)
    enc = [encode_example(tok, p, t, 1024) for p, t in zip(PROMPTS, TEXTS)]
    batch = collate(enc, tok.pad_token_id)
    with torch.no_grad():
        hidden = model.model(batch["input_ids"], attention_mask=batch["attention_mask"])
    last = batch["attention_mask"].sum(-1) - 1  # right padded
    expected = hidden.last_hidden_state[torch.arange(3), last] @ w[0] + b
    ours = torch.tensor(rm.score(PROMPTS, TEXTS))
    assert (ours - expected).abs().max() < 1e-5 and (rm.mean, rm.std) == (0.1, 3.0)
    rm.save(tmp_path / "new")  # the new layout; the bias (transformers' score has none) in meta
    assert json.loads((tmp_path / "new" / CONFIG_FILE).read_text())["bias"] == pytest.approx([0.7])
    again = torch.tensor(load_reward_model(tmp_path / "new").score(PROMPTS, TEXTS))
    assert (again - ours).abs().max() < 1e-6
    theirs = hf_logits(tmp_path / "new", tok, PROMPTS, TEXTS, "right")[:, 0]
    assert (theirs + 0.7 - ours).abs().max() < 1e-5


@pytest.fixture
def plain_classifier(tmp_path):
    """A 3-label LlamaForSequenceClassification saved by plain transformers (no posttrain file)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from posttrain.models import load_tokenizer
    from posttrain.models.tiny import TINY_CONFIG

    tok = load_tokenizer("tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        id2label={0: "helpfulness", 1: "honesty", 2: "safety"},
        label2id={"helpfulness": 0, "honesty": 1, "safety": 2},
        **TINY_CONFIG,
    )
    torch.manual_seed(2)
    clf = LlamaForSequenceClassification(config)
    path = tmp_path / "clf"
    clf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def test_k_label_classifier_saved_by_transformers_loads(plain_classifier):
    path, tok = plain_classifier
    rm = load_reward_model(path)
    assert rm.heads == ["helpfulness", "honesty", "safety"]
    theirs = hf_logits(path, tok, PROMPTS, TEXTS, "right")  # (3, 3)
    ours = torch.tensor(rm.score(PROMPTS, TEXTS))  # served: the sum (weights 1)
    assert (theirs.sum(-1) - ours).abs().max() < 1e-5
    # a reward_config.json beside it chooses the serving weights
    (path / CONFIG_FILE).write_text(json.dumps({"weights": [0.0, 0.0, 1.0]}))
    safety = torch.tensor(load_reward_model(path).score(PROMPTS, TEXTS))
    assert (theirs[:, 2] - safety).abs().max() < 1e-5


def test_transformers_classifier_evaluates_in_posttrain_eval(plain_classifier, cli, jsonl):
    path, _ = plain_classifier
    data = jsonl("pairs.jsonl", preference_rows(12, seed=4))
    out = path.parent / "eval"
    args = ["eval", "--mode", "reward-model", "--reward_model", path, "--data", data]
    code, _, err = cli(*args, "--output_dir", out)
    assert code == 0, err
    res = json.loads((out / "eval.json").read_text())
    assert res["pairs"] == 12 and 0.0 <= res["accuracy"] <= 1.0
    # the same accuracy as scoring the pairs through transformers directly
    rows = preference_rows(12, seed=4)
    prompts = [r["prompt"] for r in rows]
    tok = load_reward_model(path).tokenizer
    rc = hf_logits(path, tok, prompts, [r["chosen"] for r in rows], "right").sum(-1)
    rr = hf_logits(path, tok, prompts, [r["rejected"] for r in rows], "right").sum(-1)
    expected = float(((rc > rr).float() + 0.5 * (rc == rr).float()).mean())
    assert res["accuracy"] == pytest.approx(expected)


def test_separate_critic_saves_as_a_classifier_of_prefix_values(tmp_path):
    """V(prefix) of the critic == the saved classifier's logit on that prefix."""
    model, tok = load_policy("tiny-llama")
    value = build_value_model(model, separate=True)
    assert value.head.linear.bias is None  # transformers' score has no bias
    torch.manual_seed(3)
    torch.nn.init.normal_(value.head.linear.weight)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    values = value(ids, torch.ones_like(ids))  # (1, 5): V after tokens ..t
    value.save(tmp_path / "critic", tok)
    from transformers import AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "critic"))
    assert clf.config.id2label == {0: "value"}
    with torch.no_grad():
        prefixes = [clf(input_ids=ids[:, : t + 1]).logits[0, 0] for t in range(5)]
    assert (torch.stack(prefixes) - values[0]).abs().max() < 1e-5
    # and a reward model's directory starts a critic: its trunk (here the saved critic's)
    trunk = load_critic(str(tmp_path / "critic"))
    again = build_value_model(model, separate=True, critic=trunk)
    again.head.linear.weight.data.copy_(value.head.linear.weight)
    assert (again(ids, torch.ones_like(ids)) - values).abs().max() < 1e-5
