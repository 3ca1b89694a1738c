"""``posttrain sweep``: a grid of sft runs on tiny-llama, interrupted and resumed; each point
runs exactly once (finished points are skipped, the interrupted one continues from its
checkpoint); bad sweep configs are refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrain.recipes.sweep import point_name
from posttrain.training import read_metrics
from tests.helpers_sft import addition_rows


def _sweep_file(tmp_path: Path, train: str, out: Path, *, max_steps: int, grid: dict) -> Path:
    cfg = {
        "recipe": "sft",
        "output_dir": str(out),
        "base": {
            "model": "tiny-llama",
            "train_data": train,
            "batch_size": 4,
            "max_steps": max_steps,
            "save_steps": 2,
            "logging_steps": 1,
            "learning_rate": 3e-3,
            "max_length": 48,
            "progress": False,
        },
        "grid": grid,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(x) for x in text]
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_point_names():
    assert point_name({"beta": 0.1, "seed": 0}) == "beta-0.1_seed-0"
    assert point_name({"lora.r": 8, "loss_type": "ipo"}) == "lora.r-8_loss_type-ipo"
    assert point_name({"kl_coef": 1e-5, "path": "a/b c"}) == "kl_coef-1e-05_path-a_b_c"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sweep_killed_mid_point_and_resumed_runs_each_point_once(cli, jsonl, tmp_path):
    train = jsonl("train.jsonl", addition_rows(64, seed=0))
    out = tmp_path / "sweep"
    cfg = _sweep_file(
        tmp_path, train, out, max_steps=40, grid={"learning_rate": [1e-3, 2e-3, 3e-3]}
    )
    names = ["learning_rate-0.001", "learning_rate-0.002", "learning_rate-0.003"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from posttrain.cli import main; sys.exit(main(sys.argv[1:]))",
            "sweep",
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill the sweep (SIGKILL) once the second point has written a checkpoint
    target = out / names[1] / "checkpoint-4"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    kids = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for kid in kids:  # the running point dies with the sweep (PR_SET_PDEATHSIG)
        while _alive(kid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(kid)
    assert (out / "configs" / f"{names[0]}.done").exists()
    assert not (out / names[1] / "final").exists()  # interrupted mid-run
    assert not (out / names[2]).exists()
    first_line = (out / names[1] / "metrics.jsonl").read_text().splitlines()[0]

    code, _, err = cli("sweep", "--config", cfg, "--resume")
    assert code == 0, err
    ev = _events(out)
    for name in names:
        ends = [e for e in ev if e["point"] == name and e["event"] == "end"]
        assert [e["code"] for e in ends] == [0], name  # each point finished exactly once
        rows = read_metrics(out / name / "metrics.jsonl")
        assert [r["step"] for r in rows if r["step"] > 0] == list(range(1, 41)), name
        assert (out / name / "final" / "config.json").exists()
    assert [e["event"] for e in ev if e["point"] == names[0]] == ["start", "end", "skipped"]
    starts = [e for e in ev if e["point"] == names[1] and e["event"] == "start"]
    assert [s["flags"] for s in starts] == [[], ["--resume", "--overwrite"]]
    # continued, not restarted: the lines logged before the checkpoint were kept as they were
    assert (out / names[1] / "metrics.jsonl").read_text().splitlines()[0] == first_line
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["done"] * 3
    assert all("train/loss" in r["metrics"] and r["step"] == 40 for r in summary)
    md = (out / "summary.md").read_text()
    assert "| learning_rate-0.002 | 0.002 | done |" in md and "train/loss" in md


@pytest.mark.slow
def test_sweep_failed_point_rerun_alone_after_fix(cli, jsonl, tmp_path):
    """An injected failure (a point's data file is missing): the other point finishes, the sweep
    exits 2; after the fix, --resume runs the failed point only."""
    train = jsonl("train.jsonl", addition_rows(32, seed=0))
    missing = tmp_path / "later.jsonl"
    out = tmp_path / "sweep"
    cfg = _sweep_file(tmp_path, train, out, max_steps=2, grid={"seed": [0]})
    data = yaml.safe_load(cfg.read_text())
    del data["base"]["train_data"]
    data["grid"]["train_data"] = [train, str(missing)]
    cfg.write_text(yaml.safe_dump(data))
    # every point validates before anything runs: a missing file fails only inside its point
    code, _, err = cli("sweep", "--config", cfg)
    assert code == 2 and "1 point(s) failed" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["done", "pending"]

    missing.write_text(Path(train).read_text())
    code, _, err = cli("sweep", "--config", cfg, "--resume")
    assert code == 0, err
    ev = _events(out)
    assert [(e["event"], e["point"] == summary[0]["name"]) for e in ev] == [
        ("start", True),
        ("end", True),
        ("start", False),
        ("end", False),
        ("skipped", True),
        ("start", False),
        ("end", False),
    ]
    assert [e["code"] for e in ev if e["event"] == "end"] == [0, 2, 0]


def test_bad_sweep_configs_are_refused_before_anything_is_written(cli, jsonl, tmp_path):
    train = jsonl("train.jsonl", addition_rows(8, seed=0))
    out = tmp_path / "sweep"
    cfg = _sweep_file(tmp_path, train, out, max_steps=2, grid={"learning_rate": [1e-3]})
    code, _, err = cli("sweep", "--config", cfg, "--recipe", "nope")
    assert code == 2 and "cannot be swept" in err
    code, _, err = cli("sweep", "--config", cfg, "--grid", "{betta: [0.1]}")
    assert code == 2 and "sweep point betta-0.1" in err and "--betta" in err
    code, _, err = cli("sweep", "--config", cfg, "--grid", "{learning_rate: 0.1}")
    assert code == 2 and "--grid.learning_rate" in err
    code, _, err = cli("sweep", "--config", cfg, "--grid", "{max_steps: [0]}")
    assert code == 2 and "max_steps" in err
    assert not out.exists()
    # a second run into a used directory needs --resume or --overwrite
    out.mkdir()
    (out / "x").write_text("")
    code, _, err = cli("sweep", "--config", cfg)
    assert code == 2 and "--resume" in err
