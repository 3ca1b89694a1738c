"""Constitutional AI, supervised stage (Bai et al. 2022, sec. 3): critique -> revision -> SFT data.

For each red-team prompt: sample a response from the model; then, for ``rounds`` rounds, sample a
principle from the constitution (seeded, one per prompt and round), ask the same model for a
critique of the current response under the principle's critique request, and ask it for a
revision under the paired revision request. The last revision is the training target:

    output   SFT JSONL: {"prompt", "completion": final revision}  -> posttrain sft
    trace    JSONL: the initial response and every round's principle, critique and revision

The critique and the revision continue the conversation, as in the paper: after the prompt and
the current response, the critique request is the next user turn and the model's critique the
next assistant turn; then the revision request, whose reply is the new response. Each round
starts again from the prompt and the newest response. The request wording lives in two files:
the constitution (each principle's ``critique`` and ``revision`` text) and the templates
(``posttrain/assets/cai_templates.yaml``: the user turn around a request, with ``{request}``,
``{prompt}`` and, for the revision, ``{critique}``). A model without a chat template sees the
turns joined by newlines.

Clean-up of replies: a leading "Assistant:" / "Revision:" / "Critique:" label the model echoes is
removed; an empty revision keeps the previous response (counted in the summary as
``empty_revisions``), so the SFT data never holds an empty completion.
"""

from __future__ import annotations

import random
import re
import string
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import yaml

from posttrain.config import GenerationConfig, check
from posttrain.data import load_examples, write_jsonl
from posttrain.data.chat import as_messages
from posttrain.data.formats import prompt_text
from posttrain.errors import UserError
from posttrain.judges.constitution import load_constitution
from posttrain.models import check_model_name, load_policy
from posttrain.rollout.sampler import sample_texts
from posttrain.training.device import resolve, validated

SUMMARY = "Constitutional AI (supervised stage): critique and revise responses; writes SFT data."

TEMPLATE_FIELDS = {"critique": {"prompt", "request"}, "revision": {"prompt", "request", "critique"}}
_LABEL = re.compile(r"^\s*(?:assistant|revision|revised response|critique|response)\s*:\s*", re.I)


def default_asset(name: str) -> str:
    return str(resources.files("posttrain.assets").joinpath(name))


@dataclass(kw_only=True)
class Config(GenerationConfig):
    model: str
    """The model that answers, critiques and revises (a model name or HF directory)."""
    output: str
    """SFT JSONL to write: `prompt` -> `completion` (the final revision)."""
    trace: str | None = None
    """Full trace JSONL (initial response, each round's principle, critique, revision); default:
    OUTPUT with .trace.jsonl."""
    prompts: str | None = None
    """Red-team prompts (prompt-only data); default: the shipped posttrain/assets/cai_prompts.jsonl."""
    constitution: str | None = None
    """Constitution file; default: the shipped one. Every principle needs critique and revision."""
    templates: str | None = None
    """Critique / revision request templates (YAML); default: posttrain/assets/cai_templates.yaml."""
    rounds: int = 1
    """Critique-revision rounds per prompt (each with a freshly sampled principle)."""
    limit: int = 0
    """Use only the first this-many prompts (0: all)."""
    max_new_tokens: int = 128
    """Length limit of the initial response and of each revision."""
    critique_max_new_tokens: int = 96
    """Length limit of each critique."""
    temperature: float = 0.7
    """Sampling temperature for every generation (0: greedy, which makes small models repeat
    themselves)."""
    top_p: float = 0.9
    """Nucleus sampling when temperature > 0."""
    batch_size: int = 8
    """Sequences generated together."""
    seed: int = 0
    """Seed of principle sampling and of sampled generations."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the model."""
    device: str = "auto"
    """Where the model runs: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        validated(self.device, self.dtype)  # an absent device: exit 2, nothing written
        check(self.rounds >= 1, "rounds", "must be >= 1", self.rounds)
        check(self.limit >= 0, "limit", "must be >= 0", self.limit)
        self.check_sampling()
        check(
            self.critique_max_new_tokens >= 1,
            "critique_max_new_tokens",
            "must be >= 1",
            self.critique_max_new_tokens,
        )
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)


def load_templates(path: str | None) -> dict[str, str]:
    """The critique / revision templates, checked for exactly the known placeholders."""
    path = path or default_asset("cai_templates.yaml")
    if not Path(path).is_file():
        raise UserError(f"{path}: no such templates file")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}:{'' if mark is None else mark.line + 1}: not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: templates must be a mapping with `critique` and `revision`")
    out = {}
    for key, allowed in TEMPLATE_FIELDS.items():
        text = data.get(key)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: `{key}` template is missing or empty")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise UserError(f"{path}: `{key}` template: {exc}") from None
        if used - allowed:
            raise UserError(
                f"{path}: `{key}` template uses {{{sorted(used - allowed)[0]}}}; "
                f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}"
            )
        if "request" not in used:
            raise UserError(f"{path}: `{key}` template must use {{request}}")
        out[key] = text
    return out


def clean_reply(text: str) -> str:
    """Strip whitespace and one echoed leading label ('Assistant:', 'Revision:', ...)."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def critique_and_revise(
    model,
    tokenizer,
    prompts: list,
    constitution,
    templates: dict[str, str],
    *,
    rounds: int,
    seed: int,
    max_new_tokens: int,
    critique_max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 8,
) -> tuple[list[dict], int]:
    """The CAI loop over all prompts at once; returns (traces, empty_revisions)."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    def gen(texts, limit):
        outs = sample_texts(
            model,
            tokenizer,
            texts,
            n=1,
            max_new_tokens=limit,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            batch_size=batch_size,
            generator=generator,
        )
        return [clean_reply(o[0]) for o in outs]

    current = gen([as_messages(p) for p in prompts], max_new_tokens)
    traces = [{"prompt": p, "initial": r, "rounds": []} for p, r in zip(prompts, current)]
    empty = 0
    for _ in range(rounds):
        principles = [constitution.sample(rng) for _ in prompts]
        convs = [
            as_messages(p)
            + [
                {"role": "assistant", "content": r or "(no response)"},
                {
                    "role": "user",
                    "content": templates["critique"].format(
                        prompt=prompt_text(p), request=pr.critique
                    ),
                },
            ]
            for p, r, pr in zip(prompts, current, principles)
        ]
        critiques = gen(convs, critique_max_new_tokens)
        for conv, c, p, pr in zip(convs, critiques, prompts, principles):
            conv += [
                {"role": "assistant", "content": c or "(no critique)"},
                {
                    "role": "user",
                    "content": templates["revision"].format(
                        prompt=prompt_text(p), request=pr.revision, critique=c
                    ),
                },
            ]
        revisions = gen(convs, max_new_tokens)
        for k, (pr, c, rev) in enumerate(zip(principles, critiques, revisions)):
            if not rev:
                empty += 1
                rev = current[k]
            traces[k]["rounds"].append(
                {
                    "principle": pr.id,
                    "critique_request": pr.critique,
                    "critique": c,
                    "revision_request": pr.revision,
                    "revision": rev,
                }
            )
            current[k] = rev
    for trace, final in zip(traces, current):
        trace["final"] = final
    return traces, empty


def run(cfg: Config, flags: dict[str, bool]) -> None:
    check_model_name(cfg.model)
    constitution = load_constitution(cfg.constitution)
    constitution.require(("critique", "revision"), "posttrain cai")
    templates = load_templates(cfg.templates)
    examples = load_examples(
        cfg.prompts or default_asset("cai_prompts.jsonl"), ["prompt", "sft"], what="--prompts"
    )
    if cfg.limit:
        examples = examples[: cfg.limit]
    trace_path = cfg.trace or str(Path(cfg.output).with_suffix("")) + ".trace.jsonl"
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, device=resolve(cfg.device))
    t0 = time.time()
    traces, empty = critique_and_revise(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        constitution,
        templates,
        rounds=cfg.rounds,
        seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens,
        critique_max_new_tokens=cfg.critique_max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
    )
    for ex, trace in zip(examples, traces):
        if ex.id is not None:
            trace["id"] = ex.id
        if ex.subset is not None:
            trace["subset"] = ex.subset
    sft_rows = [{"prompt": t["prompt"], "completion": t["final"]} for t in traces if t["final"]]
    write_jsonl(trace_path, traces)
    write_jsonl(cfg.output, sft_rows)
    print(
        f"wrote {len(sft_rows)} SFT examples to {cfg.output} and the trace to {trace_path} "
        f"({cfg.rounds} round(s), empty_revisions={empty}, "
        f"left out with no response={len(traces) - len(sft_rows)}, {time.time() - t0:.1f}s)",
        file=sys.stderr,
    )
