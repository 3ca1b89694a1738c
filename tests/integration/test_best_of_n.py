"""best-of-n keeps the highest-scored sample (and can SFT on the kept ones); expert iteration's
rounds of best-of-n + SFT make the model's own samples score higher."""

from __future__ import annotations

import json

from tests.helpers_rl import count_e

PROMPTS = [{"prompt": p} for p in ("The movie was", "I think that", "Today the", "Hello")] * 2


def test_best_of_n_keeps_the_best_and_can_fine_tune_on_it(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", PROMPTS)
    out, sft_dir = tmp_path / "best.jsonl", tmp_path / "sft"
    code, _, err = cli(
        "best-of-n", "--model", "tiny-llama", "--prompts", prompts,
        "--reward", "tests.helpers_rl:count_e", "--output", out, "--n", "8",
        "--max_new_tokens", "16", "--sft_output_dir", sft_dir, "--sft", "{max_steps: 2}",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(PROMPTS)
    for r in rows:
        assert r["scores"] == count_e(None, r["completions"])  # scored by the reward source
        assert r["score"] == max(r["scores"]) and r["completion"] in r["completions"]
    best = sum(r["score"] for r in rows) / len(rows)
    average = sum(s for r in rows for s in r["scores"]) / (8 * len(rows))
    assert best > 1.3 * average
    kept = [json.loads(line) for line in (tmp_path / "best.sft.jsonl").read_text().splitlines()]
    assert kept == [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    assert (sft_dir / "final" / "model.safetensors").exists()


def test_expert_iteration_improves_the_model_samples(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", PROMPTS)
    out = tmp_path / "ei"
    code, _, err = cli(
        "expert-iteration", "--model", "tiny-llama", "--prompts", prompts,
        "--reward", "tests.helpers_rl:count_e", "--output_dir", out, "--rounds", "2", "--n", "8",
        "--max_new_tokens", "16", "--sft", "{max_steps: 40, learning_rate: 0.01, lr_schedule: constant}",
    )  # fmt: skip
    assert code == 0, err
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    # round 2 samples from the model SFT'd on round 1's best: its average sample is better
    assert rounds[1]["mean"] > 1.3 * rounds[0]["mean"], rounds  # ~0.8 -> ~1.4
    assert (out / "final" / "model.safetensors").exists()
    assert (out / "round-1" / "sft.jsonl").exists() and (out / "round-2" / "best.jsonl").exists()


def test_bad_reward_exits_2_and_writes_nothing(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", PROMPTS)
    out = tmp_path / "best.jsonl"
    code, _, err = cli(
        "best-of-n", "--model", "tiny-llama", "--prompts", prompts, "--reward", "nowhere",
        "--output", out,
    )  # fmt: skip
    assert code == 2 and "--reward:" in err
    assert not out.exists()


def test_generative_judge_scores_and_its_reasons_are_kept(cli, jsonl, tmp_path):
    """``--reward judge:generative --judge_model M``: the judge model rates each sample, and its
    reply on each is written beside the score (``rationales``; the kept one's as ``rationale``):
    the same replies and ratings the judge gives those samples in-process."""
    from posttrain.judges.factory import build_judge

    prompts = jsonl("p.jsonl", PROMPTS[:2])
    out = tmp_path / "best.jsonl"
    code, _, err = cli(
        "best-of-n", "--model", "tiny-llama", "--prompts", prompts, "--reward", "judge:generative",
        "--judge_model", "tiny-llama", "--output", out, "--n", "3", "--max_new_tokens", "8",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    judge = build_judge("generative", "tiny-llama")
    flat = [(r["prompt"], c) for r in rows for c in r["completions"]]
    scores = judge.score([p for p, _ in flat], [c for _, c in flat])
    assert [s for r in rows for s in r["scores"]] == scores
    assert [t for r in rows for t in r["rationales"]] == [t.strip() for t in judge.replies]


def test_the_kept_sample_carries_the_judges_reasons(cli, jsonl, tmp_path, monkeypatch):
    """A judge that explains its 1-10 rating (here: counts the e's of the reply): the kept sample
    is the highest-rated, and each sample's ``rationales`` entry is the reply about that sample."""
    from posttrain.judges.generative import SCORE_INSTRUCTION, GenerativeJudge

    def explain(self, texts):
        replies = []
        for text in texts:
            reply = text.rsplit("Assistant: ", 1)[1].removesuffix("\n" + SCORE_INSTRUCTION)
            e = reply.count("e")
            replies.append(f"{e} e's in {reply!r}.\nScore: {min(10, 1 + e)}")
        return replies

    monkeypatch.setattr(GenerativeJudge, "_generate", explain)
    out = tmp_path / "best.jsonl"
    code, _, err = cli(
        "best-of-n", "--model", "tiny-llama", "--prompts", jsonl("p.jsonl", PROMPTS),
        "--reward", "judge:generative", "--judge_model", "tiny-llama", "--output", out,
        "--n", "4", "--max_new_tokens", "16",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for r in rows:
        for c, s, why in zip(r["completions"], r["scores"], r["rationales"]):
            e = c.strip().count("e")
            assert s == min(10, 1 + e) and why.startswith(f"{e} e's in {c.strip()!r}.")
        assert r["score"] == max(r["scores"])
        assert r["rationale"] == r["rationales"][r["completions"].index(r["completion"])]
    assert len({s for r in rows for s in r["scores"]}) > 1  # the ratings tell the samples apart


def test_generative_judge_without_its_model_exits_2(cli, jsonl, tmp_path):
    out = tmp_path / "best.jsonl"
    code, _, err = cli(
        "best-of-n", "--model", "tiny-llama", "--prompts", jsonl("p.jsonl", PROMPTS),
        "--reward", "judge:generative", "--output", out,
    )  # fmt: skip
    assert code == 2 and "--judge_model: a generative judge needs a model" in err
    assert not out.exists()
