"""End to end: `hyenalens demo --quick` (the 2-minute smoke version of the main job, as a user
runs it) trains, captures, probes, analyzes and reports; a rerun resumes."""
import json

import pytest

from hyenalens.cli import main


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--workers", "2", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].endswith("index.html") and len(printed) == 6  # five summary lines + the path
    page = (out / "report" / "index.html").read_text()
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {"causal/all", "causal/last", "noncausal/last"} <= set(summary["regimes"])
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 10 and all((out / "runs" / r / "analysis" / "formation.json").is_file() for r in runs)
    for img in summary["figures"]:
        if img.get("status") == "ok":
            assert (out / "report" / img["file"]).is_file() and img["file"] in page

    # a rerun finds every run finished and every checkpoint captured: no checkpoint is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
