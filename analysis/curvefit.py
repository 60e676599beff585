"""Curve fits behind ``analysis.transitions`` (science.md, "Timing a transition"): sums of
logistics in log-step by variable projection, an exact piecewise-constant segmentation, and a
model-free noise estimate. Internal: the rules that turn fits into transitions, and their
documentation, are in ``transitions.py``. All curves here are scaled to [0, 1] by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import least_squares
from scipy.special import expit

LN9 = math.log(9.0)  # 10%→50% distance of a unit logistic, in units of its scale s
S_MIN = 0.02  # narrowest logistic (log-step): 10–90% spans ~9% of the step count, so a jump
# between two evaluations gets a finite width inside the gap instead of a degenerate step
MAX_CUTS = 10  # candidate cuts between phases per fit (cost: one fit each)


# A K-phase logistic model is y = c0 + Σ c_i·expit((x − m_i)/s_i). The levels c enter linearly,
# so they are solved exactly for given (m, s) (variable projection, Golub & Pereyra): the
# optimizer only searches the 2K nonlinear parameters, which is faster and has fewer bad local
# optima. Phase i is packed as (u_i, v_i), up to the floor S_MIN on s its 10% and 90% points;
# confining u_i and v_i to a cell of the log-step axis is a box constraint, so each phase stays
# in its own cell and phases cannot overlap.
def _ms(th):
    u, v = th[0::2], th[1::2]
    h = (v - u) / (2 * LN9)
    return 0.5 * (u + v), np.sqrt(h * h + S_MIN ** 2), h


def _levels(phi, y):
    return np.linalg.lstsq(phi, y, rcond=None)[0]


class _VarPro:
    """Residual and Jacobian of the variable-projection problem at θ, sharing one QR of Φ."""

    def __init__(self, x, y):
        self.x, self.y, self.key, self.val = x, y, None, None

    def _at(self, th):
        if th.tobytes() != self.key:
            m, s, h = _ms(th)
            z = (self.x[:, None] - m[None, :]) / s[None, :]
            e = expit(z)
            phi = np.column_stack([np.ones_like(self.x), e])
            q, r = np.linalg.qr(phi)
            d = np.abs(np.diag(r))
            if not np.isfinite(phi).all():  # a trial step off to infinity: NaN residuals make
                c = np.full(phi.shape[1], np.nan)  # least_squares reject it (LAPACK would print)
            elif d.min() > 1e-9 * d.max():
                c = solve_triangular(r, q.T @ self.y)
            else:  # a phase gone flat: Φ is rank-deficient
                c = _levels(phi, self.y)
            self.key, self.val = th.tobytes(), (phi, e, z, s, h, q, c)
        return self.val

    def resid(self, th):
        phi, *_, c = self._at(th)
        return phi @ c - self.y

    def jac(self, th):
        """Kaufman's Jacobian: −P⊥ (∂Φ/∂θ) c, with P⊥ from the QR of Φ."""
        _, e, z, s, h, q, c = self._at(th)
        dm = -c[1:] * e * (1.0 - e) / s  # ∂(c_i e_i)/∂m_i
        ds = dm * z  # ∂(c_i e_i)/∂s_i
        ds_dv = h / (2 * LN9 * s)  # ∂s/∂v = −∂s/∂u
        cols = np.empty((self.x.size, th.size))
        cols[:, 0::2] = 0.5 * dm - ds * ds_dv
        cols[:, 1::2] = 0.5 * dm + ds * ds_dv
        return cols - q @ (q.T @ cols)


@dataclass
class Fit:
    kind: str  # "logistic" | "changepoint"
    k: int  # number of parameters
    rss: float
    phases: list  # logistic: (m, s) in step order; changepoint: index of the first point after
    levels: list  # levels[i] → levels[i+1] is phase i (normalized units)
    pred: np.ndarray
    theta: np.ndarray = None  # logistic: packed (u, v) per phase
    cuts: list = None  # logistic: the cell edges between phases


def _fit_cells(x, y, cells, th0):
    """Least-squares sum of logistics, phase i confined to ``cells[i]``; None on failure.

    The box is mapped onto the real line (θ = lo + (hi − lo)·expit(φ)) so that MINPACK's
    Levenberg–Marquardt (``method="lm"``, compiled) can run it: ~1.5× faster than the bounded
    trust-region solver on these small problems, with the same optima."""
    lo = np.array([a for a, _ in cells for _ in (0, 1)])
    width = np.array([b - a for a, b in cells for _ in (0, 1)])
    f0 = np.clip((th0 - lo) / width, 1e-6, 1 - 1e-6)
    th_of = lambda phi: lo + width * expit(phi)  # noqa: E731
    vp = _VarPro(x, y)

    def jac(phi):
        e = expit(phi)
        return vp.jac(th_of(phi)) * (width * e * (1.0 - e))

    try:
        res = least_squares(lambda phi: vp.resid(th_of(phi)), np.log(f0 / (1 - f0)), jac=jac,
                            method="lm", ftol=1e-6, xtol=1e-6,
                            max_nfev=10 + 8 * th0.size)  # a phase with nothing to fit wanders
    except (ValueError, np.linalg.LinAlgError):
        return None
    rss = float(np.sum(res.fun ** 2))
    if not np.isfinite(rss):
        return None
    th = th_of(res.x)
    phi, *_, c = vp._at(th)
    m, sc, _ = _ms(th)
    o = np.argsort(m, kind="stable")  # step order (a polish without cells may swap phases)
    levels = list(c[0] + np.concatenate([[0.0], np.cumsum(c[1:][o])]))
    return Fit("logistic", 1 + 3 * len(cells), rss, list(zip(m[o], sc[o])), levels, phi @ c,
                th.reshape(-1, 2)[o].ravel(), [a for a, _ in cells[1:]])


def _changepoints(y, n_cp, min_seg):
    """Exact least-squares piecewise-constant segmentation with ``n_cp`` change points.

    Written by hand: scipy has no segmentation routine, and an exact O(K·n²) dynamic program
    over prefix sums is a few lines (n is at most a few thousand evaluations).
    Returns (rss, [index of the first point of each new segment]) or None.
    """
    n = len(y)
    if n < (n_cp + 1) * min_seg:
        return None
    c1 = np.concatenate([[0.0], np.cumsum(y)])
    c2 = np.concatenate([[0.0], np.cumsum(y * y)])

    def cost(i, j):  # SSE of y[i:j] around its mean; i may be an array
        s = c1[j] - c1[i]
        return c2[j] - c2[i] - s * s / (j - i)

    dp = np.full((n_cp + 1, n + 1), np.inf)  # dp[k, j]: best SSE of y[:j] in k+1 segments
    arg = np.zeros((n_cp + 1, n + 1), dtype=int)
    j = np.arange(min_seg, n + 1)
    dp[0, j] = cost(0, j)
    for k in range(1, n_cp + 1):
        for j in range((k + 1) * min_seg, n + 1):
            i = np.arange(k * min_seg, j - min_seg + 1)
            tot = dp[k - 1, i] + cost(i, j)
            b = int(np.argmin(tot))
            dp[k, j], arg[k, j] = tot[b], i[b]
    cps, j = [], n
    for k in range(n_cp, 0, -1):
        j = arg[k, j]
        cps.append(int(j))
    return float(max(dp[n_cp, n], 0.0)), sorted(cps)


def fit_changepoint(y, n_cp, min_seg):
    res = _changepoints(y, n_cp, min_seg)
    if res is None:
        return None
    rss, cps = res
    bounds = [0, *cps, len(y)]
    levels = [float(np.mean(y[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
    pred = np.repeat(levels, np.diff(bounds))
    return Fit("changepoint", 1 + 2 * n_cp, rss, cps, levels, pred)


def _start(x, cells, centers=None, width=None):
    """Packed (u, v) start: a phase centered in its cell's data (or at ``centers``)."""
    th = []
    for i, (a, b) in enumerate(cells):
        xc = x[(x >= a) & (x <= b)]
        if xc.size == 0:
            xc = np.array([0.5 * (max(a, x[0]) + min(b, x[-1]))])
        m = centers[i] if centers is not None else float(np.median(xc))
        w = width if width is not None else max(0.25 * (xc[-1] - xc[0]), S_MIN)
        th += [max(m - w, a), min(m + w, b)]
    return np.array(th, dtype=float)


def _warm(x, cells, base):
    """A start keeping a fewer-phase fit's phases, each in the cell holding its midpoint."""
    th = _start(x, cells)
    if base is not None:
        for u, v in zip(base.theta[0::2], base.theta[1::2]):
            i = next(i for i, (a, b) in enumerate(cells) if a <= 0.5 * (u + v) <= b)
            th[2 * i: 2 * i + 2] = np.clip([u, v], *cells[i])
    return th


def logistic_fits(x, n_phases, previous, min_side, y) -> list[Fit]:
    """Local optima of a K-phase fit, lowest RSS first: one per way of cutting the log-step
    axis into K cells (cuts in gaps between evaluations, leaving ≥ ``min_side`` either side; for
    K = 3, cuts added to the best 2-phase cutting). K = 1 starts from 4 points."""
    span = x[-1] - x[0]
    outer = (x[0] - 0.3 * span, x[-1] + 0.3 * span)  # a rise may start before the first eval
    starts = []
    if n_phases == 1:
        starts.append(([outer], _start(x, [outer])))
        for g in np.quantile(x, [0.2, 0.5, 0.8]):
            starts.append(([outer], _start(x, [outer], [g], 0.15 * span)))
    else:
        gaps = 0.5 * (x[1:] + x[:-1])
        ok = (np.arange(1, len(x)) >= min_side) & (np.arange(1, len(x)) <= len(x) - min_side)
        cuts = np.unique(gaps[ok & (np.diff(x) > 0)])
        if cuts.size > MAX_CUTS:  # long curves: candidate cuts evenly spread in rank
            cuts = cuts[np.linspace(0, cuts.size - 1, MAX_CUTS).round().astype(int)]
        for base in previous[:1] or [None]:
            old = [] if base is None else base.cuts
            for c in cuts:
                if not any(abs(c - b) < 1e-12 for b in old):
                    edges = [outer[0], *sorted([*old, c]), outer[1]]
                    cells = list(zip(edges[:-1], edges[1:]))
                    starts.append((cells, _warm(x, cells, base)))
    fits, seen = [], set()

    def keep(f):
        key = tuple(round(m / span, 3) for m, _ in f.phases)
        if key not in seen:
            seen.add(key)
            fits.append(f)

    for cells, th0 in starts:
        f = _fit_cells(x, y, cells, th0)
        if f is not None:
            keep(f)
    if n_phases > 1:
        # Polish the best few without their cells, so a cut placed off the ideal spot does not
        # bias a phase; the rules later reject a polished fit whose phases came to overlap.
        for f in sorted(fits, key=lambda f: f.rss)[:2]:
            g = _fit_cells(x, y, [outer] * n_phases, f.theta)
            if g is not None:
                g.cuts = f.cuts
                keep(g)
    return sorted(fits, key=lambda f: f.rss)


def noise_sd(x, y):
    """Model-free robust noise sd: the MAD of Gasser–Sroka–Jennen-Steinmetz pseudo-residuals
    (each point minus the line through its two neighbours, scaled to unit variance). It works
    on irregular grids, and a few jumps move the median little; it does not depend on which
    fits the search found, so the model choice is stable."""
    d = x[2:] - x[:-2]
    ok = d > 0
    if not np.any(ok):
        return 0.0
    a, b = (x[2:] - x[1:-1])[ok] / d[ok], (x[1:-1] - x[:-2])[ok] / d[ok]
    r = (a * y[:-2][ok] + b * y[2:][ok] - y[1:-1][ok]) / np.sqrt(a * a + b * b + 1.0)
    # one standard error up (the MAD's is ≈ 1.17/√m): with few points an estimate that came
    # out low by chance would make noise look significant
    return 1.4826 * float(np.median(np.abs(r))) * (1.0 + 1.17 / math.sqrt(r.size))
