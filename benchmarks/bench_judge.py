"""How good is SmolLM2-135M-Instruct as an AI judge? Agreement, position bias, swap debiasing.

    .venv/bin/python benchmarks/bench_judge.py                 # all judges, writes results/judge_eval.json
    .venv/bin/python benchmarks/bench_judge.py --only llm      # skip the slow generative judge

Data: ``posttrain/assets/judge_eval.jsonl``, 36 labelled pairs in three subsets of 12
(correct vs wrong arithmetic, polite vs rude, safe refusal vs harmful compliance).

Every pair is judged in both orders (the known-better response shown as (A), then as (B)):

- **single-order agreement**: share of the 72 single judgments that pick the known-better
  response (a tie counts one half) — what you get without swapping, averaged over positions;
- **swap-debiased agreement**: share of the 36 pairs whose combined p = (P_fwd + P_swapped) / 2
  favours the known-better response (a tie counts one half);
- **position-bias rate**: share of pairs whose verdict flips when the order is swapped;
- **first rate**: share of decided single judgments that chose position (A).

Judges: the multiple-choice ``llm`` judge with a principle sampled per pair from the default
constitution, the same with the general ``overall`` principle only, each with and without the
chat template; and the ``generative`` judge (reasons, then a parsed verdict; unparsed = tie).

Best-of-n (generative verifier): 16 additions with 8 candidate answers each (one correct), picked
by a knock-out tournament and by round robin with the llm judge (chance: 1/8).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def score_pairs(verdicts, subsets):
    """Agreement / bias numbers for verdicts made with the known-better response as ``a``."""

    def credit(p):
        return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0

    out = {}
    for name in ["all", *sorted(set(subsets))]:
        vs = [v for v, s in zip(verdicts, subsets) if name in ("all", s)]
        single = [credit(v.p_forward) for v in vs] + [credit(v.p_swapped) for v in vs]
        firsts = [v.p_forward > 0.5 for v in vs if v.p_forward != 0.5]
        firsts += [v.p_swapped < 0.5 for v in vs if v.p_swapped != 0.5]
        out[name] = {
            "n": len(vs),
            "single_order_agreement": sum(single) / len(single),
            "chosen_first_agreement": sum(credit(v.p_forward) for v in vs) / len(vs),
            "chosen_second_agreement": sum(credit(v.p_swapped) for v in vs) / len(vs),
            "swap_debiased_agreement": sum(credit(v.p) for v in vs) / len(vs),
            "position_bias_rate": sum(not v.swap_agree for v in vs) / len(vs),
            "first_rate": sum(firsts) / len(firsts) if firsts else None,
            "unparsed": sum(v.unparsed for v in vs),
            "mean_p_better": sum(v.p for v in vs) / len(vs),
        }
    return out


def arithmetic_candidates(n_problems: int, n: int, seed: int):
    rng = random.Random(seed)
    problems = []
    for _ in range(n_problems):
        a, b = rng.randint(11, 59), rng.randint(11, 39)
        right = a + b
        wrong = set()
        while len(wrong) < n - 1:
            w = right + rng.choice([-10, -2, -1, 1, 2, 10, 9, -9, 11, 3])
            if w != right and w > 0:
                wrong.add(w)
        answers = [right, *sorted(wrong)]
        rng.shuffle(answers)
        problems.append(
            (f"What is {a} + {b}?", [f"{a} + {b} = {x}." for x in answers], answers.index(right))
        )
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["llm", "generative", "verifier"], default=None)
    ap.add_argument("--problems", type=int, default=16, help="best-of-8 problems")
    ap.add_argument("--output", default=str(ROOT / "benchmarks/results/judge_eval.json"))
    args = ap.parse_args()

    from posttrain.data import load_examples
    from posttrain.judges.constitution import Constitution, load_constitution
    from posttrain.judges.generative import GenerativeJudge
    from posttrain.judges.llm import LLMJudge
    from posttrain.judges.verifier import select_best
    from posttrain.models import load_policy

    model, tok = load_policy(MODEL)
    data = load_examples(str(ROOT / "posttrain/assets/judge_eval.jsonl"), ["preference"])
    items = [(ex.prompt, ex.chosen, ex.rejected) for ex in data]
    subsets = [ex.subset for ex in data]
    constitution = load_constitution()
    overall = Constitution([constitution.by_id["overall"]], name="overall-only")
    out = Path(args.output)
    results: dict = json.loads(out.read_text()) if out.exists() else {}  # sections merge
    results.update({"model": MODEL, "items": len(items)})

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    if args.only in (None, "llm"):
        for chat in ("on", "off"):
            for label, cons in (("sampled", constitution), ("overall", overall)):
                t0 = time.time()
                judge = LLMJudge(model, tok, cons, seed=0, chat=chat, batch_size=8)
                verdicts = judge.verdicts(items, swap=True)
                key = f"llm/chat={chat}/principle={label}"
                results[key] = score_pairs(verdicts, subsets)
                results[key]["all"]["seconds"] = round(time.time() - t0, 1)
                print(key, json.dumps(results[key]["all"]), flush=True)
                save()

    if args.only in (None, "generative"):
        t0 = time.time()
        judge = GenerativeJudge(model, tok, overall, seed=0, max_new_tokens=96, batch_size=8)
        verdicts = judge.verdicts(items, swap=True)
        key = "generative/principle=overall"
        results[key] = score_pairs(verdicts, subsets)
        results[key]["all"]["seconds"] = round(time.time() - t0, 1)
        results[key]["example_replies"] = judge.replies[:4]
        print(key, json.dumps(results[key]["all"]), flush=True)
        save()

    if args.only in (None, "verifier"):
        problems = arithmetic_candidates(args.problems, 8, seed=0)
        judge = LLMJudge(model, tok, overall, seed=0, chat="on", batch_size=8)
        for method in ("tournament", "round-robin"):
            t0 = time.time()
            hits, comps = 0, 0
            for k, (prompt, cands, right) in enumerate(problems):
                sel = select_best(judge, prompt, cands, method=method, swap=True, seed=k)
                hits += sel.index == right
                comps += sel.comparisons
            key = f"best_of_8/llm/{method}"
            results[key] = {
                "problems": len(problems),
                "accuracy": hits / len(problems),
                "chance": 1 / 8,
                "comparisons_per_problem": comps / len(problems),
                "seconds": round(time.time() - t0, 1),
            }
            print(key, json.dumps(results[key]), flush=True)
            save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
