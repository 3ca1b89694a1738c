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
    # every device, the generator's own too: one float64 uniform per row from the generator
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(5, 7), -1)
    u = torch.rand(5, generator=g2, dtype=torch.float64)
    assert torch.equal(sample_tokens(p, g1), inverse_cdf_tokens(p, u))
    assert torch.equal(g1.get_state(), g2.get_state())  # 5 numbers drawn, no more


@pytest.mark.parametrize("block", [2, 3, 4, 256])
def test_inverse_cdf_in_blocks_by_hand(monkeypatch, block):
    """The two-level search (block sums, then the chosen block's entries) gives the one-level
    answers above, for blocks that split the row (2), pad it (3: 4 entries in blocks of 3) or hold
    it whole; a target on a block boundary goes past a zero-probability block's end."""
    import importlib

    # the module (the package exports a function of the same name)
    g = importlib.import_module("posttrain.rollout.generate")
    monkeypatch.setattr(g, "INVERSE_CDF_BLOCK", block)
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]], dtype=torch.float64).expand(4, 4)
    u = torch.tensor([0.0, 0.1, 0.2, 0.75], dtype=torch.float64)
    assert g.inverse_cdf_tokens(probs, u).tolist() == [0, 0, 2, 3]
    # blocks of 2: [0.3, 0], [0, 0], [0.7, 0]: u = 0.3 skips the empty block to token 4
    probs = torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.7, 0.0]], dtype=torch.float64).expand(3, 6)
    u = torch.tensor([0.29, 0.3, 0.999], dtype=torch.float64)
    assert g.inverse_cdf_tokens(probs, u).tolist() == [0, 4, 4]


def test_inverse_cdf_rounding_between_the_levels_never_draws_a_zero():
    """A block's sum can exceed its entries' running sum by rounding (1 + 254 x 1e-17 is
    1 + 2.7e-15 summed pairwise, 1 added one by one): a target between the two lies in the block
    by its sum but past its running sum; the draw is then the block's last entry of probability
    > 0 (254), not the next block's first (256, probability 0) nor the block's zero end (255)."""
    from posttrain.rollout.generate import INVERSE_CDF_BLOCK, inverse_cdf_tokens

    probs = torch.zeros(1, 3 * INVERSE_CDF_BLOCK, dtype=torch.float64)
    probs[0, 0], probs[0, 1:255], probs[0, 2 * INVERSE_CDF_BLOCK] = 1.0, 1e-17, 1.0
    first = probs[0, :INVERSE_CDF_BLOCK]
    assert float(first.sum()) > float(first.cumsum(0)[-1]) == 1.0  # the premise
    u = torch.tensor([(1.0 + 1e-15) / float(probs.sum())], dtype=torch.float64)
    assert inverse_cdf_tokens(probs, u).tolist() == [254]


def test_inverse_cdf_in_blocks_equals_one_cumulative_sum():
    """On SmolLM2-sized rows (49,152 entries, 192 blocks) and on a vocabulary that is no multiple
    of the block (833, tiny-llama's), with top-k zeros and in float32 and float64, every draw is
    the first index whose float64 cumulative sum over the whole row exceeds the target."""
    from posttrain.rollout.generate import filter_logits, inverse_cdf_tokens

    gen = torch.Generator().manual_seed(0)
    for v, top_k, dtype in [
        (49152, 0, torch.float32),
        (833, 0, torch.float64),
        (833, 40, torch.float32),
    ]:
        logits = 3 * torch.randn(256, v, generator=gen, dtype=dtype)
        probs = torch.softmax(filter_logits(logits, top_k=top_k), -1)
        u = torch.rand(256, generator=gen, dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        expected = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1)
        got = inverse_cdf_tokens(probs, u)
        assert torch.equal(got, expected), (v, top_k, dtype)
        assert bool((probs.gather(1, got[:, None]) > 0).all())


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
