"""Reading run directories for the report (docs/architecture.md, "Run-directory format").

`discover_runs(paths)` turns the command line's RUN_DIR arguments into run directories: a
directory holding `metrics.jsonl` is a run; any other directory is searched (three levels deep)
for runs, so a sweep or demo output folder can be passed whole.

`load_run(path)` reads what a report needs into a `RunData`. Only `metrics.jsonl` is required
(missing or empty: a one-line `UserError`). Every other piece is optional: when it is missing or
unreadable, the field is empty and a plain sentence is appended to `RunData.notes`, which the page
shows. Nothing here imports matplotlib.
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

from analysis import regime_name
from models.config.source import parse_yaml
from models.errors import UserError

ACC_CURVES = ("test_acc_last", "train_acc_all", "train_acc_recallable", "train_acc_last")
_MAX_DEPTH = 3


@dataclass
class RunData:
    """One run as the report sees it. `transitions` maps a curve or metric name to a list of
    {"onset", "midpoint", "end"} dicts (steps); `notes` lists what is missing, in words."""

    path: Path
    name: str
    config: dict[str, Any]
    run_info: dict[str, Any]
    metrics: pd.DataFrame
    circuit: pd.DataFrame | None = None
    formation: dict[str, Any] | None = None
    transitions: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    transitions_source: str = "none"
    captured: list[int] = field(default_factory=list)
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
        """The accuracy jump: formation.json's `jump` when it names one, else the largest-rise
        transition of test_acc_last (the first when no rises are recorded)."""
        j = (self.formation or {}).get("jump")
        if isinstance(j, dict) and _finite(j.get("midpoint")):
            return {k: float(j[k]) for k in ("onset", "midpoint", "end") if _finite(j.get(k))}
        return main_transition(self.transitions.get("test_acc_last") or [])

    def steps(self) -> list[int]:
        return [int(s) for s in self.metrics["step"].tolist()]


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def main_transition(trs: list[dict[str, Any]]) -> dict[str, float] | None:
    good = [t for t in trs if isinstance(t, dict) and _finite(t.get("midpoint"))]
    if not good:
        return None
    best = max(good, key=lambda t: abs(float(t.get("high", 1.0) or 0) - float(t.get("low", 0.0) or 0))
               if _finite(t.get("high")) and _finite(t.get("low")) else 0.0)
    return {k: float(best[k]) for k in ("onset", "midpoint", "end") if _finite(best.get(k))}


def regime_of(config: dict[str, Any]) -> str:
    """causal/all, causal/last, noncausal/last (science.md, "Regimes"), named as
    analysis.formation names them: a config's own `regime` wins; kinds other than hyena prefix
    their name (attention/causal/all)."""
    if isinstance(config.get("regime"), str):
        return config["regime"]
    model = config.get("model") or {}
    return regime_name(str(model.get("kind", "hyena")), bool(model.get("causal", True)), str(config.get("loss", "all")))


def slugify(name: str) -> str:
    """A file-name-safe, URL-safe, unique-ish token for a run or regime name."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "run"
    return f"{base}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}"


# ------------------------------------------------------------------ discovery
def _is_run(p: Path) -> bool:
    return (p / "metrics.jsonl").is_file()


def discover_runs(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(run dir, display name) for every run named by `paths`, in argument then path order."""
    if not paths:
        raise UserError("no RUN_DIR given; pass one or more run directories (or a folder of runs)")
    out: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p} does not exist; pass a run directory or a folder of runs")
        if not p.is_dir():
            raise UserError(f"{p} is not a directory; pass a run directory or a folder of runs")
        if _is_run(p):
            out.append((p, p.resolve().name or str(p)))
            continue
        found = []
        _walk(p, p, 1, found)
        if not found:
            raise UserError(f"{p} holds no metrics.jsonl (neither itself nor its subfolders): it is not a run "
                            "directory; train a run first")
        out.extend(found)
    seen, uniq = set(), []
    for path, name in out:
        key = str(path.resolve())
        if key not in seen:
            seen.add(key)
            uniq.append((path, name))
    names = [n for _, n in uniq]
    return [(path, (str(path) if names.count(name) > 1 else name)) for path, name in uniq]


def _walk(root: Path, d: Path, depth: int, found: list) -> None:
    if depth > _MAX_DEPTH:
        return
    try:
        subs = sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith("."))
    except OSError:
        return
    for s in subs:
        if _is_run(s):
            found.append((s, str(s.relative_to(root))))
        else:
            _walk(root, s, depth + 1, found)


# ------------------------------------------------------------------ one run
def load_run(path: str | Path, name: str | None = None) -> RunData:
    path = Path(path)
    name = name or path.resolve().name
    metrics = _read_metrics(path)
    notes: list[str] = []
    config = _read_yaml(path / "config.yaml", notes)
    run_info = _read_json(path / "run.json", notes, "run.json (provenance)")
    rd = RunData(path=path, name=name, config=config, run_info=run_info, metrics=metrics, notes=notes)
    for c in ("test_acc_last", "train_acc_all"):
        if c not in metrics.columns:
            notes.append(f"metrics.jsonl has no `{c}` column")
    rd.circuit = _read_circuit(path / "analysis" / "metrics.csv", notes)
    rd.formation = _read_json(path / "analysis" / "formation.json", notes, "analysis/formation.json", None)
    _set_transitions(rd)
    rd.captured = _captured_steps(path)
    if not rd.captured:
        notes.append("no captures (capture/step_*.safetensors): filter heatmaps come from checkpoints if any; "
                     "run `hyenalens capture`")
    rd.checkpoints = _checkpoint_steps(path)
    if not rd.checkpoints:
        notes.append("no checkpoints/: implicit-attention maps cannot be drawn")
    return rd


def _read_metrics(path: Path) -> pd.DataFrame:
    f = path / "metrics.jsonl"
    if not f.is_file():
        raise UserError(f"{path} has no metrics.jsonl; it is not a run directory (train it first)")
    from models.rundir.io import read_jsonl

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


def _read_yaml(f: Path, notes: list[str]) -> dict[str, Any]:
    if not f.is_file():
        notes.append("config.yaml is missing: regime, task and seed are unknown (treated as causal/all)")
        return {}
    try:
        cfg = parse_yaml(f.read_text(encoding="utf-8"), str(f)) or {}
        if not isinstance(cfg, dict):
            raise ValueError("not a mapping")
        return cfg
    except Exception as e:  # noqa: BLE001 - an unreadable optional file is a note, never a crash
        notes.append(f"config.yaml could not be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
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
        return
    # No formation.json: time the accuracy curves here with analysis' own detector.
    try:
        from analysis.transitions import detect_transitions
    except ImportError:
        rd.notes.append("no transitions: formation.json is missing and analysis.transitions is unavailable")
        return
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


def _captured_steps(path: Path) -> list[int]:
    d = path / "capture"
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("step_*.safetensors"):
        m = re.match(r"^step_(\d+)\.safetensors$", p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def _checkpoint_steps(path: Path) -> list[int]:
    d = path / "checkpoints"
    if not d.is_dir():
        return []
    try:
        from interp.run_io import list_checkpoints

        return [int(s) for s, p in list_checkpoints(path) if Path(p).is_file()]
    except Exception:  # noqa: BLE001 - a broken index: fall back to file names
        return sorted(int(m.group(1)) for p in d.iterdir()
                      if (m := re.match(r"^step_(\d+)\.safetensors$", p.name)))
