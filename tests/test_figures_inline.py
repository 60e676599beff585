"""Inline figures: the report's figure functions return matplotlib figures, write a file only
when given a folder, and nothing in `reports` changes matplotlib's backend (issue 17, "What was
seen" 4: importing reports.figures_common used to switch a notebook to Agg).

The run directories come from tests/test_report.py's builders (a tiny Hyena run with
checkpoints, captures and analysis files; a run with metrics only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import make_run

ROOT = Path(__file__).resolve().parents[1]
FIGURE_MODULES = ("reports.figures_common", "reports.figures_compare", "reports.figures_curves",
                  "reports.figures_maps", "reports.figures_sources")

# Run in a fresh interpreter: the backend as the environment set it, after importing reports and
# every figure module, after drawing a figure without a folder (nothing written, not a pyplot
# figure), and after write_report (its PNGs written through Agg's canvas under that backend).
PROBE = r"""
import json, os, sys
from pathlib import Path
import matplotlib
def backend():  # None: matplotlib's automatic choice is still pending (nothing chose one)
    return matplotlib.rcParams._get_backend_or_none()
out = {"before": backend()}
import reports
import reports.report
for m in sys.argv[3].split(","):
    __import__(m)
out["after_import"] = backend()
from matplotlib.figure import Figure
from reports.figures_curves import fig_training_curves
from reports.rundata import load_run_data
run, dest = Path(sys.argv[1]), Path(sys.argv[2])
before = sorted(p.name for p in Path.cwd().iterdir())
fig = fig_training_curves([load_run_data(run)], "causal/all")
out["figure"] = [isinstance(fig, Figure), fig.path is None, fig.canvas.manager is None]
out["cwd_unchanged"] = sorted(p.name for p in Path.cwd().iterdir()) == before
out["after_draw"] = backend()
summary = reports.write_report([run], dest)
out["written"] = sorted(f["file"] for f in summary["figures"] if f["status"] == "ok")
out["after_report"] = backend()
print(json.dumps(out))
"""


def _probe(tmp_path: Path, run: Path, backend: str | None, tag: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if backend is not None:
        env["MPLBACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cwd = tmp_path / f"cwd_{tag}"
    cwd.mkdir()
    res = subprocess.run([sys.executable, "-c", PROBE, str(run), str(tmp_path / f"report_{tag}"),
                          ",".join(FIGURE_MODULES)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["svg", "pdf", None])
def test_importing_and_drawing_leave_the_backend_alone(tmp_path: Path, backend: str | None):
    """svg and pdf: non-Agg backends that need no display. None: no backend chosen, and the
    automatic choice must stay pending (the old module forced Agg in all three cases)."""
    run = make_run(tmp_path / "runs" / "causal_all_s0", 0, full=False)
    out = _probe(tmp_path, run, backend, backend or "unset")
    assert out["before"] == backend
    assert out["after_import"] == backend and out["after_draw"] == backend and out["after_report"] == backend, out
    assert out["figure"] == [True, True, True], out  # a Figure, not written, not held by pyplot
    assert out["cwd_unchanged"], out
    assert out["written"] and all((tmp_path / f"report_{backend or 'unset'}" / f).is_file() for f in out["written"])


def _png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_every_figure_function_returns_a_figure_and_writes_only_when_asked(tmp_path: Path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from reports.figures_common import ReportFigure
    from reports.figures_compare import fig_comparison
    from reports.figures_curves import fig_attribution, fig_circuit_timelines, fig_training_curves
    from reports.figures_maps import fig_filters, fig_implicit_attention, fig_patching
    from reports.figures_sources import fig_sources
    from reports.rundata import load_run_data
    from reports.summary import group_keys, regime_summary, run_numbers

    run = make_run(tmp_path / "runs" / "causal_all_s0", 0, full=True)
    rd = load_run_data(run)
    regimes = regime_summary([run_numbers(rd)], group_keys([rd], None), None)
    calls = {
        "fig1": (fig_training_curves, ([rd], "causal/all")),
        "fig2": (fig_circuit_timelines, (rd,)), "fig3": (fig_filters, (rd,)),
        "fig4": (fig_implicit_attention, (rd,)), "fig5": (fig_attribution, (rd,)),
        "fig6": (fig_patching, (rd,)), "fig7": (fig_comparison, (regimes,)), "fig8": (fig_sources, (rd,)),
    }
    work = tmp_path / "notebook"
    work.mkdir()
    monkeypatch.chdir(work)
    open_before = plt.get_fignums()
    snapshot = _files(tmp_path)
    names: dict[str, list[str]] = {}
    for key, (fn, args) in calls.items():
        res = fn(*args)  # no folder: draw only
        figs = res if isinstance(res, list) else [res]
        assert figs, key
        for f in figs:
            assert isinstance(f, Figure) and isinstance(f, ReportFigure), key
            assert f.axes and f.path is None and f.file.startswith(key) and f.file.endswith(".png"), (key, f.file)
            assert f.caption, key
        names[key] = [f.file for f in figs]
    assert _files(tmp_path) == snapshot  # nothing written anywhere (run folder, cwd, tmp)
    assert plt.get_fignums() == open_before  # no pyplot figure was opened (none left to leak)
    assert {k: len(v) for k, v in names.items() if len(v) != 1} == {"fig3": 2, "fig8": 2}
    # asked: out_dir writes exactly the figure's file (rendered through Agg's canvas without pyplot),
    # and .write does so later for a figure drawn without a folder
    out = tmp_path / "out"
    out.mkdir()
    for key, (fn, args) in calls.items():
        res = fn(*args, out_dir=out)
        for f in res if isinstance(res, list) else [res]:
            assert f.path == out / f.file and _png(f.path.read_bytes()), key
    assert sorted(p.name for p in out.iterdir()) == sorted(n for v in names.values() for n in v)
    later = fig_training_curves([rd], "causal/all")
    assert later.write(tmp_path / "later") == tmp_path / "later" / later.file
    assert _png((tmp_path / "later" / later.file).read_bytes())
