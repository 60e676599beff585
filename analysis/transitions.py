"""Timing a transition in a training curve (science.md, "Timing a transition").

Everything is fit in log-step, ``x = log1p(step) = ln(step + 1)``: the +1 keeps step 0 (the
initial checkpoint) on the axis and moves ln(step) by < 0.1 once step > 10. Lead/lag "in
log-steps" elsewhere in ``analysis`` uses the same coordinate.

Models (least squares; the curve is first scaled to [0, 1]):

- flat: no transition;
- a sum of K = 1..``max_phases`` (3) logistics in x, k = 1 + 3K parameters. The levels are solved
  exactly for each trial (midpoint, scale) (variable projection); ``scipy.optimize.least_squares``
  searches the rest. K = 1 starts from 4 points; K ≥ 2 runs one fit per way of cutting the x axis
  into K cells, one phase per cell (≤ 10 candidate cuts, in gaps between evaluations, added to
  the best (K−1)-phase fit), then polishes the best two without the cells. K is not tried when
  even a perfect K-phase fit could not win (its penalty alone is too large);
- piecewise-constant with K change points, k = 1 + 2K, by an exact dynamic program: the fallback.

Onset / midpoint / end are where a phase's fitted logistic crosses 10% / 50% / 90% of its rise
(x = m − s·ln 9, m, m + s·ln 9), mapped back to steps, onset clamped at 0. For a change point they
are the last evaluation before, halfway in log-step, and the first evaluation after. ``low`` /
``high`` are the fitted levels either side (segment medians for a change point), clipped to the
observed range.

Noise sd σ: the MAD of Gasser–Sroka–Jennen-Steinmetz pseudo-residuals (model-free, works on
irregular grids, barely moved by a few jumps), raised by one standard error, at least 0.1% of the
curve's range.

Model choice: crit = RSS/σ² + k·ln n (BIC with σ plugged in). More phases are kept only when crit
drops by ``bic_margin`` (6, "strong" on Kass & Raftery's scale) below the best model with fewer
phases (flat included), and every reported phase passes every rule:

- |rise| ≥ ``min_rise`` (0.05, absolute, in the curve's units: sized for accuracies) and
  ≥ ``min_snr`` (4) · σ;
- timeable: ≥ ``min_side`` (3) evaluations before and after the midpoint. A logistic phase that
  is not timeable and lies wholly within the first or last 3 evaluations is an *edge phase*: kept
  in the fit (it explains the data, e.g. the safari fixture's step-40 rise) but not reported;
- 10–90% width ≤ ``max_width`` (0.6) of the curve's log-step span (a slow drift is no transition);
- distinct phases: one ends before the next starts, with ≥ ``min_side`` evaluations on the
  plateau between them (an edge phase needs only the first);
- the data agree: the medians of the observed plateaus either side differ, in the fit's direction,
  by ≥ half the fitted rise (a single outlier makes no phase), and each plateau is flat (its halves'
  medians differ by ≤ 0.25 · rise + 3σ: a ramp is no staircase).

Among a K-phase fit's local optima the lowest-RSS one that passes the rules is K's candidate.
The change-point model is used only when no logistic model is accepted or it beats the accepted
one by ``bic_margin`` (the logistic "fits badly"), and only if it fits to within the noise
(χ² test at 0.1%). A K-phase fit needs ≥ 3K + 4 evaluations; shorter curves (< ``min_points``, 7)
give []. "No transition" is an honest outcome, never forced.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import chi2

from models.errors import UserError

from .curvefit import LN9, fit_changepoint, logistic_fits, noise_sd

__all__ = ["Transition", "detect_transitions", "DEFAULTS", "to_log_step"]

DEFAULTS = dict(min_rise=0.05, min_snr=4.0, bic_margin=6.0, min_side=3, min_points=7,
                max_width=0.6, max_phases=3)
_REL_NOISE_FLOOR = 1e-3  # residual sd below 0.1% of the range counts as a perfect fit


@dataclass(frozen=True)
class Transition:
    """One transition of a curve; steps are training steps, levels in the curve's units."""

    onset: float
    midpoint: float
    end: float
    low: float  # level before the transition
    high: float  # level after it (below ``low`` for a decreasing metric)
    direction: str  # "up" | "down"
    method: str  # "logistic" | "changepoint"
    r2: float  # goodness of fit: R² of the selected model on the whole curve
    snr: float  # |fitted rise| / noise sd (inf for a noise-free curve)

    @property
    def rise(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict:
        d = asdict(self)
        d["snr"] = self.snr if math.isfinite(self.snr) else None
        return d


def to_log_step(step):
    """The log-step coordinate used throughout ``analysis``: ln(step + 1)."""
    return np.log1p(np.asarray(step, dtype=float))


def _from_log(x: float) -> float:
    return max(0.0, float(np.expm1(x)))


def _to_transitions(fit, x, y, v_range, sigma, r2, opts, steps):
    """Map a fit (normalized units) to Transitions, or None if any phase breaks a rule."""
    offset, scale = v_range[0], v_range[1] - v_range[0]
    k, span, sig_n = opts["min_side"], x[-1] - x[0], sigma / scale
    if fit.kind == "logistic":
        spans = [(m - s * LN9, m, m + s * LN9) for m, s in fit.phases]
    else:
        spans = [(x[c - 1], 0.5 * (x[c - 1] + x[c]), x[c]) for c in fit.phases]
    # An edge phase (logistic only) lies wholly within the first or last k evaluations: it is
    # fitted (it explains the data) but too early or too late to time, so it is not reported.
    timeable = [np.sum(x < xm) >= k and np.sum(x > xm) >= k for _, xm, _ in spans]
    edge = [fit.kind == "logistic" and not t and (xe < x[k] or xo > x[-1 - k])
            for t, (xo, _, xe) in zip(timeable, spans)]
    for i, ((_, m1, e1), (o2, m2, _)) in enumerate(zip(spans, spans[1:])):
        # distinct phases: one ends before the next starts, with ≥ k evaluations on the plateau
        # between them (so one outlier cannot make a plateau of its own)
        if e1 > o2 or not (edge[i] or edge[i + 1] or np.sum((x >= e1) & (x <= o2)) >= k):
            return None
    out = []
    for i, (xo, xm, xe) in enumerate(spans):
        if edge[i]:
            continue
        if not timeable[i]:
            return None
        # the observed plateaus either side, up to the neighbouring phases
        b_lo = spans[i - 1][2] if i > 0 else -np.inf
        a_hi = spans[i + 1][0] if i + 1 < len(spans) else np.inf
        before, after = y[(x >= b_lo) & (x <= xo)], y[(x >= xe) & (x <= a_hi)]
        low_n, high_n = fit.levels[i], fit.levels[i + 1]
        if fit.kind == "changepoint":  # segment medians: one outlier does not make a level
            low_n, high_n = float(np.median(before)), float(np.median(after))
        rise_n = high_n - low_n  # signed, normalized units
        if before.size and after.size:  # the data agree with the fit on the step
            if (np.median(after) - np.median(before)) * np.sign(rise_n) < 0.5 * abs(rise_n):
                return None
        for st in (before, after):  # plateaus are flat next to the step: not a ramp
            h = st.size // 2
            if h and abs(np.median(st[-h:]) - np.median(st[:h])) > 0.25 * abs(rise_n) + 3 * sig_n:
                return None
        rise = abs(rise_n) * scale
        if rise < opts["min_rise"] or rise < opts["min_snr"] * sigma:
            return None
        if 2 * (xe - xm) > opts["max_width"] * span and fit.kind == "logistic":
            return None
        onset, end = _from_log(xo), _from_log(xe)
        if fit.kind == "changepoint":  # the evaluations either side, exactly
            onset, end = float(steps[fit.phases[i] - 1]), float(steps[fit.phases[i]])
        out.append(Transition(
            onset=onset, midpoint=_from_log(xm), end=end,
            low=float(np.clip(low_n * scale + offset, *v_range)),
            high=float(np.clip(high_n * scale + offset, *v_range)),
            direction="up" if rise_n > 0 else "down", method=fit.kind, r2=float(r2),
            snr=float(rise / sigma) if sigma > 0 else math.inf))
    return out


def detect_transitions(steps, values, *, min_rise=DEFAULTS["min_rise"],
                       min_snr=DEFAULTS["min_snr"], bic_margin=DEFAULTS["bic_margin"],
                       min_side=DEFAULTS["min_side"], min_points=DEFAULTS["min_points"],
                       max_width=DEFAULTS["max_width"], max_phases=DEFAULTS["max_phases"],
                       ) -> list[Transition]:
    """Transitions of one curve, in step order; [] when the data support none.

    The fit, the onset/midpoint/end definitions (10/50/90% of the fitted logistic's rise, in
    log1p(step)) and every threshold are in the module docstring (science.md, "Timing a
    transition"). ``max_phases`` is 1, 2 or 3. Steps may be irregular and repeated; non-finite
    values are dropped. Works for increasing and decreasing curves (``Transition.direction``).
    """
    opts = dict(min_rise=min_rise, min_snr=min_snr, min_side=min_side, max_width=max_width)
    s = np.asarray(steps, dtype=float).ravel()
    v = np.asarray(values, dtype=float).ravel()
    if s.shape != v.shape:
        raise UserError(f"steps and values differ in length ({s.size} vs {v.size}); "
                        "pass one value per step")
    if max_phases not in (1, 2, 3):
        raise UserError(f"max_phases must be 1, 2 or 3, got {max_phases}")
    ok = np.isfinite(s) & np.isfinite(v)
    s, v = s[ok], v[ok]
    if np.any(s < 0):
        raise UserError("negative training step in a curve; steps count from 0")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    x = to_log_step(s)
    n = len(v)
    if n < min_points:  # too few finite points (or none: a metric that does not apply)
        return []
    v_range = (float(v.min()), float(v.max()))
    scale = v_range[1] - v_range[0]
    if n < min_points or x[-1] <= x[0] or scale == 0.0:
        return []
    y = (v - v_range[0]) / scale  # normalized to [0, 1]: fit bounds and starts are scale-free
    tss = float(np.sum((y - y.mean()) ** 2))
    ks = [k for k in range(1, max_phases + 1) if 1 + 3 * k <= n - 3]  # keep 3 residual dof
    if n < 2 * min_side or not ks:
        return []

    sig_n = max(noise_sd(x, y), _REL_NOISE_FLOOR)  # noise sd in normalized units
    sigma = sig_n * scale
    # Exact screen before any fit: an accepted phase's plateau medians differ by at least half
    # its rise, so no rise exceeds twice the curve's range. Most circuit curves stop here.
    if 2 * scale < min_rise or 2 * scale < min_snr * sigma:
        return []

    def crit(rss, k):
        return rss / sig_n ** 2 + k * math.log(n)

    def best_valid(fits):
        """(crit, transitions) of the lowest-RSS fit that passes every rule, or None."""
        for f in fits:
            if f.kind == "changepoint" and f.rss / sig_n ** 2 > chi2.isf(1e-3, n - f.k):
                continue  # the fallback must fit to within the noise (a ramp is no staircase)
            tr = _to_transitions(f, x, y, v_range, sigma, 1.0 - f.rss / tss, opts, s)
            if tr is not None:
                return crit(f.rss, f.k), tr
        return None

    def choose(best, candidate):
        """Keep fewer phases (flat first) unless more are clearly better. A model is
        (crit, transitions, accepted); one of edge phases only is accepted, with []."""
        if candidate is not None and candidate[0] < best[0] - bic_margin:
            return (*candidate, True)
        return best

    flat = (crit(tss, 1), [], False)
    logi, chg, prev = flat, flat, []
    for k in ks:
        cp = fit_changepoint(y, k, min_side)  # cheap: always
        chg = choose(chg, best_valid([cp] if cp else []))
        if (1 + 3 * k) * math.log(n) < logi[0] - bic_margin:  # else even a perfect fit loses
            prev = logistic_fits(x, k, prev, min_side, y)
            logi = choose(logi, best_valid(prev))
    # Logistic first; the change-point model only when the logistic fails or fits badly.
    if logi[2] and not (chg[2] and chg[0] < logi[0] - bic_margin):
        return logi[1]
    return chg[1]
