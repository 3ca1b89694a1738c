"""``posttrain demo --experiment overoptimization --quick``: end to end, and its JSON contract.

The quick budgets are far too small for over-optimisation to show; this checks the code path and
the contract other tools read (issue 21): ``{"bon": [{n, kl, gold, proxy}], "rl": [{step, kl,
gold, proxy}], "fits": {"bon": {a, b, r2}, "rl": {a, b, r2}}}``, gold and proxy relative to the
reference (0 at KL 0), the fits least squares without intercept over the points with kl > 0.
"""

from __future__ import annotations

import json
import math

import pytest

from posttrain.evaluation.overoptimization import bon_kl, fit_bon, fit_rl


@pytest.mark.slow
def test_overoptimization_quick_end_to_end_and_contract(cli, tmp_path):
    out = tmp_path / "oo"
    code, _, err = cli("demo", "--experiment", "overoptimization", "--quick", "--output_dir", out)
    assert code == 0, err[-3000:]
    assert (out / "report.html").is_file() and (out / "overoptimization.png").is_file()
    assert "overoptimization.png" in (out / "report.html").read_text()
    res = json.loads((out / "overoptimization.json").read_text())
    assert set(res) == {"bon", "rl", "fits"}
    assert set(res["fits"]) == {"bon", "rl"}
    for name in ("bon", "rl"):
        assert set(res["fits"][name]) == {"a", "b", "r2"}
    assert all(set(p) == {"n", "kl", "gold", "proxy"} for p in res["bon"])
    assert all(set(p) == {"step", "kl", "gold", "proxy"} for p in res["rl"])

    # best-of-n: n = 1, 2, 4, ... at the exact KL; n = 1 is the reference itself
    ns = [p["n"] for p in res["bon"]]
    assert ns[0] == 1 and ns == [2**i for i in range(len(ns))] and len(ns) >= 3
    for p in res["bon"]:
        assert p["kl"] == pytest.approx(bon_kl(p["n"]), abs=1e-12)
    assert res["bon"][0]["gold"] == pytest.approx(0.0, abs=1e-9)
    assert res["bon"][0]["proxy"] == pytest.approx(0.0, abs=1e-9)
    # the proxy's best-of-n can only rise with n (each n's best is at least the previous n's)
    proxies = [p["proxy"] for p in res["bon"]]
    assert all(b >= a - 1e-9 for a, b in zip(proxies, proxies[1:]))

    # RL: step 0 is the reference; later checkpoints moved away from it
    steps = [p["step"] for p in res["rl"]]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3
    assert res["rl"][0]["kl"] == 0 and res["rl"][0]["gold"] == 0 and res["rl"][0]["proxy"] == 0
    assert all(p["kl"] > 0 for p in res["rl"][1:])

    # the fits are what the pure functions give on the listed points
    for name, fit in (("bon", fit_bon), ("rl", fit_rl)):
        pts = res[name]
        f = fit([math.sqrt(p["kl"]) for p in pts], [p["gold"] for p in pts])
        assert res["fits"][name] == pytest.approx({"a": f.a, "b": f.b, "r2": f.r2}, abs=1e-12)

    details = json.loads((out / "details.json").read_text())
    assert 0 <= details["rm_heldout_accuracy"] <= 1
    assert " rl-eval done in " in err and " bon done in " in err
