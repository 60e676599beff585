"""The four answers (analysis.answers) on built per-run results with known outcomes."""
from __future__ import annotations

import math

import pytest

from analysis.answers import ANSWER_KEYS, answers, claim_verdict, timing_verdict


def _run(jump=None, s99=None, circuit=None, lag=None, offset=None, mech=None, last=2500):
    return {"recall_jump": None if jump is None else {"midpoint": jump},
            "steps_to_99_test_acc": s99, "last_step": last,
            "recall_circuit": {"status": "measured" if circuit is not None else "no transition",
                               "midpoint": circuit, "log_steps": lag},
            "seed_claim": {"train_minus_test_midpoint_log_steps": offset},
            "mechanism": None if mech is None else {"verdict": mech}}


def _groups():
    return {
        "causal/all": [_run(400, 900, 380, -0.05, 0.02, "value mechanism"),
                       _run(450, 1000, 430, -0.04, -0.03, "value mechanism"),
                       _run(420, 950, 400, -0.06, 0.01, "value mechanism")],
        "causal/last": [_run(1500, None, 1000, -0.6, 0.9, "value mechanism"),
                        _run(1700, None, 1100, -0.7, 1.1, "value mechanism"),
                        _run(None, None, None, None, None, None)],  # censored: no recall jump in 2500
        "noncausal/last": [_run(1600, None, 1600, 0.0, 0.8, "key mechanism"),
                           _run(1800, None, 1750, 0.02, 0.7, "both"),
                           _run(1650, None, 1650, 0.01, 0.9, "key mechanism")],
    }


def test_schema_and_known_outcomes():
    a = answers(_groups())
    assert set(ANSWER_KEYS) <= set(a)
    for k in ANSWER_KEYS:
        assert isinstance(a[k]["verdict"], str) and a[k]["verdict"] and isinstance(a[k]["rule"], str)
        for regime, e in a[k]["by_regime"].items():
            assert {"value", "ci", "n", "censored"} <= set(e), (k, regime)
            assert e["ci"] is None or (len(e["ci"]) == 2 and e["ci"][0] <= e["ci"][1])
    s = a["sooner"]
    assert s["verdict"].startswith("sooner")
    last = s["by_regime"]["causal/last"]
    assert last["n"] == 2 and last["censored"] == 1 and last["value"] == pytest.approx(1600)
    assert s["by_regime"]["causal/last"]["steps_to_99"] == {"value": None, "ci": None, "n": 0, "censored": 3}
    assert s["by_regime"]["causal/all"]["steps_to_99"]["value"] == pytest.approx(950)
    nc = next(c for c in s["comparisons"] if c["versus"] == "noncausal/last")
    assert nc["verdict"] == "sooner" and nc["factor"] > 3
    t = a["train_with_test"]
    assert t["verdict"] == "consistent"
    assert t["by_regime"]["causal/last"]["verdict"] == "not consistent"
    c = a["circuit_vs_jump"]["by_regime"]
    assert c["causal/all"]["verdict"] == "with" and c["causal/last"]["verdict"] == "before"
    assert c["causal/last"]["censored"] == 1
    m = a["mechanism"]
    assert m["by_regime"]["noncausal/last"]["verdict"] == "key mechanism"
    assert m["by_regime"]["noncausal/last"]["value"] == pytest.approx(2 / 3)
    assert m["by_regime"]["causal/last"]["censored"] == 1
    assert "non-causal: noncausal/last key mechanism" in m["verdict"]


def test_all_censored_and_equal_regimes():
    g = _groups()
    # causal/last never jumps: every run enters at its last step, which is later than causal/all's
    g["causal/last"] = [_run(last=2500) for _ in range(3)]
    a = answers(g)
    assert a["sooner"]["verdict"].startswith("sooner")
    assert a["sooner"]["by_regime"]["causal/last"] == {
        **a["sooner"]["by_regime"]["causal/last"], "value": None, "ci": None, "n": 0, "censored": 3}
    # the same runs on both sides: no difference shown
    g["causal/last"] = [dict(r) for r in g["causal/all"]]
    assert answers(g)["sooner"]["verdict"].startswith("no difference shown")
    # later: causal/all jumps after causal/last
    g["causal/last"] = [_run(100), _run(120), _run(110)]
    assert answers(g)["sooner"]["verdict"].startswith("later")


def test_missing_regimes_say_so():
    a = answers({"causal/all": _groups()["causal/all"]})
    assert a["sooner"]["verdict"].startswith("not measured")
    assert a["sooner"]["comparisons"] == []


@pytest.mark.parametrize("lo,hi,want", [(-1.0, -0.5, "before"), (0.5, 1.0, "after"), (-0.1, 0.1, "with"),
                                        (-0.1, 0.9, "undetermined"), (None, None, "undetermined")])
def test_timing_verdict(lo, hi, want):
    assert timing_verdict(lo, hi, math.log(1.5)) == want


@pytest.mark.parametrize("lo,hi,want", [(-0.1, 0.1, "consistent"), (0.5, 1.0, "not consistent"),
                                        (-1.0, -0.6, "not consistent"), (0.1, 0.6, "undetermined")])
def test_claim_verdict(lo, hi, want):
    assert claim_verdict(lo, hi, math.log(1.5)) == want
