"""The tidy metrics table RUN_DIR/analysis/metrics.csv: its columns (`METRIC_COLUMNS`, documented
in interp/run_metrics.py), the floor join, and the atomic CSV writer."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from models.rundir.io import atomic_write_text

METRIC_COLUMNS = ("step", "metric", "layer", "value", "target", "hook", "role", "control", "ci", "n", "floor")
_KEY = ("metric", "layer", "hook", "role", "target")


def _key(r: dict[str, Any]) -> tuple:
    return tuple("" if r.get(k) is None else str(r.get(k)) for k in _KEY)


def tidy(rows: Sequence[dict[str, Any]], floor_rows: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows with every METRIC_COLUMNS key (strings "" and numbers NaN where absent), and the
    floor joined on (metric, layer, hook, role, target)."""
    fl = {_key(r): r["value"] for r in floor_rows or []}
    out = []
    for r in rows:
        row = {}
        for c in METRIC_COLUMNS:
            v = r.get(c)
            if c in ("target", "hook", "role", "metric"):
                row[c] = "" if v is None else str(v)
            elif c == "floor":
                row[c] = fl.get(_key(r), float("nan"))
            elif c in ("step", "layer"):
                row[c] = -1 if v is None else int(v)
            else:
                row[c] = float("nan") if v is None else v
        out.append(row)
    out.sort(key=lambda r: (r["step"], r["metric"], r["layer"], r["hook"], r["role"], r["target"]))
    return out


def write_metrics_csv(path: Path, rows: Sequence[dict[str, Any]], floor_rows: Sequence[dict[str, Any]] | None) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in tidy(rows, floor_rows):
        w.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))
