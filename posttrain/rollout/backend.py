"""Generation backends for online recipes: the built-in engine, and vLLM for GPU users.

The interface is :class:`~posttrain.rollout.generate.GenerationBackend` (``generate(prompt_ids,
params, generator=) -> Rollout`` and ``sync_weights(model)``), with the built-in
:class:`~posttrain.rollout.generate.EngineBackend`; both are re-exported here. This module adds

- :func:`rollout_from_tokens`: the :class:`Rollout` record from prompts and sampled tokens, exactly
  as the built-in engine lays it out (left-padded prompts, right-padded responses, the log-prob
  convention of ``posttrain.models.logprobs``), for any external sampler;
- :class:`VLLMBackend`: sampling with vLLM (``pip install vllm`` on a CUDA machine; imported only
  when used). After every optimizer step ``sync_weights(model)`` pushes the policy's weights into
  the vLLM engine (LoRA adapters merged first), so samples always come from the current policy;
- :func:`make_backend`: ``engine`` or ``vllm`` by name.

Recipes re-compute every log-prob they train on with the training forward (``forward_logprobs``),
so a backend's own ``sample_logps`` only serve as a diagnostic. vLLM reports log-probs of its raw
distribution (before temperature); the engine reports log softmax(logits / temperature).

GPU notes (vLLM): every process of a ``torchrun`` job runs its own engine on its own GPU next to
the trainer ("colocated"), generating for its shard of the prompts; give it a slice of the memory
(``gpu_memory_utilization=0.3``) and start it from an HF directory of the starting policy
(:meth:`VLLMBackend.from_model` writes one). Weight sync copies the full state dict once per
optimizer step: on 1-8B models it costs well under a second on one node. Under ``--distributed
fsdp`` every process gathers the full weights for its engine (``hf_state_dict``), with LoRA too.
The built-in engine samples from the training model itself, sharded or not (see
``posttrain.rollout.generate``: under FSDP every process makes the same number of forwards).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from posttrain.data.collate import pad
from posttrain.errors import UserError
from posttrain.rollout.generate import EngineBackend, GenerationBackend, Rollout, SamplingParams

BACKENDS = ("engine", "vllm")


def rollout_from_tokens(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    response_logps: Sequence[Sequence[float]],
    *,
    pad_id: int,
    finished: Sequence[bool],
    stopped: Sequence[bool] | None = None,
) -> Rollout:
    """A :class:`Rollout` from N prompts and their sampled responses (the response includes its
    EOS when it ended with one; ``response_logps[i][j]`` is the sampler's log-prob of token j)."""
    n = len(prompt_ids)
    ids = pad(prompt_ids, pad_id, side="left")  # (N, P)
    prompt_attn = pad([[1] * len(p) for p in prompt_ids], 0, side="left")
    width = ids.size(1)
    longest = max((len(r) for r in response_ids), default=0)
    resp = torch.full((n, longest), pad_id, dtype=torch.long)  # (N, R)
    resp_mask = torch.zeros(n, longest, dtype=torch.long)
    sample_logps = torch.zeros(n, width + longest - 1)  # (N, P+R-1)
    for i, (tokens, logps) in enumerate(zip(response_ids, response_logps)):
        resp[i, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
        resp_mask[i, : len(tokens)] = 1
        # entry t is log p(token t+1 | ..t): the first response token sits at P, its entry at P-1
        sample_logps[i, width - 1 : width - 1 + len(tokens)] = torch.as_tensor(
            list(logps), dtype=sample_logps.dtype
        )
    return Rollout(
        input_ids=torch.cat([ids, resp], 1),
        attention_mask=torch.cat([prompt_attn, resp_mask], 1),
        response_mask=torch.cat([torch.zeros_like(ids), resp_mask], 1),
        sample_logps=sample_logps,
        prompt_width=width,
        finished=torch.as_tensor(list(finished), dtype=torch.bool),
        stopped=None if stopped is None else torch.as_tensor(list(stopped), dtype=torch.bool),
    )


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The policy's weights under plain Hugging Face names: unwrapped from DDP, gathered whole on
    every process from FSDP shards (a collective), LoRA adapters merged into copies of the base
    weights (``W + B A * alpha / r``: :func:`~posttrain.models.lora.merge_lora_state`)."""
    from posttrain.models.lora import plain_state_dict
    from posttrain.training import distributed

    model = distributed.unwrap(model)
    state = distributed.full_state_dict(model, every_rank=True)
    return plain_state_dict(model, {k: v.detach() for k, v in state.items()})


class VLLMBackend:
    """Sampling with a vLLM engine (an optional extra for GPU users).

    ``llm`` is a ``vllm.LLM`` (built from ``model_path`` when not given). Each ``generate`` call
    draws its vLLM seed from ``generator``, so runs are reproducible and resume exactly."""

    def __init__(
        self,
        tokenizer,
        *,
        model_path: str | Path | None = None,
        llm=None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        **engine_args,
    ):
        self.vllm = _import_vllm()
        self.tokenizer = tokenizer
        if llm is None:
            if model_path is None:
                raise ValueError("VLLMBackend needs model_path or llm")
            llm = self.vllm.LLM(
                model=str(model_path),
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                seed=seed,
                **engine_args,
            )
        self.llm = llm

    @classmethod
    def from_model(cls, model, tokenizer, workdir: str | Path, **kwargs) -> VLLMBackend:
        """Save ``model`` (merged; not FSDP-sharded yet: build the backend before
        ``distributed.wrap``) as an HF directory under ``workdir`` and start vLLM on it."""
        from posttrain.models import save_pretrained
        from posttrain.training.distributed import unwrap

        _import_vllm()  # fail before writing anything
        path = Path(workdir) / "vllm-policy"
        save_pretrained(unwrap(model), tokenizer, path)
        return cls(tokenizer, model_path=path, **kwargs)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        sampling = self.vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            seed=seed,
        )
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        responses, logps, finished, stopped = [], [], [], []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            responses.append(tokens)
            logps.append(
                [float(step[tok].logprob) for tok, step in zip(tokens, completion.logprobs or [])]
                if completion.logprobs
                else [0.0] * len(tokens)
            )
            done = completion.finish_reason == "stop"
            finished.append(done)
            stopped.append(done and isinstance(completion.stop_reason, str))
        return rollout_from_tokens(
            prompt_ids,
            responses,
            logps,
            pad_id=self.tokenizer.pad_token_id,
            finished=finished,
            stopped=stopped if params.stop_strings else None,
        )

    def sync_weights(self, model) -> None:
        """Load the policy's current weights (LoRA merged) into the engine."""
        self.load_weights(hf_state_dict(model).items())
        if hasattr(self.llm, "reset_prefix_cache"):  # cached prefixes hold old activations
            self.llm.reset_prefix_cache()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Hand ``(name, tensor)`` pairs to the engine's model (vLLM's ``load_weights``)."""
        _engine_model(self.llm).load_weights(weights)


def _import_vllm():
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise UserError(
            "--generation_backend vllm: vllm is not installed (pip install vllm, on a CUDA "
            "machine); use the built-in engine otherwise"
        ) from None


def _engine_model(llm):
    """The ``torch.nn.Module`` inside a single-process vLLM engine (the attribute path moved
    between vLLM versions; tried newest first)."""
    executor = llm.llm_engine.model_executor
    for path in ("driver_worker.worker.model_runner.model", "driver_worker.model_runner.model"):
        obj = executor
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise RuntimeError("cannot find the model inside this vLLM engine to load weights into")


def make_backend(kind: str, model, tokenizer, **kwargs) -> GenerationBackend:
    """``engine``: the built-in sampler on ``model`` itself (nothing to sync); ``vllm``: a vLLM
    engine started from ``model``'s weights (``workdir`` required; see :class:`VLLMBackend`)."""
    from posttrain.training.distributed import unwrap

    if kind == "engine":
        return EngineBackend(unwrap(model), tokenizer)
    if kind == "vllm":
        workdir = kwargs.pop("workdir")
        return VLLMBackend.from_model(model, tokenizer, workdir, **kwargs)
    raise UserError(f"--generation_backend: must be one of {', '.join(BACKENDS)} (got {kind!r})")


__all__ = [
    "BACKENDS",
    "EngineBackend",
    "GenerationBackend",
    "Rollout",
    "SamplingParams",
    "VLLMBackend",
    "hf_state_dict",
    "make_backend",
    "rollout_from_tokens",
]
