"""Shared plumbing for the report's figures: the seaborn theme, the `ReportFigure` each figure
function returns, writing PNGs atomically, transition bands and checkpoint selection.

Figure functions return a `ReportFigure` (a matplotlib `Figure`; two of them return a list) that
carries its file name and caption, and write it as a PNG only when given a folder:

    fig = fig_training_curves(runs, "causal/all")            # nothing written: show it in a notebook
    fig = fig_training_curves(runs, "causal/all", out_dir=d)  # also d / fig.file (fig.path)

They raise `FigureSkipped` when an input is missing (the page says which) and any other exception
when drawing fails (the page says "figure X could not be drawn: reason").

The backend: nothing here selects one, on import or on a call. Every figure is a
`matplotlib.figure.Figure` made without pyplot, so it belongs to no backend and no pyplot figure
manager: `savefig(format="png")` renders it through Agg's canvas whatever the backend is, so the
report needs no `matplotlib.use("Agg")` to write files on a machine without a display, and a
notebook's backend (inline, widget, …) stays the one its user chose (a cell whose value is the
figure shows it inline). `matplotlib.use("Agg")` "when no backend was chosen" was not taken:
"not chosen" is matplotlib's automatic choice, so in a REPL or a script that later imports pyplot
it would replace the interactive default, and `plt.show()` would show nothing.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib.colors as mcolors
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure as MplFigure

from models.rundir.io import atomic_write_bytes

DPI = 100
ACC_STYLE = {  # curve: (label, color, linestyle)
    "test_acc_last": ("test acc (last position)", "#1f4e9c", "-"),
    "train_acc_all": ("train acc (all positions)", "#d1495b", "-"),
    "train_acc_recallable": ("train acc (recallable)", "#edae49", "-"),
    "train_acc_last": ("train acc (last position)", "#66a182", "-"),
}
CEILING_COLOR = "#555555"
JUMP_COLOR = "#7a1f5c"  # the recall jump (onset→end band, dashed midpoint) in every figure
# the widest figure, in inches: at DPI 100 it is 1240 px, so that it shows at its own size (not
# scaled down, its text still legible) in the report's 1248 px column at a 1280 px window
PAGE_W = 12.4


class FigureSkipped(Exception):
    """An input the figure needs is missing; the message says which, in words."""


class ReportFigure(MplFigure):
    """A report figure: a matplotlib `Figure` made without pyplot, with what the report needs.

    Fields:
        file: its PNG's file name, relative to the report folder ("" until drawn).
        caption: the caption the report prints under it.
        path: where its PNG was written; None until `write` (or a figure function given an
            `out_dir`) writes it.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.file: str = ""
        self.caption: str = ""
        self.path: Path | None = None

    def write(self, out_dir: str | Path) -> Path:
        """Write the PNG to `out_dir / self.file` atomically (through Agg's canvas, whatever the
        backend); return its path."""
        if not self.file:
            raise ValueError("this figure has no file name yet; write it after a figure function has drawn it")
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DPI)
        self.path = Path(out_dir) / self.file
        atomic_write_bytes(self.path, buf.getvalue())
        return self.path


def new_figure(w: float, h: float) -> ReportFigure:
    """A pyplot-free figure (no backend, no pyplot state: safe in any process) with the report
    theme (seaborn's, set globally as `sns.set_theme` does), at most `PAGE_W` wide."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return ReportFigure(figsize=(min(float(w), PAGE_W), h), dpi=DPI, layout="constrained")


def legend_entries(axes: Iterable[Any]) -> tuple[list[Any], list[str]]:
    """The labelled artists of `axes`, one per label (the first drawn), in drawing order."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def legend_below(fig: ReportFigure, handles: list[Any], labels: list[str], ncol: int = 4,
                 fontsize: float = 8.0) -> None:
    """One figure legend under the panels (outside every axes: it never covers data)."""
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(ncol, len(labels))),
                   fontsize=fontsize, frameon=False)


def finish(fig: ReportFigure, out_dir: str | Path | None, name: str, caption: str) -> ReportFigure:
    """Give `fig` its file name and caption, and write it to `out_dir / name` when `out_dir` is
    given (None: write nothing); return it."""
    fig.file, fig.caption = name, caption
    if out_dir is not None:
        fig.write(out_dir)
    return fig


def shade_transitions(ax, trs: Iterable[dict[str, Any]], color: str, label: str | None = None,
                      alpha: float = 0.15, x_offset: float = 0.0, zorder: float | None = None) -> None:
    """Shade onset→end of each transition and mark its midpoint with a dashed line."""
    z = {} if zorder is None else {"zorder": zorder}
    for i, t in enumerate(trs or []):
        if not all(_num(t.get(k)) for k in ("onset", "midpoint", "end")):
            continue
        ax.axvspan(max(t["onset"] - x_offset, _xmin(ax)), t["end"] - x_offset, color=color, alpha=alpha, lw=0,
                   label=(label if i == 0 else None), **z)
        ax.axvline(t["midpoint"] - x_offset, color=color, lw=1.2, ls="--", alpha=0.9, **z)


def _xmin(ax) -> float:
    return -math.inf if ax.get_xscale() == "linear" else 1e-9


def _num(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def use_log_x(ax, steps) -> None:
    """symlog x so that step 0 (the initial checkpoint) stays on the axis."""
    steps = np.asarray(list(steps), dtype=float)
    if steps.size and steps.max() > 20:
        lin = max(1.0, float(np.min(steps[steps > 0])) if (steps > 0).any() else 1.0)
        ax.set_xscale("symlog", linthresh=lin, linscale=0.3)
        # ticks: 0 and the powers of ten past the linear part (none crowding 0)
        ticks = [0.0] + [10.0 ** k for k in range(0, 12) if 2 * lin <= 10.0 ** k <= steps.max() * 1.5]
        ax.set_xticks(ticks, ["0"] + [f"$10^{{{int(round(math.log10(t)))}}}$" for t in ticks[1:]])


def pick_steps(available: list[int], jump: dict[str, float] | None) -> list[tuple[int, str]]:
    """(step, label) of init / jump onset / midpoint / end / final among `available` (nearest
    in log-step); without a jump: init, two evenly spaced in log-step, final. Repeated steps are
    merged into one label (`merge_labels`)."""
    if not available:
        return []
    av = np.asarray(sorted(set(int(s) for s in available)), dtype=float)
    lx = np.log1p(av)
    want: list[tuple[float, str]] = [(av[0], "init")]
    if jump:
        want += [(jump[k], k) for k in ("onset", "midpoint", "end") if _num(jump.get(k))]
    else:
        want += [(float(np.expm1(lx[0] + f * (lx[-1] - lx[0]))), f"{int(f * 100)}% log-step") for f in (1 / 3, 2 / 3)]
    want.append((av[-1], "final"))
    picked: dict[int, list[str]] = {}
    for target, label in want:
        s = int(av[int(np.argmin(np.abs(lx - math.log1p(max(target, 0.0)))))])
        picked.setdefault(s, []).append(label)
    return [(s, merge_labels(v)) for s, v in sorted(picked.items())]


_JUMP_PARTS = ("onset", "midpoint", "end")


def merge_labels(labels: list[str]) -> str:
    """One label for the markers that fall on one stored step: the jump's parts as "jump onset",
    "jump onset & midpoint", or "jump (onset to end)" when all three coincide; others joined by " & "."""
    parts = [p for p in _JUMP_PARTS if p in labels]
    jump = [] if not parts else ["jump (onset to end)" if len(parts) == 3 else "jump " + " & ".join(parts)]
    rest = [lab for lab in labels if lab not in _JUMP_PARTS]
    return " & ".join([lab for lab in rest if lab == "init"] + jump + [lab for lab in rest if lab != "init"])


def log_norm(values: np.ndarray, floor_ratio: float = 1e-4) -> mcolors.LogNorm:
    """A LogNorm over the positive values, spanning at most `1/floor_ratio`."""
    v = np.asarray(values, dtype=float)
    pos = v[np.isfinite(v) & (v > 0)]
    if pos.size == 0:
        return mcolors.LogNorm(vmin=1e-6, vmax=1.0)
    vmax = float(pos.max())
    vmin = max(float(np.percentile(pos, 1)), vmax * floor_ratio)
    return mcolors.LogNorm(vmin=min(vmin, vmax * 0.999), vmax=vmax)


def plain(text: object, n: int | None = None) -> str:
    """User text (run names, regimes) for a matplotlib label: shortened to n characters from the
    end, and with `$` escaped so that it is never parsed as mathtext."""
    t = str(text)
    if n is not None and len(t) > n:
        t = "…" + t[-(n - 1):]
    return t.replace("$", r"\$")


def short_hook(h: str) -> str:
    return h.replace("blocks.", "b").replace("mixer.", "").replace("hook_", "")
