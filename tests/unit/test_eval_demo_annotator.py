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
