"""Reading a run's curves: the accuracy curves of ``metrics.jsonl`` and every curve of the tidy
``analysis/metrics.csv``, with their stable names, and a run's name, regime and seed.

Each (metric, layer, hook, role, target) group of metrics.csv is one curve, named
``{metric}[_{target}][@L{layer}][/{hook}][:{role}]``, e.g. ``recall_score_values@L1``; several
values at one step are averaged. Used by ``analysis.formation`` and ``analysis.mechanism``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from models.config.source import parse_yaml
from models.errors import UserError
from models.rundir.io import read_jsonl

ACC_CURVES = ("test_acc_last", "train_acc_all", "train_acc_recallable", "train_acc_last")
_CSV_REQUIRED = ("step", "metric", "layer", "value")
# `control`, `ci`, `n`, `floor` are values beside a curve, not part of its identity
_CSV_KEYS = ("metric", "target", "layer", "hook", "role")


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
