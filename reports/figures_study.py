"""The study's figures (docs/study.md), drawn from `reports.study.sweep_runs` records.

    fig_study_curves        test accuracy (last position) against step, one panel per task and
                            regime, one line per seed, the recall-jump midpoints marked
    fig_study_jumps         recall-jump midpoint per regime and task, one dot per seed; a run
                            with no recall jump is an open marker at its budget (censored)
    fig_study_final         final test accuracy per regime and task, with the no-recall baseline
    fig_circuit_vs_jump     recall-circuit midpoint against recall-jump midpoint, per run
    fig_study_lr            recall-jump midpoint per learning rate, causal/all against causal/last

Each returns a `ReportFigure` and writes its PNG when given a folder (reports.figures_common).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from reports.figures_common import (PAGE_W, FigureSkipped, ReportFigure, finish, legend_below, legend_entries,
                                    new_figure)
from reports.summary import REGIME_ORDER

PALETTE = dict(zip(REGIME_ORDER, sns.color_palette("colorblind", len(REGIME_ORDER))))


def _regimes(runs: list[dict[str, Any]]) -> list[str]:
    have = {r["regime"] for r in runs}
    return [g for g in REGIME_ORDER if g in have] + sorted(have - set(REGIME_ORDER))


def _tasks(runs: list[dict[str, Any]]) -> list[str]:
    return sorted({r["task"] for r in runs})


CENSORED = "no recall jump (open circle: at the budget, a lower bound)"
STEP_TICKS = (100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000)


def _steps_axis(axis) -> None:
    """A log step axis with plain numbers (100, 200, 500, …): the default 3×10² labels collide."""
    axis.set_major_locator(FixedLocator(STEP_TICKS))
    axis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _censored_legend(ax) -> None:
    ax.scatter([], [], facecolors="none", edgecolors="#555555", s=40, label=CENSORED)


def _jump_dots(ax, x: float, rs: list[dict[str, Any]], color, rng: np.random.Generator | None = None) -> list[float]:
    """One dot per run at its recall-jump midpoint; an open circle at its last step (a lower
    bound) for a run without one. `rng` jitters x so that seeds do not hide each other."""
    got = [r["jump_midpoint"] for r in rs if r["jump_midpoint"] is not None]
    cens = [r["steps"] for r in rs if r["jump_midpoint"] is None]
    for ys, style in ((got, {"color": color, "s": 28}),
                      (cens, {"facecolors": "none", "edgecolors": color, "s": 40})):
        xs = x + (rng.uniform(-0.15, 0.15, len(ys)) if rng is not None else np.zeros(len(ys)))
        if ys:
            ax.scatter(xs, ys, zorder=3, **style)
    return got


def fig_study_curves(runs: list[dict[str, Any]], out_dir: str | Path | None = None) -> ReportFigure:
    tasks, regimes = _tasks(runs), _regimes(runs)
    fig = new_figure(PAGE_W, 2.3 * len(tasks) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(tasks), len(regimes), sharey=True, squeeze=False))
    for i, task in enumerate(tasks):
        for j, regime in enumerate(regimes):
            ax = axes[i, j]
            for r in (r for r in runs if r["task"] == task and r["regime"] == regime):
                steps, acc = zip(*r["curve"])
                ax.plot(np.maximum(steps, 1), acc, color=PALETTE.get(regime), lw=1, alpha=0.8)
                if r["jump_midpoint"] is not None:
                    ax.axvline(r["jump_midpoint"], color=PALETTE.get(regime), ls=":", lw=0.8)
            base = [r["baseline"] for r in runs if r["task"] == task and r["baseline"] is not None]
            if base:
                ax.axhline(float(np.mean(base)), color="#555555", ls="--", lw=0.8,
                           label="no-recall baseline" if i == j == 0 else None)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{task.upper()} {regime}", fontsize=9)
            ax.set_xlabel("step" if i == len(tasks) - 1 else "")
        axes[i, 0].set_ylabel("test acc (last position)")
    legend_below(fig, *axes[0, 0].get_legend_handles_labels())
    return finish(fig, out_dir, "fig_study_curves.png",
                  "Test accuracy at the answer against step (log), one line per seed; dotted: each run's "
                  "recall-jump midpoint; dashed: the no-recall baseline.")


def fig_study_jumps(runs: list[dict[str, Any]], out_dir: str | Path | None = None) -> ReportFigure:
    tasks, regimes = _tasks(runs), _regimes(runs)
    fig = new_figure(PAGE_W, 3.4)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    rng = np.random.default_rng(0)  # jitter only, so seeds do not hide each other
    for ax, task in zip(axes, tasks):
        for k, regime in enumerate(regimes):
            rs = [r for r in runs if r["task"] == task and r["regime"] == regime]
            got = _jump_dots(ax, k, rs, PALETTE.get(regime), rng)
            if got:
                ax.hlines(np.mean(got), k - 0.3, k + 0.3, color=PALETTE.get(regime), lw=2)
        ax.set_xticks(range(len(regimes)), [g.replace("attention/", "attn/") for g in regimes], rotation=20,
                      fontsize=8)
        ax.set_yscale("log")
        _steps_axis(ax.yaxis)
        ax.set_title(task.upper())
        ax.set_ylabel("recall-jump midpoint (steps)")
    _censored_legend(axes[0])
    legend_below(fig, *legend_entries(axes))
    return finish(fig, out_dir, "fig_study_jumps.png",
                  "Recall-jump midpoint per run (dots; bar: mean of the runs that have one). Open circles: "
                  "runs without a recall jump, drawn at their last step, a lower bound.")


def fig_study_final(runs: list[dict[str, Any]], out_dir: str | Path | None = None) -> ReportFigure:
    tasks, regimes = _tasks(runs), _regimes(runs)
    fig = new_figure(PAGE_W, 3.2)
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    rng = np.random.default_rng(0)  # jitter only (seaborn's stripplot draws it unseeded: the PNG would change per run)
    for ax, task in zip(axes, tasks):
        rs = [r for r in runs if r["task"] == task]
        order = [g for g in regimes if any(r["regime"] == g for r in rs)]
        for k, regime in enumerate(order):
            ys = [r["final_test_acc_last"] for r in rs if r["regime"] == regime]
            ax.scatter(k + rng.uniform(-0.15, 0.15, len(ys)), ys, color=PALETTE.get(regime), s=30, zorder=3)
        ax.set_xticks(range(len(order)), order)
        base = [r["baseline"] for r in rs if r["baseline"] is not None]
        if base:
            ax.axhline(float(np.mean(base)), color="#555555", ls="--", lw=0.8, label="no-recall baseline")
        ax.set_title(task.upper())
        ax.set_ylabel("final test acc (last position)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.set_ylim(0, 1.02)
    legend_below(fig, *axes[0].get_legend_handles_labels())
    return finish(fig, out_dir, "fig_study_final.png",
                  "Final test accuracy at the answer, one dot per seed; dashed: the no-recall baseline "
                  "(the most-frequent-value heuristic for AR, count-weighted chance for IH).")


def fig_circuit_vs_jump(runs: list[dict[str, Any]], out_dir: str | Path | None = None) -> ReportFigure:
    pts = [r for r in runs if r["jump_midpoint"] is not None and r["recall_circuit_midpoint"] is not None]
    if not pts:
        raise FigureSkipped("no run has both a recall jump and a measured recall circuit")
    fig = new_figure(6.4, 5.0)
    ax = fig.subplots()
    markers = {"ar": "o", "ih": "s"}
    for r in pts:
        ax.scatter(r["jump_midpoint"], r["recall_circuit_midpoint"], color=PALETTE.get(r["regime"]),
                   marker=markers.get(r["task"], "^"), s=30, label=f"{r['task'].upper()} {r['regime']}")
    lo = min(min(r["jump_midpoint"], r["recall_circuit_midpoint"]) for r in pts) * 0.7
    hi = max(max(r["jump_midpoint"], r["recall_circuit_midpoint"]) for r in pts) * 1.4
    xs = np.geomspace(max(lo, 1), hi, 50)
    ax.plot(xs, xs, color="#333333", lw=1, label="same step")
    ax.fill_between(xs, xs / 1.5, xs * 1.5, color="#999999", alpha=0.2, label="within a factor 1.5 (\"with\")")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _steps_axis(ax.xaxis)
    _steps_axis(ax.yaxis)
    ax.set_xlabel("recall-jump midpoint (steps)")
    ax.set_ylabel("recall-circuit midpoint (steps)")
    legend_below(fig, *legend_entries([ax]), ncol=3)
    return finish(fig, out_dir, "fig_circuit_vs_jump.png",
                  "When the recall circuit (swap selectivity at the answer) forms against when test accuracy "
                  "jumps, per run; inside the band the two are \"with\" each other.")


def fig_study_lr(lr_runs: list[dict[str, Any]], main_runs: list[dict[str, Any]],
                 out_dir: str | Path | None = None) -> ReportFigure:
    rows = [r for r in [*main_runs, *lr_runs] if r["task"] == "ar" and r["regime"] in ("causal/all", "causal/last")]
    if not lr_runs or not rows:
        raise FigureSkipped("no learning-rate sweep")
    fig = new_figure(6.4, 3.8)
    ax = fig.subplots()
    lrs = sorted({r["lr"] for r in rows})
    for off, regime in ((-0.08, "causal/all"), (0.08, "causal/last")):
        for k, lr in enumerate(lrs):
            _jump_dots(ax, k + off, [r for r in rows if r["regime"] == regime and r["lr"] == lr], PALETTE[regime])
        ax.scatter([], [], color=PALETTE[regime], s=28, label=regime)
    ax.set_xticks(range(len(lrs)), [f"lr {lr:g}" for lr in lrs])
    ax.set_yscale("log")
    _steps_axis(ax.yaxis)
    _censored_legend(ax)
    ax.set_ylabel("recall-jump midpoint (steps)")
    legend_below(fig, *legend_entries([ax]), ncol=3)
    return finish(fig, out_dir, "fig_study_lr.png",
                  "AR, causal/all against causal/last at three learning rates: recall-jump midpoint per run "
                  "(open circles: no recall jump within the budget, drawn at it).")


def study_figures(runs: list[dict[str, Any]], lr_runs: list[dict[str, Any]],
                  out_dir: str | Path) -> list[ReportFigure]:
    """Every study figure that has its inputs, written into out_dir."""
    out = []
    for draw in (fig_study_curves, fig_study_jumps, fig_study_final, fig_circuit_vs_jump):
        try:
            out.append(draw(runs, out_dir))
        except FigureSkipped:
            pass
    try:
        out.append(fig_study_lr(lr_runs, runs, out_dir))
    except FigureSkipped:
        pass
    return out
