"""Run by ``test_fsdp_lora_weights.py`` under ``torchrun --nproc_per_node 2``: the weights a vLLM
backend receives from an FSDP-sharded LoRA policy (``hf_state_dict``: gathered on every process,
adapters merged) against the same policy merged unsharded (peft's ``merge_and_unload``). Each
process writes what it found to ``OUT.rankN.json``."""

from __future__ import annotations

import copy
import json
import sys

import torch

from posttrain.config import LoraConfig
from posttrain.models import load_model
from posttrain.models.lora import apply_lora
from posttrain.rollout.backend import hf_state_dict
from posttrain.training import distributed


def main(out: str) -> None:
    distributed.init()
    torch.manual_seed(0)  # the same tiny-llama and adapters on every process
    policy = apply_lora(load_model("tiny-llama"), LoraConfig(enabled=True, r=2))
    for name, p in policy.named_parameters():  # make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    expected = copy.deepcopy(policy).merge_and_unload().state_dict()
    base = {k: v.clone() for k, v in policy.state_dict().items()}
    plain = load_model("tiny-llama").state_dict()  # the weights before adapters
    sharded = distributed.wrap(policy, "fsdp")
    got = hf_state_dict(sharded)
    report = {
        "sharded": distributed.is_fsdp(sharded),
        "same_names": sorted(got) == sorted(expected),
        "max_diff": max((got[k] - expected[k]).abs().max().item() for k in expected if k in got),
        "changed_by_adapters": sum(not torch.equal(got[k], plain[k]) for k in plain),
        "policy_untouched": all(
            torch.equal(v.full_tensor() if hasattr(v, "full_tensor") else v, base[k])
            for k, v in sharded.state_dict().items()
        ),
    }
    with open(f"{out}.rank{distributed.rank()}.json", "w") as f:
        json.dump(report, f)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
