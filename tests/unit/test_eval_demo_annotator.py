"""The demo's simulated annotator: prefers the higher gold reward, drops ties and empty
responses, flips the requested share of labels."""

from posttrain.recipes.demo import label_pairs


def test_annotator_without_noise():
    prompts = ["p1", "p2", "p3", "p4"]
    pairs = [["good", "bad"], ["meh", "great"], ["same", "same2"], ["", "x"]]
    gold = [(0.9, -0.5), (0.0, 0.8), (0.30, 0.32), (0.0, 0.5)]
    rows, stats = label_pairs(prompts, pairs, gold, noise=0.0, seed=0)
    assert rows == [
        {"prompt": "p1", "chosen": "good", "rejected": "bad"},
        {"prompt": "p2", "chosen": "great", "rejected": "meh"},
    ]
    assert stats == {"pairs": 2, "ties_dropped": 1, "empty_dropped": 1, "flipped": 0}


def test_annotator_noise_rate():
    n = 4000
    prompts = [f"p{i}" for i in range(n)]
    pairs = [["hi", "lo"]] * n
    gold = [(1.0, -1.0)] * n
    rows, stats = label_pairs(prompts, pairs, gold, noise=0.2, seed=1)
    flipped = sum(r["chosen"] == "lo" for r in rows)
    assert flipped == stats["flipped"] and abs(flipped / n - 0.2) < 0.03


def test_resume_reruns_only_the_stages_that_read_a_rerun_one(tmp_path):
    """--resume: with every marker present nothing reruns; once PPO reruns, a stage that reads
    every earlier one (eval) reruns too, while DPO, which reads only the pairs, is kept."""
    from posttrain.recipes.demo import BEFORE_PPO, Progress, Stages

    for name in ("rm", "ppo", "dpo", "eval"):
        (tmp_path / name).touch()
    kept = Stages(tmp_path, Progress(4), resume=True).done_already
    assert kept("rm", tmp_path / "rm") and kept("ppo", tmp_path / "ppo")
    assert kept("dpo", tmp_path / "dpo", after=BEFORE_PPO) and kept("eval", tmp_path / "eval")

    (tmp_path / "ppo").unlink()
    done_already = Stages(tmp_path, Progress(4), resume=True).done_already
    assert done_already("rm", tmp_path / "rm")
    assert not done_already("ppo", tmp_path / "ppo")
    assert done_already("dpo", tmp_path / "dpo", after=BEFORE_PPO)
    assert not done_already("eval", tmp_path / "eval")
    # a rerun stage that DPO reads (the labels) makes DPO rerun
    redo = Stages(tmp_path, Progress(4), resume=True).done_already
    assert not redo("label", tmp_path / "missing")
    assert not redo("dpo", tmp_path / "dpo", after=BEFORE_PPO)
    # without --resume every stage runs
    assert not Stages(tmp_path, Progress(4), resume=False).done_already("rm", tmp_path / "rm")
