"""The mechanism verdict, built on causal evidence (docs/metrics.md, "Mechanism verdict").

Two candidate recall mechanisms, told apart by *where* the answer's signal is read from:
- value mechanism: the query reads the matching values, or the stream position right after
  them (a causal kernel-3 short conv carries a token one step forward);
- key mechanism: the query reads the matching keys, whose stream can carry the value only when
  the short conv looks ahead (a non-causal, centered conv).

Evidence, at the final checkpoint of `analysis/metrics.csv` (interp/run_metrics.py):
- routing: `recall_swap_selectivity` (the value-swap follow rate minus its control) is at least
  MIN_SELECTIVITY and at least its random-init floor + MIN_SELECTIVITY;
- location, per layer: the signed share of the answer's logit difference read from the
  mechanism's positions (`source_share`, target `direct`: match_value + match_after for the
  value mechanism, match_key for the key mechanism), and the causal check that those positions
  carry it: the path-patching follow rate (`source_patch_follow`) of the matching pairs'
  footprint or of one of the mechanism's own roles, the best of them. A mechanism is located
  at a layer when its share is ≥ MIN_SHARE and that patch follow ≥ MIN_PATCH there. (A
  non-causal model can split the signal between a pair's key and value positions, so that
  neither role alone moves the answer while their footprint does: measured on ar_noncausal_last,
  shares 0.31 / 0.30, patch follow 0.22 / 0.22 alone, 0.69 for the footprint.)

Rule: a mechanism is present when routing holds and it is located at some layer. The verdict
is "value mechanism", "key mechanism", "both" (with the share of each), or "neither".

Probes are reported beside the rule, not in it: a probe whose random-init floor is already
≥ PROBE_FLOOR_MAX (a Hyena's prev-token probe at init is ≈ 0.99, because the short conv mixes
neighbours) cannot show learning, so each probe carries an `informative` flag.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

MIN_SELECTIVITY = 0.5  # a most-frequent-value model reaches 0.16 ± 0.05 at vocab 10 (docs/metrics.md)
MIN_SHARE = 0.2
MIN_PATCH = 0.3
PROBE_FLOOR_MAX = 0.9

READS = {"value": ("match_value", "match_after"), "key": ("match_key",)}
_PROBES = ("probe_prev_token", "probe_next_token", "probe_answer")
RULE = (f"routing: recall_swap_selectivity >= {MIN_SELECTIVITY} and >= its init floor + {MIN_SELECTIVITY}; "
        f"located: at some layer, source_share (direct) of the mechanism's roles >= {MIN_SHARE} and the "
        f"best source_patch_follow of those roles or of match_pair >= {MIN_PATCH} (value: match_value + "
        "match_after; key: match_key); "
        "a mechanism is present when routing holds and it is located")


def _final(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = df[df["metric"] == metric]
    return rows[rows["step"] == rows["step"].max()] if not rows.empty else rows


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _routing(df: pd.DataFrame) -> dict | None:
    rows = _final(df, "recall_swap_selectivity")
    if rows.empty:
        return None
    r = rows.iloc[0]
    value, floor = float(r["value"]), _num(r.get("floor"))
    gain = value - (floor or 0.0)
    return {"selectivity": value, "floor": floor, "gain": gain, "step": int(r["step"]),
            "holds": bool(value >= MIN_SELECTIVITY and gain >= MIN_SELECTIVITY)}


def _location(df: pd.DataFrame, roles: tuple[str, ...]) -> dict | None:
    """The layer where the mechanism's share is largest, with its share and patch follow."""
    share = _final(df, "source_share")
    if share.empty:
        return None
    share = share[(share["target"].fillna("") == "direct") & share["role"].isin(roles)]
    if share.empty:
        return None
    by_layer = share.groupby("layer")["value"].sum()
    patch = _final(df, "source_patch_follow")
    checks = (*roles, "match_pair")  # the mechanism's own positions, or the footprint holding them
    patch = patch[patch["role"].isin(checks)].groupby("layer")["value"].max() if not patch.empty else pd.Series(dtype=float)
    layer = int(by_layer.idxmax())
    s = float(by_layer[layer])
    p = _num(patch.get(layer)) if layer in patch.index else None
    return {"layer": layer, "roles": list(roles), "share": s, "patch_follow": p,
            "share_by_layer": {int(k): float(v) for k, v in by_layer.items()},
            "located": bool(s >= MIN_SHARE and p is not None and p >= MIN_PATCH)}


def _probes(df: pd.DataFrame) -> dict:
    out = {}
    for name in _PROBES:
        rows = _final(df, name)
        if rows.empty:
            continue
        r = rows.loc[rows["value"].idxmax()]
        floor = _num(r.get("floor"))
        out[name] = {"layer": int(r["layer"]), "value": float(r["value"]), "floor": floor,
                     "informative": floor is not None and floor < PROBE_FLOOR_MAX}
    return out


def mechanism_verdict(metrics_csv: str | Path | pd.DataFrame) -> dict | None:
    """The verdict and every number behind it; None when metrics.csv has no swap test."""
    df = metrics_csv if isinstance(metrics_csv, pd.DataFrame) else pd.read_csv(metrics_csv)
    if "target" not in df:
        df = df.assign(target="")
    if "role" not in df:
        df = df.assign(role="")
    routing = _routing(df)
    if routing is None:
        return None
    where = {m: _location(df, roles) for m, roles in READS.items()}
    present = {m: bool(routing["holds"] and loc and loc["located"]) for m, loc in where.items()}
    value, key = present["value"], present["key"]
    verdict = "both" if value and key else "value mechanism" if value else "key mechanism" if key else "neither"
    shares = {m: (loc["share"] if loc else None) for m, loc in where.items()}
    return {"verdict": verdict, "shares": shares, "routing": routing, "evidence": where,
            "probes": _probes(df), "rule": RULE}
