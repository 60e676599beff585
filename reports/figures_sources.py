"""Figure 8 — where the recall signal sits: each layer's output at the query split exactly into
one term per source stream position (interp/decompose.py; docs/metrics.md, "The exact signed
source decomposition"), scored on the answer's logit difference.

(a) `source_share` (target `direct`) by position group and layer across training, one panel per
    layer, with the path-patching follow rate `source_patch_follow` by group beneath;
(b) the final checkpoint's example (RUN_DIR/analysis/source_example.json): the signed per-source
    terms of one probe-set row, one row of bars per layer, the groups' footprints shaded.

Both read what `hyenalens probe` wrote (analysis/metrics.csv columns step, metric, layer, value,
target, role, …; interp/run_metrics.py); nothing is recomputed here. `fig_sources` returns the
matplotlib figures it drew (`ReportFigure`) and writes their PNGs only when given an `out_dir`
(reports/figures_common.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.patches import Patch

from models.rundir.layout import RunDir
from reports.figures_common import FigureSkipped, ReportFigure, finish, new_figure, plain, use_log_x
from reports.rundata import RunData

EXAMPLE_FILE = RunDir("").source_example.as_posix()  # "analysis/source_example.json", as messages name it
WRITER = "`hyenalens probe RUN_DIR` writes it"
WRITER_BOTH = "`hyenalens probe RUN_DIR` writes both"
# role: (label, color, linestyle). Solid: the position groups; dashed: the diagnostic groups.
ROLE_STYLE = {
    "match_pair": ("matching pair(s)", "#1f4e9c", "-"),
    "other_pair": ("other pairs", "#d1495b", "-"),
    "query": ("query position", "#2a9d8f", "-"),
    "bias": ("bias (no position)", "#555555", "-"),
    "rest": ("rest", "#aaaaaa", "-"),
    "match_key": ("matching key(s)", "#edae49", "--"),
    "match_value": ("matching value(s)", "#0096c7", "--"),
    "match_after": ("position after a matching value", "#9c6644", "--"),
}
# footprints shaded behind the example's bars, and the diagnostic roles' letters above them
FOOTPRINT = (("match_pair", 0.16), ("other_pair", 0.10), ("query", 0.22))
LETTERS = (("match_key", "K"), ("match_value", "V"), ("match_after", "A"))
BAR_COLORS = ("#264653", "#e76f51")  # positive, negative


def fig_sources(rd: RunData, out_dir: Path | None = None) -> list[ReportFigure]:
    """Figure 8 (a) and (b); each is drawn when its input exists, and the figure is skipped (with
    what is missing and which command writes it) when neither does."""
    circ = rd.circuit
    share = None if circ is None else circ[(circ["metric"] == "source_share") & (circ["target"] == "direct")]
    example = _read_example(RunDir(rd.path).source_example)
    have_share = share is not None and not share.empty
    if not have_share and example is None:
        what = ("analysis/metrics.csv is missing" if circ is None
                else "analysis/metrics.csv has no source_share rows (target direct)")
        raise FigureSkipped(f"{what} and {EXAMPLE_FILE} is missing; {WRITER_BOTH}")
    out = []
    if have_share:
        note = "" if example is not None else f" (b) is not drawn: {EXAMPLE_FILE} is missing; {WRITER}."
        out.append(_fig_shares(rd, circ, share, out_dir, note))
    if example is not None:
        note = "" if have_share else f" (a) is not drawn: analysis/metrics.csv has no source_share rows; {WRITER}."
        out.append(_fig_example(rd, example, out_dir, note))
    return out


# ------------------------------------------------------------------ (a) shares over training
def _by_step(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("step", as_index=False)["value"].mean().sort_values("step")


def _fig_shares(rd: RunData, circ: pd.DataFrame, share: pd.DataFrame, out_dir: Path | None,
                note: str) -> ReportFigure:
    patch = circ[circ["metric"] == "source_patch_follow"]
    total = circ[(circ["metric"] == "source_total") & (circ["target"] == "direct")]
    layers = sorted(int(l) for l in share["layer"].unique())
    has_patch = not patch.empty
    fig = new_figure(max(7.5, 4.6 * len(layers)), 3.9 + (2.1 if has_patch else 0.0) + 0.9)
    axes = fig.subplots(2 if has_patch else 1, len(layers), squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [3, 1.6]} if has_patch else None)
    steps = np.asarray(sorted(share["step"].unique()), dtype=float)
    v = share["value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)] if np.isfinite(v).any() else np.zeros(1)
    ylim = (max(-1.05, min(-0.1, v.min() - 0.05)), min(1.05, max(0.5, v.max() + 0.05)))  # shared by the layers
    jump = rd.jump()
    for c, l in enumerate(layers):
        ax = axes[0][c]
        for role, (label, color, ls) in ROLE_STYLE.items():
            g = _by_step(share[(share["layer"] == l) & (share["role"] == role)])
            if len(g):
                ax.plot(g["step"], g["value"], color=color, ls=ls, lw=1.7 if ls == "-" else 1.3,
                        marker="." if ls == "-" else None, ms=4, label=label)
        ax.axhline(0.0, color="#999999", lw=0.8)
        ax.set_ylim(*ylim)
        ax.set_ylabel("signed share of Σ|terms| (direct)" if c == 0 else "")
        tot = _by_step(total[total["layer"] == l])
        extra = f"\ndirect total at the last step: {tot['value'].iloc[-1]:+.2f} (logit difference)" if len(tot) else ""
        ax.set_title(f"layer {l}{extra}", fontsize=9)
        if has_patch:
            pax = axes[1][c]
            for role in ("match_key", "match_value", "match_after", "match_pair"):
                g = _by_step(patch[(patch["layer"] == l) & (patch["role"] == role)])
                if len(g):
                    label, color, ls = ROLE_STYLE[role]
                    pax.plot(g["step"], g["value"], color=color, ls=ls, lw=1.2, marker="o", ms=3.5,
                             label=f"patch follow: {label}")
            pax.set_ylim(-0.03, 1.03)
            pax.set_ylabel("path-patch follow" if c == 0 else "")
        for a in (axes[r][c] for r in range(len(axes))):
            _jump_lines(a, jump)
        axes[-1][c].set_xlabel("training step (symlog)")
    for a in axes.flat:
        use_log_x(a, steps)
        if steps.max() > steps.min():
            a.set_xlim(steps.min(), steps.max())
    legend: dict[str, Any] = {}
    for a in axes.flat:
        for h, lab in zip(*a.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=4, fontsize=7.5, frameon=False)
    fig.suptitle(f"Figure 8a — where the recall signal sits, {plain(rd.name, 50)} ({plain(rd.regime)})")
    patch_txt = (" Lower panels: `source_patch_follow`, path patching by group: the fraction of rows whose prediction "
                 "becomes the swap test's substitute when only that group's terms of the layer output at the query "
                 "are taken from the value-swapped run." if has_patch else "")
    return finish(fig, out_dir, f"fig8a_source_shares_{rd.slug}.png",
                  "Where each layer's output at the query reads the answer from, per layer, across training "
                  "(`source_share`, target direct): the signed sum of a position group's terms of the logit difference "
                  "(answer − mean candidate, through the frozen final LayerNorm and the unembedding) over Σ|terms|. "
                  "Solid: the partition (matching pairs' footprints, other pairs' footprints, query, bias, rest); "
                  "dashed: the diagnostic groups (matching keys, matching values, the position after a matching "
                  "value), which overlap it. "
                  f"Purple lines: the recall jump (midpoint dashed, onset / end dotted).{patch_txt}{note}")


def _jump_lines(ax, jump: dict[str, float] | None) -> None:
    for k, ls in (("onset", ":"), ("midpoint", "--"), ("end", ":")):
        if jump and k in jump:
            ax.axvline(jump[k], color="#7a1f5c", lw=1.2, ls=ls, zorder=1,
                       label="recall jump: midpoint (dashed), onset / end (dotted)" if k == "midpoint" else None)


# ------------------------------------------------------------------ (b) the example
def _read_example(f: Path) -> dict[str, Any] | None:
    """The example JSON, checked; None when the file is absent. A malformed file raises
    ValueError naming the problem (the page shows it as a figure that could not be drawn)."""
    if not f.is_file():
        return None
    try:
        ex = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{EXAMPLE_FILE} cannot be read ({type(e).__name__}); rerun `hyenalens probe`") from None
    tokens = ex.get("tokens") if isinstance(ex, dict) else None
    layers = ex.get("layers") if isinstance(ex, dict) else None
    if not isinstance(tokens, list) or not isinstance(layers, list) or not layers:
        raise ValueError(f"{EXAMPLE_FILE} lacks `tokens` or `layers`; rerun `hyenalens probe`")
    for lay in layers:
        terms = lay.get("terms") if isinstance(lay, dict) else None
        if not isinstance(terms, list) or len(terms) != len(tokens):
            raise ValueError(f"{EXAMPLE_FILE}: layer {lay.get('layer') if isinstance(lay, dict) else '?'} has "
                             f"{len(terms) if isinstance(terms, list) else 'no'} terms for {len(tokens)} tokens")
    st = ex.get("str_tokens")
    if st is not None and (not isinstance(st, list) or len(st) != len(tokens)):
        ex["str_tokens"] = None  # unusable labels: fall back to token ids
    return ex


def _fig_example(rd: RunData, ex: dict[str, Any], out_dir: Path | None, note: str) -> ReportFigure:
    tokens = [int(t) for t in ex["tokens"]]
    L = len(tokens)
    names = ex.get("str_tokens")
    labels = [str(t) for t in names] if names else [str(t) for t in tokens]
    layers = sorted(ex["layers"], key=lambda d: int(d.get("layer", 0)))
    fig = new_figure(max(8.0, 0.26 * L + 2.5), 2.3 * len(layers) + 1.6)
    axes = fig.subplots(len(layers), 1, squeeze=False, sharex=True)[:, 0]
    x = np.arange(L)
    for ax, lay in zip(axes, layers):
        terms = np.asarray([float("nan") if v is None else v for v in lay["terms"]], dtype=float)
        roles = lay.get("roles") or {}
        for role, alpha in FOOTPRINT:
            for p in roles.get(role) or []:
                ax.axvspan(int(p) - 0.5, int(p) + 0.5, color=ROLE_STYLE[role][1], alpha=alpha, lw=0, zorder=0)
        ax.bar(x, terms, width=0.75, color=np.where(terms >= 0, BAR_COLORS[0], BAR_COLORS[1]), zorder=2)
        ax.axhline(0.0, color="#555555", lw=0.8, zorder=1)
        top = transforms.blended_transform_factory(ax.transData, ax.transAxes)
        for role, letter in LETTERS:
            for p in roles.get(role) or []:
                ax.text(int(p), 1.01, letter, transform=top, ha="center", va="bottom", fontsize=7,
                        color=ROLE_STYLE[role][1], fontweight="bold", clip_on=False)
        lim = np.nanmax(np.abs(terms)) if np.isfinite(terms).any() else 1.0
        ax.set_ylim(-1.15 * lim - 1e-9, 1.15 * lim + 1e-9)
        ax.set_xlim(-0.6, L - 0.4)
        ax.set_ylabel("term (logit diff.)", fontsize=8)
        bias, total = _fmt(lay.get("bias")), _fmt(lay.get("total"))
        ax.set_title(f"layer {lay.get('layer', '?')} ({plain(lay.get('hook', ''))}, {lay.get('target', 'direct')}): "
                     f"Σ terms {np.nansum(terms):+.2f}, bias {bias}, total {total} logits", fontsize=8.5, pad=12)
    long = max(len(t) for t in labels) > 2 and L > 12
    axes[-1].set_xticks(x, labels, rotation=90 if long or L > 40 else 0, fontsize=7)
    axes[-1].set_xlabel("source stream position (its token)" if names else "source stream position (its token id)")
    handles = [Patch(color=ROLE_STYLE[r][1], alpha=a + 0.1, label=f"footprint: {ROLE_STYLE[r][0]}")
               for r, a in FOOTPRINT]
    handles += [Patch(color=BAR_COLORS[0], label="term > 0"), Patch(color=BAR_COLORS[1], label="term < 0")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=7.5, frameon=False)
    answer = ex.get("answer")
    ans = labels[tokens.index(int(answer))] if names and answer is not None and int(answer) in tokens else answer
    fig.suptitle(f"Figure 8b — the answer's logit difference by source position, {plain(rd.name, 40)}\n"
                 f"step {ex.get('step', '?')}, probe-set row {ex.get('row', '?')} (answer {plain(ans)})", fontsize=10)
    return finish(fig, out_dir, f"fig8b_source_example_{rd.slug}.png",
                  f"The signed terms of each layer's output at the query (position {ex.get('qpos', '?')}), one per "
                  "source stream position, scored directly on the answer's logit difference, for one probe-set row "
                  f"at the final checkpoint ({EXAMPLE_FILE}); one row of bars per layer. Shading: the footprints of "
                  "the matching pair(s) (blue) and of the other pairs (red), the query (teal); letters above: "
                  "K matching key, V matching value, A the position after a matching value. The title gives the "
                  f"sum of the terms, the bias and the total.{note}")


def _fmt(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "?"
    return f"{f:+.2f}" if math.isfinite(f) else "?"
