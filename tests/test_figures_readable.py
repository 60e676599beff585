"""Figures a reader can use at 1280 px (issue 14, item 5): figure 6's colour scale holds its
values and leaves out columns that carry nothing, figure 1's legend names every colour drawn and
no two curves' transition bands are drawn over each other, no legend sits on a panel, figure 3a's
titles say "jump (onset to end)" instead of "onset=midpoint=end", and no figure is wider than the
report's column.

Run directories come from tests/test_report.py's builders (a tiny Hyena run with checkpoints,
captures and analysis files; runs with metrics only, given hand-written patching rows here)."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from test_report import make_run

HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_mixer_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post")
ROLES = ("query", "match_key", "match_value", "other", "all", "none")


def _patch_run(root: Path, mid_values: dict, final_values: dict, ld_gap: tuple[float, float]) -> Path:
    """A metrics-only run (jump near step 400) with patch_recovery rows at steps 400 and 1000:
    `*_values` maps (hook, role) to a value, 0.0 elsewhere; ld_gap: LD clean − corrupt per step."""
    run = make_run(root, 0, full=False)
    rows = []
    for step, vals, gap in ((400, mid_values, ld_gap[0]), (1000, final_values, ld_gap[1])):
        for h in HOOKS:
            for r in ROLES:
                rows.append(dict(step=step, metric="patch_recovery", layer=int(h[7]), value=vals.get((h, r), 0.0),
                                 hook=h, role=r))
        rows += [dict(step=step, metric="patch_ld_clean", layer=-1, value=0.5 + gap),
                 dict(step=step, metric="patch_ld_corrupt", layer=-1, value=0.5)]
    (run / "analysis").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(run / "analysis" / "metrics.csv", index=False)
    return run


def _panels(fig):
    """Figure 6's heatmap axes (the colorbars' axes have no QuadMesh of annotated cells)."""
    return [ax for ax in fig.axes if ax.texts and ax.collections]


def test_figure6_scale_holds_its_values_and_zero_columns_are_left_out(tmp_path: Path):
    from reports.figures_maps import fig_patching
    from reports.rundata import load_run_data

    mid = {(HOOKS[0], "query"): 1.0, (HOOKS[0], "all"): 1.0, (HOOKS[2], "query"): 3.12, (HOOKS[2], "all"): 3.12,
           (HOOKS[1], "query"): -2.11, (HOOKS[1], "all"): -0.5, (HOOKS[3], "match_value"): 0.25}
    final = {(HOOKS[0], "query"): 1.0, (HOOKS[0], "all"): 1.0, (HOOKS[1], "query"): 533.0, (HOOKS[2], "all"): -211.0,
             (HOOKS[3], "query"): -1e-9}
    fig = fig_patching(load_run_data(_patch_run(tmp_path / "r", mid, final, (0.8, 2e-5))))
    panels = _panels(fig)
    assert len(panels) == 2
    for ax, vals in zip(panels, (mid, final)):
        norm = ax.collections[0].norm
        lo, hi = min(vals.values()), max(vals.values())
        assert norm.vmin <= lo and norm.vmax >= hi, (norm.vmin, norm.vmax, lo, hi)  # the scale covers the data
        # values beyond ±1 get colours of their own: 3.12 (533) is darker than 1.00, not clipped to it
        assert norm(hi) > norm(1.0) + 0.05 and norm(lo) < norm(-1.0) - 0.05
        assert norm(0.0) == pytest.approx(0.5)  # symmetric: 0 is the neutral colour
        texts = [t.get_text() for t in ax.texts]
        assert "-0.00" not in texts  # a value of −1e-9 prints as 0.00
        # match_key, other and none are 0.00 at both steps: left out; match_value is not (0.25 at step 400)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["query", "match_value", "all"]
    assert "3.12" in [t.get_text() for t in panels[0].texts] and "533" in [t.get_text() for t in panels[1].texts]
    assert "Left out: the column(s) match_key, other, none" in fig.caption
    assert "(≈ 0)" in panels[1].get_title() and "(≈ 0)" not in panels[0].get_title()  # the tiny denominator


def test_figure6_keeps_a_linear_scale_and_every_column_when_all_carry_something(tmp_path: Path):
    from reports.figures_maps import fig_patching, patch_norm
    from reports.rundata import load_run_data

    vals = {(h, r): 0.1 * (i + 1) * (-1) ** j for i, h in enumerate(HOOKS) for j, r in enumerate(ROLES)}
    fig = fig_patching(load_run_data(_patch_run(tmp_path / "r", vals, vals, (1.0, 1.0))))
    for ax in _panels(fig):
        norm = ax.collections[0].norm
        assert type(norm) is mcolors.Normalize and (norm.vmin, norm.vmax) == (-1.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(ROLES)
    assert "Left out" not in fig.caption
    sym = patch_norm(np.array([0.2, -7.0, np.nan]))
    assert isinstance(sym, mcolors.SymLogNorm) and sym.vmin == -7.0 and sym.vmax == 7.0


def _hex(c) -> str:
    return mcolors.to_hex(c, keep_alpha=False)


def _drawn_colors(fig) -> set[str]:
    out = set()
    for ax in fig.axes:
        out |= {_hex(line.get_color()) for line in ax.lines}
        out |= {_hex(p.get_facecolor()) for p in ax.patches}
        for coll in ax.collections:
            out |= {_hex(c) for c in coll.get_facecolors()}
    return out


def _legend_colors(fig) -> set[str]:
    out = set()
    for leg in fig.legends:
        for h in leg.legend_handles:
            out.add(_hex(h.get_color() if hasattr(h, "get_color") and not hasattr(h, "get_facecolor")
                         else h.get_facecolor()))
    return out


def test_figure1_legend_names_every_colour_and_no_two_bands_overlap(tmp_path: Path):
    from matplotlib.patches import Patch

    from reports.figures_common import ACC_STYLE
    from reports.figures_curves import LANE_NAMES, fig_training_curves
    from reports.rundata import load_run_data

    runs = [load_run_data(make_run(tmp_path / f"s{s}", s, mid=400.0 + 40 * s, full=False)) for s in range(3)]
    assert all(len([c for c in ("test_acc_last", "train_acc_all", "train_acc_recallable")
                    if r.transitions.get(c)]) >= 3 for r in runs)  # several curves have transitions to draw
    fig = fig_training_curves(runs, "causal/all")
    drawn, named = _drawn_colors(fig), _legend_colors(fig)
    assert drawn and drawn <= named, f"drawn but not in the legend: {drawn - named}"
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    band_keys = {_hex(h.get_facecolor()) for h in fig.legends[0].legend_handles if isinstance(h, Patch)}
    main = [ax for ax in fig.axes if ax.get_title()]
    for ax in main:  # every translucent band on the curves is a band of the legend (only the recall jump's)
        bands = {_hex(p.get_facecolor()) for p in ax.patches if p.get_alpha() is not None and p.get_alpha() < 1}
        assert bands and bands <= band_keys and len(bands) == 1, (bands, band_keys)
    lanes = [ax for ax in fig.axes if ax not in main]
    assert len(main) == len(lanes) == 3
    by_name = {LANE_NAMES[c]: _hex(ACC_STYLE[c][1]) for c in LANE_NAMES}
    names = [t.get_text() for t in lanes[0].get_yticklabels()]
    for lane in lanes:  # the curves' transition bars: one lane per curve, named, in its colour, disjoint in y
        spans: dict[str, tuple[float, float]] = {}
        for coll in lane.collections:
            assert isinstance(coll, PolyCollection)
            ys = np.concatenate([p.vertices[:, 1] for p in coll.get_paths()])
            c = _hex(coll.get_facecolors()[0])
            lo, hi = spans.get(c, (np.inf, -np.inf))
            spans[c] = (min(lo, ys.min()), max(hi, ys.max()))
            assert by_name[names[int(round(ys.mean()))]] == c  # the lane's name is the bar's curve
        assert len(spans) >= 3
        ordered = sorted(spans.values())
        assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:])), ordered


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("readable") / "runs" / "causal_all_s0", 0, full=True)


def _all_figures(rd) -> dict[str, list]:
    from reports.figures_compare import fig_comparison
    from reports.figures_curves import fig_attribution, fig_circuit_timelines, fig_training_curves
    from reports.figures_maps import fig_filters, fig_implicit_attention, fig_patching
    from reports.figures_sources import fig_sources
    from reports.summary import group_keys, regime_summary, run_numbers

    regimes = regime_summary([run_numbers(rd)], group_keys([rd], None), None)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for key, fn, args in (("fig1", fig_training_curves, ([rd], "causal/all")), ("fig2", fig_circuit_timelines, (rd,)),
                              ("fig3", fig_filters, (rd,)), ("fig4", fig_implicit_attention, (rd,)),
                              ("fig5", fig_attribution, (rd,)), ("fig6", fig_patching, (rd,)),
                              ("fig7", fig_comparison, (regimes,)), ("fig8", fig_sources, (rd,))):
            res = fn(*args)
            out[key] = res if isinstance(res, list) else [res]
    return out


def test_no_legend_covers_a_panel_and_no_figure_is_wider_than_the_page(full_run: Path):
    from reports.figures_common import DPI, PAGE_W
    from reports.rundata import load_run_data

    figs = _all_figures(load_run_data(full_run))
    n_legends = 0
    for key, fs in figs.items():
        for fig in fs:
            assert fig.get_size_inches()[0] * DPI <= PAGE_W * DPI <= 1248, (key, fig.get_size_inches())
            FigureCanvasAgg(fig).draw()  # lay it out (constrained layout) to read positions
            renderer = fig.canvas.get_renderer()
            legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
            boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
            for leg in legends:
                n_legends += 1
                lb = leg.get_window_extent(renderer)
                for b in boxes:
                    w = min(lb.x1, b.x1) - max(lb.x0, b.x0)
                    h = min(lb.y1, b.y1) - max(lb.y0, b.y0)
                    assert w <= 1 or h <= 1, f"{fig.file}: a legend overlaps a panel by {w:.0f}×{h:.0f} px"
            # panel titles do not run into each other (figure 7's (a) and (b) did at 1240 px)
            titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible() and ax.get_title()]
            for i, a in enumerate(titles):
                for b in titles[i + 1:]:
                    assert not (min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1), \
                        (fig.file, a, b)
            # no text is cut at the figure's edge (a title wider than the figure was, in figure 8b)
            fw = fig.bbox.width
            for t in fig.texts:
                tb = t.get_window_extent(renderer)
                assert tb.x0 >= -1 and tb.x1 <= fw + 1, (fig.file, t.get_text())
    assert n_legends >= 5  # figures 1, 2, 5, 7 and 8 have legends: the check ran on them


def test_figure2_one_legend_and_one_colour_per_layer(full_run: Path):
    from reports.figures_curves import fig_circuit_timelines
    from reports.rundata import load_run_data

    fig = fig_circuit_timelines(load_run_data(full_run))
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    by_label: dict[str, set[str]] = {}
    for ax in fig.axes:
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                by_label.setdefault(line.get_label(), set()).add(_hex(line.get_color()))
    assert {"layer 0", "layer 1"} <= set(by_label)
    assert all(len(c) == 1 for c in by_label.values()), by_label  # a layer is one colour in every panel
    assert by_label["layer 0"] != by_label["layer 1"]
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"layer 0", "layer 1"} <= legend


def test_figure3a_names_coinciding_markers_in_words(full_run: Path):
    from reports.figures_common import merge_labels, pick_steps
    from reports.figures_maps import fig_filters
    from reports.rundata import load_run_data

    assert pick_steps([0, 12, 300], {"onset": 11.0, "midpoint": 12.0, "end": 13.0}) == [
        (0, "init"), (12, "jump (onset to end)"), (300, "final")]
    assert merge_labels(["init", "onset"]) == "init & jump onset"
    assert merge_labels(["midpoint", "end", "final"]) == "jump midpoint & end & final"
    rd = load_run_data(full_run)
    rd.jump = lambda: {"onset": 340.0, "midpoint": 350.0, "end": 362.0}  # all nearest the checkpoint at 350
    filters, _ = fig_filters(rd)
    titles = [ax.get_title() for ax in filters.axes if ax.get_title()]
    assert titles and not [t for t in titles if "=" in t], titles
    assert any(t.startswith("jump (onset to end): step 350") for t in titles), titles
    assert not [t for t in titles if "onset=midpoint=end" in t]
