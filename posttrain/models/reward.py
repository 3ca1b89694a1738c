"""Reward models: a causal-LM trunk with a scalar head read at the last token of the response.

As in InstructGPT, the reward model is a language model repurposed: its final hidden state at
the last non-pad token (the response's EOS) goes through a linear head to one number per head.
With several heads (e.g. helpfulness, harmlessness, honesty) each is trained on its own aspect's
labels and the served reward is ``sum_z w_z r_z`` with weights from the config.

Saved as an HF directory: the trunk (``AutoModelForCausalLM`` loads it), its tokenizer,
``reward_head.safetensors`` and ``reward_config.json`` (head names, weights, the training-set mean
and std of the served reward for whitening). ``load_reward_model`` also
accepts an HF ``AutoModelForSequenceClassification`` directory with one label (its transformer
body becomes the trunk, its ``score`` layer the head).

For RL, :class:`RewardScorer` (``rm.as_reward_source()``) is the reward source: called with
texts, it re-tokenizes them with the reward model's own tokenizer (and chat template), so the
policy may use another tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.data import collate, encode_example
from posttrain.data.formats import Prompt
from posttrain.errors import UserError
from posttrain.models.heads import ScalarHead, gather_last
from posttrain.models.load import save_weights
from posttrain.models.logprobs import position_ids_from_mask

CONFIG_FILE, HEAD_FILE = "reward_config.json", "reward_head.safetensors"
DEFAULT_MAX_LENGTH = 1024


class RewardModel(nn.Module):
    """``forward(input_ids, attention_mask) -> (B, n_heads)`` rewards; ``reward(...) -> (B,)``
    the weighted sum; ``score(prompts, completions) -> list[float]`` from text.

    The head's weight starts at zero (bias zero): every reward is 0 before training, so an
    untrained model prefers nothing (pairwise accuracy exactly chance, ties counting half) and the
    first steps move the head before the trunk."""

    def __init__(
        self,
        trunk,
        tokenizer,
        heads: Sequence[str] = ("reward",),
        weights: Sequence[float] | None = None,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        self.trunk, self.tokenizer = trunk, tokenizer
        self.heads = list(heads)
        self.head = ScalarHead(trunk.config.hidden_size, len(self.heads)).to(trunk.dtype)
        nn.init.zeros_(self.head.linear.weight)
        self.register_buffer(
            "weights", torch.tensor(list(weights or [1.0] * len(self.heads)), dtype=torch.float32)
        )
        self.mean, self.std = mean, std

    @property
    def config(self):
        return self.trunk.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, n_heads), read at each row's last attended token.

        Runs the trunk's decoder only (no LM head: (B, T, vocab) logits would cost time and
        memory for nothing); its ``last_hidden_state`` is the final-norm output."""
        out = _decoder(self.trunk)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        r = self.head(gather_last(out.last_hidden_state, attention_mask))  # (B, n_heads)
        return r.to(torch.promote_types(r.dtype, torch.float32))  # bfloat16 -> float32

    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) served reward: the heads' weighted sum."""
        r = self(input_ids, attention_mask)
        return r @ self.weights.to(r.dtype)

    @property
    def context_length(self) -> int:
        """Longest sequence ``score`` reads by default: the model's context window."""
        return int(getattr(self.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH)

    def normalized(self, rewards: torch.Tensor) -> torch.Tensor:
        """Whiten served rewards with the saved training-set statistics: (r - mean) / std."""
        return (rewards - self.mean) / max(self.std, 1e-8)

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        *,
        normalize: bool = False,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> list[float]:
        """Served rewards of (prompt, completion) texts, tokenized with this model's own tokenizer
        (and its chat template) exactly as in training (response + EOS), batched by length.

        ``normalize`` whitens with the training-set mean/std; sequences longer than
        ``max_length`` (default: the model's context window) are truncated like training data."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        was = self.training
        self.eval()
        limit = max_length or self.context_length
        enc = [encode_example(self.tokenizer, p, c, limit) for p, c in zip(prompts, completions)]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))  # less padding
        scores = [0.0] * len(enc)
        device = self.head.linear.weight.device
        for k in range(0, len(order), batch_size):
            rows = order[k : k + batch_size]
            b = collate([enc[i] for i in rows], self.tokenizer.pad_token_id)
            r = self.reward(b["input_ids"].to(device), b["attention_mask"].to(device))  # (b,)
            for i, v in zip(rows, (self.normalized(r) if normalize else r).tolist()):
                scores[i] = v
        self.train(was)
        return scores

    def as_reward_source(self, *, normalize: bool = False, batch_size: int = 16) -> RewardScorer:
        """A reward source ``(prompts, completions) -> list[float]`` (see :class:`RewardScorer`)."""
        return RewardScorer(self, normalize=normalize, batch_size=batch_size)

    def save(self, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the HF directory atomically (temp sibling, then rename). ``state``: the full
        weights when this module's own are FSDP shards (``distributed.full_state_dict``)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        state = self.state_dict() if state is None else state

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {n.split(".", 1)[1]: v for n, v in state.items() if n.startswith(prefix)}

        save_weights(self.trunk, tmp, state=part("trunk."))
        head = part("head.")
        self.tokenizer.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in head.items()}, str(tmp / HEAD_FILE))
        meta = {
            "heads": self.heads,
            "weights": self.weights.tolist(),
            "mean": self.mean,
            "std": self.std,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


class RewardScorer:
    """A reward model as a reward source (``posttrain.judges.protocol.RewardSource``):
    ``scorer(prompts, completions)`` == ``scorer.score(prompts, completions)`` -> list[float].

    Takes text, not token ids: whatever tokenizer the policy uses, the texts are re-tokenized with
    the reward model's own (chat template when it has one). ``normalize`` whitens with the
    training-set mean/std saved with the model, so RL recipes see rewards on a fixed scale."""

    def __init__(self, rm: RewardModel, *, normalize: bool = False, batch_size: int = 16):
        self.rm, self.normalize, self.batch_size = rm, normalize, batch_size

    @classmethod
    def from_path(cls, path: str | Path, *, dtype: str = "float32", **kw) -> RewardScorer:
        return cls(load_reward_model(path, dtype=dtype), **kw)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        return self.rm.score(
            prompts, completions, normalize=self.normalize, batch_size=self.batch_size
        )

    __call__ = score


def _decoder(trunk: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (through a LoRA wrapper): ``model.model`` for Llama;
    a bare body (``LlamaModel``) is its own."""
    if hasattr(trunk, "get_base_model"):  # peft: the LoRA-injected causal LM
        trunk = trunk.get_base_model()
    return getattr(trunk, "base_model", trunk)


def is_reward_model_dir(path: str | Path) -> bool:
    """A directory ``load_reward_model`` reads: saved by posttrain, or a one-label classifier."""
    path = Path(path)
    if (path / CONFIG_FILE).exists():
        return True
    if not (path / "config.json").exists():
        return False
    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and _num_labels(config) == 1


def _num_labels(config: dict) -> int:
    if "num_labels" in config:
        return int(config["num_labels"])
    return len(config.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"})  # HF's default is 2


def load_reward_model(path: str | Path, *, dtype: str = "float32") -> RewardModel:
    """A reward model saved by posttrain, or an HF sequence-classification directory (1 label)."""
    from transformers import AutoConfig, AutoTokenizer

    from posttrain.models.load import torch_dtype

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a reward-model directory (no config.json)")
    torch_dtype(dtype)  # a bad dtype fails before anything loads
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    config = AutoConfig.from_pretrained(str(path))
    if (path / CONFIG_FILE).exists():
        meta = json.loads((path / CONFIG_FILE).read_text())
        rm = RewardModel(
            _load_trunk(path, config, dtype),
            tokenizer,
            meta["heads"],
            meta["weights"],
            meta["mean"],
            meta["std"],
        )
        rm.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return rm.eval()
    if getattr(config, "num_labels", None) != 1:
        raise UserError(
            f"{path}: neither a posttrain reward model ({CONFIG_FILE}) nor a one-label classifier"
        )
    return _from_sequence_classifier(path, tokenizer, dtype)


def _load_trunk(path: Path, config, dtype: str):
    """The saved trunk: a causal LM, or a bare transformer body (from a classifier)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from posttrain.models.load import torch_dtype

    archs = getattr(config, "architectures", None) or []
    causal = any(a.endswith("ForCausalLM") for a in archs)
    auto = AutoModelForCausalLM if causal else AutoModel
    return auto.from_pretrained(str(path), dtype=torch_dtype(dtype))


def _from_sequence_classifier(path: Path, tokenizer, dtype: str) -> RewardModel:
    """An AutoModelForSequenceClassification: its transformer body (``clf.base_model``, e.g.
    ``LlamaModel``) is the trunk, its ``score`` layer the head. HF classifiers read the last
    non-pad token too, so with right padding the scores are the classifier's own."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.load import torch_dtype

    clf = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch_dtype(dtype))
    score = getattr(clf, "score", None)
    if not isinstance(score, nn.Linear):
        raise UserError(f"{path}: a classifier without a linear `score` layer (not a causal LM?)")
    rm = RewardModel(clf.base_model, tokenizer)
    with torch.no_grad():
        rm.head.linear.weight.copy_(score.weight)
        if score.bias is not None:
            rm.head.linear.bias.copy_(score.bias)
    return rm.eval()
