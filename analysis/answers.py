"""The four answers to the seed's question, over groups of runs (docs/metrics.md, "The four answers").

Input: analyze_run results grouped by experiment (analysis.groups), each group one regime of
one task. Each answer has a short `verdict`, its `rule`, and `by_regime`:
{regime: {"value", "ci": [lo, hi] | None, "n", "censored"}} (plus answer-specific extras).

- **sooner** — does all-token training make recall form sooner? Per regime the value is the
  mean recall-jump midpoint in steps over the runs that have one (`n`); `censored` counts the
  runs with no recall jump within their budget. Extras: `steps_to_99` (same shape, censored when
  0.99 is not reached; never forced) and `recall_circuit_midpoint`. The verdict compares
  causal/all with causal/last (same causality, only the loss differs) on ln(1 + midpoint); a
  censored run enters at its last step, a lower bound, so censoring on the last-token side can
  only make "sooner" harder to show there, never easier. The 95% bootstrap CI of the difference
  of means (last − all, two independent samples) decides: wholly above 0 → "sooner"; wholly
  below → "later"; otherwise "no difference shown". Groups are paired only when their configs
  differ in nothing but the regime (`families`); every pair, and the same comparison against
  noncausal/last, is in `comparisons`; the verdict names each causal/all–causal/last pair.
- **train_with_test** — the seed's claim: train accuracy (all positions) jumps with test
  accuracy. Per regime the value is the train-minus-test midpoint offset in log-steps,
  train_acc_all's transition nearest the recall jump against the recall jump; verdict per regime by
  `claim_verdict` (same time = within a factor 1.5); the answer's verdict is causal/all's,
  the regime the claim was made for.
- **circuit_vs_jump** — per regime the recall circuit's (swap selectivity) midpoint minus the
  recall jump's, in log-steps: CI wholly below −τ → "before", above τ → "after", inside
  [−τ, τ] → "with", else "undetermined" (τ = ln 1.5). The answer's verdict lists each regime.
- **mechanism** — per regime the most common mechanism verdict; `value` is the share of the
  runs that have it, `n` the runs with a verdict, `censored` the runs not probed. The verdict
  puts the causal regimes beside the non-causal one.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats

from .bootstrap import bootstrap_ci

__all__ = ["answers", "ANSWER_KEYS", "claim_verdict", "timing_verdict"]

ANSWER_KEYS = ("sooner", "train_with_test", "circuit_vs_jump", "mechanism")
ALL_TOKEN, LAST_TOKEN, NONCAUSAL = "causal/all", "causal/last", "noncausal/last"
METRICS_DOC = "docs/metrics.md#the-four-answers"


def _entry(values: list[float | None], censored: int, confidence: float) -> dict[str, Any]:
    e = bootstrap_ci([v for v in values if v is not None], confidence=confidence)
    ci = [e.lo, e.hi] if e.lo is not None and e.hi is not None else None
    return {"value": e.value, "ci": ci, "n": e.n, "censored": censored}


def _regime(label: str) -> str:
    """The regime part of a group label ("ar causal/all (d_model 32)" → "causal/all")."""
    words = label.split(" ")
    return next((w for w in words if "/" in w), label)


def _task(label: str) -> str:
    """The task prefix of a group label ("ar causal/all" → "ar"; "" when the label has none)."""
    words = label.split(" ")
    i = next((k for k, w in enumerate(words) if "/" in w), 0)
    return " ".join(words[:i])


def _diff_ci(a: list[float], b: list[float], confidence: float) -> tuple[float, float | None, float | None]:
    """mean(b) − mean(a) with a two-sample percentile bootstrap CI (None with < 2 per side)."""
    d = float(np.mean(b) - np.mean(a))
    if len(a) < 2 or len(b) < 2:
        return d, None, None
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread on either side: the CI is the point
        return d, d, d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.asarray(a), np.asarray(b)), lambda x, y, axis=-1: y.mean(axis) - x.mean(axis),
                              n_resamples=9999, confidence_level=confidence, method="percentile",
                              vectorized=True, rng=np.random.default_rng(0))
    return d, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _jump_times(runs: list[dict]) -> list[float]:
    """ln(1 + recall-jump midpoint) per run; a run without one enters at its last step."""
    out = []
    for r in runs:
        j = r.get("recall_jump")
        t = j["midpoint"] if j else r.get("last_step")
        if t is not None:
            out.append(math.log1p(t))
    return out


def _compare(a_label: str, a_runs: list[dict], b_label: str, b_runs: list[dict], confidence: float) -> dict:
    d, lo, hi = _diff_ci(_jump_times(a_runs), _jump_times(b_runs), confidence)
    verdict = ("no difference shown" if lo is None or lo <= 0 <= hi else "sooner" if lo > 0 else "later")
    return {"group": a_label, "versus": b_label, "log_steps": d, "ci": None if lo is None else [lo, hi],
            "factor": math.exp(d), "verdict": verdict}


def claim_verdict(lo: float | None, hi: float | None, tol: float) -> str:
    """The seed claim's rule on the CI [lo, hi] of the train-minus-test midpoint offset in
    log-steps: "consistent" inside ±tol, "not consistent" wholly outside, else "undetermined"."""
    if lo is None or hi is None:
        return "undetermined"
    if -tol <= lo and hi <= tol:
        return "consistent"
    if lo > tol or hi < -tol:
        return "not consistent"
    return "undetermined"


def timing_verdict(lo: float | None, hi: float | None, tol: float) -> str:
    """before / with / after / undetermined for a CI of (circuit − jump) in log-steps."""
    if lo is None or hi is None:
        return "undetermined"
    if hi < -tol:
        return "before"
    if lo > tol:
        return "after"
    if -tol <= lo and hi <= tol:
        return "with"
    return "undetermined"


def _sooner(groups: dict[str, list[dict]], confidence: float, families: dict[str, Any] | None) -> dict[str, Any]:
    by = {}
    for g, runs in groups.items():
        jumps = [(r.get("recall_jump") or {}).get("midpoint") for r in runs]
        s99 = [r.get("steps_to_99_test_acc") for r in runs]
        circ = [(r.get("recall_circuit") or {}).get("midpoint") for r in runs]
        by[g] = {**_entry(jumps, sum(j is None for j in jumps), confidence),
                 "steps_to_99": _entry(s99, sum(s is None for s in s99), confidence),
                 "recall_circuit_midpoint": _entry(circ, sum(c is None for c in circ), confidence)}
    comps, verdicts = [], []
    fam = families or {g: _task(g) for g in groups}  # without families: pair within a task
    for f in dict.fromkeys(fam.get(g) for g in groups):
        mine = {g: r for g, r in groups.items() if fam.get(g) == f}
        alls = [g for g in mine if _regime(g) == ALL_TOKEN]
        for other in (LAST_TOKEN, NONCAUSAL):
            comps += [_compare(a, mine[a], b, mine[b], confidence) for a in alls for b in mine if _regime(b) == other]
    pairs = [c for c in comps if _regime(c["versus"]) == LAST_TOKEN]
    verdicts = [f"{c['verdict']} ({c['group']} vs {c['versus']})" for c in pairs]
    verdict = "; ".join(verdicts) or f"not measured: needs runs of {ALL_TOKEN} and {LAST_TOKEN}"
    rule = ("recall-jump midpoint per regime (mean over runs that have one; censored = no recall jump). "
            "Verdict: 95% bootstrap CI of mean ln(1+midpoint) of causal/last minus causal/all, a censored "
            "run entering at its last step: wholly > 0 → sooner, wholly < 0 → later, else no difference shown")
    return {"verdict": verdict, "rule": rule, "by_regime": by, "comparisons": comps}


def _train_with_test(groups: dict[str, list[dict]], confidence: float, tol: float) -> dict[str, Any]:
    by, verdicts = {}, {}
    for g, runs in groups.items():
        off = [(r.get("seed_claim") or {}).get("train_minus_test_midpoint_log_steps") for r in runs]
        e = _entry(off, sum(o is None for o in off), confidence)
        e["verdict"] = verdicts[g] = claim_verdict(*(e["ci"] or (None, None)), tol)
        by[g] = e
    mains = [f"{v} ({g})" for g, v in verdicts.items() if _regime(g) == ALL_TOKEN]
    main = verdicts[next(g for g in verdicts if _regime(g) == ALL_TOKEN)] if len(mains) == 1 else "; ".join(mains)
    return {"verdict": main or "undetermined (no causal/all runs)",
            "rule": f"the midpoint of train_acc_all's transition nearest the recall jump minus the recall "
                    f"jump's, in ln(1+step); consistent if the 95% CI lies inside ±{tol:.3f} (a factor 1.5 in steps), not consistent if wholly outside, else "
                    "undetermined; the verdict is causal/all's (the regime the claim was made for)",
            "by_regime": by}


def _circuit_vs_jump(groups: dict[str, list[dict]], confidence: float, tol: float) -> dict[str, Any]:
    by = {}
    for g, runs in groups.items():
        lag = [(r.get("recall_circuit") or {}).get("log_steps") for r in runs]
        e = _entry(lag, sum(x is None for x in lag), confidence)
        e["verdict"] = timing_verdict(*(e["ci"] or (None, None)), tol)
        by[g] = e
    return {"verdict": "; ".join(f"{g}: {e['verdict']}" for g, e in by.items()) or "undetermined",
            "rule": f"recall circuit (swap selectivity) midpoint minus the recall jump's, in ln(1+step): 95% CI "
                    f"wholly < −{tol:.3f} → before, > {tol:.3f} → after, inside ±{tol:.3f} → with, else undetermined",
            "by_regime": by}


def _mechanism(groups: dict[str, list[dict]]) -> dict[str, Any]:
    by = {}
    for g, runs in groups.items():
        got = [(r.get("mechanism") or {}).get("verdict") for r in runs]
        seen = Counter(v for v in got if v)
        top, k = (seen.most_common(1)[0] if seen else (None, 0))
        n = sum(seen.values())
        by[g] = {"value": k / n if n else None, "ci": None, "n": n, "censored": len(runs) - n,
                 "verdict": top, "counts": dict(seen)}
    causal = {g: e["verdict"] for g, e in by.items() if _regime(g).startswith("causal/")}
    noncausal = {g: e["verdict"] for g, e in by.items() if _regime(g).startswith("noncausal/")}

    def side(d):
        return ", ".join(f"{g} {v or 'not measured'}" for g, v in d.items()) or "no runs"

    return {"verdict": f"causal: {side(causal)}; non-causal: {side(noncausal)}",
            "rule": "per regime the most common verdict of analysis.mechanism (value = its share of runs); "
                    "censored = runs not probed",
            "by_regime": by}


def answers(groups: dict[str, list[dict]], *, confidence: float = 0.95, tol: float = math.log(1.5),
            families: dict[str, Any] | None = None) -> dict:
    """The four answers over `groups` ({label: [analyze_run result]}); see the module doc.
    `families` ({label: analysis.groups.family_key}) pairs the groups that differ only in their
    regime; without it, groups of one task are paired."""
    groups = dict(sorted(groups.items()))  # the same answers whatever order the caller lists groups in
    return {"sooner": _sooner(groups, confidence, families),
            "train_with_test": _train_with_test(groups, confidence, tol),
            "circuit_vs_jump": _circuit_vs_jump(groups, confidence, tol),
            "mechanism": _mechanism(groups),
            "doc": METRICS_DOC}
