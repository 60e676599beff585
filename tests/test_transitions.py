"""Transition timing (analysis/transitions.py; science.md, "Timing a transition").

Synthetic curves are logistics in x = ln(1 + step) with a known midpoint m and 10–90% width w,
so onset = m − w/2 and end = m + w/2 in x. Tolerances, in log-steps (0.1 ≈ 10% in steps):
noise-free 0.01 everywhere; with Gaussian noise sd 0.03, midpoint 0.1 and onset/end 0.25.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit

import analysis.transitions as T
from analysis import Transition, detect_transitions
from models.errors import UserError

LN9 = math.log(9.0)
REGULAR = np.arange(0, 5001, 100.0)  # 51 evaluations, evenly spaced in steps
# checkpoint-like: log-spaced plus a dense stretch around the transition (35 evaluations)
LOG_DENSE = np.unique(np.concatenate([[0], np.round(np.geomspace(1, 5000, 25)),
                                      np.linspace(400, 1000, 10).round()]))
GRIDS = {"regular": REGULAR, "log+dense": LOG_DENSE}


def logistic(steps, mid, width, low, high):
    """low→high, 50% at step ``mid``, 10%→90% over ``width`` in ln(1 + step)."""
    return low + (high - low) * expit((np.log1p(steps) - math.log1p(mid)) / (width / (2 * LN9)))


def assert_located(t: Transition, mid, width, tol_mid, tol_edge):
    lm = math.log1p(mid)
    assert abs(math.log1p(t.midpoint) - lm) <= tol_mid
    assert abs(math.log1p(t.onset) - (lm - width / 2)) <= tol_edge
    assert abs(math.log1p(t.end) - (lm + width / 2)) <= tol_edge
    assert t.onset < t.midpoint < t.end


@pytest.mark.parametrize("grid", GRIDS)
def test_logistic_located_exactly_without_noise(grid):
    steps = GRIDS[grid]
    (t,) = detect_transitions(steps, logistic(steps, 700, 1.0, 0.1, 0.9))
    assert_located(t, 700, 1.0, 0.01, 0.01)
    assert (t.direction, t.method) == ("up", "logistic")
    assert t.low == pytest.approx(0.1, abs=0.01) and t.high == pytest.approx(0.9, abs=0.01)
    assert t.r2 > 0.999


@pytest.mark.parametrize("grid", GRIDS)
def test_noisy_logistic_located(grid):
    steps = GRIDS[grid]
    y = logistic(steps, 900, 0.8, 0.05, 0.95)
    y = y + 0.03 * np.random.default_rng(1).standard_normal(steps.size)
    (t,) = detect_transitions(steps, y)
    assert_located(t, 900, 0.8, 0.1, 0.25)
    assert t.snr > 4


def test_flat_curve_has_no_transition():
    assert detect_transitions(LOG_DENSE, np.full(LOG_DENSE.size, 0.25)) == []


@pytest.mark.parametrize("seed,kind", [(0, "gauss"), (1, "t3"), (2, "uniform")])
def test_pure_noise_has_no_transition(seed, kind):
    rng = np.random.default_rng(seed)
    e = {"gauss": rng.standard_normal, "t3": lambda n: rng.standard_t(3, n),
         "uniform": lambda n: rng.uniform(-1.7, 1.7, n)}[kind](LOG_DENSE.size)
    assert detect_transitions(LOG_DENSE, 0.5 + 0.05 * e) == []


def test_rise_below_min_rise_is_not_a_transition():
    y = logistic(REGULAR, 800, 0.6, 0.50, 0.53)  # clean, but only 0.03 < min_rise 0.05
    assert detect_transitions(REGULAR, y) == []
    assert len(detect_transitions(REGULAR, y, min_rise=0.01)) == 1


@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_two_phases_give_two_transitions_in_order(noise):
    steps = np.unique(np.concatenate([[0], np.round(np.geomspace(1, 20000, 40))]))
    y = logistic(steps, 100, 0.8, 0.0, 0.5) + logistic(steps, 5000, 0.5, 0.0, 0.45)
    y = y + noise * np.random.default_rng(2).standard_normal(steps.size)
    first, second = detect_transitions(steps, y)
    tol = (0.01, 0.01) if noise == 0 else (0.1, 0.25)
    assert_located(first, 100, 0.8, *tol)
    assert_located(second, 5000, 0.5, *tol)
    assert first.end < second.onset
    assert first.high == pytest.approx(second.low)


def test_decreasing_curve():
    y = logistic(LOG_DENSE, 600, 1.0, 2.3, 0.4)  # a loss: 2.3 → 0.4
    y = y + 0.03 * np.random.default_rng(3).standard_normal(LOG_DENSE.size)
    (t,) = detect_transitions(LOG_DENSE, y)
    assert t.direction == "down" and t.high < t.low and t.rise < 0
    assert_located(t, 600, 1.0, 0.1, 0.25)


def test_rise_then_fall_gives_up_then_down():
    steps = np.unique(np.concatenate([[0], np.round(np.geomspace(1, 20000, 40))]))
    y = logistic(steps, 500, 0.6, 0, 0.6) - logistic(steps, 5000, 0.6, 0, 0.6)
    up, down = detect_transitions(steps, y)
    assert (up.direction, down.direction) == ("up", "down")
    assert_located(up, 500, 0.6, 0.01, 0.01)
    assert_located(down, 5000, 0.6, 0.01, 0.01)


def test_one_outlier_and_a_steady_ramp_are_not_transitions():
    rng = np.random.default_rng(5)
    steps = np.unique(np.concatenate([[0], np.round(np.geomspace(1, 20000, 40))]))
    spike = 0.5 + 0.01 * rng.standard_normal(steps.size)
    spike[20] += 0.4
    assert detect_transitions(steps, spike) == []
    ramp = 0.2 + 0.05 * np.log1p(steps) + 0.02 * rng.standard_normal(steps.size)
    assert detect_transitions(steps, ramp) == []


def test_changepoint_fallback_when_the_logistic_fit_fails(monkeypatch):
    monkeypatch.setattr(T, "logistic_fits", lambda *a, **k: [])
    y = np.where(REGULAR > 2050, 0.9, 0.2) + 0.01 * np.random.default_rng(4).standard_normal(51)
    (t,) = detect_transitions(REGULAR, y)
    assert t.method == "changepoint" and t.direction == "up"
    assert t.onset == 2000 and t.end == 2100 and 2000 < t.midpoint < 2100
    assert t.low == pytest.approx(0.2, abs=0.02) and t.high == pytest.approx(0.9, abs=0.02)


def test_unsorted_repeated_and_missing_points():
    steps = np.concatenate([LOG_DENSE, LOG_DENSE[::3]])
    y = logistic(steps, 700, 1.0, 0.1, 0.9)
    y[5] = np.nan
    order = np.random.default_rng(0).permutation(steps.size)
    (t,) = detect_transitions(steps[order], y[order])
    assert_located(t, 700, 1.0, 0.01, 0.01)


def test_bad_input():
    with pytest.raises(UserError):
        detect_transitions([0, 1, 2], [0.1, 0.2])
    with pytest.raises(UserError):
        detect_transitions([-1, 1, 2, 3, 4, 5, 6, 7], np.linspace(0, 1, 8))
    with pytest.raises(UserError):
        detect_transitions(REGULAR, REGULAR, max_phases=4)
    assert detect_transitions([0, 10, 100, 1000, 3000, 10000], [0, 0, 0, 1, 1, 1]) == []


def test_transition_is_frozen_and_serializable():
    (t,) = detect_transitions(REGULAR, logistic(REGULAR, 700, 1.0, 0.1, 0.9))
    with pytest.raises(AttributeError):
        t.midpoint = 1.0
    d = json.loads(json.dumps(t.to_dict()))
    assert {"onset", "midpoint", "end", "low", "high", "direction", "method", "r2", "snr"} <= set(d)


# --- the safari fixture: a real two-phase training trajectory --------------------------------
@pytest.fixture(scope="module")
def safari(fixtures):
    """name → transitions for the fixture's accuracy curves (fit once for this module)."""
    rows = json.loads((fixtures / "safari_ar_v10_l64_o2" / "metrics.json").read_text())
    steps = [r["step"] for r in rows]
    return {k: detect_transitions(steps, [r[k] for r in rows])
            for k in ("test_acc_last", "train_acc_all", "train_acc_last")}


def test_safari_test_accuracy_has_two_phases(safari):
    # 0 → ~0.84 by step ~500 (midpoint ~175), plateau 600–1000, then → 0.986 between the
    # step-1000 and step-1200 evaluations. (The 0 → 0.27 rise before step 60 is fitted as an
    # edge phase: only two evaluations precede it, too few to time it.)
    first, second = safari["test_acc_last"]
    assert 100 < first.midpoint < 300 and first.high > 0.75
    assert 1000 < second.midpoint < 1300 and 1000 <= second.onset and second.end <= 1200
    assert second.high > 0.95 and first.end < second.onset


def test_safari_train_accuracy_jumps_with_the_second_test_jump(safari):
    test2 = safari["test_acc_last"][1]
    for key in ("train_acc_all", "train_acc_last"):
        assert any(t.onset <= test2.end and test2.onset <= t.end for t in safari[key]), key
    train2 = safari["train_acc_all"][1]
    assert 0.50 < train2.low < 0.56 and train2.high > 0.58  # 0.52 → 0.59, as safari logs


def test_a_non_finite_trial_step_gives_nan_residuals_without_lapack(monkeypatch):
    """least_squares may try a step whose sigmoid basis overflows; the residual must come back
    NaN (the step is rejected) without handing NaN to LAPACK, which prints "DLASCL ... illegal
    value" to stderr from C (seen in a sweep's analyze stage)."""
    from analysis import curvefit

    def no_lapack(*a, **k):
        raise AssertionError("lstsq called on a non-finite basis")

    monkeypatch.setattr(curvefit.np.linalg, "lstsq", no_lapack)
    x = np.linspace(0.0, 5.0, 20)
    vp = curvefit._VarPro(x, 1.0 / (1.0 + np.exp(-(x - 2.5))))
    with np.errstate(invalid="ignore"):  # inf − inf in the step's own arithmetic is the point
        r = vp.resid(np.array([np.inf, np.inf]))
    assert r.shape == x.shape and np.isnan(r).all()
    assert np.isfinite(vp.resid(np.array([2.0, 3.0]))).all()  # a normal point still fits


def test_a_curve_without_finite_values_has_no_transition():
    """A metric that does not apply to a run (e.g. the AR key swap when every key is present)
    is written as NaN at every step: no transition, no error."""
    steps = np.array([0, 10, 100, 1000, 2000, 3000, 4000, 5000], dtype=float)
    assert detect_transitions(steps, np.full(steps.size, np.nan)) == []
