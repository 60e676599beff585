"""Formation analysis: when each curve of a run transitions, relative to the test-accuracy jump
(science.md, "Timing a transition" and "Circuit metrics").

Inputs (docs/architecture.md, run-directory format): ``RUN_DIR/metrics.jsonl`` (the accuracy
curves) and, if present, the tidy ``RUN_DIR/analysis/metrics.csv``, read and named by
``analysis.curves``.

Definitions (decisions, written down here):

- *the jump* is the transition of ``test_acc_last`` with the largest |rise|; with two phases,
  lead/lag is also reported against each phase (``per_phase``);
- a curve's lead/lag uses *its* largest-|rise| transition: midpoint − jump midpoint, in steps
  and in log-steps (ln(1 + step), as in ``transitions``); negative = the curve moves first.
  Per phase, each jump phase is paired with the curve's transition nearest it in log-step;
- the seed claim ("train accuracy jumps around the same time as test accuracy") is
  ``train_acc_all``'s lead/lag, reported as ``train_minus_test_midpoint_*``. Over seeds
  (``analyze_group``) its verdict, on the log-step offset with a bootstrap CI and tolerance
  τ = ln 1.5 (same time = within a factor 1.5 in steps): "consistent" if the CI lies inside
  [−τ, τ], "not consistent" if it lies wholly outside, "undetermined" otherwise or with no CI;
- *the recall circuit* (``recall_circuit``) is timed by the swap-selectivity curve
  ``recall_swap_selectivity@L-1`` (interp/swap.py; docs/metrics.md): its largest-|rise|
  transition's midpoint and its lead/lag against the jump, the same fields as a ``lead_lag``
  entry. Negative ``steps`` = the circuit forms before the jump;
- steps to 99% test accuracy: the first evaluated step with ``test_acc_last`` ≥ 0.99;
- the absolute ``min_rise`` of ``detect_transitions`` is 0.05 for accuracies, and
  0.05 · max(1, max |value|) for a metrics.csv curve (lags, lengths are not in [0, 1]).

Regime (``analyze_group``): ``analysis.curves.regime_of`` of the run's ``config.yaml``
(its ``regime`` if given, else built from ``model.kind``, ``model.causal`` and the top-level
``loss``): ``causal/all``, ``noncausal/last``, ``attention/causal/all`` (kinds other than
hyena prefix their name). Runs without those keys are grouped by run name, with a trailing
seed tag (``_seed3``, ``-s3``) removed.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from models.errors import UserError
from models.rundir.io import atomic_write_json
from models.rundir.layout import RunDir, is_stale

from .bootstrap import bootstrap_ci
from .curves import ACC_CURVES, curve_name, read_curves, run_info
from .mechanism import mechanism_verdict
from .transitions import DEFAULTS, detect_transitions

__all__ = ["analyze_run", "analyze_group", "estimate", "claim_verdict", "read_curves", "run_info", "curve_name",
           "ACC_CURVES", "JUMP_CURVE", "SEED_CURVE", "SAME_TIME_TOL"]

JUMP_CURVE, SEED_CURVE = "test_acc_last", "train_acc_all"
RECALL_CIRCUIT_CURVE = curve_name("recall_swap_selectivity", layer=-1)
ACC_TARGET = 0.99
SAME_TIME_TOL = math.log(1.5)


# ---------------------------------------------------------------- one run
def _lag(mid: float, ref: float) -> dict:
    return {"steps": mid - ref, "log_steps": math.log1p(mid) - math.log1p(ref)}


def _lead_lag(trs: list[dict], test: list[dict], jump_idx: int) -> dict:
    main = max(range(len(trs)), key=lambda i: abs(trs[i]["high"] - trs[i]["low"]))
    out = {"transition": main, "midpoint": trs[main]["midpoint"],
           **_lag(trs[main]["midpoint"], test[jump_idx]["midpoint"]), "per_phase": []}
    for p, ph in enumerate(test):
        j = min(range(len(trs)), key=lambda i: abs(math.log1p(trs[i]["midpoint"])
                                                   - math.log1p(ph["midpoint"])))
        out["per_phase"].append({"phase": p, "transition": j,
                                 **_lag(trs[j]["midpoint"], ph["midpoint"])})
    return out


def _recall_circuit(curves: dict, transitions: dict, lead_lag: dict, jump: dict | None) -> dict:
    """When the recall circuit forms: the swap-selectivity curve's lead/lag entry, with a status."""
    out = {"curve": RECALL_CIRCUIT_CURVE, "midpoint": None, "steps": None, "log_steps": None}
    if RECALL_CIRCUIT_CURVE not in curves:
        return dict(out, status="not measured (run `hyenalens probe`)")
    if not transitions.get(RECALL_CIRCUIT_CURVE):
        return dict(out, status="no transition in the swap selectivity")
    if jump is None:
        return dict(out, status=f"no transition in {JUMP_CURVE}")
    ll = lead_lag[RECALL_CIRCUIT_CURVE]
    return dict(out, midpoint=ll["midpoint"], steps=ll["steps"], log_steps=ll["log_steps"], status="measured")


def analyze_run(run_dir, *, write: bool = True) -> dict:
    """Transitions of every curve of one run and their lead/lag against the test-accuracy
    jump; written to ``RUN_DIR/analysis/formation.json`` (atomically) unless ``write=False``.
    Keys: transitions, jump, lead_lag, recall_circuit, seed_claim, steps_to_99_test_acc, curves, run, params."""
    run = RunDir(run_dir)
    curves = read_curves(run.root)
    transitions, meta = {}, {}
    for name, (steps, values) in curves.items():
        finite = values[np.isfinite(values)]
        min_rise = DEFAULTS["min_rise"]
        if name not in ACC_CURVES and finite.size:
            min_rise *= max(1.0, float(np.max(np.abs(finite))))
        trs = detect_transitions(steps, values, min_rise=min_rise)
        transitions[name] = [t.to_dict() for t in trs]
        meta[name] = {"source": "metrics.jsonl" if name in ACC_CURVES else "analysis/metrics.csv",
                      "n_points": int(finite.size), "min_rise": min_rise}
    test = transitions.get(JUMP_CURVE) or []
    jump = None
    if test:
        j = max(range(len(test)), key=lambda i: abs(test[i]["high"] - test[i]["low"]))
        jump = {"phase": j, "n_phases": len(test), **test[j]}
    lead_lag = {name: _lead_lag(trs, test, jump["phase"])
                for name, trs in transitions.items() if jump and trs and name != JUMP_CURVE}
    seed = {"train_curve": SEED_CURVE, "test_curve": JUMP_CURVE,
            "train_minus_test_midpoint_steps": None, "train_minus_test_midpoint_log_steps": None,
            "per_phase": []}
    if SEED_CURVE not in transitions:
        seed["status"] = f"{SEED_CURVE} not logged"
    elif jump is None:
        seed["status"] = f"no transition in {JUMP_CURVE}"
    elif SEED_CURVE not in lead_lag:
        seed["status"] = f"no transition in {SEED_CURVE}"
    else:
        ll = lead_lag[SEED_CURVE]
        seed.update(status="measured", train_minus_test_midpoint_steps=ll["steps"],
                    train_minus_test_midpoint_log_steps=ll["log_steps"],
                    per_phase=ll["per_phase"])
    reached = None
    if JUMP_CURVE in curves:
        s, v = curves[JUMP_CURVE]
        hit = np.flatnonzero(np.nan_to_num(v, nan=-np.inf) >= ACC_TARGET)
        reached = float(s[hit[0]]) if hit.size else None
    result = {"transitions": transitions, "jump": jump, "lead_lag": lead_lag,
              "recall_circuit": _recall_circuit(curves, transitions, lead_lag, jump),
              "seed_claim": seed, "steps_to_99_test_acc": reached, "curves": meta,
              "run": run_info(run.root), "params": dict(DEFAULTS)}
    result["mechanism"] = mechanism_verdict(run.metrics_csv) if run.metrics_csv.is_file() else None
    if write:
        atomic_write_json(run.formation, _json_safe(result))
    return result


# ---------------------------------------------------------------- several runs
def _group_key(info: dict, group_by: str) -> str:
    if group_by == "regime" and info["regime"]:
        return info["regime"]
    return re.sub(r"[-_.](seed[-_]?|s)\d+$", "", info["name"]) or info["name"]


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


def estimate(values, confidence: float = 0.95) -> dict:
    """The one estimate over runs of every per-group number (here and in the report): the mean
    with its bootstrap CI, as a dict {"value", "lo", "hi", "n", "method", "confidence", "note"}."""
    return bootstrap_ci(values, confidence=confidence).to_dict()


def _summarize(results: list[dict], confidence: float, tol: float) -> dict:
    def est(values):
        return estimate(values, confidence)

    jumps = [r["jump"]["midpoint"] for r in results if r["jump"]]
    seeds = [r["seed_claim"] for r in results]
    log_off = [s["train_minus_test_midpoint_log_steps"] for s in seeds]
    offset = est(log_off)
    names = sorted({n for r in results for n in r["lead_lag"]})
    lead_lag = {}
    for n in names:
        got = [r["lead_lag"][n] for r in results if n in r["lead_lag"]]
        lead_lag[n] = {"steps": est([g["steps"] for g in got]),
                       "log_steps": est([g["log_steps"] for g in got]),
                       "runs_without": len(results) - len(got)}
    reach = [r["steps_to_99_test_acc"] for r in results if r["steps_to_99_test_acc"] is not None]
    circ = [r["recall_circuit"] for r in results if (r.get("recall_circuit") or {}).get("status") == "measured"]
    return {
        "runs": [r["run"]["name"] for r in results], "n_runs": len(results),
        "jump_midpoint": {"steps": est(jumps),
                          "log_steps": est([math.log1p(j) for j in jumps]),
                          "runs_without_jump": len(results) - len(jumps)},
        "seed_claim": {
            "train_minus_test_midpoint_steps": est(
                [s["train_minus_test_midpoint_steps"] for s in seeds]),
            "train_minus_test_midpoint_log_steps": offset,
            "runs_not_measured": sum(v is None for v in log_off),
            "verdict": claim_verdict(offset["lo"], offset["hi"], tol), "tolerance_log_steps": tol,
            "rule": "consistent if the CI of the log-step offset lies inside ±tolerance, not "
                    "consistent if wholly outside, else (or with no CI) undetermined"},
        "lead_lag": lead_lag,
        "recall_circuit": {"curve": RECALL_CIRCUIT_CURVE,
                           "midpoint": est([c["midpoint"] for c in circ]),
                           "steps": est([c["steps"] for c in circ]),
                           "log_steps": est([c["log_steps"] for c in circ]),
                           "runs_without": len(results) - len(circ)},
        "steps_to_99_test_acc": {"reached": len(reach), "n": len(results),
                                 "steps": est(reach) if reach else "not reached"},
    }


def analyze_group(run_dirs, *, out_path=None, group_by: str = "regime",
                  confidence: float = 0.95, tolerance_log_steps: float = SAME_TIME_TOL,
                  write_runs: bool = True, reuse: bool = True) -> dict:
    """Analyze several runs (each as ``analyze_run``, writing its formation.json unless
    ``write_runs=False``; with ``reuse`` a formation.json newer than the run's metrics files
    and written with the same parameters is read instead of recomputed), group them (``group_by``: "regime",
    prefixed with the task when the runs span several, or "run" name) and bootstrap over
    seeds: jump midpoint, the seed claim with its verdict, each curve's lead/lag, the recall
    circuit's midpoint and lead/lag (the headline "when does the recall circuit form"), steps to 99%
    test accuracy. Writes the combined JSON to ``out_path`` (atomically) when given."""
    if group_by not in ("regime", "run"):
        raise UserError(f"group_by must be 'regime' or 'run', got {group_by!r}")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("no run directories given; pass at least one")
    results = [(reuse and _fresh_formation(d)) or analyze_run(d, write=write_runs) for d in run_dirs]
    # the task from config.yaml now (a reused formation.json may predate the "task" field)
    tasks = [run_info(d)["task"] for d in run_dirs]
    several_tasks = len(set(tasks)) > 1
    groups: dict[str, list[dict]] = {}
    for res, task in zip(results, tasks):
        key = _group_key(res["run"], group_by)
        if group_by == "regime" and several_tasks and task:
            key = f"{task} {key}"  # never pool AR with IH (the report labels them the same way)
        groups.setdefault(key, []).append(res)
    out = {"group_by": group_by, "confidence": confidence,
           "groups": {k: _summarize(v, confidence, tolerance_log_steps)
                      for k, v in sorted(groups.items())}}
    if out_path is not None:
        atomic_write_json(Path(out_path), _json_safe(out))
    return out


def _fresh_formation(run_dir: Path) -> dict | None:
    """The run's formation.json when it is up to date with its inputs (RunDir's staleness
    rule) and was written with these parameters, else None."""
    run = RunDir(run_dir)
    if is_stale(run.formation, (run.metrics, run.metrics_csv, run.config)):
        return None
    try:
        res = json.loads(run.formation.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("params") != dict(DEFAULTS) or "recall_circuit" not in res:
        return None
    return res


# ---------------------------------------------------------------- writing
def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


