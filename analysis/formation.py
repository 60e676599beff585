"""Formation analysis: when each curve of a run transitions, relative to the test-accuracy jump
(science.md, "Timing a transition" and "Circuit metrics").

Inputs (docs/architecture.md, run-directory format): ``RUN_DIR/metrics.jsonl`` (the accuracy
curves ``test_acc_last``, ``train_acc_all``, ``train_acc_recallable``, ``train_acc_last``) and,
if present, the tidy ``RUN_DIR/analysis/metrics.csv`` (step, metric, layer, value; optional
target, hook, role, control, ci). Each (metric, layer, hook, role, target, control) group is one
curve, named ``{metric}[_{target}][@L{layer}][/{hook}][:{role}][[control]]``, e.g.
``recall_score_values@L1``; several values at one step are averaged.

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
- steps to 99% test accuracy: the first evaluated step with ``test_acc_last`` ≥ 0.99;
- the absolute ``min_rise`` of ``detect_transitions`` is 0.05 for accuracies, and
  0.05 · max(1, max |value|) for a metrics.csv curve (lags, lengths are not in [0, 1]).

Regime (``analyze_group``): ``config.yaml``'s ``regime`` if given, else built from
``model.kind``, ``model.causal`` and ``loss`` (or ``loss_on``; top level or under ``train``/
``training``): ``causal/all``, ``noncausal/last``, ``attention/causal/all`` (kinds other than
hyena prefix their name). Runs without those keys are grouped by run name, with a trailing
seed tag (``_seed3``, ``-s3``) removed.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import UserError
from models.config_source import parse_yaml
from models.io import atomic_write_json, read_jsonl

from .bootstrap import bootstrap_ci
from .mechanism import mechanism_verdict
from .transitions import DEFAULTS, detect_transitions

__all__ = ["analyze_run", "analyze_group", "read_curves", "run_info", "curve_name",
           "ACC_CURVES", "JUMP_CURVE", "SEED_CURVE"]

ACC_CURVES = ("test_acc_last", "train_acc_all", "train_acc_recallable", "train_acc_last")
JUMP_CURVE, SEED_CURVE = "test_acc_last", "train_acc_all"
ACC_TARGET = 0.99
SAME_TIME_TOL = math.log(1.5)
_CSV_REQUIRED = ("step", "metric", "layer", "value")
# `control`, `ci`, `n`, `floor` are values beside a curve, not part of its identity
_CSV_KEYS = ("metric", "target", "layer", "hook", "role")


# ---------------------------------------------------------------- reading
def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path} not found; a run directory needs metrics.jsonl "
                        "(train or import the run first)")
    records = read_jsonl(path)
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            raise UserError(f"{path}: record {i} must be an object with a numeric 'step'")
    return records


def _as_float(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _read_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); "
                        "rewrite it (interp writes it) or delete it") from None
    missing = [c for c in _CSV_REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; a tidy metrics.csv "
                        "has step, metric, layer, value")
    df = df.assign(step=pd.to_numeric(df["step"], errors="coerce"),
                   value=pd.to_numeric(df["value"], errors="coerce"))
    for c in _CSV_KEYS:
        col = df[c] if c in df.columns else pd.Series("", index=df.index)
        df[c] = col.map(_key_str)
    curves = {}
    for key, g in df.groupby(list(_CSV_KEYS), sort=True):
        per_step = g.groupby("step")["value"].mean()
        curves[curve_name(**dict(zip(_CSV_KEYS, key)))] = (per_step.index.to_numpy(float),
                                                           per_step.to_numpy(float))
    return curves


def _key_str(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def curve_name(metric, layer="", hook="", role="", target="") -> str:
    """Readable, stable curve name, e.g. ``recall_score_values@L1/blocks.1.mixer.hook_y:query``."""
    name = f"{metric}_{target}" if target else str(metric)
    name += f"@L{layer}" if layer != "" else ""
    name += f"/{hook}" if hook else ""
    name += f":{role}" if role else ""
    return name


def read_curves(run_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name → (steps, values) for the accuracy curves logged in metrics.jsonl (a resumed run's
    repeated step keeps its last record) and every metrics.csv curve."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass a run directory")
    by_step = {}
    for rec in _read_jsonl(run_dir / "metrics.jsonl"):
        by_step[float(rec["step"])] = rec
    steps = np.array(sorted(by_step), dtype=float)
    curves = {}
    for name in ACC_CURVES:
        if any(name in by_step[s] for s in steps):
            curves[name] = (steps, np.array([_as_float(by_step[s].get(name)) for s in steps]))
    csv = run_dir / "analysis" / "metrics.csv"
    if csv.is_file():
        # metrics.jsonl is the record of the accuracy curves; a same-named csv curve is dropped
        curves.update({k: v for k, v in _read_csv(csv).items() if k not in curves})
    return curves


def _read_yaml(path: Path):
    cfg = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if cfg is not None and not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of config keys; fix the file")
    return cfg or {}


def regime_name(kind: str, causal: bool, loss: str) -> str:
    """causal/all, causal/last, noncausal/last (science.md, "Regimes"); kinds other than
    hyena prefix the name (attention/causal/all)."""
    base = f"{'causal' if causal else 'noncausal'}/{loss}"
    return base if kind == "hyena" else f"{kind}/{base}"


def run_info(run_dir) -> dict:
    """Name, regime and seed of a run from its config.yaml (and run.json), where present."""
    run_dir = Path(run_dir)
    info = {"name": run_dir.resolve().name, "regime": None, "model_kind": None,
            "causal": None, "loss": None, "seed": None, "task": None, "config": False}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        cfg = _read_yaml(cfg_path)
        info["config"] = True
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        loss = cfg.get("loss") if isinstance(cfg.get("loss"), str) else None
        seed = cfg.get("seed") if isinstance(cfg.get("seed"), int) else None
        kind, causal = model.get("kind"), model.get("causal")
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        task = data.get("task") if isinstance(data.get("task"), str) else None
        info.update(model_kind=kind, causal=causal, loss=loss, seed=seed, task=task)
        if isinstance(cfg.get("regime"), str):
            info["regime"] = cfg["regime"]
        elif isinstance(kind, str) and isinstance(causal, bool) and loss:
            info["regime"] = regime_name(kind, causal, loss)
    rj = run_dir / "run.json"
    if info["seed"] is None and rj.is_file():
        try:
            seed = json.loads(rj.read_text()).get("seed")
        except (json.JSONDecodeError, AttributeError):
            seed = None  # provenance only: a bad run.json does not stop the analysis
        info["seed"] = seed if isinstance(seed, int) else None
    return info


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


def analyze_run(run_dir, *, write: bool = True) -> dict:
    """Transitions of every curve of one run and their lead/lag against the test-accuracy
    jump; written to ``RUN_DIR/analysis/formation.json`` (atomically) unless ``write=False``.
    Keys: transitions, jump, lead_lag, seed_claim, steps_to_99_test_acc, curves, run, params."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
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
              "seed_claim": seed, "steps_to_99_test_acc": reached, "curves": meta,
              "run": run_info(run_dir), "params": dict(DEFAULTS)}
    csv = run_dir / "analysis" / "metrics.csv"
    result["mechanism"] = mechanism_verdict(csv) if csv.is_file() else None
    if write:
        atomic_write_json(run_dir / "analysis" / "formation.json", _json_safe(result))
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


def _summarize(results: list[dict], confidence: float, tol: float) -> dict:
    def est(values):
        return bootstrap_ci(values, confidence=confidence).to_dict()

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
    seeds: jump midpoint, the seed claim with its verdict, each curve's lead/lag, steps to 99%
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
    """The run's formation.json when it is up to date with its inputs, else None."""
    path = run_dir / "analysis" / "formation.json"
    inputs = [run_dir / "metrics.jsonl", run_dir / "analysis" / "metrics.csv", run_dir / "config.yaml"]
    if not path.is_file():
        return None
    stamp = path.stat().st_mtime_ns
    if any(p.is_file() and p.stat().st_mtime_ns > stamp for p in inputs):
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("params") != dict(DEFAULTS) or "transitions" not in res:
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


