"""The reward–KL frontier: the non-dominated front worked by hand, run and sweep directories as
points, and the plot."""

from __future__ import annotations

import json

from posttrain.evaluation.frontier import model_entries, non_dominated, plot_frontier


def _p(kl, gold, name=""):
    return {"kl": kl, "gold_reward": gold, "name": name}


def test_non_dominated_by_hand():
    pts = [
        _p(0.0, 0.00, "ref"),
        _p(2.0, 0.30, "a"),
        _p(1.0, 0.10, "b"),
        _p(3.0, 0.25, "c"),  # dominated by a (less KL, more gold)
        _p(1.0, 0.20, "d"),  # beats b at the same KL
        _p(4.0, 0.50, "e"),
        _p(0.5, -0.1, "f"),  # dominated by ref
        _p(2.0, 0.30, "g"),  # a duplicate of a: the first is kept
    ]
    # by KL: ref (0, 0) | f (0.5, -0.1) no | d (1, .2) yes, b (1, .1) no | a (2, .3) yes, g no |
    # c (3, .25) no | e (4, .5) yes
    assert [p["name"] for p in non_dominated(pts)] == ["ref", "d", "a", "e"]
    assert non_dominated([]) == []
    # other keys
    rows = [{"x": 1, "y": 2}, {"x": 0, "y": 1}, {"x": 2, "y": 2}]
    assert non_dominated(rows, x="x", y="y") == [{"x": 0, "y": 1}, {"x": 1, "y": 2}]


def _fake_run(path, steps, final=True, base="tiny-llama"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: {base}\nmax_steps: {max(steps)}\n")
    for s in steps:
        ck = path / f"checkpoint-{s}"
        ck.mkdir()
        (ck / "model.safetensors").write_bytes(b"")
    if final:
        (path / "final").mkdir()
        (path / "final" / "config.json").write_text("{}")


def test_model_entries_expands_run_and_sweep_directories(tmp_path):
    _fake_run(tmp_path / "ppo", [10, 2])
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "beta-0.1", [5])
    _fake_run(sweep / "beta-0.5", [5])
    (sweep / "sweep.json").write_text(
        json.dumps(
            {
                "recipe": "dpo",
                "points": [
                    {"name": "beta-0.1", "dir": "beta-0.1", "params": {"beta": 0.1}},
                    {"name": "beta-0.5", "dir": "beta-0.5", "params": {"beta": 0.5}},
                    {"name": "beta-1", "dir": "beta-1", "params": {"beta": 1}},  # not run yet
                ],
            }
        )
    )
    entries, methods = model_entries([str(tmp_path / "ppo"), str(sweep)])
    names_steps = [(n, s) for n, _, s in entries]
    # final/ has the step max_steps of its config.yaml; the checkpoint of that step (the same
    # weights) is not evaluated twice
    assert names_steps == [("ppo", 2), ("ppo", 10), ("dpo beta-0.1", 5), ("dpo beta-0.5", 5)]
    assert entries[1][1].endswith("ppo/final")
    assert methods == {"ppo": "ppo", "dpo beta-0.1": "dpo", "dpo beta-0.5": "dpo"}
    # a plain model directory or glob still works as before
    entries, methods = model_entries([str(tmp_path / "ppo" / "checkpoint-*")])
    assert [(n, s) for n, _, s in entries] == [("ppo", 10), ("ppo", 2)]


def test_frontier_plot_is_png(tmp_path):
    pts = [{"run": "reference", "step": 0, "kl": 0.0, "gold_reward": 0.1}]
    for run, method, kl, gold in (
        ("dpo beta-0.1", "dpo", 3.0, 0.5),
        ("dpo beta-0.5", "dpo", 1.0, 0.3),
        ("ppo", "ppo", 4.0, 0.35),
    ):
        pts.append(
            {
                "run": run,
                "method": method,
                "step": 100,
                "kl": kl,
                "kl_se": 0.1,
                "gold_reward": gold,
                "gold_reward_se": 0.02,
            }
        )
        pts.append(
            {
                "run": run,
                "method": method,
                "step": 50,
                "kl": kl / 2,
                "kl_se": 0.1,
                "gold_reward": gold / 2,
                "gold_reward_se": 0.02,
            }
        )
    path = plot_frontier(pts, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
