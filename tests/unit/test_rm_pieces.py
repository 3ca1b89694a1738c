"""posttrain rm pieces without training: data -> pairs (and heads), the weighted multi-head
reward by hand, per-head pair rewards, save/load, a one-label HF sequence classifier, the reward
source that re-tokenizes a policy's text with the RM's own tokenizer."""

from __future__ import annotations

import pytest
import torch

from posttrain.models import load_model, load_tokenizer
from posttrain.models.reward import CONFIG_FILE, HEAD_FILE, RewardModel, load_reward_model
from posttrain.recipes.rm import Config, load_pairs, pair_rewards


def _cfg(**kw) -> Config:
    return Config(model="tiny-llama", train_data="x", output_dir="y", **kw)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def _rm(tok, heads=("reward",), weights=None, seed=0) -> RewardModel:
    torch.manual_seed(seed)
    rm = RewardModel(load_model("tiny-llama", tokenizer=tok), tok, heads, weights, bias=True)
    torch.nn.init.normal_(rm.head.linear.weight, std=1.0)  # non-zero rewards to compare
    torch.nn.init.normal_(rm.head.linear.bias, std=1.0)
    return rm.eval()


@pytest.mark.parametrize(
    "ranking, n_pairs",
    [
        ("A > B > C > D", 6),  # 4 singletons: C(4, 2)
        ("D > C > A = B", 1 * 1 + 1 * 2 + 1 * 2),  # sum_{i<j} n_i n_j over tiers (1, 1, 2)
        ("A = B > C = D", 2 * 2),
        ("A = B = C = D", 0),  # all ties: no pair
    ],
)
def test_ranked_file_pair_count_through_the_recipe(tok, jsonl, ranking, n_pairs):
    rows = [{"prompt": "p", "completions": ["a", "b", "c", "d"], "ranking": ranking}]
    pairs, heads, _, _ = load_pairs(jsonl("r.jsonl", rows), tok, _cfg(), "--train_data")
    assert len(pairs) == n_pairs and heads.tolist() == [0] * n_pairs


def test_scored_file_with_weights_gives_the_pairs_by_hand(tok, jsonl):
    # weights help 1, harm 2: totals x = 4 + 2 = 6, y = 2 + 6 = 8, z = 3 + 3 = 6
    # -> y > x, y > z; x = z is a tie (no pair)
    rows = [
        {
            "prompt": "p",
            "completions": ["x", "y", "z"],
            "scores": [{"help": 4, "harm": 1}, {"help": 2, "harm": 3}, {"help": 3, "harm": 1.5}],
        }
    ]
    path = jsonl("s.jsonl", rows)
    from posttrain.data import load_examples
    from posttrain.recipes.rm import head_pairs

    examples = load_examples(path, ["scored"])
    single = head_pairs(examples, ["reward"], {"help": 1.0, "harm": 2.0})
    assert sorted((ex.chosen, ex.rejected, z) for ex, z in single) == [
        ("y", "x", 0),
        ("y", "z", 0),
    ]
    # two heads: each head gets the pairs of its own aspect alone
    multi = head_pairs(examples, ["help", "harm"], None)
    assert sorted((ex.chosen, ex.rejected, z) for ex, z in multi) == sorted(
        [
            ("x", "y", 0),  # help: x 4 > z 3 > y 2
            ("x", "z", 0),
            ("z", "y", 0),
            ("y", "x", 1),  # harm: y 3 > z 1.5 > x 1
            ("y", "z", 1),
            ("z", "x", 1),
        ]
    )
    _, heads, _, _ = load_pairs(path, tok, _cfg(heads=["help", "harm"]), "--train_data")
    assert sorted(heads.tolist()) == [0, 0, 0, 1, 1, 1]


def test_weighted_sum_and_per_head_pair_rewards_by_hand(tok):
    rm = _rm(tok, heads=["help", "harm"], weights=[2.0, -0.5])
    prompts, texts = ["Q:", "Q:", "Q:"], [" good", " bad answer", " ok"]
    per_head = torch.stack([torch.tensor(x) for x in _per_head(rm, prompts, texts)])
    served = torch.tensor(rm.score(prompts, texts))
    torch.testing.assert_close(served, 2.0 * per_head[:, 0] - 0.5 * per_head[:, 1])
    assert rm(*_ids(rm, prompts, texts)).shape == (3, 2)
    # normalisation: (r - mean) / std with the saved statistics
    rm.mean, rm.std = 1.5, 4.0
    torch.testing.assert_close(
        torch.tensor(rm.score(prompts, texts, normalize=True)), (served - 1.5) / 4.0
    )
    # pair_rewards reads each pair's own head from one (2B, T) forward
    from posttrain.data.formats import Example
    from posttrain.data.preference import collate_pairs, encode_pairs

    exs = [
        Example("preference", "t:1", "Q:", chosen=" good", rejected=" bad answer"),
        Example("preference", "t:2", "Q:", chosen=" ok", rejected=" good"),
    ]
    pairs, _ = encode_pairs(tok, exs, 64)
    batch = collate_pairs(pairs, tok.pad_token_id)
    rc, rr = pair_rewards(rm, batch, torch.tensor([0, 1]))
    torch.testing.assert_close(rc, torch.stack([per_head[0, 0], per_head[2, 1]]))
    torch.testing.assert_close(rr, torch.stack([per_head[1, 0], per_head[0, 1]]))


@pytest.mark.parametrize("segments", [True, False])
def test_padding_free_pair_rewards_equal_the_padded_ones_with_gradients(tok, monkeypatch, segments):
    """``pair_rewards`` of a padding-free batch (each prompt once, then both responses; pairs of
    different prompt and response lengths packed together) equals the padded batch's, rewards and
    the gradients of the trunk and the head, to rounding (rewards 1e-10; gradients 1e-7 of their
    largest, as transformers' RMSNorm computes in float32): through segment attention and through
    the rows' 4-D mask. Reading the token before the last (the response's EOS) fails."""
    import posttrain.models.segment_attention as sa
    from posttrain.data.formats import Example
    from posttrain.data.preference import collate_pairs, encode_pairs

    monkeypatch.setattr(sa, "ENABLED", segments)
    torch.manual_seed(0)
    trunk = load_model("tiny-llama", tokenizer=tok, dtype="float64")
    rm = RewardModel(trunk, tok, ["help", "harm"])
    torch.nn.init.normal_(rm.head.linear.weight, std=1.0)
    exs = [
        Example("preference", "t:1", "Q:", chosen=" good", rejected=" a bad long answer here"),
        Example(
            "preference", "t:2", "A longer prompt for this pair:", chosen=" ok", rejected=" no"
        ),
        Example("preference", "t:3", "Hi", chosen=" fine, thanks", rejected=" go away"),
    ]
    pairs, _ = encode_pairs(tok, exs, 64)
    heads = torch.tensor([0, 1, 0])
    results = []
    for padding_free in (False, True):
        rm.zero_grad()
        batch = collate_pairs(pairs, tok.pad_token_id, padding_free=padding_free)
        assert ("segment_tokens" in batch) == padding_free
        rc, rr = pair_rewards(rm, batch, heads)
        (rc - 2 * rr).sum().backward()
        grads = [p.grad.clone() for p in rm.parameters() if p.grad is not None]
        results.append((torch.cat([rc, rr]).detach(), grads))
    (padded, g_padded), (packed, g_packed) = results
    assert padded.abs().min() > 1e-3  # rewards to compare
    torch.testing.assert_close(packed, padded, atol=1e-10, rtol=0)
    assert len(g_packed) == len(g_padded) > 2
    for a, b in zip(g_packed, g_padded):  # transformers' RMSNorm rounds through float32
        torch.testing.assert_close(a, b, atol=1e-7 * float(b.abs().max()), rtol=1e-6)


def _ids(rm, prompts, texts):
    from posttrain.data import collate, encode_example

    b = collate(
        [encode_example(rm.tokenizer, p, t, 64) for p, t in zip(prompts, texts)],
        rm.tokenizer.pad_token_id,
    )
    return b["input_ids"], b["attention_mask"]


def _per_head(rm, prompts, texts):
    """Each text's head outputs, scored one at a time (no padding at all)."""
    with torch.no_grad():
        return [rm(*_ids(rm, [p], [t]))[0].tolist() for p, t in zip(prompts, texts)]


def test_batched_scores_equal_one_at_a_time(tok):
    rm = _rm(tok)
    prompts = ["Review:", "A much longer prompt for this one:", "Q:"]
    texts = [" short", " a considerably longer completion here", " mid length"]
    alone = [s for p, t in zip(prompts, texts) for s in rm.score([p], [t])]
    torch.testing.assert_close(torch.tensor(rm.score(prompts, texts)), torch.tensor(alone))


def test_save_is_atomic_and_round_trips(tok, tmp_path):
    rm = _rm(tok, heads=["a", "b"], weights=[1.0, 0.25])
    rm.mean, rm.std = 0.5, 2.0
    path = tmp_path / "rm"
    path.mkdir()
    (path / "stale.txt").write_text("old")  # an earlier save is replaced whole
    rm.save(path)
    assert (path / "model.safetensors").exists() and (path / CONFIG_FILE).exists()
    assert not (path / HEAD_FILE).exists()  # the head is the classifier's score layer
    assert not (path / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]  # no temp dir left behind
    again = load_reward_model(path)
    assert again.heads == ["a", "b"] and again.weights.tolist() == [1.0, 0.25]
    assert (again.mean, again.std) == (0.5, 2.0)
    prompts, texts = ["Q:", "Q:"], [" yes", " no thanks"]
    assert again.score(prompts, texts, normalize=True) == rm.score(prompts, texts, normalize=True)


def test_lora_trunk_saves_merged_also_from_a_gathered_state(tok, tmp_path):
    """A LoRA trunk is saved with its adapters merged, as peft's ``merge_and_unload`` would, from
    its own weights or (under FSDP, whose own are shards) from the gathered full state."""
    import copy

    from safetensors.torch import load_file

    from posttrain.config import LoraConfig
    from posttrain.models.lora import apply_lora

    rm = _rm(tok)
    rm.trunk = apply_lora(rm.trunk, LoraConfig(enabled=True, r=2))
    for name, p in rm.trunk.named_parameters():  # make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    expected = copy.deepcopy(rm.trunk).merge_and_unload().state_dict()
    rm.save(tmp_path / "own")
    rm.save(tmp_path / "given", state={k: v.clone() for k, v in rm.state_dict().items()})
    for d in ("own", "given"):
        saved = load_file(str(tmp_path / d / "model.safetensors"))
        torch.testing.assert_close(saved.pop("score.weight"), rm.head.linear.weight.detach())
        assert set(saved) == set(expected) - {"lm_head.weight"}  # a classifier: no LM head
        for k in saved:
            torch.testing.assert_close(saved[k], expected[k], rtol=0, atol=1e-6)
    plain = load_model("tiny-llama", tokenizer=tok).state_dict()
    assert sum(not torch.equal(saved[k], plain[k]) for k in saved) == 14  # 7 targets x 2 layers
    prompts, texts = ["Q:", "Q:"], [" yes", " no thanks"]
    again = load_reward_model(tmp_path / "given")
    torch.testing.assert_close(
        torch.tensor(again.score(prompts, texts)), torch.tensor(rm.score(prompts, texts))
    )


def test_one_label_sequence_classifier_loads_as_reward_model(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = load_model("tiny-llama", tokenizer=tok)
    config = base.config
    config.num_labels = 1
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_config(config).eval()
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    rm = load_reward_model(tmp_path / "clf")
    prompts, texts = ["Q:", "Q:"], [" yes", " no thanks at all"]
    ids, mask = _ids(rm, prompts, texts)
    with torch.no_grad():
        # right-padded batch: the classifier reads its last non-pad token too
        expected = clf(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(torch.tensor(rm.score(prompts, texts)), expected)
    # saved by posttrain (trunk = the classifier's body), it loads back with the same scores
    rm.save(tmp_path / "again")
    again = load_reward_model(tmp_path / "again")
    assert again.score(prompts, texts) == rm.score(prompts, texts)


def test_a_causal_lm_is_not_a_reward_model(tok, tmp_path):
    # (a K-label classifier loads as K heads: tests/integration/test_reward_hf_format.py)
    from posttrain.errors import UserError
    from posttrain.models import save_pretrained

    save_pretrained(load_model("tiny-llama", tokenizer=tok), tok, tmp_path / "lm")
    with pytest.raises(UserError, match="neither a posttrain reward model"):
        load_reward_model(tmp_path / "lm")


def test_reward_source_retokenizes_the_policys_text_with_its_own_template():
    from posttrain.judges.protocol import RewardSource
    from posttrain.models.reward import RewardScorer

    chat_tok, policy_tok = load_tokenizer("tiny-llama-chat"), load_tokenizer("tiny-llama")
    assert chat_tok.chat_template and not getattr(policy_tok, "chat_template", None)
    torch.manual_seed(0)
    rm = RewardModel(load_model("tiny-llama-chat", tokenizer=chat_tok), chat_tok).eval()
    torch.nn.init.normal_(rm.head.linear.weight, std=1.0)
    source = rm.as_reward_source()
    assert isinstance(source, RewardScorer) and isinstance(source, RewardSource)

    prompts = ["The film was", "Review of the music:"]
    # the policy (plain-text prompts, its own tokenizer) sampled these ids and hands over text
    sampled = [policy_tok(t, add_special_tokens=False)["input_ids"] for t in (" great.", " sad")]
    texts = policy_tok.batch_decode(sampled)
    got = source(prompts, texts)
    assert got == source.score(prompts, texts)

    def reward_of(ids: list[int]) -> float:
        x = torch.tensor([ids])
        with torch.no_grad():
            return float(rm.reward(x, torch.ones_like(x)))

    def rm_ids(prompt: str, text: str) -> list[int]:  # built by hand: template, text, EOS
        head = chat_tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        body = chat_tok(text, add_special_tokens=False)["input_ids"]
        return head + body + [chat_tok.eos_token_id]

    expected = [reward_of(rm_ids(p, t)) for p, t in zip(prompts, texts)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected))
    # the policy's own ids (no template) are not what the RM was trained to read
    policy_view = [
        reward_of(policy_tok(p)["input_ids"] + ids + [policy_tok.eos_token_id])
        for p, ids in zip(prompts, sampled)
    ]
    assert all(abs(a - b) > 1e-4 for a, b in zip(got, policy_view))


def test_score_checks_lengths_and_reward_scorer_loads_from_a_directory(tok, tmp_path):
    from posttrain.models.reward import RewardScorer

    rm = _rm(tok)
    rm.mean, rm.std = 0.25, 2.0
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rm.score(["a", "b"], ["c"])
    rm.save(tmp_path / "rm")
    scorer = RewardScorer.from_path(tmp_path / "rm", normalize=True)
    raw = rm.score(["Q:"], [" yes"])[0]
    assert scorer(["Q:"], [" yes"]) == pytest.approx([(raw - 0.25) / 2.0], rel=1e-6)


def test_reward_source_from_a_directory_computes_in_the_dtype_asked(tmp_path):
    """Online recipes score with the reward model in the policy's dtype (``dtype=``): bfloat16
    weights give the float32 scores to bfloat16 precision."""
    from posttrain.judges.sources import load_reward_source

    tok = load_tokenizer("tiny-llama")
    _rm(tok).save(tmp_path / "rm")
    prompts, texts = ["The film was", "A story"], [" great fun.", " dull"]
    scores = {}
    for dtype in ("float32", "bfloat16"):
        src = load_reward_source(str(tmp_path / "rm"), dtype=dtype)
        model = src.fn.rm
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        scores[dtype] = src(prompts, texts)
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.05, abs=0.05)
    assert scores["bfloat16"] != scores["float32"]  # computed, not converted afterwards
