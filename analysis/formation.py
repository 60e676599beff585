"""Formation analysis: when each curve of a run transitions, relative to the recall jump
(science.md, "Timing a transition" and "Circuit metrics"; docs/metrics.md, "The recall jump").

Inputs (docs/architecture.md, run-directory format): ``RUN_DIR/metrics.jsonl`` (the accuracy
curves) and, if present, the tidy ``RUN_DIR/analysis/metrics.csv``, read and named by
``analysis.curves``.

Definitions (decisions, written down here):

- every transition of ``test_acc_last`` is reported (``transitions``); *the recall jump*
  (``recall_jump``) is a transition of test_acc_last floored at the baseline, max(acc, b),
  chosen by ``analysis.recall_jump``'s rule (its ``phase`` indexes those). It qualifies only
  by rising to above the no-recall baseline b + 0.1, and among those it has the largest
  ``high − max(low, b)``; the earlier wins a tie. It is None when none qualifies (a run that
  stalls at the stage-one heuristic), and ``recall_jump_status`` says why. b is
  ``no_recall_baseline`` {value, margin, source}: metrics.jsonl's ``test_acc_last_baseline``,
  else computed from config.yaml;
- a curve's lead/lag uses *its* largest-|rise| transition: midpoint − the recall jump's
  midpoint, in steps and in log-steps (ln(1 + step), as in ``transitions``); negative = the
  curve moves first. Per phase (``per_phase``), each transition of ``test_acc_last`` is paired
  with the curve's transition nearest it in log-step. With no recall jump there is no lead/lag;
- the seed claim ("train accuracy jumps around the same time as test accuracy") is the
  lead/lag of ``train_acc_all``'s transition nearest the recall jump (in log-step; its
  lead/lag entry's ``nearest``) against the recall jump, reported as
  ``train_minus_test_midpoint_*`` (``train_transition``: which one). Not its largest
  transition: on AR that is the early rise on the non-recall positions, which would compare
  stage one of train with the recall jump of test. Over seeds
  (``analyze_group``) its verdict, on the log-step offset with a bootstrap CI and tolerance
  τ = ln 1.5 (same time = within a factor 1.5 in steps): "consistent" if the CI lies inside
  [−τ, τ], "not consistent" if it lies wholly outside, "undetermined" otherwise or with no CI;
- *the recall circuit* (``recall_circuit``) is timed by the swap-selectivity curve
  ``recall_swap_selectivity@L-1`` (interp/swap.py; docs/metrics.md): its largest-|rise|
  transition's midpoint and its lead/lag against the recall jump, the same fields as a
  ``lead_lag`` entry. Negative ``steps`` = the circuit forms before the recall jump;
- steps to 99% test accuracy: the first evaluated step with ``test_acc_last`` ≥ 0.99;
- the absolute ``min_rise`` of ``detect_transitions`` is 0.05 for accuracies, and
  0.05 · max(1, max |value|) for a metrics.csv curve (lags, lengths are not in [0, 1]).

Groups (``analyze_group``): ``analysis.groups.plan_groups``: runs pool only when their configs
are equal apart from the seed, labelled by regime (``analysis.curves.regime_of``: ``causal/all``,
``noncausal/last``, ``attention/causal/all``); unfinished runs are left out and named. The four
answers over the groups: ``analysis.answers``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from models.errors import UserError
from models.rundir.io import atomic_write_json
from models.rundir.layout import RunDir, is_stale

from .answers import answers, claim_verdict
from .bootstrap import bootstrap_ci
from .curves import ACC_CURVES, curve_name, read_curves, run_info
from .groups import accuracy_only, plan_groups
from .mechanism import mechanism_verdict
from .recall_jump import RECALL_MARGIN, find_recall_jump, run_baseline
from .transitions import DEFAULTS, detect_transitions

__all__ = ["analyze_run", "analyze_group", "estimate", "claim_verdict", "read_curves", "run_info", "curve_name",
           "ACC_CURVES", "JUMP_CURVE", "SEED_CURVE", "SAME_TIME_TOL"]

JUMP_CURVE, SEED_CURVE = "test_acc_last", "train_acc_all"
RECALL_CIRCUIT_CURVE = curve_name("recall_swap_selectivity", layer=-1)
ACC_TARGET = 0.99
SAME_TIME_TOL = math.log(1.5)
# What a formation.json was computed with; one written with other values is stale (_fresh_formation)
FORMATION_PARAMS = {**DEFAULTS, "recall_margin": RECALL_MARGIN, "seed_claim_pairing": "nearest transition",
                    "recall_jump_curve": "test_acc_last floored at the baseline"}


# ---------------------------------------------------------------- one run
def _lag(mid: float, ref: float) -> dict:
    return {"steps": mid - ref, "log_steps": math.log1p(mid) - math.log1p(ref)}


def _nearest(trs: list[dict], step: float) -> int:
    return min(range(len(trs)), key=lambda i: abs(math.log1p(trs[i]["midpoint"]) - math.log1p(step)))


def _lead_lag(trs: list[dict], test: list[dict], jump: dict) -> dict:
    main = max(range(len(trs)), key=lambda i: abs(trs[i]["high"] - trs[i]["low"]))
    near = _nearest(trs, jump["midpoint"])
    out = {"transition": main, "midpoint": trs[main]["midpoint"], **_lag(trs[main]["midpoint"], jump["midpoint"]),
           "nearest": {"transition": near, **_lag(trs[near]["midpoint"], jump["midpoint"])}, "per_phase": []}
    for p, ph in enumerate(test):
        j = min(range(len(trs)), key=lambda i: abs(math.log1p(trs[i]["midpoint"])
                                                   - math.log1p(ph["midpoint"])))
        out["per_phase"].append({"phase": p, "transition": j,
                                 **_lag(trs[j]["midpoint"], ph["midpoint"])})
    return out


def _recall_circuit(curves: dict, transitions: dict, lead_lag: dict, jump: dict | None,
                    jump_status: str) -> dict:
    """When the recall circuit forms: the swap-selectivity curve's lead/lag entry against the
    recall jump, with a status."""
    out = {"curve": RECALL_CIRCUIT_CURVE, "midpoint": None, "steps": None, "log_steps": None}
    if RECALL_CIRCUIT_CURVE not in curves:
        return dict(out, status="not measured (run `hyenalens probe`)")
    if not transitions.get(RECALL_CIRCUIT_CURVE):
        return dict(out, status="no transition in the swap selectivity")
    if jump is None:
        return dict(out, status=jump_status)
    ll = lead_lag[RECALL_CIRCUIT_CURVE]
    return dict(out, midpoint=ll["midpoint"], steps=ll["steps"], log_steps=ll["log_steps"], status="measured")


def analyze_run(run_dir, *, write: bool = True) -> dict:
    """Transitions of every curve of one run and their lead/lag against the recall jump;
    written to ``RUN_DIR/analysis/formation.json`` (atomically) unless ``write=False``.
    Keys: transitions, recall_jump (None when no transition qualifies), recall_jump_status,
    no_recall_baseline, lead_lag, recall_circuit, seed_claim, steps_to_99_test_acc, curves, run,
    params, mechanism."""
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
    baseline = run_baseline(run.root)
    steps, values = curves.get(JUMP_CURVE, ([], []))
    jump, jump_status = find_recall_jump(steps, values, baseline["value"], baseline["margin"])
    lead_lag = {name: _lead_lag(trs, test, jump)
                for name, trs in transitions.items() if jump and trs and name != JUMP_CURVE}
    seed = {"train_curve": SEED_CURVE, "test_curve": JUMP_CURVE,
            "train_minus_test_midpoint_steps": None, "train_minus_test_midpoint_log_steps": None,
            "per_phase": []}
    if SEED_CURVE not in transitions:
        seed["status"] = f"{SEED_CURVE} not logged"
    elif jump is None:
        seed["status"] = jump_status
    elif SEED_CURVE not in lead_lag:
        seed["status"] = f"no transition in {SEED_CURVE}"
    else:
        ll = lead_lag[SEED_CURVE]
        paired = ll["nearest"]  # train's transition nearest the recall jump
        seed.update(status="measured", train_minus_test_midpoint_steps=paired["steps"],
                    train_minus_test_midpoint_log_steps=paired["log_steps"], train_transition=paired["transition"],
                    per_phase=ll["per_phase"])
    reached = None
    if JUMP_CURVE in curves:
        s, v = curves[JUMP_CURVE]
        hit = np.flatnonzero(np.nan_to_num(v, nan=-np.inf) >= ACC_TARGET)
        reached = float(s[hit[0]]) if hit.size else None
    result = {"transitions": transitions, "recall_jump": jump, "recall_jump_status": jump_status,
              "no_recall_baseline": baseline, "lead_lag": lead_lag,
              "recall_circuit": _recall_circuit(curves, transitions, lead_lag, jump, jump_status),
              "seed_claim": seed, "steps_to_99_test_acc": reached, "curves": meta,
              "run": run_info(run.root), "params": dict(FORMATION_PARAMS)}
    result["mechanism"] = mechanism_verdict(run.metrics_csv) if run.metrics_csv.is_file() else None
    if write:
        atomic_write_json(run.formation, _json_safe(result))
    return result


# ---------------------------------------------------------------- several runs
def estimate(values, confidence: float = 0.95) -> dict:
    """The one estimate over runs of every per-group number (here and in the report): the mean
    with its bootstrap CI, as a dict {"value", "lo", "hi", "n", "method", "confidence", "note"}."""
    return bootstrap_ci(values, confidence=confidence).to_dict()


def _summarize(results: list[dict], confidence: float, tol: float) -> dict:
    def est(values):
        return estimate(values, confidence)

    jumps = [r["recall_jump"]["midpoint"] for r in results if r.get("recall_jump")]
    base = [(r.get("no_recall_baseline") or {}).get("value") for r in results]
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
        "recall_jump_midpoint": {"steps": est(jumps),
                                 "log_steps": est([math.log1p(j) for j in jumps]),
                                 "runs_without_recall_jump": len(results) - len(jumps)},
        "no_recall_baseline": {"value": est(base), "margin": RECALL_MARGIN,
                               "runs_without": sum(b is None for b in base)},
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
    seeds: recall-jump midpoint, the seed claim with its verdict, each curve's lead/lag, the recall
    circuit's midpoint and lead/lag (the headline "when does the recall circuit form"), steps to 99%
    test accuracy; and the four answers (analysis.answers) over the groups. Writes the combined
    JSON to ``out_path`` (atomically) when given.

    Groups are ``analysis.groups.plan_groups``'s (the report uses the same): runs pool only when
    their configs are equal apart from the seed; each group is labelled by its regime (or run
    name with ``group_by="run"``), prefixed with the task when the runs span several and followed
    by the fields that tell apart two groups of one regime, and carries its ``experiment_key``,
    ``config_diff`` and ``accuracy_only`` (finished runs not probed: in the accuracy estimates,
    not the circuit ones). Unfinished runs are in no group: ``excluded`` names them with why."""
    if group_by not in ("regime", "run"):
        raise UserError(f"group_by must be 'regime' or 'run', got {group_by!r}")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("no run directories given; pass at least one")
    results = [(reuse and _fresh_formation(d)) or analyze_run(d, write=write_runs) for d in run_dirs]
    by_path = {str(d): res for d, res in zip(run_dirs, results)}
    plan = plan_groups(run_dirs, group_by=group_by)
    groups, members = {}, {}
    for label, paths in plan["groups"].items():
        status = [plan["status"][p] for p in paths]
        rs = [{**(by_path[p] if st["circuit"] else accuracy_only(by_path[p], st["reason"])),
               "last_step": st["last_step"]} for p, st in zip(paths, status)]
        members[label] = rs
        info = plan["info"][label]
        groups[label] = {**_summarize(rs, confidence, tolerance_log_steps), "experiment_key": info["experiment_key"],
                         "config_diff": info["config_diff"],
                         "accuracy_only": [{"run": a["run"], "reason": a["reason"]} for a in info["accuracy_only"]]}
    out = {"group_by": group_by, "confidence": confidence, "groups": dict(sorted(groups.items())),
           "excluded": [{"run": e["run"], "reason": e["reason"]} for e in plan["excluded"]],
           "answers": answers(members, confidence=confidence, tol=tolerance_log_steps,
                              families={k: plan["info"][k].get("family") for k in members})}
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
    if not isinstance(res, dict) or res.get("params") != FORMATION_PARAMS or "recall_jump" not in res:
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


