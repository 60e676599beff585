"""The numbers a report opens with: per run, per regime (bootstrap CIs over seeds), the seed claim.

Sources, in order of preference (the report reads analysis' outputs, it does not re-time curves
that analysis has timed, and every CI and verdict is analysis' own):

1. a combined analysis over the runs (`analysis.formation.analyze_group`'s JSON, passed in or
   found beside the runs: reports.groupfile) — its per-regime recall-jump midpoints, seed-claim offsets and
   verdicts, lead/lag and steps to 99% are used as they are, for a regime whose run set matches;
2. each run's `analysis/formation.json` (`recall_jump`, `lead_lag`, `seed_claim`,
   `steps_to_99_test_acc`), over the regime's runs with analysis' estimator
   (`analysis.formation.estimate`, the one analyze_group uses) and its seed-claim rule
   (`analysis.claim_verdict`);
3. for a run without formation.json, its accuracy curves timed by
   `analysis.transitions.detect_transitions` (see reports.rundata).

Offsets are in steps and in log-steps x = ln(step + 1), as in analysis.transitions.

Groups are `analysis.groups.plan_groups`'s, the same as analyze_group's: runs pool only when their
configs are equal apart from the seed; a group's label is its regime (with the task when the runs
span several, and the differing config fields when two groups share a regime). An unfinished
run has no label (None) and stands in no estimate; a finished run that is not probed stands in
the accuracy estimates only (`run_numbers(rd, status)` drops its circuit lead/lag and mechanism).
"""
from __future__ import annotations

import math
from typing import Any

from analysis.formation import SAME_TIME_TOL, claim_verdict, estimate
from analysis.groups import is_accuracy_curve, plan_groups
from reports.rundata import RunData, _finite, main_transition

ACC_KEYS = ("test_acc_last", "train_acc_all", "train_acc_recallable")
SEED_CLAIM_REGIME = "causal/all"  # safari's setting, where the claim was made
_ACC_NAMES = set(ACC_KEYS) | {"train_acc_last", "train_acc_all_ceiling"}
REGIME_ORDER = ("causal/all", "causal/last", "noncausal/last", "noncausal/all",
                "attention/causal/all", "attention/causal/last", "attention/noncausal/last")
# circuit metrics whose lead/lag the summary and figure 7 show (curve names as analysis writes
# them: {metric}[_{target}][@L{layer}][/{hook}][:{role}])
KEY_METRICS = ("prev_token_score", "recall_score_values", "recall_score_keys", "filter_lag1_mass",
               "filter_effective_length", "probe_prev_token", "probe_next_token", "probe_answer")


def log_step(s: float) -> float:
    return math.log1p(max(float(s), 0.0))


def stat(values: list[Any], total: int | None = None) -> dict[str, Any]:
    """{"mean", "ci" ([lo, hi] or None), "n", "n_total", "values", "method", "note"} of the
    finite values, by analysis' estimator (`analysis.formation.estimate`: its small-n rules)."""
    v = [float(x) for x in values if _finite(x)]
    out = {"mean": None, "ci": None, "n": len(v), "n_total": len(values) if total is None else total,
           "values": v, "method": "none", "note": ""}
    if not v:
        return out
    e = estimate(v)
    out.update(mean=e["value"], method=e["method"], note=e["note"],
               ci=[e["lo"], e["hi"]] if e["lo"] is not None and e["hi"] is not None else None)
    return out


def from_estimate(e: Any, n_total: int, values: list[float]) -> dict[str, Any] | None:
    """analysis' Estimate dict ({"value", "lo", "hi", "n", "method", "note"}) as a `stat`."""
    if not isinstance(e, dict) or "value" not in e:
        return None
    ok = _finite(e.get("lo")) and _finite(e.get("hi"))
    return {"mean": e.get("value"), "ci": [e["lo"], e["hi"]] if ok else None, "n": int(e.get("n") or 0),
            "n_total": n_total, "values": [float(x) for x in values if _finite(x)],
            "method": e.get("method", ""), "note": e.get("note", ""), "source": "analyze_group"}


# ------------------------------------------------------------------ one run
def steps_to(rd: RunData, curve: str = "test_acc_last", level: float = 0.99) -> int | None:
    given = (rd.formation or {}).get("steps_to_99_test_acc") if curve == "test_acc_last" and level == 0.99 else None
    if _finite(given):
        return int(float(given))
    if curve not in rd.metrics.columns:
        return None
    hit = rd.metrics.loc[rd.metrics[curve] >= level, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def _last(rd: RunData, col: str) -> float | None:
    if col not in rd.metrics.columns:
        return None
    s = rd.metrics[col].dropna()
    return float(s.iloc[-1]) if len(s) else None


def lead_lag(rd: RunData) -> dict[str, dict[str, float]]:
    """{curve: {"steps", "log_steps"}}: the curve's main midpoint − the jump midpoint, from
    formation.json's `lead_lag`; computed from the transitions for curves it lacks."""
    out: dict[str, dict[str, float]] = {}
    given = (rd.formation or {}).get("lead_lag")
    if isinstance(given, dict):
        for name, v in given.items():
            if isinstance(v, dict) and _finite(v.get("steps")):
                out[str(name)] = {"steps": float(v["steps"]),
                                  **({"log_steps": float(v["log_steps"])} if _finite(v.get("log_steps")) else {})}
    jump = rd.jump()
    if jump is None:
        return out
    for name, trs in rd.transitions.items():
        if name == "test_acc_last" or name in out:
            continue
        t = main_transition(trs)
        if t is not None:
            out[name] = {"steps": t["midpoint"] - jump["midpoint"],
                         "log_steps": log_step(t["midpoint"]) - log_step(jump["midpoint"])}
    return out


def run_numbers(rd: RunData, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run's numbers. With `status` (`analysis.groups.run_status`) of a run that cannot
    stand in the circuit estimates (not probed, or its probe is stale), its metrics.csv curves'
    lead/lag and its mechanism are left out, and `circuit_excluded` says why."""
    jump = rd.jump()
    mids = {k: (main_transition(rd.transitions.get(k) or []) or {}).get("midpoint") for k in ACC_KEYS}
    if jump is not None:
        mids["test_acc_last"] = jump["midpoint"]
    ll = lead_lag(rd)
    circuit_ok = status is None or bool(status.get("circuit"))
    if not circuit_ok:
        ll = {k: v for k, v in ll.items() if is_accuracy_curve(k)}
    out: dict[str, Any] = {
        "name": rd.name, "dir_name": rd.path.resolve().name, "regime": rd.regime, "task": rd.task,
        "seed": rd.seed, "kind": rd.kind, "jump": jump, "midpoints": mids,
        "n_transitions": {k: len(rd.transitions.get(k) or []) for k in ACC_KEYS if k in rd.transitions},
        "steps_to_99": steps_to(rd), "last_step": int(rd.metrics["step"].iloc[-1]),
        "final": {k: _last(rd, k) for k in (*ACC_KEYS, "train_acc_last", "train_acc_all_ceiling")},
        "lead_lag": ll, "transitions_source": rd.transitions_source,
        "mechanism": _verdict_text((rd.formation or {}).get("mechanism")) if circuit_ok else None,
        "status": status, "circuit_excluded": None if circuit_ok else status.get("reason"),
    }
    for k in ("train_acc_all", "train_acc_recallable"):
        if k in ll:
            out[f"offset_{k}"] = ll[k]
    sc = (rd.formation or {}).get("seed_claim") or {}
    if sc.get("status") == "measured":  # analysis' pairing: train's transition nearest the recall jump
        out["offset_train_acc_all"] = {"steps": sc["train_minus_test_midpoint_steps"],
                                       "log_steps": sc["train_minus_test_midpoint_log_steps"]}
    return out


# ------------------------------------------------------------------ regimes
def plan_of(runs: list[RunData]) -> dict[str, Any]:
    """`analysis.groups.plan_groups` over the runs' folders (grouped by regime)."""
    return plan_groups([r.path for r in runs], group_by="regime")


def regime_key(rd: RunData, runs: list[RunData]) -> str | None:
    """The label of `rd`'s group among `runs` (`plan_groups`'s: its regime, prefixed with the
    task when the runs span several, with the differing config fields when two groups share a
    regime); None when the run is unfinished and so in no group."""
    return plan_of(runs)["labels"].get(str(rd.path))


def group_keys(runs: list[RunData], group: dict[str, Any] | None,
               plan: dict[str, Any] | None = None) -> list[str | None]:
    """Each run's label: its sweep group where the combined analysis is a sweep's (one group
    per sweep point, hyenalens.sweep.analyze_sweep), else its `plan_groups` label (`regime_key`);
    None for a run left out of every group (unfinished: `plan["excluded"]` says why)."""
    plan = plan if plan is not None else plan_of(runs)
    by_dir: dict[str, str] = {}
    if isinstance(group, dict) and group.get("group_by") == "sweep point" and isinstance(group.get("groups"), dict):
        for name, g in group["groups"].items():
            for run in (g.get("runs") or []) if isinstance(g, dict) else []:
                by_dir[str(run)] = str(name)
    out = []
    for r in runs:
        label = plan["labels"].get(str(r.path))
        out.append(None if label is None else by_dir.get(r.path.resolve().name) or label)
    return out


def split_label(key: str) -> tuple[str, str, str]:
    """(task, regime, detail) of a group label: `ih causal/all (d_model 32)` →
    ("ih", "causal/all", "d_model 32"); task and detail are "" when absent."""
    head, detail = key, ""
    if key.endswith(")") and " (" in key:
        head, _, detail = key.partition(" (")
        detail = detail[:-1]
    task, _, reg = head.rpartition(" ")
    return task, reg, detail


def regime_rank(key: str) -> tuple:
    task, reg, detail = split_label(key)
    return (task, REGIME_ORDER.index(reg) if reg in REGIME_ORDER else len(REGIME_ORDER), reg, detail)


def regime_summary(numbers: list[dict[str, Any]], keys: list[str | None],
                   group: dict[str, Any] | None = None,
                   plan: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per group (causal/all, causal/last, noncausal/last, attention, then others; per task
    when several): n runs, seeds, and a `stat` of every number. Runs whose key is None (left
    out of every group) stand in none. Where `group` (analyze_group's output) has a group with
    the same runs, its estimates replace the ones computed here. With `plan` (plan_groups'),
    each group carries its experiment_key and config_diff."""
    out: dict[str, dict[str, Any]] = {}
    info_of: dict[str, Any] = dict((plan or {}).get("info") or {})
    for key in sorted(dict.fromkeys(k for k in keys if k is not None), key=regime_rank):
        rows = [n for n, k in zip(numbers, keys) if k == key]
        s: dict[str, Any] = {"n_runs": len(rows), "runs": [r["name"] for r in rows],
                             "seeds": [r["seed"] for r in rows], "source": "formation.json per run",
                             "accuracy_only": [{"run": r["name"], "reason": r["circuit_excluded"]}
                                               for r in rows if r.get("circuit_excluded")]}
        info = info_of.get(key) or next((info_of[lb] for lb in _plan_labels(plan, rows)), None)
        if info is not None:
            s["experiment_key"], s["config_diff"] = info["experiment_key"], info["config_diff"]
        for k in ACC_KEYS:
            s[f"midpoint_{k}"] = stat([r["midpoints"].get(k) for r in rows])
        for k in ("train_acc_all", "train_acc_recallable"):
            s[f"offset_{k}_steps"] = stat([(r.get(f"offset_{k}") or {}).get("steps") for r in rows])
            s[f"offset_{k}_log_steps"] = stat([(r.get(f"offset_{k}") or {}).get("log_steps") for r in rows])
        reached = [r["steps_to_99"] for r in rows]
        s["steps_to_99"] = stat(reached)
        for k in ("test_acc_last", "train_acc_all", "train_acc_all_ceiling"):
            s[f"final_{k}"] = stat([r["final"].get(k) for r in rows])
        metrics = sorted({m for r in rows for m in r["lead_lag"]})
        s["lead_lag"] = {m: {u: stat([(r["lead_lag"].get(m) or {}).get(u) for r in rows])
                             for u in ("steps", "log_steps")} for m in metrics}
        s["seed_claim_verdict"] = None
        mech = [r["mechanism"] for r in rows if r.get("mechanism")]
        s["mechanism"] = "; ".join(f"{m} ({mech.count(m)}/{len(rows)} runs)" for m in dict.fromkeys(mech)) or None
        g = _matching_group(group, {r["dir_name"] for r in rows})
        if g is not None:
            _apply_group(s, g, rows)
        s["steps_to_99"]["not_reached"] = sum(1 for x in reached if x is None)
        out[key] = s
    return out


def _plan_labels(plan: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[str]:
    """The plan labels of rows (a sweep group's label differs from the plan's)."""
    labels = ((plan or {}).get("labels") or {})
    paths = {(r.get("status") or {}).get("path") for r in rows}
    return list(dict.fromkeys(labels[p] for p in paths if p in labels and labels[p] is not None))[:1]


def _verdict_text(v: Any) -> str | None:
    """A mechanism verdict as analysis may write it: a string, or a dict with `verdict`."""
    if isinstance(v, str) and v:
        return v
    if isinstance(v, dict) and isinstance(v.get("verdict"), str):
        return v["verdict"]
    return None


def _matching_group(group: dict[str, Any] | None, names: set[str]) -> dict[str, Any] | None:
    groups = (group or {}).get("groups") if isinstance(group, dict) else None
    if not isinstance(groups, dict):
        return None
    for g in groups.values():
        if isinstance(g, dict) and set(map(str, g.get("runs") or [])) == names:
            return g
    return None


def _apply_group(s: dict[str, Any], g: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    n = len(rows)

    def put(key: str, est: Any, values: list) -> None:
        st = from_estimate(est, n, values)
        if st is not None:
            s[key] = st

    put("midpoint_test_acc_last", (g.get("recall_jump_midpoint") or {}).get("steps"),
        [r["midpoints"].get("test_acc_last") for r in rows])
    sc = g.get("seed_claim") or {}
    put("offset_train_acc_all_steps", sc.get("train_minus_test_midpoint_steps"),
        [(r.get("offset_train_acc_all") or {}).get("steps") for r in rows])
    put("offset_train_acc_all_log_steps", sc.get("train_minus_test_midpoint_log_steps"),
        [(r.get("offset_train_acc_all") or {}).get("log_steps") for r in rows])
    if isinstance(sc.get("verdict"), str):
        s["seed_claim_verdict"] = sc["verdict"]
    if _verdict_text(g.get("mechanism")):
        s["mechanism"] = _verdict_text(g.get("mechanism"))
    reach = g.get("steps_to_99_test_acc") or {}
    put("steps_to_99", reach.get("steps"), [r["steps_to_99"] for r in rows])
    for m, v in (g.get("lead_lag") or {}).items():
        if isinstance(v, dict):
            for u in ("steps", "log_steps"):
                st = from_estimate(v.get(u), n, [(r["lead_lag"].get(m) or {}).get(u) for r in rows])
                if st is not None:
                    s["lead_lag"].setdefault(m, {})[u] = st
    s["source"] = "analyze_group"


def seed_claim(regimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The seed claim's verdict in causal/all (else the first regime) and its one sentence."""
    claim = "“train accuracy jumps around the same time as test accuracy”"
    if not regimes:
        return {"verdict": "undetermined", "sentence": f"Seed claim {claim}: undetermined — there are no runs."}
    name = next((k for k in regimes if split_label(k)[1] == SEED_CLAIM_REGIME), next(iter(regimes)))
    s = regimes[name]
    off_l, off_s = s["offset_train_acc_all_log_steps"], s["offset_train_acc_all_steps"]
    tol = SAME_TIME_TOL
    verdict = s.get("seed_claim_verdict") or claim_verdict(*(off_l["ci"] or (None, None)), tol)
    res = {"regime": name, "verdict": verdict, "offset_log_steps": off_l, "offset_steps": off_s,
           "tolerance_log_steps": tol, "source": s.get("source")}
    if off_l["n"] == 0 or off_l["mean"] is None:
        res["sentence"] = (f"Seed claim {claim}: {verdict} in {name} — no run has both a train_acc_all and a "
                           f"test_acc_last transition (n=0 of {s['n_runs']} runs).")
        return res
    ci = off_l["ci"]
    ci_txt = f"95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "no CI"
    direction = "after" if off_l["mean"] > 0 else "before" if off_l["mean"] < 0 else "from"
    steps = f"{off_s['mean']:+,.0f} steps, " if off_s.get("mean") is not None else ""
    res["sentence"] = (f"Seed claim {claim}: {verdict} in {name} — train_acc_all's midpoint is {steps}"
                       f"{off_l['mean']:+.2f} log-steps {direction} test_acc_last's ({ci_txt}, n={off_l['n']} "
                       f"of {s['n_runs']} runs; same time = within ±{tol:.2f} log-steps, a factor "
                       f"{math.exp(tol):.1f} in steps).")
    return res


# ------------------------------------------------------------------ key metrics
def curve_base(name: str) -> str:
    """`prev_token_score@L0/blocks.0...:query` → `prev_token_score`."""
    for sep in ("@", "/", ":", "["):
        name = name.split(sep)[0]
    return name


def short_curve(name: str) -> str:
    """A curve name without its hook, role and a repeated probe target:
    `filter_lag1_mass_o0_forward@L0`, `probe_answer_selectivity@L1` (analysis writes
    `probe_answer_selectivity_answer@L1/…:query`)."""
    base = name.split("/")[0].split("[")[0].split(":")[0]
    head, at, layer = base.partition("@")
    for t in ("prev_token", "next_token", "answer"):
        if head.startswith(f"probe_{t}") and head != f"probe_{t}" and head.endswith(f"_{t}"):
            head = head[: -len(t) - 1]
    return head + at + layer


def key_curves(regimes: dict[str, dict[str, Any]], limit: int = 12) -> list[str]:
    """Lead/lag curves worth showing: the key circuit metrics (KEY_METRICS, probes' selectivity
    and accuracy, no control rows) and train_acc_all / train_acc_recallable, most runs first."""
    count: dict[str, int] = {}
    for s in regimes.values():
        for m, v in s["lead_lag"].items():
            base = curve_base(m)
            if "[control" in m or base.endswith("_control") or m == "train_acc_last":
                continue
            if not (m in ("train_acc_all", "train_acc_recallable") or any(base.startswith(k) for k in KEY_METRICS)):
                continue
            if (v.get("log_steps") or {}).get("n", 0) > 0:
                count[m] = count.get(m, 0) + v["log_steps"]["n"]

    def order(m: str) -> tuple:
        base = curve_base(m)
        rank = next((i for i, k in enumerate(KEY_METRICS) if base.startswith(k)), -1)
        return (rank, -count[m], m)

    return sorted(count, key=order)[:limit]
