"""Which runs are the same experiment, and which runs can stand in a group's estimates.

`analyze` (``analysis.formation.analyze_group``) and `report` (``reports.summary``) both group runs
with ``plan_groups``, so a group means one thing on the page and in formation_group.json.

Decisions (written down here; docs/metrics.md links to this module):

- **The experiment** is the run's resolved config (``models.config.validate_config``: every default
  filled, so a YAML that omits a default equals one that states it; ``model.vocab_size`` left null
  is filled from ``data.vocab_size``, as training derives it) with ``seed`` removed, and
  ``data.seed`` removed where it equals ``seed`` or is null (``resolve_config`` fills it from
  ``seed``). A ``data.seed`` set apart from ``seed`` stays: fixed data over model seeds is another
  design than data drawn per seed. Two runs group only when these are equal
  (``experiment_key``). Measurement settings (``checkpoints``, ``eval``) are part of it: a
  transition timed on another checkpoint grid or eval subset is another measurement.
- **Not the experiment:** top-level keys the schema does not know (a ``regime`` label, a
  ``note``): training refuses such a config, so they never reached a model; they are dropped
  from the key (a ``regime`` label still names the group). Provenance (run.json: versions, git,
  hosts, timings) is not in the config and not in the key. A config that does not validate is
  compared as written (the same keys dropped). A run without config.yaml (or with an unreadable
  one) is its own experiment per run name without a seed tag (``_seed3``, ``-s3``).
- **Finished** (``run_status``): the last evaluated step (metrics.jsonl) reached the run's planned
  total steps (run.json ``schedule.total_steps``, which training writes; else the config's
  ``schedule.steps``). Where neither is known (a hand-made or imported run) the run counts as
  finished and its status says the total is unknown. An unfinished run is left out of every group
  (every CI) and listed in ``excluded`` with its reason ("stopped at step 71 of 1500").
- **Captured / probed:** captured = at least one capture file (capture/step_*.safetensors);
  probed = analysis/metrics.csv exists and is not stale (RunDir's rule, ``is_stale``) against the
  probe set and the capture files. A finished run that is not probed (or whose probe is stale)
  stays in its group for the accuracy estimates (jump midpoint, seed claim, steps to 99%,
  accuracy lead/lag: its accuracy curves exist) and is left out of the circuit estimates
  (recall circuit, mechanism, every metrics.csv curve's lead/lag); each group lists such runs
  under ``accuracy_only`` with the reason. A run with a fresh metrics.csv counts for the circuit
  estimates even when its capture files were deleted after probing.

Labels: a group's label is its regime (``causal/all``; a config's own ``regime`` label when it
gives one; with ``group_by="run"``, or for a run without config, the run name without its seed
tag), prefixed by the task when the runs span several tasks (``ih causal/all``), and followed by
the config fields that tell apart two groups sharing that label (``causal/all (d_model 32)``;
``model.d_inner`` is not named when it is 4 · d_model, as it follows). Nothing here imports torch.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from models.config.schema import SECTIONS, TOP_LEVEL, flat_items, validate_config
from models.errors import UserError
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir, is_stale

from .curves import ACC_CURVES, regime_name, regime_of

__all__ = ["experiment_config", "experiment_key", "family_key", "run_status", "plan_groups", "accuracy_only",
           "is_accuracy_curve", "seedless_name", "GROUP_BY"]

GROUP_BY = ("regime", "run")
_SCHEMA_KEYS = frozenset({*TOP_LEVEL, "model", *SECTIONS})
_SEED_TAG = re.compile(r"[-_.](seed[-_]?|s)\d+$")
_MAX_LABEL_FIELDS = 3


# ---------------------------------------------------------------- the experiment
def experiment_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config as an experiment (module doc): resolved and validated where it validates,
    without ``seed``, without ``data.seed`` where it equals ``seed`` (or is null), without
    top-level keys the schema does not know."""
    if not isinstance(config, Mapping):
        raise UserError(f"a run config must be a mapping of sections, got {type(config).__name__}; "
                        "pass config.yaml's mapping")
    raw = {str(k): copy.deepcopy(v) for k, v in config.items() if str(k) in _SCHEMA_KEYS}
    try:
        cfg = validate_config(raw).to_dict()
    except UserError:
        cfg = json.loads(json.dumps(raw, sort_keys=True, default=str))  # compared as written
    seed = cfg.pop("seed", 0)
    data = cfg.get("data")
    if isinstance(data, dict):
        if data.get("seed") is None or data.get("seed") == seed:
            data.pop("seed", None)
        model = cfg.get("model")
        if isinstance(model, dict) and "vocab_size" in model and model["vocab_size"] is None:
            model["vocab_size"] = data.get("vocab_size")  # what resolve_config derives
    return cfg


def experiment_key(config: Mapping[str, Any]) -> str:
    """A stable identity of the experiment a config runs: 16 hex digits of the SHA-256 of
    ``experiment_config`` as sorted, compact JSON. Equal keys = the same experiment."""
    text = json.dumps(experiment_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def family_key(config: Mapping[str, Any]) -> str:
    """The experiment without its regime (the loss and the model's causality): groups of one
    family differ only in the regime, so the four answers compare them with each other."""
    exp = experiment_config(config)
    exp.pop("loss", None)
    if isinstance(exp.get("model"), dict):
        exp["model"].pop("causal", None)
    text = json.dumps(exp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seedless_name(name: str) -> str:
    """A run name without its trailing seed tag: ``causal_all_s3`` → ``causal_all``."""
    return _SEED_TAG.sub("", name) or name


def is_accuracy_curve(name: str) -> bool:
    """An accuracy curve of metrics.jsonl (``analysis.curves.ACC_CURVES``), not a circuit metric."""
    return name in ACC_CURVES


# ---------------------------------------------------------------- one run's status
def _last_step(run: RunDir) -> int | None:
    steps = [r["step"] for r in read_jsonl(run.metrics)
             if isinstance(r, dict) and isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)]
    return int(max(steps)) if steps else None


def _planned_steps(run: RunDir, config: Mapping[str, Any] | None) -> tuple[int | None, str]:
    """(planned total steps, where it was read) or (None, "unknown")."""
    try:
        info = json.loads(run.run_json.read_text(encoding="utf-8")) if run.run_json.is_file() else {}
    except (OSError, ValueError):
        info = {}
    sched = info.get("schedule") if isinstance(info, dict) else None
    total = sched.get("total_steps") if isinstance(sched, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total, "run.json schedule.total_steps"
    sched = (config or {}).get("schedule")
    steps = sched.get("steps") if isinstance(sched, dict) else None
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        return steps, "config schedule.steps"
    return None, "unknown"


def _read_config(run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """(config.yaml's mapping or None, why it is None)."""
    if not run.is_run():
        return None, "no config.yaml"
    try:
        return run.read_config(), None
    except UserError as e:
        return None, f"config.yaml unreadable ({str(e).splitlines()[0]})"


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Whether a run can stand in its group's estimates (module doc). Keys: run (its folder
    name), path, last_step, total_steps, total_from, finished, captured, captured_steps, probed,
    probe_stale, accuracy (counts for the accuracy CIs), circuit (counts for the circuit CIs too),
    reason (one phrase when it is not fully usable, else None), note (e.g. an unknown total)."""
    run = RunDir(run_dir)
    config, _ = _read_config(run)
    return _status(run, config)


def _status(run: RunDir, config: Mapping[str, Any] | None) -> dict[str, Any]:
    root = run.root
    last = _last_step(run)
    total, total_from = _planned_steps(run, config)
    captured = run.captured_steps()
    has_csv = run.metrics_csv.is_file()
    stale = has_csv and is_stale(run.metrics_csv, [run.probe_set, *map(run.capture_file, captured)])
    finished = last is not None and (total is None or last >= total)
    probed = has_csv and not stale
    if last is None:
        reason = "not trained (no evaluation in metrics.jsonl)"
    elif not finished:
        reason = f"stopped at step {last} of {total}"
    elif probed:
        reason = None
    elif stale:
        reason = f"probe results older than its captures (rerun `hyenalens probe {root}`)"
    elif not captured:
        reason = f"not captured (run `hyenalens capture {root}`)"
    else:
        reason = f"not probed (run `hyenalens probe {root}`)"
    return {"run": root.resolve().name, "path": str(root), "last_step": last, "total_steps": total,
            "total_from": total_from, "finished": finished, "captured": bool(captured),
            "captured_steps": len(captured), "probed": probed, "probe_stale": stale,
            "accuracy": finished, "circuit": finished and probed, "reason": reason,
            "note": "planned total steps unknown: counted as finished" if total is None and last is not None else None}


def accuracy_only(result: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """A run's formation result (``analysis.formation.analyze_run``) without its circuit
    numbers: lead/lag of metrics.csv curves dropped, the recall circuit "not measured" with
    `reason`, no mechanism. Its accuracy numbers are kept as they are."""
    out = dict(result)
    out["lead_lag"] = {k: v for k, v in (result.get("lead_lag") or {}).items() if is_accuracy_curve(k)}
    rc = result.get("recall_circuit")
    if isinstance(rc, dict):
        out["recall_circuit"] = {**rc, "midpoint": None, "steps": None, "log_steps": None,
                                 "status": f"not measured: {reason}"}
    if "mechanism" in out:
        out["mechanism"] = None
    return out


# ---------------------------------------------------------------- groups
def _run_facts(path: Path, group_by: str) -> dict[str, Any]:
    run = RunDir(path)
    config, why = _read_config(run)
    name = run.root.resolve().name
    facts: dict[str, Any] = {"path": str(path), "name": name, "status": _status(run, config), "config": None,
                             "task": None}
    if config is None:
        facts.update(key=f"run:{seedless_name(name)}", base=seedless_name(name), config_note=why, family=None)
        return facts
    exp = experiment_config(config)
    key = experiment_key(config)
    model = exp.get("model") if isinstance(exp.get("model"), dict) else {}
    data = exp.get("data") if isinstance(exp.get("data"), dict) else {}
    if isinstance(config.get("regime"), str):
        regime = config["regime"]  # the config's own label names the group (it is not in the key)
    elif isinstance(model.get("kind"), str) and isinstance(model.get("causal"), bool) \
            and isinstance(exp.get("loss"), str):
        regime = regime_name(model["kind"], model["causal"], exp["loss"])
    else:
        regime = regime_of(config, defaults=True)
    base = regime if group_by == "regime" else seedless_name(name)
    facts.update(key=key, base=base, config=exp, family=family_key(config), task=data.get("task") if isinstance(data.get("task"), str) else None,
                 config_note=None)
    return facts


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _differing(flats: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in every flat config (order: sorted); the
    model's d_inner is left out where it is 4 · d_model in each (it follows from d_model)."""
    keys = sorted({k for f in flats for k in f})
    out = [k for k in keys if len({json.dumps(f.get(k, "<absent>"), sort_keys=True, default=str) for f in flats}) > 1]
    if "model.d_model" in out and all(isinstance(f.get("model.d_model"), int)
                                      and f.get("model.d_inner") == 4 * f["model.d_model"] for f in flats):
        out = [k for k in out if k != "model.d_inner"]
    return out


def _detail(keys: list[str], flat: dict[str, Any]) -> str:
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    names = [leaf if leaves.count(leaf) == 1 and leaf not in _SCHEMA_KEYS else k for k, leaf in zip(keys, leaves)]
    bits = [f"{n} {_fmt(flat.get(k, '–'))}" for n, k in zip(names, keys)][:_MAX_LABEL_FIELDS]
    more = len(keys) - _MAX_LABEL_FIELDS
    return ", ".join(bits) + (f", +{more} more" if more > 0 else "")


def plan_groups(run_dirs: Iterable[str | Path], group_by: str = "regime") -> dict[str, Any]:
    """Group runs by experiment (``experiment_key``), label each group, and leave unfinished
    runs out (module doc). Returns:

    - ``groups``: {label: [run paths]} of the finished runs, in the order given;
    - ``excluded``: [{"run", "path", "reason"}] for the runs left out of every group;
    - ``labels``: {run path: its group's label, or None when excluded};
    - ``info``: {label: {"experiment_key", "config_diff" ({dotted key: value} of the fields in
      which this group differs from the plan's other groups), "regime"/"base", "task",
      "accuracy_only" ([{"run", "path", "reason"}]: in the accuracy CIs, not the circuit ones)}};
    - ``status``: {run path: ``run_status``}.
    Paths are ``str(Path(d))`` of the arguments."""
    if group_by not in GROUP_BY:
        raise UserError(f"group_by must be 'regime' or 'run', got {group_by!r}")
    facts = [_run_facts(Path(d), group_by) for d in run_dirs]
    several_tasks = len({f["task"] for f in facts if f["task"]}) > 1
    by_key: dict[str, list[dict[str, Any]]] = {}
    excluded = []
    for f in facts:
        if f["status"]["accuracy"]:
            by_key.setdefault(f["key"], []).append(f)
        else:
            excluded.append({"run": f["name"], "path": f["path"], "reason": f["status"]["reason"]})
    base = {k: (f"{fs[0]['task']} {fs[0]['base']}" if several_tasks and fs[0]["task"] else fs[0]["base"])
            for k, fs in by_key.items()}
    flats = {k: flat_items(fs[0]["config"]) for k, fs in by_key.items() if fs[0]["config"] is not None}
    across = _differing(list(flats.values())) if len(flats) > 1 else []
    label_of: dict[str, str] = {}
    for b in dict.fromkeys(base.values()):
        keys = [k for k in by_key if base[k] == b]
        if len(keys) == 1:
            label_of[keys[0]] = b
            continue
        with_cfg = [k for k in keys if k in flats]
        diff = _differing([flats[k] for k in with_cfg]) if len(with_cfg) > 1 else []
        for k in keys:
            detail = _detail(diff, flats[k]) if k in flats and diff else f"config {k.split(':')[-1][:8]}"
            label_of[k] = f"{b} ({detail})"
    seen: dict[str, int] = {}
    for k in by_key:  # never two groups under one label
        n = seen[label_of[k]] = seen.get(label_of[k], 0) + 1
        if n > 1:
            label_of[k] = f"{label_of[k]} #{n}"
    groups = {label_of[k]: [f["path"] for f in fs] for k, fs in by_key.items()}
    info = {label_of[k]: {"experiment_key": k, "base": base[k], "task": fs[0]["task"], "family": fs[0]["family"],
                          "config_diff": {d: flats[k].get(d) for d in across} if k in flats else {},
                          "config_note": fs[0]["config_note"],
                          "accuracy_only": [{"run": f["name"], "path": f["path"], "reason": f["status"]["reason"]}
                                            for f in fs if not f["status"]["circuit"]]}
            for k, fs in by_key.items()}
    labels = {f["path"]: (label_of[f["key"]] if f["status"]["accuracy"] else None) for f in facts}
    return {"group_by": group_by, "groups": groups, "excluded": excluded, "labels": labels, "info": info,
            "status": {f["path"]: f["status"] for f in facts}}
