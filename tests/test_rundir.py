"""RunDir, the one owner of the run-directory format (docs/architecture.md): step names, the
staleness rule, the parsed config, finding runs; and a report that only reads (no torch, no
checkpoint, the stored maps) and names a run whose capture predates the maps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import UserError
from models.rundir.discover import discover_runs
from models.rundir.layout import RunDir, is_stale, step_name, step_of

REPO = Path(__file__).resolve().parents[1]


def test_step_names_have_one_spelling():
    run = RunDir("r")
    assert step_name(7) == "step_00000007.safetensors" and step_of(Path("x") / step_name(7)) == 7
    assert run.checkpoint_file(12).name == run.capture_file(12).name == "step_00000012.safetensors"
    assert run.part_file(12).name == "step_00000012.json" and run.state_file(3).name == "resume_00000003.safetensors"
    assert step_of(run.state_file(3), "resume") == 3 and step_of(run.state_file(3)) is None
    assert step_of("floor.json") is None and step_of("probe_set.safetensors") is None


def test_one_staleness_rule(tmp_path: Path):
    out, a, b = tmp_path / "out.json", tmp_path / "a", tmp_path / "b"
    assert is_stale(out, [])  # missing
    for p in (a, out):
        p.write_text("x")
    os.utime(a, ns=(10**18, 10**18))
    os.utime(out, ns=(10**18, 10**18))
    assert not is_stale(out, [a, b])  # an equal time is fresh; a missing input does not count
    os.utime(a, ns=(10**18 + 1, 10**18 + 1))
    assert is_stale(out, [a, b])


def test_read_config_is_the_one_parser(tmp_path: Path):
    run = RunDir(tmp_path)
    with pytest.raises(UserError, match="not a run directory"):
        run.read_config()
    run.config.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="YAML"):
        run.read_config()
    run.config.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        run.read_config()
    run.config.write_text("seed: 3\nmodel: {kind: hyena}\n")
    assert run.is_run() and run.read_config() == {"seed": 3, "model": {"kind": "hyena"}}


def test_discover_runs_finds_evaluated_runs_only(tmp_path: Path):
    def run(p: Path, metrics: bool = True, config: bool = True) -> Path:
        (p / "checkpoints" / "deep").mkdir(parents=True)
        if config:
            (p / "config.yaml").write_text("seed: 0\n")
        if metrics:
            (p / "metrics.jsonl").write_text('{"step": 0}\n')
        return p

    a = run(tmp_path / "sweep" / "runs" / "a")
    run(tmp_path / "sweep" / "runs" / "b", metrics=False)  # started, never evaluated: skipped
    c = run(tmp_path / "sweep" / "runs" / "c", config=False)  # evaluation records are what counts
    assert discover_runs([tmp_path / "sweep"]) == [(a, "runs/a"), (c, "runs/c")]
    assert discover_runs([a]) == [(a, "a")]
    with pytest.raises(UserError, match="holds no metrics.jsonl"):
        discover_runs([tmp_path / "sweep" / "runs" / "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metrics.jsonl"):
        discover_runs([tmp_path / "empty"])
    from reports import discover_runs as public

    assert public is discover_runs


@pytest.fixture(scope="module")
def analyzed_runs(tmp_path_factory) -> Path:
    from test_report import build_runs

    return build_runs(tmp_path_factory.mktemp("runs"))


def test_report_imports_neither_torch_nor_transformer_lens(analyzed_runs: Path, tmp_path: Path):
    code = ("import sys, json\nimport reports\nfrom reports import write_report\n"
            f"s = write_report([{str(analyzed_runs)!r}], {str(tmp_path / 'out')!r})\n"
            "print(json.dumps({'figures': [(f['figure'], f['status']) for f in s['figures']],\n"
            "                  'heavy': [m for m in ('torch', 'transformer_lens') if m in sys.modules]}))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    status = dict(out["figures"])
    assert status["figure 3 (causal_all_s0)"] == "ok" and status["figure 4 (causal_all_s0)"] == "ok"
    assert (tmp_path / "out" / "index.html").is_file()


def test_report_names_a_run_whose_capture_predates_the_maps(tmp_path: Path):
    from test_report import make_run

    from models.rundir.io import atomic_save_tensors, load_tensors
    from models.rundir.layout import CAPTURE_MAP_PREFIX
    from reports import load_run_data, write_report
    from reports.figures_common import FigureSkipped
    from reports.figures_maps import fig_implicit_attention

    run = RunDir(make_run(tmp_path / "runs" / "old_s0", 0, full=True))
    for s in run.captured_steps():  # as captures written before the maps were stored
        tensors, meta = load_tensors(run.capture_file(s))
        meta.pop("maps")
        atomic_save_tensors(run.capture_file(s), {k: v for k, v in tensors.items()
                                                  if not k.startswith(CAPTURE_MAP_PREFIX)}, meta)
    rd = load_run_data(run.root)
    want = f"run old_s0: capture predates the stored maps; rerun `hyenalens capture {run.root}`"
    assert want in rd.notes
    with pytest.raises(FigureSkipped, match="capture predates the stored maps"):
        fig_implicit_attention(rd, tmp_path)
    summary = write_report([run.root], tmp_path / "out")
    fig4 = [f for f in summary["figures"] if f["figure"].startswith("figure 4")]
    assert [f["status"] for f in fig4] == ["skipped"]
    assert any(f["figure"].startswith("figure 3") and f["status"] == "ok" for f in summary["figures"])
    assert "capture predates the stored maps" in (tmp_path / "out" / "index.html").read_text()
