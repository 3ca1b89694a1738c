"""Reward models: a causal-LM trunk with a scalar head read at the last token of the response.

As in InstructGPT, the reward model is a language model repurposed: its final hidden state at
the last non-pad token (the response's EOS) goes through a linear head to one number per head.
With several heads (e.g. helpfulness, harmlessness, honesty) each is trained on its own aspect's
labels and the served reward is ``sum_z w_z r_z`` with weights from the config.

Saved the way the ecosystem saves reward models (TRL, OpenRLHF, RewardBench, reward servers): a
transformers sequence-classification directory (``*ForSequenceClassification``: the transformer
body as ``model.*``, the head as the bias-free ``score`` layer, one label per head, the head names
in ``config.id2label``, ``config.pad_token_id`` the tokenizer's pad), its tokenizer, and
``reward_config.json`` for what transformers has no field for (the heads' serving weights, the
training-set mean and std of the served reward for whitening). So
``AutoModelForSequenceClassification.from_pretrained(dir)`` gives posttrain's per-head scores as
its ``logits`` (B, n_heads) for the same tokens (prompt, chat template, response + EOS), padded
on either side: transformers pools the rightmost token that is not ``pad_token_id``, posttrain the
last attended one, the same token since the response ends with EOS and pad differs from EOS (a
tokenizer whose pad is its EOS gets a warning at save time); with left padding the positions of
posttrain (counted from the first attended token) and of transformers (from the first column)
differ by a constant, which rotary embeddings do not see.

``load_reward_model`` reads these directories, the older posttrain layout (a causal LM beside
``reward_head.safetensors``), and any ``*ForSequenceClassification`` directory saved by plain
transformers with K labels (K heads named by its ``id2label``, served reward their sum unless a
``reward_config.json`` beside it gives weights).

For RL, :class:`RewardScorer` (``rm.as_reward_source()``) is the reward source: called with
texts, it re-tokenizes them with the reward model's own tokenizer (and chat template), so the
policy may use another tokenizer.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from posttrain.data import collate, encode_example
from posttrain.data.formats import Prompt
from posttrain.errors import UserError
from posttrain.models.heads import ScalarHead, gather_last
from posttrain.models.logprobs import position_ids_from_mask
from posttrain.training.device import module_device, to_device

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"  # the older layout's head (read, no longer written)
DEFAULT_MAX_LENGTH = 1024


class RewardModel(nn.Module):
    """``forward(input_ids, attention_mask) -> (B, n_heads)`` rewards; ``reward(...) -> (B,)``
    the weighted sum; ``score(prompts, completions) -> list[float]`` from text.

    The head's weight starts at zero: every reward is 0 before training, so an untrained model
    prefers nothing (pairwise accuracy exactly chance, ties counting half) and the first steps
    move the head before the trunk. The head has no bias (as transformers' ``score`` layer;
    Bradley-Terry is blind to a constant shift anyway) unless ``bias`` (older saved models)."""

    def __init__(
        self,
        trunk,
        tokenizer,
        heads: Sequence[str] = ("reward",),
        weights: Sequence[float] | None = None,
        mean: float = 0.0,
        std: float = 1.0,
        *,
        bias: bool = False,
    ):
        super().__init__()
        self.trunk, self.tokenizer = trunk, tokenizer
        self.heads = list(heads)
        self.head = ScalarHead(trunk.config.hidden_size, len(self.heads), bias=bias)
        self.head.to(trunk.dtype)
        nn.init.zeros_(self.head.linear.weight)
        self.register_buffer(
            "weights", torch.tensor(list(weights or [1.0] * len(self.heads)), dtype=torch.float32)
        )
        self.mean, self.std = mean, std

    @property
    def config(self):
        return self.trunk.config

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        packed: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T) -> (B, n_heads), read at each row's last attended token; or, given ``packed``
        (a ``collate_shared_prefix`` batch: a pair's prompt once, then both responses), one row
        per sequence, (n, n_heads), each read at its sequence's last token (the same numbers, to
        float rounding, as the sequences padded).

        Runs the trunk's decoder only (no LM head: (B, T, vocab) logits would cost time and
        memory for nothing); its ``last_hidden_state`` is the final-norm output. Inputs go to
        the model's device."""
        decoder = _decoder(self.trunk)
        if packed is not None:
            from posttrain.models.logprobs import packed_inputs

            packed = to_device(packed, module_device(self))
            inputs, attention, flat_index = packed_inputs(decoder, packed)
            with attention:
                hidden = decoder(**inputs).last_hidden_state.flatten(0, 1)  # (tokens, H)
            n = packed["segment_lengths"].shape[0]
            last = packed["segment_tokens"][torch.arange(n), packed["segment_lengths"] - 1]
            last = flat_index(packed["token_index"][last])  # (n,) among the hidden states
            r = self.head(hidden.index_select(0, last))
        else:
            input_ids, attention_mask = to_device((input_ids, attention_mask), module_device(self))
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            )
            r = self.head(gather_last(out.last_hidden_state, attention_mask))  # (B, n_heads)
        return r.to(torch.promote_types(r.dtype, torch.float32))  # bfloat16 -> float32

    def reward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        packed: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B,) served reward: the heads' weighted sum (inputs as ``forward``'s)."""
        r = self(input_ids, attention_mask, packed=packed)
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
        """Write the sequence-classification directory (module doc) atomically: a temporary
        sibling, then a rename. ``state``: the full weights when this module's own are FSDP
        shards (``distributed.full_state_dict``). A head with a bias (an older model) keeps it in
        ``reward_config.json``: transformers' ``score`` has none, so its logits then differ from
        posttrain's by that constant per head."""
        state = self.state_dict() if state is None else state
        head = _part(state, "head.")
        meta = {
            "heads": self.heads,
            "weights": self.weights.tolist(),
            "mean": self.mean,
            "std": self.std,
        }
        if "linear.bias" in head and bool(head["linear.bias"].any()):
            meta["bias"] = head["linear.bias"].tolist()

        def write(tmp: Path) -> None:
            save_classifier(
                self.trunk,
                self.tokenizer,
                tmp,
                state=_part(state, "trunk."),
                score=head["linear.weight"],
                labels=self.heads,
            )
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

        write_atomically(path, write)


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, the prefix dropped."""
    return {n.removeprefix(prefix): v for n, v in state.items() if n.startswith(prefix)}


def write_atomically(path: str | Path, write) -> None:
    """``write(tmp)`` into a temporary sibling directory of ``path``, then rename it into place
    (an interrupted save never leaves a half-written ``path``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor that owns exactly its storage (a view into a larger buffer, e.g. of
    FSDP's gathered state, is copied: safetensors refuses views of shared storage)."""
    whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
    if whole and t.storage_offset() == 0 and t.is_contiguous():
        return t
    return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)


def classifier_class(config):
    """The transformers ``*ForSequenceClassification`` class of a model config."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise UserError(
            f"{getattr(config, 'model_type', type(config).__name__)}: transformers has no "
            "sequence-classification model for this architecture"
        ) from None


def save_classifier(
    trunk: nn.Module,
    tokenizer,
    directory: str | Path,
    *,
    state: dict[str, torch.Tensor],
    score: torch.Tensor,
    labels: Sequence[str],
) -> None:
    """Write ``directory`` as transformers' ``*ForSequenceClassification`` of ``trunk``'s
    architecture: ``state`` (``trunk``'s state dict: a causal LM's, a bare body's, or a LoRA
    model's, merged) minus any LM head as the body, ``score`` (n_labels, H) as the bias-free
    ``score`` layer, ``labels`` as ``id2label``, the tokenizer's pad as ``pad_token_id``."""
    from huggingface_hub import save_torch_state_dict

    from posttrain.models.lora import is_lora, plain_state_dict

    base = trunk.get_base_model() if is_lora(trunk) else trunk
    config = copy.deepcopy(base.config)
    cls = classifier_class(config)
    plain = plain_state_dict(trunk, state)
    prefix = cls.base_model_prefix  # "model" for the decoder-only families
    if base.base_model is base:  # a bare transformer body (LlamaModel): its names are unprefixed
        weights = {f"{prefix}.{k}": v for k, v in plain.items()}
    else:  # a causal LM: its body under its own prefix; the LM head is left out
        own = f"{base.base_model_prefix}."
        weights = {f"{prefix}.{k[len(own) :]}": v for k, v in plain.items() if k.startswith(own)}
    weights["score.weight"] = score
    config.architectures = [cls.__name__]
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        print(
            f"warning: {directory}: the tokenizer pads with its EOS token, so transformers' "
            "classifier reads the token before a response's EOS (posttrain reads the EOS)",
            file=sys.stderr,
        )
    config.use_cache = True  # for whoever loads it
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    save_torch_state_dict({k: _own_storage(v) for k, v in weights.items()}, str(directory))
    tokenizer.save_pretrained(directory)


class RewardScorer:
    """A reward model as a reward source (``posttrain.judges.protocol.RewardSource``):
    ``scorer(prompts, completions)`` == ``scorer.score(prompts, completions)`` -> list[float].

    Takes text, not token ids: whatever tokenizer the policy uses, the texts are re-tokenized with
    the reward model's own (chat template when it has one). ``normalize`` whitens with the
    training-set mean/std saved with the model, so RL recipes see rewards on a fixed scale."""

    def __init__(self, rm: RewardModel, *, normalize: bool = False, batch_size: int = 16):
        self.rm, self.normalize, self.batch_size = rm, normalize, batch_size

    @classmethod
    def from_path(
        cls, path: str | Path, *, dtype: str = "float32", device=None, **kw
    ) -> RewardScorer:
        return cls(load_reward_model(path, dtype=dtype, device=device), **kw)

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
    """A directory ``load_reward_model`` reads: saved by posttrain (now or in the older layout),
    or a ``*ForSequenceClassification`` saved by transformers (any number of labels)."""
    path = Path(path)
    if (path / CONFIG_FILE).exists():
        return True
    if not (path / "config.json").exists():
        return False
    config = json.loads((path / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def load_reward_model(path: str | Path, *, dtype: str = "float32", device=None) -> RewardModel:
    """A reward model saved by posttrain (either layout), or a transformers
    sequence-classification directory with K labels (K heads; module doc), on ``device``
    (None: the CPU)."""
    rm = _load_reward_model(Path(path), dtype)
    return rm if device is None else rm.to(device)


def _load_reward_model(path: Path, dtype: str) -> RewardModel:
    from transformers import AutoTokenizer

    from posttrain.models.load import torch_dtype

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a reward-model directory (no config.json)")
    torch_dtype(dtype)  # a bad dtype fails before anything loads
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    meta = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).exists() else {}
    if (path / HEAD_FILE).exists():  # the older layout: a causal LM + the head's own file
        head = load_file(str(path / HEAD_FILE))
        bias = "linear.bias" in head and bool(head["linear.bias"].any())
        rm = RewardModel(
            _load_causal_lm(path, dtype),
            tokenizer,
            meta["heads"],
            meta["weights"],
            meta["mean"],
            meta["std"],
            bias=bias,
        )
        rm.head.load_state_dict({k: v for k, v in head.items() if bias or k != "linear.bias"})
        return rm.eval()
    if not is_reward_model_dir(path):
        raise UserError(
            f"{path}: neither a posttrain reward model ({CONFIG_FILE}) nor a "
            "*ForSequenceClassification directory"
        )
    return _from_sequence_classifier(path, tokenizer, dtype, meta)


def _load_causal_lm(path: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    from posttrain.models.load import torch_dtype

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))


def _from_sequence_classifier(path: Path, tokenizer, dtype: str, meta: dict) -> RewardModel:
    """An AutoModelForSequenceClassification: its transformer body (``clf.base_model``, e.g.
    ``LlamaModel``) is the trunk, its ``score`` layer the head (one head per label), ``meta``
    (``reward_config.json``, when there is one) the names, serving weights, mean/std and a bias
    the ``score`` layer cannot hold."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.load import torch_dtype

    clf = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch_dtype(dtype))
    score = getattr(clf, "score", None)
    if not isinstance(score, nn.Linear):
        raise UserError(f"{path}: a classifier without a linear `score` layer (not a causal LM?)")
    labels = [str(clf.config.id2label.get(i, f"LABEL_{i}")) for i in range(score.out_features)]
    heads = meta.get("heads", labels)
    if len(heads) != len(labels):
        raise UserError(f"{path / CONFIG_FILE}: {len(heads)} heads but {len(labels)} labels")
    bias = score.bias if score.bias is not None else meta.get("bias")
    rm = RewardModel(
        clf.base_model,
        tokenizer,
        heads,
        meta.get("weights"),
        meta.get("mean", 0.0),
        meta.get("std", 1.0),
        bias=bias is not None,
    )
    with torch.no_grad():
        rm.head.linear.weight.copy_(score.weight)
        if bias is not None:
            rm.head.linear.bias.copy_(torch.as_tensor(bias))
    return rm.eval()
