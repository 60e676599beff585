"""Figures over training time: 1 training curves, 2 circuit-metric timelines aligned to the
jump (with the position-swap test's panels), 5 attribution shares by role. They read
metrics.jsonl, analysis/metrics.csv and the transitions of a `RunData`; nothing is recomputed
here. Each figure function returns its matplotlib figure (`ReportFigure`) and writes the PNG
only when given an `out_dir` (reports/figures_common.py)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import transforms
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from reports.figures_common import (ACC_STYLE, CEILING_COLOR, JUMP_COLOR, FigureSkipped, ReportFigure, finish,
                                    legend_below, legend_entries, new_figure, plain, shade_transitions, use_log_x)
from reports.rundata import RunData, slugify

# circuit metrics drawn in figure 2, in panel order; probes also draw their permutation control
TIMELINE_METRICS = (
    ("prev_token_score", "prev-token score", "map mass at (i, i−1)"),
    ("recall_score_values", "recall score (matching values)", "query-row mass"),
    ("recall_score_keys", "recall score (matching keys)", "query-row mass"),
    ("filter_lag1_mass", "filter lag-1 mass", "share of |h| at lag ±1"),
    ("filter_effective_length", "filter effective length", "lags holding 90% of |h|"),
    ("probe_prev_token", "probe: previous token @ values", "probe accuracy"),
    ("probe_next_token", "probe: next token @ keys", "probe accuracy"),
    ("probe_answer", "probe: answer @ query", "probe accuracy"),
    ("answer_acc", "model's answer accuracy (probe set)", "accuracy"),
)
# the position-swap test (interp/swap.py), drawn in two dedicated panels after TIMELINE_METRICS:
# panel key: (title, unit, lines); a line: (metric, label, color, linestyle). Red: the value swap
# (follow rate, logit drop); gold: the key swap; dotted: a control. None of these colors is a
# layer's (viridis) or the jump's (purple), so one legend under the figure serves every panel.
SWAP_PANELS = {
    "recall_swap": ("position swap: does the answer follow?", "fraction of instances", (
        ("recall_swap_follow", "follow (swap at matching values)", "#c0392b", "-"),
        ("recall_swap_control", "control (swap at other positions)", "#c0392b", ":"),
        ("recall_swap_selectivity", "selectivity = follow − control", "#e67e22", "-"))),
    "recall_swap_drops": ("position swap: answer-logit drop", "logit drop (clean − swapped)", (
        ("recall_swap_drop", "value swap", "#c0392b", "-"),
        ("recall_swap_key_drop", "key swap", "#a67c00", "-"),
        ("recall_swap_key_control_drop", "key-swap control", "#a67c00", ":"))),
}
# rows with their own panels or figure (swap panels here; source_* in figure 8, attr_* in 5,
# patch_* in 6) never get a generic panel
_SKIP_PREFIX = ("attr_", "patch_", "recall_swap_", "source_")
_SKIP_SUFFIX = ("_control", "_selectivity", "_delta", "_delta_rel")


# ------------------------------------------------------------------ figure 1
BASELINE_COLOR = "#000000"
LANE_NAMES = {"test_acc_last": "test (last)", "train_acc_all": "train (all)",
              "train_acc_recallable": "train (recallable)", "train_acc_last": "train (last)"}


def fig_training_curves(runs: list[RunData], regime: str, slug: str | None = None,
                        out_dir: Path | None = None) -> ReportFigure:
    """One panel per run of a regime: the accuracy curves, the recall jump (onset→end shaded,
    midpoint dashed) and the Bayes ceiling of train_acc_all (dashed grey); under it, a lane per
    curve with that curve's transitions as bars (onset→end, ◆ midpoint), so that no two curves'
    bands are drawn over each other. `slug` names the file (default: the regime's slug); it is
    written to `out_dir` only when one is given."""
    slug = slugify(regime) if slug is None else slug
    n = len(runs)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(max(8.0, 4.1 * cols), 4.2 * rows + 0.9)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3.4, 1.0] * rows)
    first = None
    for i, rd in enumerate(runs):
        ax = fig.add_subplot(grid[2 * (i // cols), i % cols], sharey=first)
        lane = fig.add_subplot(grid[2 * (i // cols) + 1, i % cols], sharex=ax)
        first = first or ax
        m = rd.metrics
        use_log_x(ax, m["step"])
        curves = [c for c in ACC_STYLE if c in m.columns and m[c].notna().any()]
        for curve in curves:
            label, color, ls = ACC_STYLE[curve]
            ax.plot(m["step"], m[curve], color=color, ls=ls, lw=1.6, label=label, marker=".", ms=3)
        if "train_acc_all_ceiling" in m.columns and m["train_acc_all_ceiling"].notna().any():
            ax.plot(m["step"], m["train_acc_all_ceiling"], color=CEILING_COLOR, ls="--", lw=1.2,
                    label="train acc (all) Bayes ceiling")
        base = _baseline(rd)
        if base is not None:
            ax.axhline(base, color=BASELINE_COLOR, ls=":", lw=1.3, label="no-recall baseline (test)")
        jump = rd.jump()
        if jump:
            shade_transitions(ax, [dict(jump, onset=jump.get("onset", jump["midpoint"]),
                                        end=jump.get("end", jump["midpoint"]))], JUMP_COLOR,
                              label="the recall jump (onset→end; dashed: midpoint)", alpha=0.12, zorder=0)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("accuracy (fraction correct)" if i % cols == 0 else "")
        ax.tick_params(labelbottom=False, labelleft=i % cols == 0)
        seed = "?" if rd.seed is None else rd.seed
        none = "" if jump else "\nno recall jump" if rd.transitions.get("test_acc_last") else "\nno test-acc transition"
        ax.set_title(f"seed {seed}: {plain(rd.name, 38)}{none}", fontsize=9)
        _transition_lanes(lane, rd, curves, show_names=i % cols == 0)
    legend_below(fig, *legend_entries(fig.axes), ncol=3)
    fig.suptitle(f"Figure 1 — training curves, {plain(regime)}")
    return finish(fig, out_dir, f"fig1_training_curves_{slug}.png",
                  f"Training curves of every {regime} run, with the recall jump shaded (purple, onset to end; "
                  f"dashed: its midpoint), the Bayes ceiling of train_acc_all (grey dashed) and the no-recall "
                  f"baseline of test_acc_last (black dotted, when known). Under each panel, one "
                  f"lane per curve: each of that curve's transitions as a bar from onset to end in the curve's color "
                  f"(◆: midpoint), so that the curves' transitions never overlap. "
                  f"Transitions: {'; '.join(sorted({r.transitions_source for r in runs}))}.")


def _baseline(rd: RunData) -> float | None:
    """The run's no-recall baseline on the test split (RunData.no_recall_baseline), if known."""
    b = getattr(rd, "no_recall_baseline", None)
    v = b.get("value") if isinstance(b, dict) else None
    return float(v) if _finite_num(v) else None


def _transition_lanes(lane, rd: RunData, curves: list[str], show_names: bool) -> None:
    """A lane per curve under a figure-1 panel: bars onset→end and ◆ at the midpoint."""
    for y, curve in enumerate(curves):
        color = ACC_STYLE[curve][1]
        for t in rd.transitions.get(curve) or []:
            if not all(_finite_num(t.get(k)) for k in ("onset", "midpoint", "end")):
                continue
            lane.broken_barh([(float(t["onset"]), max(float(t["end"]) - float(t["onset"]), 0.0))], (y - 0.3, 0.6),
                             facecolors=color, alpha=0.45, lw=0)
            lane.plot([float(t["midpoint"])], [y], marker="D", ms=5, color=color, ls="none")
    lane.set_ylim(len(curves) - 0.5, -0.5)
    lane.set_yticks(range(len(curves)), [LANE_NAMES.get(c, c) for c in curves] if show_names else [], fontsize=7)
    lane.grid(axis="y", visible=False)
    lane.set_xlabel("training step (symlog)")
    if show_names:
        lane.set_ylabel("transitions", fontsize=8)


# ------------------------------------------------------------------ figure 2
def _timeline_metrics(circ: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(panel key, title, unit) of every figure-2 panel: the known metrics present, the swap
    panels (keys of SWAP_PANELS) when any of their rows is present, then other metrics."""
    present = set(circ["metric"].unique())
    out = [m for m in TIMELINE_METRICS if m[0] in present]
    out += [(k, title, unit) for k, (title, unit, lines) in SWAP_PANELS.items()
            if any(line[0] in present for line in lines)]
    known = {m[0] for m in TIMELINE_METRICS}
    for m in sorted(present - known):
        if not m.startswith(_SKIP_PREFIX) and not m.endswith(_SKIP_SUFFIX):
            out.append((m, m.replace("_", " "), "value"))
    return out


def _series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Lines of one metric: per layer, and per hook / direction / order when a layer has
    several (e.g. the forward and backward filters of a non-causal layer)."""
    extra = [c for c in ("hook", "target", "direction", "order") if c in df.columns
             and df.groupby("layer")[c].nunique(dropna=True).max() > 1]
    out = []
    for keys, g in df.groupby(["layer", *extra], sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        lab = "all layers" if int(keys[0]) < 0 else f"layer {int(keys[0])}"
        for c, k in zip(extra, keys[1:]):
            k = str(k).split(".")[-1].replace("hook_", "")
            lab += f" {'o' if c == 'order' else ''}{k}"
        cols = ["value"] + (["floor"] if "floor" in g.columns else [])
        out.append((lab, g.groupby("step", as_index=False)[cols].mean().sort_values("step")))
    return out


ALL_LAYERS_COLOR = "#222222"
TEST_ACC_COLOR = "#888888"


def _layer_colors(series: dict[str, list[tuple[str, pd.DataFrame]]]) -> dict[str, Any]:
    """One color per line label over the whole figure (so one legend serves every panel): the
    per-layer lines in viridis order, "all layers" near-black."""
    labels = list(dict.fromkeys(lab for ss in series.values() for lab, _ in ss))
    per_layer = sorted((lab for lab in labels if _layer_of(lab) >= 0), key=lambda lab: (_layer_of(lab), lab))
    colors = dict(zip(per_layer, sns.color_palette("viridis", n_colors=max(2, len(per_layer)) + 1)))
    return {lab: colors.get(lab, ALL_LAYERS_COLOR) for lab in labels}


def fig_circuit_timelines(rd: RunData, out_dir: Path | None = None) -> ReportFigure:
    circ = rd.circuit
    if circ is None or circ.empty:
        raise FigureSkipped("analysis/metrics.csv is missing or empty")
    metrics = _timeline_metrics(circ)
    if not metrics:
        raise FigureSkipped("analysis/metrics.csv has no circuit-metric rows (only attribution/patching/sources)")
    jump = rd.jump()
    # aligned to the jump in log-steps (the unit of analysis' lead/lag): early training is not
    # squeezed against the jump as it is on a linear step axis
    lm = math.log1p(jump["midpoint"]) if jump else 0.0

    def xf(steps):
        steps = np.asarray(steps, dtype=float)
        return np.log1p(np.maximum(steps, 0.0)) - lm if jump else steps

    series = {m: _series(circ[circ["metric"] == m]) for m, _, _ in metrics if m not in SWAP_PANELS}
    colors = _layer_colors(series)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = new_figure(4.1 * cols, 3.1 * rows + 1.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    acc = rd.metrics[["step", "test_acc_last"]].dropna() if "test_acc_last" in rd.metrics else None
    for i, (metric, title, unit) in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        if metric in SWAP_PANELS:
            df = _draw_swap(ax, circ, SWAP_PANELS[metric][2], xf, rd.transitions)
        else:
            df = circ[circ["metric"] == metric]
            _draw_metric(ax, circ, metric, series[metric], colors, xf, rd.transitions)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.12 * (hi - lo))  # headroom: the ▼ row at the top never sits on a line
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(title, fontsize=9.5)
        ax.tick_params(labelsize=7.5)
        if acc is not None and len(acc):
            ax2 = ax.twinx()
            ax2.plot(xf(acc["step"]), acc["test_acc_last"], color=TEST_ACC_COLOR, lw=1.2, alpha=0.7)
            ax2.set_ylim(-0.03, 1.03 + 0.12 * 1.06)
            ax2.set_yticks([0, 0.5, 1])
            ax2.tick_params(axis="y", colors=TEST_ACC_COLOR, labelsize=7)
            ax2.grid(False)
        if jump:
            on, mid, end = (xf([jump.get(k, jump["midpoint"])])[0] for k in ("onset", "midpoint", "end"))
            ax.axvspan(on, end, color=JUMP_COLOR, alpha=0.12, lw=0)
            ax.axvline(mid, color=JUMP_COLOR, lw=1.2, ls="--")
            ax.set_xlabel("ln(1+step) − ln(1+recall-jump midpoint)", fontsize=8)
        else:
            use_log_x(ax, df["step"])
            ax.set_xlabel("training step (symlog)", fontsize=8)
    for j in range(len(metrics), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles, labels = legend_entries(fig.axes)
    style = [(Line2D([], [], color="#444444", ls=":", lw=1.2), "dotted: the control (probe: label permutation)"),
             (Line2D([], [], color="#444444", ls="-.", lw=1.0), "dash-dot: the metric at random init (floor)"),
             (Line2D([], [], color="#444444", marker="v", ls="none", ms=7), "the metric's transition midpoint"),
             (Line2D([], [], color=TEST_ACC_COLOR, lw=1.2), "test accuracy (right axis, 0–1)")]
    if jump:
        style.append((Patch(color=JUMP_COLOR, alpha=0.25), "the recall jump (onset→end; dashed: midpoint)"))
    legend_below(fig, handles + [h for h, _ in style], labels + [lab for _, lab in style], ncol=3, fontsize=7.5)
    where = (f"aligned to the recall jump (of test_acc_last) in log-steps (x = 0 at its midpoint, "
             f"step {jump['midpoint']:.0f}; "
             f"x = −1 is the step where 1+step is e times smaller; purple band: onset→end)"
             if jump else "no recall jump: absolute steps")
    swap = ""
    if any(m[0] in SWAP_PANELS for m in metrics):
        swap = (" Position-swap panels (interp/swap.py, all layers): follow = share of instances whose prediction "
                "becomes the substitute token written at the matching value positions, control = the same token "
                "written at as many non-matching positions (dotted), selectivity = follow − control (bands: 95% CI); "
                "drops: clean − swapped answer logit for the value swap and, on AR, the key swap (matching keys "
                "overwritten by an absent key) with its control (dotted).")
    fig.suptitle(f"Figure 2 — circuit metrics over training, {plain(rd.name, 50)} ({plain(rd.regime)})")
    return finish(fig, out_dir, f"fig2_circuit_timelines_{rd.slug}.png",
                  f"Circuit metrics per layer over training, {where}. Grey: test accuracy (right axis); dotted on "
                  f"the probe panels: the probe's label-permutation control (the same probe fit on shuffled training "
                  f"labels: chance level); dash-dot: the metric on the random-initialized model (floor); ▼: the "
                  f"metric's own transition midpoint (formation.json). One legend under the panels serves them all: "
                  f"a line's color is its layer in every panel.{swap}")


def _mark_transitions(ax, xf, trs: list[dict], color, label: str | None) -> bool:
    """▼ at the top of the panel at each transition midpoint; True when one was drawn."""
    blend = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for t in trs:
        ax.plot(xf([t["midpoint"]]), [0.97], marker="v", ms=8, color=color, ls="none", clip_on=False,
                transform=blend, label=label)
        label = None
    return bool(trs)


def _draw_metric(ax, circ: pd.DataFrame, metric: str, series: list[tuple[str, pd.DataFrame]],
                 colors: dict[str, Any], xf, transitions: dict) -> None:
    """One circuit metric: a line per layer (and hook / target …), its floor (dash-dot) and,
    for probes, the permutation control (dotted); colors from the figure's `colors`."""
    for lab, g in series:
        c = colors[lab]
        ax.plot(xf(g["step"]), g["value"], color=c, lw=1.6, marker=".", ms=4, label=lab)
        if "floor" in g.columns and g["floor"].notna().any():
            ax.axhline(float(g["floor"].mean()), color=c, ls="-.", lw=0.9, alpha=0.7)
        _mark_transitions(ax, xf, metric_transitions(transitions, metric, _layer_of(lab)), c, None)
        ctl = circ[(circ["metric"] == metric + "_control") & (circ["layer"] == _layer_of(lab))]
        if len(ctl):
            cg = ctl.groupby("step", as_index=False)["value"].mean().sort_values("step")
            ax.plot(xf(cg["step"]), cg["value"], color=c, lw=1.0, ls=":")


def _draw_swap(ax, circ: pd.DataFrame, lines, xf, transitions: dict) -> pd.DataFrame:
    """A swap panel: one line per metric (mean over rows of a step), its 95% CI band, its floor
    (dash-dot) and ▼ at its transitions; returns the rows drawn (for the step axis)."""
    drawn = []
    for metric, label, color, ls in lines:
        df = circ[circ["metric"] == metric]
        cols = [c for c in ("value", "ci", "floor") if c in df.columns]
        g = df.groupby("step", as_index=False)[cols].mean().sort_values("step")
        g = g[np.isfinite(g["value"].to_numpy(dtype=float))]
        if g.empty:
            continue
        drawn.append(df)
        x = xf(g["step"])
        ax.plot(x, g["value"], color=color, ls=ls, lw=1.6, marker=".", ms=4, label=label)
        if "ci" in g.columns and g["ci"].notna().any():
            ax.fill_between(x, g["value"] - g["ci"], g["value"] + g["ci"], color=color, alpha=0.12, lw=0)
        if "floor" in g.columns and g["floor"].notna().any():
            ax.axhline(float(g["floor"].mean()), color=color, ls="-.", lw=0.9, alpha=0.7)
        if not metric.endswith("_control"):
            _mark_transitions(ax, xf, metric_transitions(transitions, metric, -1), color, None)
    ax.axhline(0.0, color="#999999", lw=0.8)
    return pd.concat(drawn) if drawn else circ.iloc[:0]


def metric_transitions(transitions: dict, metric: str, layer: int) -> list[dict]:
    """formation.json transitions of `metric` at `layer`. Curve names follow analysis.formation
    (`{metric}[_{target}][@L{layer}][/{hook}][:{role}][[control…]]`, e.g. `prev_token_score@L1`);
    `metric/layer1`-style names are accepted too. Control-task curves and longer metric names
    (probe_answer_selectivity for probe_answer) are not matched."""
    out = []
    for key, trs in transitions.items():
        if not key.startswith(metric) or "[control" in key:
            continue
        rest = key[len(metric):]
        m = re.match(r"^(?:_(?P<target>[^@/:\[]*))?(?:@L(?P<layer>-?\d+))?", rest)
        target = m.group("target") or ""
        if target.startswith(("control", "selectivity", "delta")):
            continue
        if m.group("layer") is not None:
            ok = int(m.group("layer")) == layer
        elif rest == "":
            ok = True
        elif rest[0] in "/@.:[ (|":
            n = re.search(r"-?\d+", rest)
            ok = n is not None and int(n.group(0)) == layer
        else:
            ok = target != "" and m.end() == len(rest)  # metric_target with no layer
        if ok:
            out += [t for t in trs or [] if isinstance(t, dict) and _finite_num(t.get("midpoint"))]
    return out


def _finite_num(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _layer_of(label: str) -> int:
    parts = label.split()
    return int(parts[1]) if len(parts) > 1 and parts[0] == "layer" and parts[1].lstrip("-").isdigit() else -1


# ------------------------------------------------------------------ figure 5
SHARES = (("attr_share_keys", "matching keys", "#d1495b"), ("attr_share_values", "matching values", "#1f4e9c"),
          ("attr_share_rest", "rest", "#dddddd"))


def fig_attribution(rd: RunData, out_dir: Path | None = None) -> ReportFigure:
    circ = rd.circuit
    if circ is None:
        raise FigureSkipped("analysis/metrics.csv is missing")
    have = [s for s in SHARES if (circ["metric"] == s[0]).any()]
    if not have:
        raise FigureSkipped("analysis/metrics.csv has no attr_share_* rows (attribution was not run)")
    wide = (circ[circ["metric"].isin([s[0] for s in SHARES] + ["attr_share_query", "attr_delta_rel"])]
            .groupby(["step", "metric"])["value"].mean().unstack("metric").sort_values("step"))
    fig = new_figure(8.5, 5.0)
    ax = fig.subplots()
    steps = wide.index.to_numpy()
    ys = [wide[s[0]].fillna(0).clip(lower=0).to_numpy() for s in have]
    ax.stackplot(steps, *ys, labels=[s[1] for s in have], colors=[s[2] for s in have], alpha=0.85)
    if "attr_share_query" in wide:
        ax.plot(steps, wide["attr_share_query"], color="black", ls=":", lw=1.8, label="query position (part of rest)")
    jump = rd.jump()
    if jump:
        for k, ls in (("onset", ":"), ("midpoint", "--"), ("end", ":")):
            if k in jump:
                ax.axvline(jump[k], color="#7a1f5c", lw=1.4, ls=ls, zorder=3,
                           label="recall jump: midpoint (dashed), onset / end (dotted)" if k == "midpoint" else None)
    use_log_x(ax, steps)
    ax.set_xlim(steps.min(), steps.max())
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step (symlog)")
    ax.set_ylabel("share of |attribution| (fraction)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Figure 5 — attribution of the answer logit by token role\n{plain(rd.name, 60)} ({plain(rd.regime)})",
                 fontsize=10)
    delta = ""
    if "attr_delta_rel" in wide and wide["attr_delta_rel"].notna().any():
        delta = f" Integrated-gradients completeness delta (relative): median {wide['attr_delta_rel'].median():.3f}."
    return finish(fig, out_dir, f"fig5_attribution_{rd.slug}.png",
                  "Share of |integrated-gradients attribution| on the token embeddings for the answer logit at "
                  "the query, by role (stacked), across training; purple lines: the recall jump." + delta)
