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

from models.errors import UserError
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir

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
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise UserError(f"run directory {run.root} does not exist; pass a run directory")
    by_step = {}
    for rec in _read_jsonl(run.metrics):
        by_step[float(rec["step"])] = rec
    steps = np.array(sorted(by_step), dtype=float)
    curves = {}
    for name in ACC_CURVES:
        if any(name in by_step[s] for s in steps):
            curves[name] = (steps, np.array([_as_float(by_step[s].get(name)) for s in steps]))
    if run.metrics_csv.is_file():
        # metrics.jsonl is the record of the accuracy curves; a same-named csv curve is dropped
        curves.update({k: v for k, v in _read_csv(run.metrics_csv).items() if k not in curves})
    return curves


def regime_name(kind: str, causal: bool, loss: str) -> str:
    """causal/all, causal/last, noncausal/last (science.md, "Regimes"); kinds other than
    hyena prefix the name (attention/causal/all)."""
    base = f"{'causal' if causal else 'noncausal'}/{loss}"
    return base if kind == "hyena" else f"{kind}/{base}"


def regime_of(config: dict, defaults: bool = False) -> str | None:
    """The regime of a run config (a mapping, as config.yaml holds it): its own `regime` if
    given, else `regime_name(model.kind, model.causal, loss)`. With `defaults`, a missing key
    reads as hyena / causal / all; without, a config lacking one has no regime (None)."""
    if isinstance(config.get("regime"), str):
        return config["regime"]
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    kind, causal, loss = model.get("kind"), model.get("causal"), config.get("loss")
    if defaults:
        return regime_name(str(model.get("kind", "hyena")), bool(model.get("causal", True)),
                           str(config.get("loss", "all")))
    if isinstance(kind, str) and isinstance(causal, bool) and isinstance(loss, str) and loss:
        return regime_name(kind, causal, loss)
    return None


def run_info(run_dir) -> dict:
    """Name, regime and seed of a run from its config.yaml (and run.json), where present."""
    run = RunDir(run_dir)
    info = {"name": run.root.resolve().name, "regime": None, "model_kind": None,
            "causal": None, "loss": None, "seed": None, "task": None, "config": False}
    if run.is_run():
        cfg = run.read_config()
        info["config"] = True
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        loss = cfg.get("loss") if isinstance(cfg.get("loss"), str) else None
        seed = cfg.get("seed") if isinstance(cfg.get("seed"), int) else None
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        task = data.get("task") if isinstance(data.get("task"), str) else None
        info.update(model_kind=model.get("kind"), causal=model.get("causal"), loss=loss, seed=seed, task=task,
                    regime=regime_of(cfg))
    if info["seed"] is None and run.run_json.is_file():
        try:
            seed = json.loads(run.run_json.read_text()).get("seed")
        except (json.JSONDecodeError, AttributeError):
            seed = None  # provenance only: a bad run.json does not stop the analysis
        info["seed"] = seed if isinstance(seed, int) else None
    return info
