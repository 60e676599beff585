"""Figure 2's position-swap panels and figure 8 (where the recall signal sits), drawn from
hand-built run directories (the builders live in tests/test_report.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_report import (add_swap_source_rows, make_run, source_example, swap_source_rows,
                         write_circuit_csv, write_source_example)


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5000
    px = mpimg.imread(str(path))[..., :3]
    assert px.shape[0] > 300 and px.shape[1] > 500 and px.std() > 0.05  # drawn, not blank


def test_swap_panels_and_source_figure(tmp_path: Path):
    import pandas as pd

    import reports.figures_curves as fc
    import reports.figures_sources as fs
    from reports.rundata import load_run_data

    run = make_run(tmp_path / "r", 0, full=False)
    write_circuit_csv(run, 400.0)
    add_swap_source_rows(run, 400.0)
    write_source_example(run)
    rd = load_run_data(run)
    out = tmp_path / "out"
    out.mkdir()
    # figure 2: the two swap panels, and no generic panel for any recall_swap_* / source_* metric
    f2 = fc.fig_circuit_timelines(rd, out)  # the matplotlib figure itself, written to out
    assert f2.path == out / f2.file
    _png_ok(f2.path)
    axes = {ax.get_title(): ax for ax in f2.axes}
    swap_title, drops_title = (fc.SWAP_PANELS[k][0] for k in ("recall_swap", "recall_swap_drops"))
    assert swap_title in axes and drops_title in axes
    assert not [t for t in axes if t.startswith(("recall swap", "source "))], list(axes)
    assert "Position-swap panels" in f2.caption and "label-permutation control" in f2.caption
    assert "Hewitt" not in f2.caption
    lines = {l.get_label(): l for l in axes[swap_title].get_lines()}
    want = pd.DataFrame(swap_source_rows(400.0))
    for metric, label, _, _ in fc.SWAP_PANELS["recall_swap"][2]:
        exp = want[want.metric == metric].sort_values("step")["value"].to_numpy()
        assert np.allclose(lines[label].get_ydata(), exp), metric  # the csv's values, step by step
    key = [l for l in axes[drops_title].get_lines() if l.get_label() == "key swap"][0]
    assert len(key.get_ydata()) == len(want[want.metric == "recall_swap_drop"]) - 1  # its NaN step is left out
    # figure 8: (a) one share panel and one patch-follow panel per layer, (b) one bar row per layer
    figs = fs.fig_sources(rd, out)
    assert [f.file.split("_")[0] for f in figs] == ["fig8a", "fig8b"]
    for f in figs:
        _png_ok(out / f.file)
        assert "not drawn" not in f.caption
    shares, example = figs
    assert len(shares.axes) == 4 and {a.get_title().split("\n")[0] for a in shares.axes} == {"layer 0", "layer 1", ""}
    top = [a for a in shares.axes if a.get_title().startswith("layer 0")][0]
    styles = {l.get_label(): l.get_linestyle() for l in top.get_lines() if not l.get_label().startswith("_")}
    assert styles["matching pair(s)"] == "-" and styles["matching value(s)"] == "--"
    ex = source_example()
    assert len(example.axes) == 2
    for ax, lay in zip(example.axes, ex["layers"]):
        assert np.allclose([b.get_height() for b in ax.containers[0]], lay["terms"])  # bar per position
    assert [t.get_text() for t in example.axes[-1].get_xticklabels()] == ex["str_tokens"]


def test_source_figure_skips_or_draws_what_it_has(tmp_path: Path):
    import reports.figures_curves as fc
    import reports.figures_sources as fs
    from reports.figures_common import FigureSkipped
    from reports.report import _Figures
    from reports.rundata import load_run_data

    out = tmp_path / "out"
    out.mkdir()
    # metrics.csv without the new rows and no example: figure 8 is skipped, saying what and who writes it
    run = make_run(tmp_path / "runs" / "old", 0, full=False)
    write_circuit_csv(run, 400.0)
    with pytest.raises(FigureSkipped, match=r"no source_share rows.*source_example\.json is missing.*hyenalens probe"):
        fs.fig_sources(load_run_data(run), out)
    f2 = fc.fig_circuit_timelines(load_run_data(run), out)
    assert "Position-swap" not in f2.caption
    assert fc.SWAP_PANELS["recall_swap"][0] not in [a.get_title() for a in f2.axes]
    figs = _Figures(out, progress=False)  # the report's wrapper: a skip message on the page, not an error
    page = figs.draw("figure 8 (old)", fs.fig_sources, load_run_data(run))
    assert figs.records[0]["status"] == "skipped" and "source_share" in figs.records[0]["reason"]
    assert "figure 8 (old) not drawn" in page
    # no metrics.csv at all
    bare = load_run_data(make_run(tmp_path / "runs" / "bare", 0, full=False))
    with pytest.raises(FigureSkipped, match="analysis/metrics.csv is missing"):
        fs.fig_sources(bare, out)
    # only the example: (b) is drawn, its caption says why (a) is not; without str_tokens the ids label it
    write_source_example(run, source_example(str_tokens=False))
    figs = fs.fig_sources(load_run_data(run), out)
    assert len(figs) == 1 and figs[0].file.startswith("fig8b") and "(a) is not drawn" in figs[0].caption
    # a malformed example is an error naming the file, not a silent skip
    bad = source_example()
    bad["layers"][1]["terms"] = bad["layers"][1]["terms"][:-1]
    write_source_example(run, bad)
    with pytest.raises(ValueError, match=r"source_example\.json: layer 1 has 15 terms for 16 tokens"):
        fs.fig_sources(load_run_data(run), out)
