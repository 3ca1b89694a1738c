"""A vLLM backend's weights from an FSDP-sharded LoRA policy (2 processes, gloo on CPU)."""

from __future__ import annotations

import json

from tests.invariance.helpers_distributed import torchrun


def test_fsdp_sharded_lora_policy_gives_the_merged_weights_on_every_process(tmp_path):
    out = tmp_path / "weights"
    proc = torchrun(out, module="tests.invariance.fsdp_lora_weights")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"weights.rank{rank}.json").read_text())
        assert report["sharded"] and report["same_names"], report
        assert report["max_diff"] <= 1e-6, report  # merged in float32 both ways
        # q, k, v, o, gate, up, down in each of tiny-llama's 2 layers carry adapters
        assert report["changed_by_adapters"] == 14, report
        assert report["policy_untouched"], report
