"""--device: auto picks CUDA, then MPS, then the CPU; a device that is not there is a UserError
naming it; torchrun ranks take cuda:LOCAL_RANK; batches move whole. (No GPU here: CUDA and MPS
are faked where a test needs them present.)"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch

from posttrain.errors import UserError
from posttrain.training import device as D


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "mps_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_cpu_machine(no_gpu):
    assert D.resolve("auto") == D.resolve("cpu") == D.resolve(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UserError, match=rf"--device: {spec} is not available on this machine"):
            D.resolve(spec)
    with pytest.raises(UserError, match="mps is not available"):
        D.resolve("mps")
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(UserError, match="must be one of auto, cpu, cuda, cuda:N or mps"):
            D.resolve(bad)


def test_auto_prefers_cuda_then_mps(monkeypatch, two_gpus):
    assert D.resolve("auto") == torch.device("cuda", 0)
    assert D.resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"cuda:2 is not there \(2 CUDA device"):
        D.resolve("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "mps_available", lambda: True)
    assert D.resolve("auto") == torch.device("mps")


def test_torchrun_ranks_take_their_local_gpu(monkeypatch, two_gpus):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.resolve("auto") == D.resolve("cuda") == torch.device("cuda", 1)
    assert D.resolve("cpu") == torch.device("cpu")  # gloo on the CPU
    with pytest.raises(UserError, match="each process takes cuda:LOCAL_RANK"):
        D.resolve("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "mps_available", lambda: True)
    assert D.resolve("auto") == torch.device("cpu")  # MPS is one process
    with pytest.raises(UserError, match="mps runs one process"):
        D.resolve("mps")


def test_dtypes_the_device_cannot_compute_are_refused(monkeypatch):
    D.check_dtype(torch.device("cpu"), "bfloat16")
    D.check_dtype(torch.device("cpu"), "float64")
    with pytest.raises(UserError, match="float64 is not supported on mps"):
        D.check_dtype(torch.device("mps"), "float64")
    monkeypatch.setattr(D, "supports_bfloat16", lambda device: False)
    monkeypatch.setattr(D, "_name", lambda device: "Tesla T4, compute capability 7.5")
    with pytest.raises(UserError, match=r"--dtype: bfloat16 is not supported on cuda:0 \(Tesla"):
        D.check_dtype(torch.device("cuda", 0), "bfloat16")


class Pair(NamedTuple):
    a: torch.Tensor
    b: int


@dataclasses.dataclass
class Batch:
    ids: torch.Tensor
    name: str


def test_to_device_moves_every_tensor_and_keeps_the_structure():
    meta = torch.device("meta")  # a device every torch has: shows the move without a GPU
    x = torch.ones(2, 3)
    obj = {"ids": x, "rows": [x, (x, 5)], "pair": Pair(x, 3), "batch": Batch(x, "n"), "s": "k"}
    out = D.to_device(obj, meta)
    assert out["ids"].device == meta and out["rows"][0].device == meta
    assert out["rows"][1][0].device == meta and out["rows"][1][1] == 5
    assert isinstance(out["pair"], Pair) and out["pair"].a.device == meta and out["pair"].b == 3
    assert isinstance(out["batch"], Batch) and out["batch"].ids.device == meta
    assert out["s"] == "k" and x.device.type == "cpu"  # the input is not changed
    assert D.to_device(x, "cpu") is x  # already there: no copy


def test_memory_metrics_are_cuda_only():
    assert D.memory_metrics(torch.device("cpu")) == {}
    assert D.module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert D.module_device(lambda x: x) is None and D.to_device([1], None) == [1]
    assert D.describe(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize(
    "command",
    [
        ["sft", "--model", "tiny-llama", "--train_data", "{data}", "--output_dir", "{out}"],
        ["rm", "--model", "tiny-llama", "--train_data", "{data}", "--output_dir", "{out}"],
        ["dpo", "--model", "tiny-llama", "--train_data", "{data}", "--output_dir", "{out}"]
        + ["--beta", "0.1"],
        ["judge", "--judge", "task:sentiment", "--input", "{data}", "--output", "{out}"],
        ["eval", "--mode", "reward-model", "--reward_model", "{data}", "--data", "{data}"]
        + ["--output_dir", "{out}"],
    ],
)
def test_an_absent_device_is_one_line_exit_2_and_nothing_written(command, tmp_path, capsys):
    """This machine has no GPU: --device cuda names it and stops before writing anything."""
    from posttrain.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "p", "chosen": " a", "rejected": " b"}\n')
    out = tmp_path / "out"
    args = [a.format(data=data, out=out) for a in command]
    for device in ("cuda", "cuda:1"):
        code = main([*args, "--device", device])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: --device: {device} is not available on this machine"), err
        assert not out.exists()


def test_inverse_cdf_sampling_by_hand_and_in_distribution():
    """A GPU model with the recipe's CPU generator samples by inverse CDF of CPU uniforms."""
    from posttrain.rollout.generate import inverse_cdf_tokens, sample_tokens

    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]], dtype=torch.float64).expand(4, 4)
    u = torch.tensor([0.0, 0.1, 0.2, 0.75], dtype=torch.float64)
    # cdf 0.2 0.2 0.7 1.0: u <  0.2 -> token 0; u = 0.2 -> token 2 (token 1 has p = 0); 0.75 -> 3
    assert inverse_cdf_tokens(probs, u).tolist() == [0, 0, 2, 3]
    assert inverse_cdf_tokens(2 * probs, u).tolist() == [0, 0, 2, 3]  # unnormalised rows
    draws = inverse_cdf_tokens(
        probs[:1].expand(40000, 4), torch.rand(40000, generator=torch.Generator().manual_seed(0))
    )
    freq = torch.bincount(draws, minlength=4).double() / 40000
    assert (freq - probs[0]).abs().max() < 0.01 and freq[1] == 0
    # on the generator's own device: torch.multinomial, the random stream of before
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(5, 7), -1)
    assert torch.equal(sample_tokens(p, g1), torch.multinomial(p, 1, generator=g2).squeeze(-1))


def test_demo_experiments_refuse_an_accelerator_until_they_use_one(tmp_path, monkeypatch, capsys):
    """The chat-model and over-optimisation demos run on the CPU: a GPU asked for (and present,
    faked here) is refused up front rather than silently ignored; auto and cpu run there."""
    import posttrain.recipes.demo as demo
    from posttrain.cli import main

    monkeypatch.setattr(demo, "validated", lambda spec, dtype="float32": None)
    for args in (["--experiment", "overoptimization"], ["--model", "smollm2-135m-instruct"]):
        out = tmp_path / "d"
        assert main(["demo", *args, "--device", "cuda", "--output_dir", str(out)]) == 2
        assert "run on the CPU only" in capsys.readouterr().err
        assert not out.exists()
