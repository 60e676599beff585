"""Reading run directories for the report (docs/architecture.md, "Run-directory format"),
through `models.rundir.RunDir`, the owner of that format.

`discover_runs(paths)` (models/rundir/discover.py, re-exported here) turns the command line's
RUN_DIR arguments into run directories.

`load_run_data(path)` reads what a report needs into a `RunData`. Only `metrics.jsonl` is required
(missing or empty: a one-line `UserError`). Every other piece is optional: when it is missing or
unreadable, the field is empty and a plain sentence is appended to `RunData.notes`, which the page
shows. Nothing here imports matplotlib or torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.curves import ACC_CURVES, regime_of as _regime_of
from analysis.recall_jump import BASELINE_KEY, RECALL_MARGIN, find_recall_jump
from analysis.transitions import detect_transitions
from models.errors import UserError
from models.rundir.discover import discover_runs
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir

__all__ = ["RunData", "discover_runs", "load_run_data", "regime_of", "slugify", "main_transition"]


@dataclass
class RunData:
    """One run as the report sees it. `transitions` maps a curve or metric name to a list of
    {"onset", "midpoint", "end"} dicts (steps); `recall_jump` is the transition of
    test_acc_last that the recall-jump rule chose (analysis.recall_jump; None when none
    qualifies), `recall_jump_status` why not, `no_recall_baseline` its {"value", "margin",
    "source"}; `notes` lists what is missing, in words."""

    path: Path
    name: str
    config: dict[str, Any]
    run_info: dict[str, Any]
    metrics: pd.DataFrame
    circuit: pd.DataFrame | None = None
    formation: dict[str, Any] | None = None
    transitions: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    transitions_source: str = "none"
    recall_jump: dict[str, Any] | None = None
    recall_jump_status: str = "no transition of test_acc_last"
    no_recall_baseline: dict[str, Any] | None = None
    captured: list[int] = field(default_factory=list)
    mapped: list[int] = field(default_factory=list)  # captured steps that hold figure 4's maps
    checkpoints: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # figures' shared loads

    # ---- derived --------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str((self.config.get("model") or {}).get("kind", "hyena"))

    @property
    def causal(self) -> bool:
        return bool((self.config.get("model") or {}).get("causal", True))

    @property
    def loss(self) -> str:
        return str(self.config.get("loss", "all"))

    @property
    def task(self) -> str:
        d = self.config.get("data") or self.config.get("dataset") or {}
        return str(d.get("task") or d.get("copy_method") or "ar")

    @property
    def seed(self) -> int | None:
        s = self.config.get("seed", self.run_info.get("seed"))
        try:
            return int(s)
        except (TypeError, ValueError):
            return None

    @property
    def regime(self) -> str:
        return regime_of(self.config)

    @property
    def slug(self) -> str:
        return slugify(self.name)

    def jump(self) -> dict[str, float] | None:
        """The recall jump's onset, midpoint and end (steps), or None when the run has no recall
        jump (`recall_jump_status` says why). Never the largest transition of test_acc_last:
        that may be stage one."""
        j = self.recall_jump
        if isinstance(j, dict) and _finite(j.get("midpoint")):
            return {k: float(j[k]) for k in ("onset", "midpoint", "end") if _finite(j.get(k))}
        return None

    def steps(self) -> list[int]:
        return [int(s) for s in self.metrics["step"].tolist()]


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def main_transition(trs: list[dict[str, Any]]) -> dict[str, float] | None:
    """A curve's main transition, the one with the largest |rise| (analysis.formation's rule for
    a curve's lead/lag). For test_acc_last use `RunData.jump()`, the recall jump, instead."""
    good = [t for t in trs if isinstance(t, dict) and _finite(t.get("midpoint"))]
    if not good:
        return None
    best = max(good, key=lambda t: abs(float(t.get("high", 1.0) or 0) - float(t.get("low", 0.0) or 0))
               if _finite(t.get("high")) and _finite(t.get("low")) else 0.0)
    return {k: float(best[k]) for k in ("onset", "midpoint", "end") if _finite(best.get(k))}


def regime_of(config: dict[str, Any]) -> str:
    """causal/all, causal/last, noncausal/last (science.md, "Regimes"), by analysis' rule
    (`analysis.curves.regime_of`); a config without the keys reads as hyena, causal, all."""
    return _regime_of(config, defaults=True)


def slugify(name: str) -> str:
    """A file-name-safe, URL-safe, unique-ish token for a run or regime name."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "run"
    return f"{base}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}"


# ------------------------------------------------------------------ one run
def load_run_data(path: str | Path, name: str | None = None) -> RunData:
    """What the report reads of the run at `path` (module doc). A notebook's loader of a run
    (steps, models, tables) is `hyenalens.load_run`."""
    run = RunDir(path)
    path = run.root
    name = name or path.resolve().name
    metrics = _read_metrics(run)
    notes: list[str] = []
    config = _read_config(run, notes)
    run_info = _read_json(run.run_json, notes, "run.json (provenance)")
    rd = RunData(path=path, name=name, config=config, run_info=run_info, metrics=metrics, notes=notes)
    for c in ("test_acc_last", "train_acc_all"):
        if c not in metrics.columns:
            notes.append(f"metrics.jsonl has no `{c}` column")
    rd.circuit = _read_circuit(run.metrics_csv, notes)
    rd.formation = _read_json(run.formation, notes, "analysis/formation.json", None)
    _set_transitions(rd)
    rd.captured = run.captured_steps()
    rd.mapped = [s for s in rd.captured if "maps" in (run.capture_meta(s) or {})]
    if not rd.captured:
        notes.append("no captures (capture/step_*.safetensors): no filter heatmaps or implicit-attention maps; "
                     "run `hyenalens capture`")
    elif len(rd.mapped) < len(rd.captured):
        notes.append(f"run {name}: capture predates the stored maps; rerun `hyenalens capture {path}`")
    rd.checkpoints = run.checkpoint_steps()
    return rd


def _read_metrics(run: RunDir) -> pd.DataFrame:
    f = run.metrics
    if not f.is_file():
        raise UserError(f"{run.root} has no metrics.jsonl; it is not a run directory (train it first)")
    try:
        rows = read_jsonl(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {f} ({type(e).__name__}); check the file") from None
    rows = [r for r in rows if isinstance(r, dict) and _finite(r.get("step"))]
    if not rows:
        raise UserError(f"{f} has no evaluation records with a step; train the run first")
    df = pd.DataFrame(rows)
    df["step"] = df["step"].astype(float).astype(int)
    for c in df.columns:
        if c != "step":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values("step", kind="stable").drop_duplicates("step", keep="last").reset_index(drop=True)


def _read_config(run: RunDir, notes: list[str]) -> dict[str, Any]:
    if not run.is_run():
        notes.append("config.yaml is missing: regime, task and seed are unknown (treated as causal/all)")
        return {}
    try:
        return run.read_config()
    except UserError as e:  # an unreadable optional file is a note, never a crash
        notes.append(f"config.yaml could not be read ({type(e).__name__}: {str(e).splitlines()[0]})")
        return {}


def _read_json(f: Path, notes: list[str], what: str, default: Any = "{}") -> Any:
    empty = {} if default == "{}" else default
    if not f.is_file():
        notes.append(f"{what} is missing")
        return empty
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{what} could not be read ({type(e).__name__})")
        return empty


def _read_circuit(f: Path, notes: list[str]) -> pd.DataFrame | None:
    if not f.is_file():
        notes.append("analysis/metrics.csv is missing: no circuit metrics (run `hyenalens probe`/`analyze`)")
        return None
    try:
        df = pd.read_csv(f)
    except Exception as e:  # noqa: BLE001
        notes.append(f"analysis/metrics.csv could not be read ({type(e).__name__})")
        return None
    need = {"step", "metric", "value"}
    if not need <= set(df.columns):
        notes.append(f"analysis/metrics.csv lacks columns {sorted(need - set(df.columns))}")
        return None
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["step"] = pd.to_numeric(df["step"], errors="coerce")
    if "layer" not in df.columns:
        df["layer"] = -1
    df["layer"] = pd.to_numeric(df["layer"], errors="coerce").fillna(-1).astype(int)
    for c in ("hook", "role", "target"):
        if c not in df.columns:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str)
    for c in ("control", "ci", "floor"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.dropna(subset=["step"]).astype({"step": int})


def _set_transitions(rd: RunData) -> None:
    tr = (rd.formation or {}).get("transitions")
    if isinstance(tr, dict):
        rd.transitions = {str(k): [t for t in (v or []) if isinstance(t, dict)] for k, v in tr.items()
                          if isinstance(v, list)}
        rd.transitions_source = "analysis/formation.json"
        _set_recall_jump(rd)
        return
    # No formation.json: time the accuracy curves here with analysis' own detector.
    out = {}
    for c in ACC_CURVES:
        if c in rd.metrics.columns:
            try:
                out[c] = [t.to_dict() for t in detect_transitions(rd.metrics["step"], rd.metrics[c])]
            except Exception as e:  # noqa: BLE001
                rd.notes.append(f"transition detection failed for {c} ({type(e).__name__})")
    rd.transitions = out
    rd.transitions_source = ("analysis.transitions.detect_transitions (accuracy curves only; run `hyenalens analyze` "
                             "for circuit metrics)")
    _set_recall_jump(rd)


def _set_recall_jump(rd: RunData) -> None:
    """The recall jump as formation.json records it. Without one (no formation.json, or one that
    predates the recall jump), the same rule (analysis.recall_jump) is applied here to the
    transitions, with the baseline metrics.jsonl logs, and a note says so."""
    f = rd.formation if isinstance(rd.formation, dict) else {}
    if "recall_jump" in f:
        j = f.get("recall_jump")
        rd.recall_jump = j if isinstance(j, dict) else None
        rd.recall_jump_status = str(f.get("recall_jump_status") or "")
        b = f.get("no_recall_baseline")
        rd.no_recall_baseline = b if isinstance(b, dict) else None
        return
    value = None
    if BASELINE_KEY in rd.metrics.columns:
        logged = rd.metrics[BASELINE_KEY].dropna()
        value = float(logged.iloc[-1]) if len(logged) else None
    rd.no_recall_baseline = {"value": value, "margin": RECALL_MARGIN,
                             "source": f"metrics.jsonl ({BASELINE_KEY})" if value is not None else
                             f"unknown: metrics.jsonl has no {BASELINE_KEY}; the rule used 0"}
    curve = rd.metrics[["step", "test_acc_last"]].dropna() if "test_acc_last" in rd.metrics else None
    rd.recall_jump, rd.recall_jump_status = (
        find_recall_jump(curve["step"].to_numpy(), curve["test_acc_last"].to_numpy(), value)
        if curve is not None else (None, "test_acc_last not logged"))
    why = "analysis/formation.json predates the recall jump" if f else "no analysis/formation.json"
    rd.notes.append(f"{why}: the recall jump was chosen here by analysis' rule (test_acc_last floored at the baseline)"
                    + (" and the logged no-recall baseline" if value is not None else
                       " with the no-recall baseline unknown, taken as 0 (`hyenalens analyze` computes it "
                       "from the config)"))
