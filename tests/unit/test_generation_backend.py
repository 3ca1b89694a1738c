"""Generation backends: the Rollout layout of external samplers matches the built-in engine's, a
fake vLLM module drives ``VLLMBackend`` (requests, seeds, stop strings, weight sync with LoRA
merged), and the online machinery accepts any object with ``generate`` / ``sync_weights``."""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from posttrain.config import LoraConfig
from posttrain.errors import UserError
from posttrain.models import forward_logprobs, load_model, load_tokenizer
from posttrain.models.lora import apply_lora, merge_lora_state
from posttrain.rollout.backend import (
    EngineBackend,
    GenerationBackend,
    SamplingParams,
    VLLMBackend,
    hf_state_dict,
    make_backend,
    rollout_from_tokens,
)

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def test_rollout_from_tokens_matches_the_engine_layout(tok):
    model = load_model("tiny-llama", dtype="float64")
    engine = EngineBackend(model, tok)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    r = engine.generate(PROMPTS, params, generator=torch.Generator().manual_seed(0))
    responses, logps = [], []
    for i in range(len(PROMPTS)):
        n = int(r.response_mask[i].sum())
        responses.append(r.response_ids[i, :n].tolist())
        logps.append(r.sample_logps[i, r.prompt_width - 1 : r.prompt_width - 1 + n].tolist())
    rebuilt = rollout_from_tokens(
        PROMPTS, responses, logps, pad_id=tok.pad_token_id, finished=r.finished.tolist()
    )
    width = rebuilt.input_ids.size(1)  # the engine may pad responses one column wider
    assert torch.equal(rebuilt.input_ids, r.input_ids[:, :width])
    assert torch.equal(rebuilt.attention_mask, r.attention_mask[:, :width])
    assert torch.equal(rebuilt.response_mask, r.response_mask[:, :width])
    torch.testing.assert_close(
        rebuilt.sample_logps, r.sample_logps[:, : width - 1].float(), rtol=0, atol=1e-6
    )
    # and the training forward's log-probs line up with the sampler's on response tokens
    out = forward_logprobs(model, rebuilt.input_ids, rebuilt.attention_mask, rebuilt.response_mask)
    torch.testing.assert_close(out.logps.float(), rebuilt.sample_logps, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- a fake vLLM


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    token_ids: list[int]
    logprobs: list[dict[int, _Logprob]]
    finish_reason: str
    stop_reason: object = None


@dataclass
class _Output:
    outputs: list[_Completion]


@dataclass
class _FakeModel:
    loaded: dict[str, torch.Tensor] = field(default_factory=dict)

    def load_weights(self, weights):
        self.loaded = {k: v.clone() for k, v in weights}


class _FakeLLM:
    """Answers request i with tokens [20 + i, 21 + i] then EOS (or cut at max_tokens)."""

    def __init__(self, eos_id: int, **kwargs):
        self.eos_id, self.kwargs, self.calls, self.resets = eos_id, kwargs, [], 0
        self.model = _FakeModel()
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self.model))
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(worker=worker))
        )

    def generate(self, requests, sampling, use_tqdm=True):
        self.calls.append((requests, sampling))
        outs = []
        for i, _ in enumerate(requests):
            tokens = [20 + i, 21 + i, self.eos_id][: sampling.max_tokens]
            done = len(tokens) == 3
            logps = [{t: _Logprob(-0.5 * (j + 1))} for j, t in enumerate(tokens)]
            outs.append(_Output([_Completion(tokens, logps, "stop" if done else "length")]))
        return outs

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch, tok):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    module.LLM = lambda **kw: _FakeLLM(tok.eos_token_id, **kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_backend_builds_rollouts_and_draws_seeds_from_the_generator(fake_vllm, tok):
    backend = VLLMBackend(tok, model_path="/some/dir", gpu_memory_utilization=0.2)
    assert isinstance(backend, GenerationBackend)
    assert backend.llm.kwargs["model"] == "/some/dir"
    params = SamplingParams(max_new_tokens=3, temperature=0.7, top_k=0)
    r = backend.generate(PROMPTS, params, generator=torch.Generator().manual_seed(1))
    requests, sampling = backend.llm.calls[-1]
    assert [q["prompt_token_ids"] for q in requests] == PROMPTS
    assert (sampling.temperature, sampling.top_k, sampling.max_tokens) == (0.7, -1, 3)
    assert r.prompt_width == 4 and r.finished.tolist() == [True, True, True]
    assert r.response_ids[1].tolist() == [21, 22, tok.eos_token_id]
    assert r.input_ids[1, :2].tolist() == [tok.pad_token_id] * 2  # left-padded prompt
    assert r.sample_logps[0, 3:6].tolist() == [-0.5, -1.0, -1.5]
    # the same generator state gives the same seed; a used one another
    again = VLLMBackend(tok, model_path="x")
    again.generate(PROMPTS, params, generator=torch.Generator().manual_seed(1))
    assert again.llm.calls[-1][1].seed == sampling.seed
    cut = backend.generate(PROMPTS, SamplingParams(max_new_tokens=2), generator=None)
    assert cut.finished.tolist() == [False] * 3 and cut.response_mask.sum().item() == 6


def test_vllm_sync_weights_pushes_merged_lora_weights(fake_vllm, tok):
    torch.manual_seed(0)
    policy = apply_lora(load_model("tiny-llama"), LoraConfig(enabled=True, r=2))
    for name, p in policy.named_parameters():  # make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    backend = VLLMBackend(tok, model_path="x")
    ids = torch.tensor([[5, 6, 7, 8]])
    before = policy(input_ids=ids).logits
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    backend.sync_weights(policy)
    loaded = backend.llm.model.loaded
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert loaded.keys() == merged.keys()  # plain HF names, no lora_ / base_layer
    for k in merged:
        torch.testing.assert_close(loaded[k], merged[k])
    assert backend.llm.resets == 1
    # the policy itself is untouched, bit for bit (peft's merge + unmerge left rounding behind)
    assert all(torch.equal(v, weights[k]) for k, v in policy.state_dict().items())
    assert torch.equal(policy(input_ids=ids).logits, before)
    plain = load_model("tiny-llama")
    assert hf_state_dict(plain).keys() == plain.state_dict().keys()


def test_merge_lora_state_by_hand():
    # W = I (2 x 2), bias b; A (r = 1, in 2) = [[1, 2]], B (out 2, r) = [[1], [0]], scale 2:
    # W + 2 B A = [[1 + 2, 0 + 4], [0, 1]]
    state = {
        "base_model.model.proj.base_layer.weight": torch.eye(2),
        "base_model.model.proj.base_layer.bias": torch.tensor([5.0, 6.0]),
        "base_model.model.proj.lora_A.default.weight": torch.tensor([[1.0, 2.0]]),
        "base_model.model.proj.lora_B.default.weight": torch.tensor([[1.0], [0.0]]),
        "base_model.model.norm.weight": torch.ones(2),
    }
    merged = merge_lora_state(state, {"base_model.model.proj": 2.0})
    assert merged.keys() == {"proj.weight", "proj.bias", "norm.weight"}
    assert merged["proj.weight"].tolist() == [[3.0, 4.0], [0.0, 1.0]]
    assert merged["proj.bias"].tolist() == [5.0, 6.0] and merged["norm.weight"].tolist() == [1, 1]
    assert state["base_model.model.proj.base_layer.weight"].tolist() == [[1, 0], [0, 1]]


def test_make_backend(tok, monkeypatch, tmp_path):
    model = load_model("tiny-llama")
    assert isinstance(make_backend("engine", model, tok), EngineBackend)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(UserError, match="vllm is not installed"):
        make_backend("vllm", model, tok, workdir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(UserError, match="--generation_backend"):
        make_backend("magic", model, tok)


class _ScriptedBackend:
    """A fake backend: fixed responses, counts weight syncs."""

    def __init__(self, tok):
        self.tok, self.synced = tok, 0

    def generate(self, prompt_ids, params, *, generator=None):
        responses = [[30, 31, self.tok.eos_token_id] for _ in prompt_ids]
        return rollout_from_tokens(
            prompt_ids,
            responses,
            [[0.0] * 3 for _ in prompt_ids],
            pad_id=self.tok.pad_token_id,
            finished=[True] * len(prompt_ids),
        )

    def sync_weights(self, model):
        self.synced += 1


def test_online_collect_runs_on_any_backend(tok):
    from posttrain.rollout import online
    from posttrain.training.reference import policy_reference

    model = load_model("tiny-llama")
    backend = _ScriptedBackend(tok)
    assert isinstance(backend, GenerationBackend)
    exp = online.collect(
        backend,
        model,
        policy_reference(model, lora_enabled=False),
        tok,
        ["a prompt", "another prompt"],
        lambda prompts, completions: [float(len(c)) for c in completions],
        k=2,
        params=SamplingParams(max_new_tokens=3),
        max_prompt_tokens=16,
    )
    assert exp.rollout.input_ids.size(0) == 4
    assert exp.rollout.response_ids[:, :2].tolist() == [[30, 31]] * 4
    assert exp.logps.shape == exp.ref_logps.shape == exp.mask.shape
    assert len(set(exp.texts)) == 1


def test_merged_lora_backend_samples_what_the_lora_policy_samples(tok):
    """The LoRA sampler's merged copy gives the policy's own samples and log-probs (float64),
    follows the policy only after ``sync_weights``, and leaves the policy's weights untouched."""
    from posttrain.rollout.generate import MergedLoraBackend

    torch.manual_seed(0)
    policy = apply_lora(load_model("tiny-llama", dtype="float64"), LoraConfig(enabled=True, r=2))
    for name, p in policy.named_parameters():  # adapters that change the samples
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    own, merged = EngineBackend(policy, tok), MergedLoraBackend(policy, tok)
    params = SamplingParams(max_new_tokens=8, temperature=1.0)

    def both():
        return [
            b.generate(PROMPTS, params, generator=torch.Generator().manual_seed(3))
            for b in (own, merged)
        ]

    a, b = both()
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(b.sample_logps, a.sample_logps, rtol=0, atol=1e-10)
    assert merged.model is not policy and not any(
        p.requires_grad for p in merged.model.parameters()
    )
    assert all(torch.equal(v, weights[k]) for k, v in policy.state_dict().items())

    with torch.no_grad():  # an "optimizer step" on the adapters
        for name, p in policy.named_parameters():
            if "lora_A" in name:
                p.mul_(-1.5)
    stale, new = both()[1], both()[0]
    assert not torch.equal(stale.input_ids, new.input_ids)  # the copy is stale until synced
    merged.sync_weights(policy)
    a, b = both()
    assert torch.equal(a.input_ids, b.input_ids)
    torch.testing.assert_close(b.sample_logps, a.sample_logps, rtol=0, atol=1e-10)
