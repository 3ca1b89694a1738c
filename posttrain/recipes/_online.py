"""What the online recipes (PPO, RLOO, GRPO, REINFORCE) share above the rollout machinery: their
config fields (prompts, reward, sampling, KL), loading prompts and the reward source (everything
that can fail on bad input, before ``output_dir`` exists), and the trainable policy with its
reference and sampler. The rollouts themselves are ``posttrain.rollout.online``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config import GenerationConfig, TrainConfig, check
from posttrain.data import load_examples
from posttrain.judges.sources import load_reward_source
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.models.lora import apply_lora
from posttrain.models.modes import disable_dropout
from posttrain.rollout.generate import EngineBackend, MergedLoraBackend, SamplingParams
from posttrain.training.device import resolve
from posttrain.training.reference import policy_reference


@dataclass(kw_only=True)
class OnlineConfig(TrainConfig, GenerationConfig):
    """Fields of every online recipe (on top of the training ones)."""

    train_data: str | None = None
    """Prompt-only data (a `prompt` per record); or give --task."""
    task: str | None = None
    """Built-in task (`sentiment`, `counting`): its prompts, and its gold reward by default."""
    num_prompts: int = 512
    """With --task: how many of its prompts to use."""
    reward: str | None = None
    """Reward: task:NAME, module:function (prompts, completions -> floats), a reward-model
    directory, or judge:KIND (see docs/rl.md)."""
    judge_model: str | None = None
    """Model of a judge:KIND reward."""
    normalize_reward: bool = False
    """Whiten a reward model's scores with its training-set mean/std."""
    num_samples: int = 1
    """Responses sampled per prompt (K); batch_size counts prompts."""
    max_new_tokens: int = 32
    """Longest response in tokens (a response not ended by then is cut)."""
    temperature: float = 1.0
    """Sampling temperature (the training forward uses the same)."""
    stop_strings: list[str] = field(default_factory=list)
    """Strings that end a response (besides EOS); the text is cut before them."""
    kl_coef: float = 0.05
    """beta: weight of KL(policy || reference)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward (Schulman's k1, k2, k3)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response cut at max_new_tokens (no EOS, no stop string).
    Negative: a bonus for running to the limit, which keeps responses as long as those of a reward
    model trained only on responses cut there (it rates short ones at random)."""
    length_penalty: float = 0.0
    """Subtracted from the score per response token."""
    reward_clip: float | None = None
    """Clip the reward source's scores (after --normalize_reward) to [-reward_clip, reward_clip],
    before the penalties: a bounded reward, so that a response the reward model overrates far
    beyond the ones it was trained on earns no more than a good ordinary one."""
    samples_every: int = 0
    """Append a table of sample completions to samples.jsonl every this many steps (0: never)."""
    samples_count: int = 4
    """Rows per sample table."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""

    def validate(self) -> None:
        super().validate()
        check(
            self.train_data is not None or self.task is not None,
            "train_data",
            "give prompts or --task",
            None,
        )
        check(
            self.reward is not None or self.task is not None,
            "reward",
            "give a reward spec or --task",
            None,
        )
        check(self.num_samples >= 1, "num_samples", "must be >= 1", self.num_samples)
        self.check_sampling(greedy=False, why="for training")
        check(
            self.max_new_tokens < self.max_length,
            "max_new_tokens",
            "must be below max_length (prompt + response)",
            self.max_new_tokens,
        )
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0", self.kl_coef)
        check(
            self.reward_clip is None or self.reward_clip > 0,
            "reward_clip",
            "must be > 0",
            self.reward_clip,
        )
        check(self.samples_every >= 0, "samples_every", "must be >= 0", self.samples_every)

    def reward_spec(self) -> str:
        return self.reward or f"task:{self.task}"

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_strings=tuple(self.stop_strings),
        )

    def collect_args(self) -> dict:
        """The plain keyword arguments of :func:`collect` these settings give."""
        return {
            "k": self.num_samples,
            "params": self.sampling(),
            "max_prompt_tokens": self.max_length - self.max_new_tokens,
            "missing_eos_penalty": self.missing_eos_penalty,
            "length_penalty": self.length_penalty,
            "reward_clip": self.reward_clip,
        }


def load_prompts(train_data: str | None, task: str | None, n: int, seed: int) -> list:
    """Prompts from a prompt-only file (``train_data``) or a built-in task's first ``n``."""
    if train_data is not None:
        return [ex.prompt for ex in load_examples(train_data, ["prompt"], what="--train_data")]
    from posttrain.tasks import get_task

    return get_task(task).prompts(n, seed=seed)


def load_inputs(cfg: OnlineConfig):
    """``(tokenizer, prompts, reward source)`` of an online recipe: everything that can fail on
    bad input, so call it before ``output_dir`` is made."""
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    prompts = load_prompts(cfg.train_data, cfg.task, cfg.num_prompts, cfg.seed)
    reward_fn = load_reward_source(
        cfg.reward_spec(),
        policy_tokenizer=tokenizer,
        normalize=cfg.normalize_reward,
        judge_model=cfg.judge_model,
        device=resolve(cfg.device),
        dtype=cfg.dtype,
    )
    return tokenizer, prompts, reward_fn


def load_trainable_policy(cfg: OnlineConfig, tokenizer, model=None):
    """``(policy, reference, backend)``: ``model`` (default: ``cfg.model`` loaded) with LoRA when
    configured, dropout off, in train mode; the reference (``training.reference.policy_reference``,
    sharded like the policy under ``--distributed fsdp``); the built-in sampler on it (with LoRA,
    unless sharded, on a merged copy: ``MergedLoraBackend``, about twice as fast on a CPU). Wrap the policy with
    ``distributed.wrap(policy, cfg.distributed)`` afterwards (FSDP shards it in place, so the
    sampler then samples from the sharded policy)."""
    if model is None:
        model = load_model(
            cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=resolve(cfg.device)
        )
    model = disable_dropout(apply_lora(model, cfg.lora)).train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = policy_reference(model, cfg.lora.enabled, cfg.distributed)
    backend = MergedLoraBackend if cfg.lora.enabled else EngineBackend
    return model, reference, backend(model, tokenizer)
