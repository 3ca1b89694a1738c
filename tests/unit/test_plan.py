"""``posttrain plan``: every formula on a small hand-made shape, numbers worked by hand below.

Shape: P = 1000 parameters, L = 2 layers, H = 8, I = 16, 2 heads, 1 kv head, head_dim 4
(q = 8, kv = 4), V = 10; one layer 300 parameters, root 400.
    a_layer = 4H + 3q + 3kv + 4I = 32 + 24 + 12 + 64 = 132 (sdpa); eager at T = 5 adds
              2 x heads x T = 20 -> 152; LoRA (frozen norms) takes 2H = 16 off -> 116.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from posttrain import plan
from posttrain.config import LoraConfig

SHAPE = plan.Shape(
    params=1000,
    layers=2,
    hidden=8,
    intermediate=16,
    heads=2,
    kv_heads=1,
    head_dim=4,
    vocab=10,
    layer_params=300,
    root_params=400,
)


def cfg(**kw) -> plan.Config:
    base = dict(recipe="sft", model="tiny-llama", batch_size=4, max_length=5, device="cuda")
    return plan.Config(**{**base, **kw})


def test_layer_activations_sdpa_and_eager():
    assert plan.layer_activation_elements(SHAPE, 5, "sdpa") == 132
    assert plan.layer_activation_elements(SHAPE, 5, "eager") == 152
    assert plan.layer_activation_elements(SHAPE, 5, "sdpa", frozen_norms=True) == 116
    # posttrain's explicit-matmul attention keeps the softmax weights only: 132 + 2 x 5 = 142
    assert plan.layer_activation_elements(SHAPE, 5, "matmul") == 142


def test_bfloat16_on_cpu_short_rows_count_the_matmul_attention():
    """In bfloat16 on CPU, rows of at most MATMUL_KEYS tokens run posttrain's explicit-matmul
    attention (their softmax weights saved); on CUDA, in float32 or longer rows, SDPA's."""
    from posttrain.models.segment_attention import MATMUL_KEYS

    short = cfg(dtype="bfloat16", device="cpu")
    assert plan.attention_kind(short, 5) == "matmul"
    assert plan.attention_kind(short, MATMUL_KEYS + 1) == "sdpa"
    assert plan.attention_kind(cfg(dtype="bfloat16", device="cuda"), 5) == "sdpa"
    assert plan.attention_kind(cfg(device="cpu"), 5) == "sdpa"
    assert plan.attention_kind(cfg(dtype="bfloat16", attention="eager"), 5) == "eager"
    # t = 4 rows x 5 tokens x 2 layers x 2 bytes x (2 heads x 5) weights more than on CUDA
    cpu, cuda = (plan.estimate(replace(short, device=d), SHAPE) for d in ("cpu", "cuda"))
    assert cpu.parts["activations"] - cuda.parts["activations"] == 20 * 2 * 2 * 10


def test_saved_activations_with_and_without_checkpointing():
    # 10 tokens x 4 bytes x (L a_layer + 3H) = 40 x (264 + 24) = 11520
    assert plan.activation_bytes(SHAPE, 10, 5, 4, checkpointing=False, attention="sdpa") == 11520
    # checkpointing: 40 x (L H + 3H) = 40 x (16 + 24) = 1600 (the recomputed layer is transient)
    assert plan.activation_bytes(SHAPE, 10, 5, 4, checkpointing=True, attention="sdpa") == 1600
    # LoRA: 40 x (L x 116 + 2H) = 40 x (232 + 16) = 9920
    lora = plan.activation_bytes(
        SHAPE, 10, 5, 4, checkpointing=False, attention="sdpa", frozen_norms=True
    )
    assert lora == 9920


def test_logits_and_kv_cache():
    # 10 tokens x V 10; the loss in c = 4 bytes (8 for float64)
    assert plan.saved_logits_bytes(SHAPE, 10, 4) == 400
    assert plan.saved_logits_bytes(SHAPE, 10, 4, entropy=True) == 1200  # + its log-softmax, exp
    assert plan.logits_forward_bytes(SHAPE, 10, 4) == 800  # logits 4 + contiguous copy 4
    assert plan.logits_forward_bytes(SHAPE, 10, 2) == 600  # bf16 logits 2 + float32 copy 4
    assert plan.logits_forward_bytes(SHAPE, 10, 8) == 1600  # float64 throughout
    assert plan.logits_backward_bytes(SHAPE, 10, 4) == 800  # two float32 gradients
    assert plan.nograd_logits_bytes(SHAPE, 10, 4) == 1200  # logits, copy, log-softmax
    assert plan.nograd_logits_bytes(SHAPE, 10, 4, entropy=True) == 1600  # log-softmax, exp, p log p
    # 2 (k, v) x L x kv x rows x width x w = 2 x 2 x 4 x 3 x 7 x 2
    assert plan.kv_cache_bytes(SHAPE, 3, 7, 2) == 672


def test_lora_parameters():
    lora = LoraConfig(enabled=True, r=2, target_modules=["q_proj", "v_proj"])
    # per layer r (in + out): q 2 x (8 + 8) = 32, v 2 x (8 + 4) = 24 -> 56; x 2 layers
    assert plan.lora_params(SHAPE, lora) == 112


def test_sft_peak_by_hand():
    e = plan.estimate(cfg(), SHAPE)
    # state: weights 4000 + AdamW 8000; gradients 4000 only in the optimizer step
    assert (e.parts["weights"], e.parts["gradients"], e.parts["adamw"]) == (4000, 4000, 8000)
    assert e.parts["reference"] == 0 and e.parts["ddp_buckets"] == 0
    # t = 4 rows x 5 = 20 tokens: activations 80 x 288 = 23040 + saved log-softmax 20 x 10 x 4
    # = 800 -> 23840; transient: max(loss forward 20 x 10 x 8 = 1600, loss backward 1600, one
    # layer 80 x 132 = 10560) = 10560
    assert e.parts["activations"] == 23840
    assert e.parts["step_transient"] == 10560
    assert e.phases == {"train": 34400, "optimizer": 4000, "save": 0}
    assert e.peak == 12000 + 34400 and e.largest_phase == "train"
    assert plan.estimate(cfg(baseline_mb=1.0), SHAPE).peak == e.peak + plan.MB


def test_cpu_peak_adds_the_process_and_the_heap_slack(monkeypatch):
    gpu = plan.estimate(cfg(), SHAPE)
    assert gpu.parts["baseline"] == 0 and gpu.parts["heap_slack"] == 0
    # cpu: + BASELINE_MB, + HEAP_SLACK x the saved activations 23840 (test above), all of them
    # in blocks below glibc's 32 MB mmap threshold
    cpu = plan.estimate(cfg(device="cpu"), SHAPE)
    assert cpu.parts["baseline"] == plan.BASELINE_MB * plan.MB
    assert cpu.parts["heap_slack"] == plan.HEAP_SLACK * 23840
    assert cpu.peak == gpu.peak + plan.BASELINE_MB * plan.MB + plan.HEAP_SLACK * 23840
    # both can be given: the live tensors of a CPU run with MALLOC_MMAP_THRESHOLD_=65536
    mmap = plan.estimate(cfg(device="cpu", heap_slack=0.0, baseline_mb=2.0), SHAPE)
    assert mmap.peak == gpu.peak + 2 * plan.MB
    # checkpointing: the saved 80 x 40 + 800 = 4000, and the recomputed layer 80 x 132 = 10560
    ckpt = plan.estimate(cfg(device="cpu", gradient_checkpointing=True, heap_slack=0.5), SHAPE)
    assert ckpt.parts["heap_slack"] == 0.5 * (4000 + 10560)
    # a tensor at or above the threshold is mapped on its own and leaves no slack. At 800 bytes,
    # of t x w = 80 bytes per unit of width: the MLP's 4 per layer (I = 16: 1280) and the
    # (20, 10) float32 log-softmax (800) drop out; H and q (8: 640) and kv (4: 320) stay:
    # 2 layers x (4 x 640 + 3 x 640 + 3 x 320) + the top's 3 x 640 = 10880 + 1920 = 12800
    monkeypatch.setattr(plan.memory, "HEAP_BLOCK_MAX", 800)
    assert plan.estimate(cfg(device="cpu"), SHAPE).parts["heap_slack"] == plan.HEAP_SLACK * 12800


def test_accumulation_keeps_gradients_through_the_step():
    e = plan.estimate(cfg(gradient_accumulation_steps=2), SHAPE)
    # 2 rows, t = 10: activations 40 x 288 + 10 x 10 x 4 = 11920, one layer 40 x 132 = 5280,
    # gradients 4000 (alive from the first micro-batch's backward on)
    assert e.micro_rows == 2 and e.phases["train"] == 11920 + 5280 + 4000


def test_dpo_adds_a_reference_and_pairs_and_lora_removes_the_copy():
    padded = cfg(recipe="dpo", batch_size=2, reference="model", padding_free=False)
    e = plan.estimate(padded, SHAPE)
    assert e.parts["reference"] == 4000 and e.micro_rows == 4  # 2 pairs = 4 rows
    # the reference forward on top of the saved activations: 20 x 10 x 12 + 10560 = 12960
    assert e.parts["step_transient"] == 12960
    # padding-free (the default): 2 pairs' (10 x 10) masks, boolean and float, 2 x 100 x (1 + 4)
    # = 1000 saved; the reference forward makes its own float mask, 2 x 100 x 4 = 800
    e = plan.estimate(cfg(recipe="dpo", batch_size=2, reference="model"), SHAPE)
    no_mask = plan.estimate(padded, SHAPE).parts["activations"]
    assert e.parts["activations"] == no_mask + 1000 and e.parts["step_transient"] == 12960 + 800
    # dpo's default precomputes: no copy and no reference forward during training; the largest
    # transient is then one layer, 20 x 4 x 132 = 10560 (the loss backward's is 1600)
    for reference in ("auto", "precomputed"):
        c = cfg(recipe="dpo", batch_size=2, reference=reference, padding_free=False)
        e = plan.estimate(c, SHAPE)
        assert e.parts["reference"] == 0 and e.parts["step_transient"] == 10560
    lora = LoraConfig(enabled=True, r=2, target_modules=["q_proj", "v_proj"])
    e = plan.estimate(cfg(recipe="dpo", batch_size=2, lora=lora, padding_free=False), SHAPE)
    assert e.parts["reference"] == 0  # adapters disabled is the reference
    assert e.parts["step_transient"] == 12960  # ... and runs its forward all the same
    assert e.parts["weights"] == 4000 + 112 * 4 and e.parts["adamw"] == 2 * 112 * 4
    # frozen norms: 80 x (2 x 116 + 16) = 19840, + the log-softmax 800
    assert e.parts["activations"] == 20640
    # final/ merges copies of the adapted weights: 2 layers x (q 8 x 8 + v 8 x 4) x 4 bytes
    assert plan.adapted_params(SHAPE, lora) == 192 and e.phases["save"] == 768


def test_fsdp_divides_state_and_adds_gathered_units():
    e = plan.estimate(cfg(recipe="dpo", batch_size=4, nproc=2), SHAPE, nproc=2, fsdp=True)
    assert (e.parts["weights"], e.parts["adamw"], e.parts["reference"]) == (2000, 4000, 2000)
    # root 400 + 2 layers x 300 = 1000 parameters, with their gradients: x (4 + 4)
    assert e.parts["fsdp_gathered"] == 8000
    # final/: rank 0's gathered full state dict, 1000 x 4
    assert e.phases["save"] == 4000
    ddp = plan.estimate(cfg(recipe="dpo", batch_size=4, nproc=2), SHAPE, nproc=2)
    assert ddp.parts["weights"] == 4000 and ddp.micro_rows == 4  # 2 pairs per process
    # DDP: its gradient buckets 4000 in the state; the optimizer step's flat all-reduce copy
    assert ddp.parts["ddp_buckets"] == 4000 and ddp.phases["optimizer"] == 8000


def test_online_recipe_counts_generation_and_the_entropy():
    c = cfg(recipe="rloo", batch_size=2, max_length=5, max_new_tokens=2, num_samples=3)
    e = plan.estimate(c, SHAPE)
    # 6 rows x width 5: KV cache 2 x 2 x 4 x 6 x 5 x 4 = 1920
    assert e.parts["kv_cache"] == 1920
    # prefill over P = 3: 6 x 3 x 4 x (V 10 + a_layer 132) = 10224 -> 12144 with the cache;
    # the no-grad scoring forward with the entropy: 30 tokens x (10 x 16) + 30 x 4 x 132
    # = 4800 + 15840 = 20640
    assert e.phases["rollout"] == 20640
    assert e.parts["reference"] == 4000
    # training forward over 30 tokens: 120 x 288 = 34560 + log-softmax, entropy's log-softmax
    # and exp 30 x 10 x 12 = 3600
    assert e.parts["activations"] == 38160


def test_ppo_trains_on_minibatches():
    c = cfg(recipe="ppo", batch_size=2, max_length=5, max_new_tokens=2, num_samples=3)
    assert plan.estimate(c, SHAPE).micro_rows == 3  # 6 rows in the recipe's 2 minibatches
    assert plan.estimate(replace(c, num_minibatches=1), SHAPE).micro_rows == 6


def test_proposals_try_checkpointing_then_accumulation():
    c = cfg(batch_size=8)
    full = plan.estimate(c, SHAPE).peak
    ckpt = plan.estimate(replace(c, gradient_checkpointing=True), SHAPE).peak
    steps = plan.propose(c, SHAPE, budget_bytes=ckpt - 1)
    assert steps[0][0] == "--gradient_checkpointing true" and ckpt < full
    assert steps[1][0] == "--gradient_accumulation_steps 2"
    assert steps[-1][2].peak <= ckpt - 1
    assert plan.propose(c, SHAPE, budget_bytes=full) == []


def test_shape_of_tiny_llama_counts_tied_embeddings_once():
    shape = plan.model_shape("tiny-llama")
    assert shape.params == 127360 and shape.layers == 2 and shape.vocab == 833
    assert shape.root_params + 2 * shape.layer_params == shape.params


def test_cli_prints_table_and_proposals(cli):
    code, out, err = cli(
        "plan", "--recipe", "dpo", "--model", "tiny-llama", "--batch_size", "64",
        "--max_length", "1024", "--nproc", "2", "--budget_gb", "0.5",
    )  # fmt: skip
    assert code == 0, err
    assert "FSDP x2" in out and "reference model" in out and "try, in order" in out
    assert "CPU resident set" in out and "heap slack (CPU malloc)" in out
    code, out, err = cli(
        "plan", "--recipe", "sft", "--model", "tiny-llama", "--device", "cuda",
    )  # fmt: skip
    assert code == 0 and "allocated GPU memory" in out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "3", "--nproc", "2"], "--batch_size: must be divisible"),
        (["--recipe", "nope"], "--recipe: must be one of"),
        (["--heap_slack", "-1"], "--heap_slack: must be >= 0"),
        (["--device", "tpu"], "--device: must be one of"),
    ],
)
def test_bad_plan_settings_exit_2(cli, args, message):
    code, _, err = cli("plan", "--recipe", "sft", "--model", "tiny-llama", *args)
    assert code == 2 and message in err


def test_plan_reads_the_recipes_own_defaults():
    """The samples per prompt and PPO minibatches the plan assumes are the recipes' Config
    defaults (read from them, not copied): change a recipe's default and the plan follows."""
    import dataclasses

    from posttrain.recipes import grpo, ppo, reinforce, rloo

    def default(config, name):
        return next(f.default for f in dataclasses.fields(config) if f.name == name)

    for name, module in {"ppo": ppo, "rloo": rloo, "grpo": grpo, "reinforce": reinforce}.items():
        assert plan.default_samples(name) == default(module.Config, "num_samples"), name
    assert plan.default_minibatches("ppo") == default(ppo.Config, "num_minibatches")
    assert plan.default_samples("online-dpo") == 2  # two samples per prompt, always
    assert plan.default_samples("dpo") == plan.default_minibatches("rloo") == 1
    # an estimate with no --num_samples is the one with the recipe's default given explicitly
    implicit = plan.estimate(cfg(recipe="rloo"), SHAPE)
    explicit = plan.estimate(
        cfg(recipe="rloo", num_samples=default(rloo.Config, "num_samples")), SHAPE
    )
    assert implicit == explicit
