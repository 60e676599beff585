"""A mechanism verdict backed by numbers (science.md, "Circuit metrics"; issue: Comparison).

Two candidate recall mechanisms:
- value mechanism: value positions carry the previous token (the key), found by the
  prev-token probe at value positions, and the query routes to the matching values
  (recall score on matching values, or the attribution share on them);
- key mechanism (possible only without causality): key positions carry the next token (the
  value), found by the next-token probe at key positions, and the query routes to the
  matching keys (recall score on matching keys, or the attribution share on them).

Each piece of evidence is measured at the final checkpoint as a gain over the same metric on
a random-initialized model (the `floor` column of metrics.csv), taking the best layer:
a Hyena short conv already makes the neighbouring token decodable at init, so an absolute
probe accuracy would credit the architecture rather than training.

Rule: a mechanism is present when its representation evidence (probe accuracy ≥ 0.6 and
≥ floor + 0.15) and its routing evidence (recall-score gain or attribution-share gain ≥
0.15) both hold. The verdict is "value mechanism", "key mechanism", "both", or "neither".
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

MIN_PROBE = 0.6
MIN_GAIN = 0.15

_EVIDENCE = {
    "value": {"probe": "probe_prev_token", "recall": "recall_score_values", "attr": "attr_share_values"},
    "key": {"probe": "probe_next_token", "recall": "recall_score_keys", "attr": "attr_share_keys"},
}


def _final_best(df: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """(value, floor) at the last step, for the layer with the largest gain over its floor."""
    rows = df[df["metric"] == metric]
    if rows.empty:
        return None
    rows = rows[rows["step"] == rows["step"].max()]
    floor = rows["floor"] if "floor" in rows else pd.Series(float("nan"), index=rows.index)
    gain = rows["value"] - floor.fillna(0.0)
    best = gain.idxmax()
    return float(rows.at[best, "value"]), float(floor.at[best])


def mechanism_verdict(metrics_csv: str | Path | pd.DataFrame) -> dict | None:
    """The verdict and every number behind it; None when metrics.csv has none of the metrics."""
    df = metrics_csv if isinstance(metrics_csv, pd.DataFrame) else pd.read_csv(metrics_csv)
    evidence, present = {}, {}
    for mech, names in _EVIDENCE.items():
        got = {k: _final_best(df, m) for k, m in names.items()}
        if all(v is None for v in got.values()):
            continue
        gains = {k: (v[0] - v[1]) if v and not math.isnan(v[1]) else None for k, v in got.items()}
        probe = got["probe"]
        represent = bool(probe and probe[0] >= MIN_PROBE and (gains["probe"] or 0.0) >= MIN_GAIN)
        route = any((gains[k] or 0.0) >= MIN_GAIN for k in ("recall", "attr"))
        present[mech] = represent and route
        evidence[mech] = {
            **{f"{k}": (None if v is None else {"value": v[0], "floor": v[1], "gain": gains[k]})
               for k, v in got.items()},
            "representation": represent, "routing": route,
        }
    if not evidence:
        return None
    value, key = present.get("value", False), present.get("key", False)
    verdict = "both" if value and key else "value mechanism" if value else "key mechanism" if key else "neither"
    return {"verdict": verdict, "evidence": evidence,
            "rule": f"probe >= {MIN_PROBE} and >= floor + {MIN_GAIN}; recall or attribution gain >= {MIN_GAIN}"}
