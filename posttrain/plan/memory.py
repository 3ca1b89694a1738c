"""``posttrain plan``: how much memory a recipe needs, before running it out of memory.

A memory model, not a training recipe: a run holds state (weights, AdamW states, the reference,
a reward model or value head, DDP buckets) the whole time and passes through phases (training
step, optimizer step, rollout, final save) with their own transients; one process peaks at
state + the largest phase (+ the process baseline and glibc's heap slack on a CPU). The
formulas, and why each term is there, are written out in ``docs/scale.md`` ("How plan models
memory"); ``benchmarks/plan_vs_measured.md`` compares them with measured peaks.

Recipe defaults the plan depends on (samples per prompt, PPO minibatches) are read from the
recipes' own ``Config`` classes (:func:`recipe_default`), so they cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from posttrain.config import LoraConfig, check
from posttrain.errors import UserError

__all__ = [
    "SUMMARY",
    "BASELINE_MB",
    "HEAP_SLACK",
    "HEAP_BLOCK_MAX",
    "MB",
    "DTYPE_BYTES",
    "ONLINE",
    "Config",
    "Shape",
    "shape_of_config",
    "model_shape",
    "lora_params",
    "attention_kind",
    "SCORES_KEPT",
    "adapted_params",
    "layer_blocks",
    "layer_activation_elements",
    "loss_bytes",
    "activation_bytes",
    "tensor_bytes",
    "saved_logits_bytes",
    "logits_forward_bytes",
    "logits_backward_bytes",
    "nograd_logits_bytes",
    "kv_cache_bytes",
    "REFERENCED",
    "TWO_SAMPLES",
    "recipe_default",
    "default_samples",
    "default_minibatches",
    "ENTROPY",
    "STATE",
    "RESIDENT",
    "PHASES",
    "Estimate",
    "estimate",
    "propose",
    "ROWS",
    "table",
    "run",
]

SUMMARY = "Estimate peak memory of a recipe and propose settings that fit a budget."

BASELINE_MB = 368.0
"""Peak RSS of a fresh CPU process: python + torch + transformers + posttrain, tiny-llama forward
(measured on the reference machine: 368 MB; ``benchmarks/bench_plan.py`` prints it)."""

HEAP_SLACK = 1.0
"""CPU RSS beyond the live tensors that glibc's default malloc keeps, as a multiple of the saved
tensors it serves from its heap (module doc; measured by ``benchmarks/bench_plan.py``)."""
HEAP_BLOCK_MAX = 32 * 1024**2
"""glibc's largest mmap threshold (64-bit): blocks this large or larger are always mapped on their
own and unmapped when freed, so they leave no slack."""

MB = 1024**2
DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2}
ONLINE = ("ppo", "rloo", "grpo", "reinforce", "online-dpo")


@dataclass(kw_only=True)
class Config:
    recipe: Literal["sft", "rm", "dpo", "kto", "ppo", "rloo", "grpo", "reinforce", "online-dpo"]
    """Recipe to plan for."""
    model: str
    """Model: `tiny-llama`, `smollm2-135m-instruct`, or a local Hugging Face directory."""
    batch_size: int = 8
    """Examples (pairs for rm/dpo, prompts for online recipes) per optimizer step, all processes."""
    max_length: int = 512
    """Prompt + response tokens (the plan assumes every row is this long)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    nproc: int = 1
    """Processes (devices) to plan for; the table shows 1 process and, when > 1, DDP and FSDP."""
    fsdp: bool = False
    """Propose FSDP (with --nproc > 1) as the first remedy when over budget."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Precision of weights, gradients and AdamW states."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (keeps only each layer's input)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (the reference is then the policy with adapters disabled)."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel: `sdpa` keeps no (T, T) scores for backward, `eager` does."""
    padding_free: bool = True
    """dpo: each pair's prompt once then both responses in one row (the recipe's default), with a
    (2 max_length)^2 attention mask per pair; false: 2 padded rows per pair."""
    num_samples: int | None = None
    """Online recipes: responses per prompt (default: the recipe's, 4 for rloo/grpo, else 1)."""
    num_minibatches: int | None = None
    """PPO: optimizer steps per rollout batch, each on its share of the rows (default: the
    recipe's, 2)."""
    max_new_tokens: int = 32
    """Online recipes: response tokens generated (the prompt gets max_length - max_new_tokens)."""
    reward_model: str | None = None
    """Online recipes: a reward model (a model name or directory) held in memory; none for a
    task/rule reward."""
    separate_critic: bool = False
    """PPO: the value head gets its own trunk (a trained copy of the policy)."""
    reference: Literal["auto", "model", "precomputed", "none"] = "auto"
    """dpo/kto: `model` keeps a frozen copy, `precomputed` none during training (nor its
    forward), `none` (SimPO/ORPO) none; `auto` as the recipe: with LoRA the adapters-disabled
    policy, else dpo precomputes (a copy under FSDP) and the others keep a copy."""
    budget_gb: float | None = None
    """Memory of one device in GB; when given, settings that fit are proposed."""
    device: Literal["cpu", "cuda"] = "cpu"
    """What the peak is of: `cpu` the resident set (live tensors + the process baseline + what
    glibc's heap keeps), `cuda` allocated GPU memory (live tensors)."""
    baseline_mb: float | None = None
    """Process baseline added to the peak (default: BASELINE_MB = 368 on cpu, 0 on cuda)."""
    heap_slack: float | None = None
    """Resident heap beyond the live tensors, as a multiple of the saved tensors below 32 MB
    (default: HEAP_SLACK = 1 on cpu, for glibc's default malloc; 0 on cuda, or on a cpu run with
    MALLOC_MMAP_THRESHOLD_=65536)."""

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(self.max_length >= 2, "max_length", "must be >= 2", self.max_length)
        check(self.nproc >= 1, "nproc", "must be >= 1", self.nproc)
        check(
            self.batch_size % (self.nproc * self.gradient_accumulation_steps) == 0,
            "batch_size",
            f"must be divisible by nproc x gradient_accumulation_steps = {self.nproc} x "
            f"{self.gradient_accumulation_steps}",
            self.batch_size,
        )
        for name in ("num_samples", "num_minibatches"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, "must be >= 1", value)
        check(
            0 < self.max_new_tokens < self.max_length,
            "max_new_tokens",
            "must be in [1, max_length)",
            self.max_new_tokens,
        )
        check(self.budget_gb is None or self.budget_gb > 0, "budget_gb", "must be > 0", None)
        for name in ("baseline_mb", "heap_slack"):
            value = getattr(self, name)
            check(value is None or value >= 0, name, "must be >= 0", value)


# ----------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class Shape:
    """What the formulas need to know about a causal LM."""

    params: int  # P, every parameter (tied embeddings counted once)
    layers: int  # L
    hidden: int  # H
    intermediate: int  # I
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # V
    layer_params: int  # parameters of one decoder layer
    root_params: int  # parameters outside the decoder layers (embeddings, final norm, LM head)

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim


def shape_of_config(config) -> Shape:
    """A :class:`Shape` from a transformers config of a llama-like model (parameters counted on
    the meta device: nothing is allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)][0]
    layer_params = sum(p.numel() for p in layers[0].parameters())
    heads = config.num_attention_heads
    return Shape(
        params=params,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        layer_params=layer_params,
        root_params=params - config.num_hidden_layers * layer_params,
    )


def model_shape(name: str) -> Shape:
    from posttrain.models import check_model_name
    from posttrain.models.load import TINY_NAMES, model_dir

    check_model_name(name)
    if name in TINY_NAMES:
        from posttrain.models import load_model

        return shape_of_config(load_model(name).config)
    from transformers import AutoConfig

    return shape_of_config(AutoConfig.from_pretrained(str(model_dir(name))))


def _targets(shape: Shape, lora: LoraConfig) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each projection of one layer that gets an adapter."""
    h, i, q, kv = shape.hidden, shape.intermediate, shape.q, shape.kv
    dims = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    return [dims[t] for t in lora.target_modules if t in dims]


def lora_params(shape: Shape, lora: LoraConfig) -> int:
    """Adapter parameters: r x (fan_in + fan_out) per targeted projection per layer."""
    return shape.layers * sum(lora.r * (a + b) for a, b in _targets(shape, lora))


def adapted_params(shape: Shape, lora: LoraConfig) -> int:
    """Parameters of the weights that get adapters: fan_in x fan_out per targeted projection."""
    return shape.layers * sum(a * b for a, b in _targets(shape, lora))


# ----------------------------------------------------------------------------- the formulas


SCORES_KEPT = {"eager": 2, "matmul": 1}
"""(T, T) score tensors a layer saves for backward, by attention: eager its scores and weights,
posttrain's explicit-matmul attention its softmax weights, SDPA's fused kernels none."""


def attention_kind(cfg, keys: int) -> str:
    """The attention that runs: ``sdpa`` in bfloat16 on CPU over at most ``MATMUL_KEYS`` keys is
    posttrain's explicit matmuls (``posttrain.models.segment_attention.attention_forward``)."""
    from posttrain.models.segment_attention import MATMUL_KEYS

    short = cfg.device == "cpu" and cfg.dtype == "bfloat16" and keys <= MATMUL_KEYS
    return "matmul" if cfg.attention == "sdpa" and short else cfg.attention


def layer_blocks(
    shape: Shape, seq_len: int, attention: str = "sdpa", *, frozen_norms: bool = False
) -> dict[int, int]:
    """The tensors one decoder layer saves for backward, per-token width -> how many (module
    doc: a_layer)."""
    blocks: dict[int, int] = {}
    for width, count in (
        (shape.hidden, 2 if frozen_norms else 4),  # a frozen RMSNorm weight needs no normalised
        (shape.q, 3),  # input for its gradient
        (shape.kv, 3),
        (shape.intermediate, 4),
        (shape.heads * seq_len, SCORES_KEPT.get(attention, 0)),
    ):
        blocks[width] = blocks.get(width, 0) + count
    return blocks


def layer_activation_elements(
    shape: Shape, seq_len: int, attention: str = "sdpa", *, frozen_norms: bool = False
) -> int:
    """a_layer: elements one decoder layer saves for backward, per token (module doc)."""
    blocks = layer_blocks(shape, seq_len, attention, frozen_norms=frozen_norms)
    return sum(width * count for width, count in blocks.items())


def loss_bytes(w: int) -> int:
    """c: bytes per element of the log-softmax (float32, or float64 for float64 models)."""
    return max(w, 4)


def activation_bytes(
    shape: Shape,
    tokens: int,
    seq_len: int,
    w: int,
    *,
    checkpointing: bool,
    attention: str,
    frozen_norms: bool = False,
    below: float = math.inf,
) -> int:
    """Saved activations of the decoder over ``tokens`` (without the loss's log-softmax); with
    ``below``, only its tensors smaller than that many bytes."""
    if checkpointing:
        blocks = {shape.hidden: shape.layers}
    else:
        layer = layer_blocks(shape, seq_len, attention, frozen_norms=frozen_norms)
        blocks = {width: shape.layers * count for width, count in layer.items()}
    top = 2 if frozen_norms else 3  # final norm in/out, LM head input
    blocks[shape.hidden] = blocks.get(shape.hidden, 0) + top
    return tensor_bytes(blocks, tokens * w, below)


def tensor_bytes(blocks: dict[int, int], scale: int, below: float = math.inf) -> int:
    """Bytes of ``count`` tensors of ``scale x width`` bytes for each width -> count, counting only
    tensors smaller than ``below``."""
    return sum(scale * width * n for width, n in blocks.items() if scale * width < below)


def saved_logits_bytes(shape: Shape, tokens: int, w: int, *, entropy: bool = False) -> int:
    """The loss's log-softmax, kept for backward; with the entropy computed under autograd also
    its own log-softmax and exp (alive until the micro-batch's backward)."""
    return tokens * shape.vocab * loss_bytes(w) * (3 if entropy else 1)


def logits_forward_bytes(shape: Shape, tokens: int, w: int) -> int:
    """Beside the saved log-softmax: the logits and their float32 contiguous copy (or, with the
    entropy, the logits and its p log p product)."""
    return tokens * shape.vocab * (w + loss_bytes(w))


def logits_backward_bytes(shape: Shape, tokens: int, w: int) -> int:
    """Beside the saved log-softmax: the loss's gradient and the log-softmax input's gradient."""
    return tokens * shape.vocab * 2 * loss_bytes(w)


def nograd_logits_bytes(shape: Shape, tokens: int, w: int, *, entropy: bool = False) -> int:
    """A forward without gradients: the logits, then their copy and the log-softmax (with the
    entropy: its log-softmax, exp and product), all transient."""
    return tokens * shape.vocab * (w + (3 if entropy else 2) * loss_bytes(w))


def kv_cache_bytes(shape: Shape, rows: int, width: int, w: int) -> int:
    return 2 * shape.layers * shape.kv * rows * width * w


REFERENCED = ("dpo", "kto", "ppo", "rloo", "grpo", "reinforce", "online-dpo")
TWO_SAMPLES = ("online-dpo",)  # samples two responses per prompt (not a setting)


def recipe_default(recipe: str, name: str, fallback=None):
    """The default of field ``name`` of ``recipe``'s ``Config`` (``fallback`` if it has none):
    read from the recipe itself, so the plan follows the recipe's defaults."""
    import dataclasses
    import importlib

    from posttrain.cli import RECIPES

    config = importlib.import_module(RECIPES[recipe]).Config
    for f in dataclasses.fields(config):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    return fallback


def default_samples(recipe: str) -> int:
    """Responses per prompt of an online recipe by default (online-dpo: always 2)."""
    if recipe in TWO_SAMPLES:
        return 2
    return recipe_default(recipe, "num_samples", 1) if recipe in ONLINE else 1


def default_minibatches(recipe: str) -> int:
    """Optimizer steps per rollout batch by default (PPO's num_minibatches; else 1)."""
    return recipe_default(recipe, "num_minibatches", 1) if recipe in ONLINE else 1


ENTROPY = ("ppo", "rloo", "grpo", "reinforce")  # the training forward also returns the entropy
STATE = ("weights", "adamw", "reference", "reward_model", "value", "ddp_buckets")
RESIDENT = ("baseline", "heap_slack")  # a CPU process's, beside its tensors
PHASES = {"train": "training step", "optimizer": "optimizer step", "rollout": "rollout",
          "save": "final save"}  # fmt: skip


@dataclass
class Estimate:
    """Bytes per component of one process, the bytes of each phase on top of the state, and the
    peak (state + the largest phase + on a CPU the baseline and the heap slack)."""

    parts: dict[str, float]
    phases: dict[str, float]
    peak: float
    micro_rows: int

    @property
    def largest_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)


def estimate(cfg: Config, shape: Shape, *, nproc: int = 1, fsdp: bool = False) -> Estimate:
    """Peak memory of one of ``nproc`` processes running ``cfg`` (module doc for the formulas)."""
    w = DTYPE_BYTES[cfg.dtype]
    shard = nproc if fsdp and nproc > 1 else 1
    ddp = nproc > 1 and shard == 1
    P, T = shape.params, cfg.max_length
    lora = cfg.lora.enabled
    n_lora = lora_params(shape, cfg.lora) if lora else 0
    trainable = n_lora if lora else P
    wt = 4 if (lora and w < 4) else w  # peft keeps adapters in float32

    # --- state that lives through the run
    parts: dict[str, float] = {
        "weights": (P * w + n_lora * wt) / shard,
        "adamw": 2 * trainable * wt / shard,
        "ddp_buckets": trainable * wt if ddp else 0.0,  # DDP's flat gradient buckets
    }
    reference = cfg.reference
    if reference == "auto" and cfg.recipe == "dpo" and not lora and not fsdp:
        reference = "precomputed"  # posttrain dpo's default
    referenced = cfg.recipe in REFERENCED and reference not in ("none", "precomputed")
    copy = referenced and (reference == "model" or not lora)  # LoRA: adapters off instead
    parts["reference"] = P * w / shard if copy else 0.0
    online = cfg.recipe in ONLINE
    parts["reward_model"] = (
        model_shape(cfg.reward_model).params * w if online and cfg.reward_model else 0.0
    )
    critic = cfg.recipe == "ppo" and cfg.separate_critic
    head = (shape.hidden + 1) * 4 * 4  # weights, gradient, 2 AdamW states (float32)
    parts["value"] = (4 * P * w / shard if critic else head) if cfg.recipe == "ppo" else 0.0

    # --- the training step of one micro-batch
    samples = cfg.num_samples if cfg.num_samples is not None else default_samples(cfg.recipe)
    per_process = cfg.batch_size // nproc
    rows = per_process * (samples if online else 2 if cfg.recipe in ("rm", "dpo", "kto") else 1)
    minibatches = cfg.num_minibatches or default_minibatches(cfg.recipe)
    micro = max(1, rows // minibatches // cfg.gradient_accumulation_steps)
    t = micro * T
    attention = attention_kind(cfg, T)
    trunk = dict(checkpointing=cfg.gradient_checkpointing, attention=attention)
    acts = activation_bytes(shape, t, T, w, frozen_norms=lora, **trunk)
    # what a CPU's heap slack scales with: the saved tensors below glibc's largest mmap threshold
    # (with checkpointing also the layer backward recomputes); larger ones are mapped and
    # unmapped on their own
    heap = activation_bytes(shape, t, T, w, frozen_norms=lora, below=HEAP_BLOCK_MAX, **trunk)
    if critic:  # the critic trunk's own forward with gradients (hidden states only)
        acts += activation_bytes(shape, t, T, w, **trunk)
        heap += activation_bytes(shape, t, T, w, below=HEAP_BLOCK_MAX, **trunk)
    layer = t * w * layer_activation_elements(shape, T, attention)
    if cfg.gradient_checkpointing:
        heap += tensor_bytes(layer_blocks(shape, T, attention), t * w, HEAP_BLOCK_MAX)

    def saved(block: int, total: int) -> int:
        nonlocal heap
        heap += total if block < HEAP_BLOCK_MAX else 0
        return total

    transients = {"one layer": layer}  # recomputed (checkpointing) or its gradients
    if cfg.recipe != "rm":  # a reward model reads hidden states: no logits
        entropy = cfg.recipe in ENTROPY
        acts += saved(
            t * shape.vocab * loss_bytes(w), saved_logits_bytes(shape, t, w, entropy=entropy)
        )
        transients["loss forward"] = logits_forward_bytes(shape, t, w)
        transients["loss backward"] = logits_backward_bytes(shape, t, w)
    # DPO/KTO's reference forward (a frozen copy, or the policy with its adapters disabled) runs
    # while the policy's activations are saved
    mask = 0  # the additive float mask of padding-free DPO pairs (pairs, 1, 2T, 2T)
    if cfg.recipe == "dpo" and cfg.padding_free:
        mask_elements = micro // 2 * (2 * T) ** 2
        mask = mask_elements * w
        acts += saved(mask_elements, mask_elements) + saved(mask, mask)  # boolean, additive
    if referenced and cfg.recipe in ("dpo", "kto"):
        transients["reference forward"] = nograd_logits_bytes(shape, t, w) + layer + mask
    parts["activations"] = acts
    parts["step_transient"] = max(transients.values())
    parts["gradients"] = trainable * wt / shard
    parts["fsdp_gathered"] = (
        (shape.root_params + 2 * shape.layer_params) * (w + (0 if lora else wt))
        if shard > 1
        else 0.0
    )
    accumulating = cfg.gradient_accumulation_steps > 1  # else gradients are None until backward
    phases = {
        "train": acts
        + parts["step_transient"]
        + parts["fsdp_gathered"]
        + (parts["gradients"] if accumulating else 0.0),
        "optimizer": parts["gradients"] * (2 if ddp else 1),  # DDP: + the flat all-reduce copy
    }

    # --- generation and scoring (online recipes), before the training step
    parts["kv_cache"] = 0.0
    if online:
        n = per_process * samples
        prompt = T - cfg.max_new_tokens
        parts["kv_cache"] = kv_cache_bytes(shape, n, T, w)
        prefill = n * prompt * w * (shape.vocab + layer_activation_elements(shape, prompt))
        scoring = nograd_logits_bytes(shape, n * T, w, entropy=True) + n * T * w * (
            layer_activation_elements(shape, T, attention)
        )  # old log-probs and entropy / reference over the whole rollout
        phases["rollout"] = max(parts["kv_cache"] + prefill, scoring)

    # --- final/: FSDP gathers a full state dict; LoRA merges copies of the adapted weights
    adapted = adapted_params(shape, cfg.lora) if lora else 0
    phases["save"] = (P * w if shard > 1 else 0.0) + adapted * w

    # --- a CPU process's resident set: the process itself and what glibc's heap keeps
    cpu = cfg.device == "cpu"
    baseline = cfg.baseline_mb if cfg.baseline_mb is not None else BASELINE_MB * cpu
    slack = cfg.heap_slack if cfg.heap_slack is not None else HEAP_SLACK * cpu
    parts["baseline"] = baseline * MB
    parts["heap_slack"] = slack * heap
    peak = sum(parts[k] for k in STATE + RESIDENT) + max(phases.values())
    return Estimate(parts=parts, phases=phases, peak=peak, micro_rows=micro)


# ----------------------------------------------------------------------------- proposals


def propose(cfg: Config, shape: Shape, budget_bytes: float) -> list[tuple[str, Config, Estimate]]:
    """Cumulative changes, cheapest in speed first, until one process fits ``budget_bytes``:
    FSDP (if nproc > 1), gradient checkpointing, halving the micro-batch (more accumulation),
    LoRA, bfloat16. Returns each step taken with its estimate."""
    steps: list[tuple[str, Config, Estimate]] = []
    current = cfg
    fsdp = False

    def est(c: Config) -> Estimate:
        return estimate(c, shape, nproc=c.nproc, fsdp=fsdp)

    if est(current).peak <= budget_bytes:
        return steps
    if cfg.nproc > 1:
        fsdp = True
        steps.append(
            (f"FSDP over {cfg.nproc} processes (--distributed fsdp)", current, est(current))
        )
        if steps[-1][2].peak <= budget_bytes:
            return steps
    if not current.gradient_checkpointing:
        current = replace(current, gradient_checkpointing=True)
        steps.append(("--gradient_checkpointing true", current, est(current)))
        if steps[-1][2].peak <= budget_bytes:
            return steps
    per_process = current.batch_size // current.nproc
    while current.gradient_accumulation_steps < per_process:
        current = replace(
            current, gradient_accumulation_steps=current.gradient_accumulation_steps * 2
        )
        if per_process % current.gradient_accumulation_steps:
            break
        steps.append(
            (
                f"--gradient_accumulation_steps {current.gradient_accumulation_steps}",
                current,
                est(current),
            )
        )
        if steps[-1][2].peak <= budget_bytes:
            return steps
    if not current.lora.enabled:
        current = replace(current, lora=replace(current.lora, enabled=True))
        steps.append(("--lora.enabled true", current, est(current)))
        if steps[-1][2].peak <= budget_bytes:
            return steps
    if current.dtype != "bfloat16":
        current = replace(current, dtype="bfloat16")
        steps.append(("--dtype bfloat16", current, est(current)))
    return steps


# ----------------------------------------------------------------------------- output


ROWS = [
    ("weights", "weights (policy)"),
    ("adamw", "AdamW states"),
    ("reference", "reference model"),
    ("reward_model", "reward model"),
    ("value", "value head / critic"),
    ("ddp_buckets", "DDP gradient buckets"),
    ("gradients", "gradients"),
    ("fsdp_gathered", "FSDP gathered units"),
    ("activations", "activations (saved)"),
    ("step_transient", "logits / backward peak"),
    ("kv_cache", "KV cache (rollout)"),
    ("baseline", "process baseline"),
    ("heap_slack", "heap slack (CPU malloc)"),
]


def _mb(x: float) -> str:
    return f"{x / MB:,.0f} MB" if x >= MB or x == 0 else f"{x / MB:.2f} MB"


def table(cfg: Config, shape: Shape) -> str:
    columns = [("1 process", estimate(cfg, shape))]
    if cfg.nproc > 1:
        columns.append((f"DDP x{cfg.nproc}", estimate(cfg, shape, nproc=cfg.nproc)))
        columns.append((f"FSDP x{cfg.nproc}", estimate(cfg, shape, nproc=cfg.nproc, fsdp=True)))
    width = 28

    def row(label: str, cells) -> str:
        return f"{label:<{width}}" + "".join(f"{c:>16}" for c in cells)

    lines = [row("component (per process)", [name for name, _ in columns])]
    lines += [row(label, [_mb(e.parts[key]) for _, e in columns]) for key, label in ROWS]
    lines.append("phases (on top of the state: weights .. DDP buckets; the largest counts)")
    for key, label in PHASES.items():
        if any(key in e.phases for _, e in columns):
            lines.append(row(f"  {label}", [_mb(e.phases.get(key, 0.0)) for _, e in columns]))
    lines.append(row("peak", [_mb(e.peak) for _, e in columns]))
    lines.append(row("  at", [PHASES[e.largest_phase] for _, e in columns]))
    lines.append(row("micro-batch rows", [e.micro_rows for _, e in columns]))
    return "\n".join(lines)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    shape = model_shape(cfg.model)
    if cfg.reward_model and cfg.recipe not in ONLINE:
        raise UserError("--reward_model: only online recipes hold a reward model")
    print(
        f"posttrain plan: {cfg.recipe} on {cfg.model} ({shape.params / 1e6:.1f}M parameters, "
        f"{shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}), {cfg.dtype}, "
        f"batch {cfg.batch_size} x {cfg.max_length} tokens, "
        f"{cfg.gradient_accumulation_steps} micro-batch(es)"
        + (", LoRA" if cfg.lora.enabled else "")
        + (", gradient checkpointing" if cfg.gradient_checkpointing else "")
    )
    print(
        "peak of: the CPU resident set (tensors, the process, glibc's heap slack)"
        if cfg.device == "cpu"
        else "peak of: allocated GPU memory (tensors; not the CUDA context)"
    )
    print()
    print(table(cfg, shape))
    if cfg.budget_gb is None:
        return
    budget = cfg.budget_gb * 1024**3
    print()
    first = estimate(cfg, shape, nproc=cfg.nproc)
    if first.peak <= budget:
        print(f"fits in {cfg.budget_gb:g} GB as configured ({_mb(first.peak)} per process)")
        return
    steps = propose(cfg, shape, budget)
    print(f"over budget: {_mb(first.peak)} > {cfg.budget_gb:g} GB per process; try, in order:")
    for text, _c, e in steps:
        mark = "fits" if e.peak <= budget else "still over"
        print(f"  + {text:<44} -> {_mb(e.peak)}  ({mark})")
    if not steps or steps[-1][2].peak > budget:
        print(
            "  nothing above fits: more processes (--nproc with FSDP), a shorter max_length or a "
            "smaller batch"
        )
