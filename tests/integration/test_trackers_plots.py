"""--report_to (TensorBoard event files read back with TensorBoard's own reader; an offline wandb
run), curves.png at the end of every run, and ``posttrain plot`` overlaying several runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from posttrain.training import read_metrics
from tests.helpers_sft import addition_rows

SFT = ["sft", "--model", "tiny-llama", "--max_steps", "6", "--logging_steps", "2"]
SFT += ["--batch_size", "4", "--learning_rate", "1e-3", "--progress", "false"]


def _png_size(path) -> tuple[int, int]:
    from matplotlib.image import imread

    img = imread(str(path))
    return img.shape[1], img.shape[0]


def test_tensorboard_events_hold_the_metrics_rows(cli, jsonl, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = jsonl("sft.jsonl", addition_rows(16))
    out = tmp_path / "tb"
    code, _, err = cli(
        *SFT, "--train_data", data, "--output_dir", out, "--report_to", "tensorboard"
    )
    assert code == 0, err
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "train/lr" in acc.Tags()["scalars"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in rows] == [2, 4, 6]
    for e, r in zip(events, rows):  # stored as float32
        assert e.value == pytest.approx(r["train/loss"], rel=1e-6)
    # every run (whatever --report_to) draws its curves at the end
    assert _png_size(out / "curves.png")[0] > 400


def test_report_to_none_writes_no_tracker_files(cli, jsonl, tmp_path):
    data = jsonl("sft.jsonl", addition_rows(16))
    out = tmp_path / "none"
    code, _, err = cli(*SFT, "--train_data", data, "--output_dir", out, "--max_steps", "2")
    assert code == 0, err
    assert not (out / "runs").exists() and not (out / "wandb").exists()
    assert (out / "curves.png").exists()


def test_missing_tracker_package_is_a_clear_exit_2(cli, jsonl, tmp_path, monkeypatch):
    from posttrain.training import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    out = tmp_path / "w"
    data = jsonl("sft.jsonl", addition_rows(4))
    code, _, err = cli(*SFT, "--train_data", data, "--output_dir", out, "--report_to", "wandb")
    assert code == 2 and "pip install wandb" in err and err.count("\n") == 1, err
    assert not out.exists()
    code, _, err = cli(*SFT, "--train_data", data, "--output_dir", out, "--report_to", "mlflow")
    assert code == 2 and "--report_to" in err and not out.exists()


def wandb_history(path) -> list[dict]:
    """The history rows of an offline wandb run file (``run-ID.wandb``): a LevelDB-style log
    (7-byte file header; 32 KiB blocks of records with a 7-byte header: crc32, length, type
    FULL 1 / FIRST 2 / MIDDLE 3 / LAST 4) of ``wandb_internal_pb2.Record`` messages."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, part, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and n == 0):  # block padding
            pos += left
            continue
        part, pos = part + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


@pytest.mark.slow  # wandb's service process takes ~20 s to start and stop
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_runs_offline_with_the_metrics_rows(cli, jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the tracker forces offline whatever is set
    data = jsonl("sft.jsonl", addition_rows(16))
    out = tmp_path / "wb"
    code, _, err = cli(*SFT, "--train_data", data, "--output_dir", out, "--report_to", "wandb")
    assert code == 0, err
    (run,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {r["_step"]: r for r in wandb_history(run)}
    rows = read_metrics(out / "metrics.jsonl")
    assert sorted(logged) == [r["step"] for r in rows] == [0, 2, 4, 6]
    for r in rows[1:]:
        assert logged[r["step"]]["train/loss"] == r["train/loss"]
        assert logged[r["step"]]["train/lr"] == r["train/lr"]


def test_plot_overlays_runs_and_refuses_a_directory_without_metrics(cli, jsonl, tmp_path):
    data = jsonl("sft.jsonl", addition_rows(16))
    for lr in ("1e-3", "1e-4"):
        args = [*SFT, "--train_data", data, "--learning_rate", lr, "--max_steps", "4"]
        assert cli(*args, "--output_dir", tmp_path / f"lr{lr}")[0] == 0
    png = tmp_path / "both.png"
    code, out, err = cli("plot", tmp_path / "lr1e-3", tmp_path / "lr1e-4", "--output", png)
    assert code == 0 and f"wrote {png}" in out, err
    assert _png_size(png)[0] > 400
    code, _, err = cli(
        "plot", tmp_path / "lr1e-3", tmp_path / "nothing", "--output", tmp_path / "x.png"
    )
    assert code == 2 and "no metrics.jsonl" in err and not (tmp_path / "x.png").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{oops\n')
    code, _, err = cli("plot", bad, "--output", tmp_path / "y.png")
    assert code == 2 and f"{bad / 'metrics.jsonl'}:2:" in err


def test_curves_panels_follow_what_the_run_logged():
    from posttrain.training.curves import panels_of

    ppo = [{"step": 1, "objective/scores": 0.1, "objective/kl": 0.0, "loss/policy": 0.5}]
    rm = [{"step": 1, "train/loss": 0.7, "rewards/accuracies": 0.5, "train/lr": 1e-5}]
    assert [t for t, _ in panels_of([ppo])] == ["loss", "reward", "KL"]
    assert [t for t, _ in panels_of([rm])] == ["loss", "accuracy", "learning rate"]
    assert panels_of([[{"step": 1, "time/elapsed_s": 3.0}]]) == []
