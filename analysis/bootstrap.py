"""Bootstrap confidence intervals over seeds (science.md, "Timing a transition": "Confidence
intervals come from a bootstrap over seeds").

One value per seed goes in; the statistic (default: the mean) comes out with a CI from
``scipy.stats.bootstrap``, seeded so that a report is reproducible. n is always reported:

- n = 0: no value; n = 1: the value, no CI;
- all values equal: the CI is that value (the bootstrap has nothing to resample);
- 2 ≤ n < 10: percentile method (BCa's jackknife acceleration is unstable with few points);
  n < 5 carries a note, because a bootstrap CI over so few seeds is too narrow;
- n ≥ 10: BCa, with the percentile method if BCa comes out undefined.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["Estimate", "bootstrap_ci"]


@dataclass(frozen=True)
class Estimate:
    """A statistic over seeds with its bootstrap CI (``lo``/``hi`` None when there is none)."""

    value: float | None
    lo: float | None
    hi: float | None
    n: int
    method: str  # "BCa" | "percentile" | "degenerate" | "none"
    confidence: float
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(values, statistic=np.mean, *, confidence: float = 0.95,
                 n_resamples: int = 9999, seed: int = 0) -> Estimate:
    """``statistic`` of ``values`` (one per seed; None/NaN dropped) with a bootstrap CI.

    ``statistic`` must take an array and ``axis`` (numpy reductions do); the rules for small n
    are in the module docstring.
    """
    v = np.array([np.nan if x is None else x for x in np.ravel(values)], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Estimate(None, None, None, 0, "none", confidence, "no values")
    value = float(statistic(v, axis=-1))
    if n == 1:
        return Estimate(value, None, None, 1, "none", confidence, "n=1: no CI")
    if np.all(v == v[0]):
        return Estimate(value, value, value, n, "degenerate", confidence,
                        f"all {n} values equal")
    note = f"n={n}: few seeds, the bootstrap CI is too narrow" if n < 5 else ""
    method = "BCa" if n >= 10 else "percentile"
    for m in ([method, "percentile"] if method == "BCa" else [method]):
        with warnings.catch_warnings():
            # BCa warns (and returns NaN) on degenerate jackknife samples; we fall back below
            warnings.simplefilter("ignore")
            res = stats.bootstrap((v,), statistic, n_resamples=n_resamples,
                                  confidence_level=confidence, method=m, vectorized=True,
                                  rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return Estimate(value, lo, hi, n, m, confidence, note)
    return Estimate(value, None, None, n, "none", confidence, note or "bootstrap undefined")
