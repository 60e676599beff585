"""Figures of the mechanism at chosen checkpoints: 3 filter heatmaps (+ the lag profile across
training), 4 implicit-attention maps of one annotated example, 6 patching recovery.

Everything is read, nothing recomputed, and no checkpoint is loaded (so no torch): filters and
maps come from the captures (`capture/step_*.safetensors`: hooks `blocks.{l}.mixer.
hook_filter[_rev]`, and the example's maps interp/capture.py `example_maps` stores: token level,
channel mean |H|, rows normalized; the real pattern's head mean for attention). Patching reads
`patch_recovery` rows of analysis/metrics.csv.

Each figure function returns its matplotlib figure(s) (`ReportFigure`) and writes the PNG only
when given an `out_dir` (reports/figures_common.py).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib.colors as mcolors
import numpy as np
import seaborn as sns
from matplotlib import transforms
from matplotlib.patches import Rectangle

from models.rundir.layout import CAPTURE_MAP_PREFIX, RunDir, capture_map_key
from reports.figures_common import (FigureSkipped, ReportFigure, finish, log_norm, new_figure, pick_steps, plain,
                                    short_hook)
from reports.rundata import RunData

_FILTER_RE = re.compile(r"^blocks\.(\d+)\.mixer\.hook_filter(_rev)?$")
MAX_PROFILE_STEPS = 40
MAX_ROWS = 6
ROLE_ORDER = ("query", "match_key", "match_value", "other", "all", "none")


# ------------------------------------------------------------------ filters
def _capture_filters(rd: RunData, step: int) -> dict[int, list[np.ndarray | None]]:
    """{layer: [forward [N−1, d, L], backward or None]} from one capture file."""
    arrays, _ = RunDir(rd.path).read_capture(step, keep=lambda k: _FILTER_RE.match(k) is not None)
    out: dict[int, list] = {}
    for k, v in arrays.items():
        m = _FILTER_RE.match(k)
        out.setdefault(int(m.group(1)), [None, None])[1 if m.group(2) else 0] = v.astype(np.float32)
    return out


def _filters_source(rd: RunData) -> tuple[list[int], Any, str]:
    if rd.kind == "attention":
        raise FigureSkipped("attention runs have no long convolution filters")
    if rd.captured:
        return rd.captured, lambda s: _capture_filters(rd, s), "captures"
    raise FigureSkipped("the run has no captures to read filters from; run `hyenalens capture`")


def _matrix(ax, data: np.ndarray, norm, cmap: str, extent: tuple) -> None:
    """A dense heatmap (imshow: one image per panel, far cheaper to draw than a cell mesh) in a
    seaborn colormap, cells centered on integer coordinates."""
    ax.imshow(data, norm=norm, cmap=sns.color_palette(cmap, as_cmap=True), aspect="auto",
              interpolation="nearest", extent=extent)
    ax.grid(False)


def two_sided(fwd: np.ndarray, bwd: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(|h| [..., d, lags], lag values): backward lags −(L−1)…−1 then forward 0…L−1."""
    L = fwd.shape[-1]
    if bwd is None:
        return np.abs(fwd), np.arange(L)
    return np.abs(np.concatenate([bwd[..., :0:-1], fwd], axis=-1)), np.arange(-(L - 1), L)


def fig_filters(rd: RunData, out_dir: Path | None = None) -> list[ReportFigure]:
    steps, read, source = _filters_source(rd)
    picks = pick_steps(steps, rd.jump())
    data = {s: read(s) for s, _ in picks}
    layers = sorted(data[picks[0][0]])
    if not layers:
        raise FigureSkipped(f"no blocks.*.mixer.hook_filter found in the {source}")
    order_m1 = data[picks[0][0]][layers[0]][0].shape[0]
    rows = [(l, o) for l in layers for o in range(order_m1)][:MAX_ROWS]
    mats = {(s, l, o): two_sided(data[s][l][0][o], None if data[s][l][1] is None else data[s][l][1][o])
            for s, _ in picks for l, o in rows}
    norm = log_norm(np.concatenate([m[0].ravel() for m in mats.values()]))
    fig = new_figure(3.3 * len(picks) + 1.2, 2.9 * len(rows) + 0.8)
    axes = fig.subplots(len(rows), len(picks), squeeze=False, sharex=True, sharey=True)
    for r, (l, o) in enumerate(rows):
        for c, (s, label) in enumerate(picks):
            ax = axes[r][c]
            absh, lags = mats[(s, l, o)]
            _matrix(ax, absh, norm, "magma", (lags[0] - 0.5, lags[-1] + 0.5, absh.shape[0] - 0.5, -0.5))
            if lags[0] < 0:
                ax.axvline(0, color="cyan", lw=0.8, ls=":")
            ax.set_title(f"{label}: step {s}" + (f"\nlayer {l}" + (f", h^{o}" if order_m1 > 1 else "")), fontsize=9)
            ax.set_xlabel("lag" if r == len(rows) - 1 else "")
            ax.set_ylabel("channel" if c == 0 else "")
            ax.tick_params(labelsize=7)
            ax.label_outer()
    cb = fig.colorbar(axes[0][0].images[0], ax=axes, shrink=0.8, pad=0.01)
    cb.set_label("|h[channel, lag]| (log scale)")
    fig.suptitle(f"Figure 3a — long-filter magnitudes at key checkpoints, {plain(rd.name, 50)} ({plain(rd.regime)})")
    first = finish(fig, out_dir, f"fig3_filters_{rd.slug}.png",
                   f"|h| per channel and lag (log color scale) at init / jump onset / midpoint / end / final "
                   f"(nearest stored checkpoint; markers that fall on one checkpoint share its panel, e.g. "
                   f"\"jump (onset to end)\"), per layer; from the {source}."
                   + (" Negative lags: the backward (non-causal) filter; dotted line: lag 0." if not rd.causal else ""))
    return [first, _fig_lag_profile(rd, steps, read, layers, source, out_dir)]


def _fig_lag_profile(rd: RunData, steps: list[int], read, layers: list[int], source: str,
                     out_dir: Path | None) -> ReportFigure:
    idx = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_PROFILE_STEPS)).round().astype(int))
    sel = [steps[i] for i in idx]
    prof: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    lags = None
    for s in sel:
        d = read(s)
        for l in layers:
            absh, lags = two_sided(d[l][0], d[l][1])
            p = absh.mean(axis=(0, 1))  # over order entries and channels
            prof[l].append(p / p.sum() if p.sum() > 0 else p)
    norm = log_norm(np.concatenate([np.stack(v).ravel() for v in prof.values()]))
    fig = new_figure(5.0 * len(layers) + 1.2, max(3.4, 0.13 * len(sel) + 2.4))
    axes = fig.subplots(1, len(layers), squeeze=False, sharey=True)[0]
    for ax, l in zip(axes, layers):
        _matrix(ax, np.stack(prof[l]), norm, "viridis", (lags[0] - 0.5, lags[-1] + 0.5, len(sel) - 0.5, -0.5))
        yt = np.unique(np.linspace(0, len(sel) - 1, min(len(sel), 10)).round().astype(int))
        ax.set_yticks(yt, [str(sel[i]) for i in yt])
        ax.set_title(f"layer {l}", fontsize=10)
        ax.set_xlabel("lag")
        ax.set_ylabel("training step" if l == layers[0] else "")
        ax.tick_params(labelsize=7)
        jump = rd.jump()
        if jump:
            y = int(np.argmin(np.abs(np.log1p(sel) - math.log1p(jump["midpoint"]))))
            ax.axhline(y, color="white", lw=1.0, ls="--")
    cb = fig.colorbar(axes[0].images[0], ax=list(axes), shrink=0.9, pad=0.01)
    cb.set_label("share of Σ|h| at the lag (log)")
    fig.suptitle(f"Figure 3b — lag profile across training, {plain(rd.name, 50)} ({plain(rd.regime)})")
    return finish(fig, out_dir, f"fig3_lag_profile_{rd.slug}.png",
                  f"Lag profile mean_c |h_c[lag]| normalized to sum 1, per stored step (rows; white dashed: the "
                  f"step nearest the recall-jump midpoint), per layer; from the {source}.")


# ------------------------------------------------------------------ implicit attention
def _stored_maps(rd: RunData, step: int) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """({layer: |map| [L, L]}, the maps' metadata: row, roles, layers) of one capture file."""
    arrays, meta = RunDir(rd.path).read_capture(step, keep=lambda k: k.startswith(CAPTURE_MAP_PREFIX))
    info = meta["maps"]
    return {l: np.abs(arrays[capture_map_key(l)].astype(np.float64)) for l in range(int(info["layers"]))}, info


def _annotate(ax, roles: dict[str, np.ndarray], L: int, x_labels: bool = True, y_labels: bool = True) -> None:
    """Labeled ticks at the matching key/value and query positions on both axes; a rug of all
    key (red) / value (blue) positions above the map."""
    lab = {}
    for role, t in (("match_key", "K"), ("match_value", "V"), ("trigger", "T"), ("copy", "C"), ("query", "q")):
        for p in roles.get(role, []):
            lab[int(p)] = t
    ticks = sorted(lab)
    for set_ticks, set_labels in ((ax.set_xticks, ax.set_xticklabels), (ax.set_yticks, ax.set_yticklabels)):
        set_ticks(ticks)
        set_labels([lab[p] for p in ticks], fontsize=7)
    ax.tick_params(labelbottom=x_labels, labelleft=y_labels)
    colors = {"K": "#d1495b", "V": "#1f4e9c", "q": "#2a9d2a", "T": "#d1495b", "C": "#1f4e9c"}
    for t in ax.get_xticklabels() + ax.get_yticklabels():
        t.set_color(colors.get(t.get_text(), "black"))
        t.set_fontweight("bold")
    for q in roles.get("query", []):  # outline the query row: its mass on V / K is the recall score
        ax.add_patch(Rectangle((-0.5, int(q) - 0.5), L, 1, fill=False, ec="#2a9d2a", lw=1.2, clip_on=False))
    tr = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for role, c in (("key", "#d1495b"), ("value", "#1f4e9c")):
        pos = roles.get(role, np.array([]))
        ax.scatter(np.asarray(pos), np.full(len(pos), 1.02), marker="|", s=25, color=c, transform=tr,
                   clip_on=False, lw=1.0)


def fig_implicit_attention(rd: RunData, out_dir: Path | None = None) -> ReportFigure:
    if not rd.captured:
        raise FigureSkipped("no captures (capture/step_*.safetensors) to read the maps from; run `hyenalens capture`")
    if not rd.mapped:
        raise FigureSkipped(f"run {rd.name}: capture predates the stored maps; rerun `hyenalens capture {rd.path}`")
    picks = pick_steps(rd.mapped, rd.jump())
    maps: dict[tuple[int, int], np.ndarray] = {}
    info: dict[str, Any] = {}
    for s, _ in picks:
        per_layer, info = _stored_maps(rd, s)
        for l, m in per_layer.items():
            maps[(s, l)] = m
    roles = {k: np.asarray(v, dtype=int) for k, v in info["roles"].items()}
    src = f"probe-set row {info['row']}"
    layers = list(range(min(int(info["layers"]), MAX_ROWS)))
    L = maps[(picks[0][0], 0)].shape[-1]
    is_attn = rd.kind == "attention"
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=1e-3, vmax=1.0)
    fig = new_figure(3.0 * len(picks) + 1.4, 3.3 * len(layers) + 1.0)
    axes = fig.subplots(len(layers), len(picks), squeeze=False)
    for r, l in enumerate(layers):
        for c, (s, label) in enumerate(picks):
            ax = axes[r][c]
            _matrix(ax, np.clip(maps[(s, l)], 1e-3, 1.0), norm, "rocket_r", (-0.5, L - 0.5, L - 0.5, -0.5))
            _annotate(ax, roles, L, x_labels=r == len(layers) - 1, y_labels=c == 0)
            ax.set_title(f"{label}: step {s}\nlayer {l}", fontsize=9, pad=8)
            ax.set_xlabel("source position j" if r == len(layers) - 1 else "")
            ax.set_ylabel("query position i" if c == 0 else "")
    cb = fig.colorbar(axes[0][0].images[0], ax=axes, shrink=0.8, pad=0.01)
    cb.set_label("attention weight (head mean)" if is_attn else "row-normalized mean_c |H_c| (share of row, log scale)")
    what = "attention pattern (head mean)" if is_attn else "implicit attention H(u), token level"
    fig.suptitle(f"Figure 4 — {what}, one example, {plain(rd.name, 40)} ({plain(rd.regime)})")
    return finish(fig, out_dir, f"fig4_implicit_attention_{rd.slug}.png",
                  f"{what} of one example ({src}) at init / jump onset / midpoint / end / final, per layer; rows "
                  f"are query positions i, columns sources j. Ticks: K = matching key, V = matching value, "
                  f"q = query (its row outlined in green; IH: T trigger, C copy); rug above each map: every key "
                  f"(red) and value (blue) position.")


# ------------------------------------------------------------------ patching
def _hook_key(h: str) -> tuple:
    m = re.match(r"^blocks\.(\d+)\.(.*)$", h)
    return (int(m.group(1)), m.group(2)) if m else (-1 if "embed" in h else 10 ** 6, h)


ZERO_TOL = 0.005  # |recovery| below this prints as 0.00: a column of such cells carries nothing
TINY_GAP = 0.01  # logits: a denominator LD clean − corrupt this small makes recovery ill-conditioned


def patch_norm(values: np.ndarray) -> mcolors.Normalize:
    """The color scale of figure 6, covering every value: linear on [−1, 1] (the range where
    recovery reads as a fraction) when the data stay inside it; else symmetric log beyond ±1 up
    to the largest |value|, still linear inside ±1, so that 3.12 and 533 get colors of their own."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    m = float(np.abs(v).max()) if v.size else 0.0
    if m <= 1.0:
        return mcolors.Normalize(vmin=-1.0, vmax=1.0)
    return mcolors.SymLogNorm(linthresh=1.0, linscale=1.0, vmin=-m, vmax=m, base=10)


def informative_roles(piv: dict[int, Any], roles: list[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped) role columns: a column is dropped when every cell of it, at every step
    drawn, prints as 0.00; when all would be, all are kept (the figure then says so itself)."""
    dropped = [r for r in roles if all(np.nan_to_num(np.abs(p[r].to_numpy(dtype=float))).max(initial=0.0) < ZERO_TOL
                                       for p in piv.values())]
    return ([r for r in roles if r not in dropped], dropped) if len(dropped) < len(roles) else (roles, [])


def _sym_ticks(m: float) -> list[float]:
    """0, ±1, ±powers of ten up to m, and ±m (the scale's end) when it is ≥ 2× the last of them."""
    pos = [1.0] + [10.0 ** k for k in range(1, 12) if 10.0 ** k <= m]
    pos += [float(f"{m:.3g}")] if m >= 2 * pos[-1] else []
    return sorted([-t for t in pos] + [0.0] + pos)


def _cell(v: float) -> str:
    if not math.isfinite(v):
        return ""
    if abs(v) < ZERO_TOL:
        return "0.00"  # never "-0.00"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _ld_gap(circ, step: int) -> float | None:
    """LD_clean − LD_corrupt at `step` (patch_ld_* rows), the recovery's denominator."""
    vals = [circ[(circ["metric"] == m) & (circ["step"] == step)]["value"].mean() for m in ("patch_ld_clean",
                                                                                          "patch_ld_corrupt")]
    return float(vals[0] - vals[1]) if all(np.isfinite(vals)) else None


def fig_patching(rd: RunData, out_dir: Path | None = None) -> ReportFigure:
    circ = rd.circuit
    if circ is None:
        raise FigureSkipped("analysis/metrics.csv is missing")
    df = circ[circ["metric"] == "patch_recovery"]
    if df.empty:
        raise FigureSkipped("analysis/metrics.csv has no patch_recovery rows (patching was not run)")
    steps = sorted(df["step"].unique().tolist())
    jump = rd.jump()
    if jump:
        mid = min(steps, key=lambda s: abs(math.log1p(s) - math.log1p(jump["midpoint"])))
        mid_label = f"mid-transition: step {mid} (recall-jump midpoint {jump['midpoint']:.0f})"
    else:
        mid = steps[len(steps) // 2]
        mid_label = f"middle stored step {mid} (no recall jump)"
    panels = [(mid, mid_label)] + ([(steps[-1], f"final: step {steps[-1]}")] if steps[-1] != mid else [])
    hooks = sorted(df["hook"].unique().tolist(), key=_hook_key)
    roles = [r for r in ROLE_ORDER if r in set(df["role"])] + sorted(set(df["role"]) - set(ROLE_ORDER))
    piv = {s: (df[df["step"] == s].groupby(["hook", "role"])["value"].mean().unstack("role")
               .reindex(index=hooks, columns=roles)) for s, _ in panels}
    roles, dropped = informative_roles(piv, roles)
    fig = new_figure(max(8.0, 3.2 + 1.0 * len(roles) * len(panels)), 0.32 * len(hooks) + 2.3)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    norms = []
    for ax, (s, label) in zip(axes, panels):
        p = piv[s][roles]
        p.index = [short_hook(h) for h in p.index]
        # each panel its own scale: a step whose recovery is ill-conditioned (values in the hundreds)
        # does not wash out the colors of the other
        norm = patch_norm(p.to_numpy(dtype=float))
        norms.append(norm)
        text = np.vectorize(_cell)(p.to_numpy(dtype=float))
        sns.heatmap(p, ax=ax, cmap="vlag", norm=norm, annot=text, fmt="", annot_kws={"fontsize": 7.5}, cbar=False,
                    linewidths=0.5, linecolor="white")
        gap = _ld_gap(circ, s)
        sub = ("" if gap is None else
               f"\nLD clean − corrupt = {gap:+.2g} logits" + (" (≈ 0)" if abs(gap) < TINY_GAP else ""))
        ax.set_title(label + sub, fontsize=9)
        ax.set_xlabel("patched positions (role)")
        ax.set_ylabel("hook" if ax is axes[0] else "")
        ax.tick_params(labelsize=7.5)
        cb = fig.colorbar(ax.collections[0], ax=ax, shrink=0.85, pad=0.02, aspect=30)
        if isinstance(norm, mcolors.SymLogNorm):
            cb.set_ticks(_sym_ticks(norm.vmax), labels=[f"{t:g}" for t in _sym_ticks(norm.vmax)])
            cb.set_label("recovery (linear within ±1, log beyond)", fontsize=8)
        else:
            cb.set_label("recovery", fontsize=8)
        cb.ax.tick_params(labelsize=7.5)
    fig.suptitle(f"Figure 6 — activation-patching recovery, {plain(rd.name, 40)} ({plain(rd.regime)})")
    sym = [n.vmax for n in norms if isinstance(n, mcolors.SymLogNorm)]
    scale = ("each panel has its own color scale holding all its values: linear on [−1, 1], and where a panel "
             "has values beyond ±1, logarithmic beyond, symmetric up to its largest |recovery| "
             f"({', '.join(f'{m:.3g}' for m in sym)}); |recovery| ≫ 1 comes from a small denominator "
             "(LD clean − corrupt, in each panel's title)" if sym else
             "color: linear on [−1, 1], which holds every value")
    left = (f" Left out: the column(s) {', '.join(dropped)}, whose every cell is 0.00 at every step shown "
            f"(patching there changes nothing)." if dropped else "")
    return finish(fig, out_dir, f"fig6_patching_{rd.slug}.png",
                  "Recovery of the clean-vs-corrupted logit difference when one hook is patched from the clean "
                  "run at the positions of one role (corrupted run: q replaced by another key of the context); "
                  "recovery = (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt), LD the clean-minus-corrupted "
                  f"answer logit difference at the query: 1 = fully restored, 0 = no effect; {scale}; numbers exact."
                  + left)
