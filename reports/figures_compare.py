"""Figure 7: the comparison panel across regimes (jump midpoints, steps to 99% test accuracy,
lead/lag of circuit metrics), each as mean with its 95% bootstrap CI over seeds (n in the
labels) and the individual runs as dots. Reads `reports.summary` numbers only. Returns the
matplotlib figure (`ReportFigure`) and writes the PNG only when given an `out_dir`
(reports/figures_common.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib import ticker

from reports.figures_common import ACC_STYLE, FigureSkipped, ReportFigure, finish, new_figure, plain
from reports.summary import key_curves, short_curve

MAX_LEADLAG_METRICS = 12


def _pointrange(ax, y: float, st: dict[str, Any], color: str, label: str | None, marker: str = "o") -> None:
    vals = st.get("values") or []
    if vals:
        ax.scatter(vals, np.full(len(vals), y) + np.linspace(-0.06, 0.06, len(vals)), s=12, color=color,
                   alpha=0.45, lw=0)
    if st.get("mean") is None:
        return
    ci = st.get("ci")
    xerr = None if ci is None else [[max(st["mean"] - ci[0], 0)], [max(ci[1] - st["mean"], 0)]]
    ax.errorbar([st["mean"]], [y], xerr=xerr, fmt=marker, color=color, ms=6, capsize=3, lw=1.5, label=label)


def _xs(st: dict[str, Any]) -> list[float]:
    return list(st.get("values") or []) + list(st.get("ci") or []) + ([st["mean"]] if st.get("mean") is not None else [])


def _step_axis(ax, xs: list[float], label: str) -> None:
    """Log scale when the values span ≥ 10×, else linear; plain step numbers, padded limits."""
    xs = [x for x in xs if x is not None and x > 0]
    if not xs:
        ax.set_xlabel(label)
        return
    lo, hi = min(xs), max(xs)
    if hi / lo >= 10:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label + " (log scale)")
    else:
        pad = max(0.1 * (hi - lo), 0.05 * hi, 1.0)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
        ax.set_xlabel(label)


def _no_data(ax, text: str, keep_y: bool = False) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#666666",
            wrap=True, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
    ax.set_xticks([])
    if not keep_y:
        ax.set_yticks([])


def fig_comparison(regimes: dict[str, dict[str, Any]], out_dir: Path | None = None) -> ReportFigure:
    if not regimes:
        raise FigureSkipped("no regimes to compare")
    names = list(regimes)
    ylabels = [f"{plain(r)}\n(n={regimes[r]['n_runs']})" for r in names]

    ll_metrics = key_curves(regimes)
    h = max(3.2, 0.55 * len(names) + 1.6)
    h3 = max(3.2, 0.32 * len(ll_metrics) * max(1, len(names)) ** 0.5 + 1.6)
    fig = new_figure(16.0, max(h, h3) + 0.8)
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.15, 0.8, 1.25])

    # (a) jump midpoints
    curves = ("test_acc_last", "train_acc_all", "train_acc_recallable")
    any_a = False
    for j, c in enumerate(curves):
        label, color, _ = ACC_STYLE[c]
        label = "test acc: the recall jump" if c == "test_acc_last" else label
        for i, r in enumerate(names):
            st = regimes[r][f"midpoint_{c}"]
            any_a |= st["n"] > 0
            _pointrange(ax1, i + (j - 1) * 0.22, st, color, label if i == 0 else None)
    if any_a:
        _step_axis(ax1, [v for r in names for c in curves for v in _xs(regimes[r][f"midpoint_{c}"])],
                   "transition midpoint (training step)")
        # under the figure, not on panel (a): inside, even a "best" spot covers points
        fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower left", ncol=3, fontsize=7.5, frameon=False,
                   title="(a) curve", title_fontsize=7.5)
        ax1.set_yticks(range(len(names)), ylabels, fontsize=8)
    else:
        _no_data(ax1, "no accuracy transition detected in any run")
    ax1.set_ylim(len(names) - 0.5, -0.5)
    ax1.set_title("(a) transition midpoints\nmean ± 95% CI; dots: runs", fontsize=10)

    # (b) steps to 99% test accuracy
    any_b = False
    for i, r in enumerate(names):
        st = regimes[r]["steps_to_99"]
        any_b |= st["n"] > 0
        _pointrange(ax2, i, st, "#1f4e9c", None, marker="D")
        nr = st.get("not_reached", 0)
        if nr:
            ax2.annotate(f"not reached: {nr}/{regimes[r]['n_runs']} runs", (0.98, i + 0.3),
                         xycoords=("axes fraction", "data"), ha="right", va="center", fontsize=8, color="#d1495b")
    ax2.set_yticks(range(len(names)), [""] * len(names))  # the rows of (a): its labels serve both
    if any_b:
        _step_axis(ax2, [v for r in names for v in _xs(regimes[r]["steps_to_99"])],
                   "first step with test_acc_last ≥ 0.99")
    else:
        _no_data(ax2, "no run reached\n99% test accuracy", keep_y=True)
    ax2.set_ylim(len(names) - 0.5, -0.5)
    ax2.set_title("(b) steps to 99% test acc\nmean ± 95% CI (runs that reach it)", fontsize=10)

    # (c) lead / lag
    if ll_metrics:
        pal = sns.color_palette("tab10", n_colors=max(3, len(names)))
        k = len(names)
        for i, r in enumerate(names):
            for j, m in enumerate(ll_metrics):
                st = regimes[r]["lead_lag"].get(m, {}).get("log_steps")
                if st:
                    _pointrange(ax3, j + (i - (k - 1) / 2) * (0.7 / max(k, 1)), st, pal[i], plain(r) if j == 0 else None)
        ax3.axvline(0, color="black", lw=1, ls="--")
        ax3.set_yticks(range(len(ll_metrics)), [short_curve(m) for m in ll_metrics], fontsize=8)
        ax3.set_ylim(len(ll_metrics) - 0.5, -0.5)
        h_, l_ = ax3.get_legend_handles_labels()
        if h_:
            # beside the panel, not on it: with many groups a "best" spot still covers points
            ax3.legend(h_, l_, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                       title="regime", title_fontsize=7)
    else:
        _no_data(ax3, "no circuit-metric transitions\n(run `hyenalens analyze` on runs with captures)")
    ax3.xaxis.set_major_locator(ticker.MaxNLocator(nbins=6))  # readable tick labels at any range
    ax3.set_xlabel("metric midpoint − recall-jump midpoint (log-steps; < 0 leads)")
    ax3.set_title("(c) lead / lag vs the recall jump\nmean ± 95% CI; dots: runs", fontsize=10)
    fig.suptitle("Figure 7 — regimes compared")
    return finish(fig, out_dir, "fig7_comparison.png",
                  "Regimes side by side: (a) midpoints of the test_acc_last, train_acc_all and train_acc_recallable "
                  "transitions; (b) first step with test accuracy ≥ 0.99 (runs that never reach it are counted); "
                  "(c) each circuit metric's midpoint relative to the recall jump, in log-steps ln(step+1). "
                  "Error bars: 95% percentile bootstrap over runs (none when n = 1).")
