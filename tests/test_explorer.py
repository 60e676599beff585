"""The report's training-time explorer (reports/explorer.py) on a tiny real run: train → capture →
probe → report, the per-checkpoint example terms that probe now stores in each metrics part, the
checkpoint choice, the note for a run without the data, and the page in headless Chromium
(moving the slider redraws the canvases and moves the accuracy-curve marker).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.capture import capture_run, example_row
from interp.decompose import source_example
from interp.probe_set import ProbeSet
from interp.run_metrics import MetricOptions, probe_run
from interp.swap import value_candidates
from models.rundir.layout import RunDir, capture_map_key
from models.rundir.run import load_checkpoint_model
from models.training.loop import train
from reports import write_report
from reports.explorer import MAX_STEPS, choose_steps, explorer_data
from reports.rundata import load_run_data
from tests.test_report import _chromium, page_check

# 23 checkpoints (every 2 steps of 44), so that the explorer has to choose ≤ 20 of them
TINY = ["schedule.steps=44", "checkpoints.every=2", "checkpoints.adaptive=false", "model.d_model=8",
        "data.num_examples=200", "data.num_test_examples=64", "eval.train_subset=32", "schedule.batch_size=16"]
# the explorer needs the source terms; the other metrics are left out to keep the test fast
OPTIONS = MetricOptions(probes=False, attribution=False, patching=False, swap=False, scores=False, n_sources=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("explorer")
    run = base / "runs" / "tiny_causal_all"
    train("quick_ar_causal_all", run, TINY, quiet=True)
    capture_run(run, n_probe=64, progress=False)
    probe_run(run, progress=False, floor=False, options=OPTIONS)
    out = base / "report"
    write_report([run], out)
    return {"run": run, "out": out}


def test_probe_stores_each_checkpoints_example_terms(built):
    """Every part holds the terms of the maps' example row, equal to `source_example` recomputed
    on that checkpoint; the explorer chooses ≤ 20 captured steps (first and last included) and
    carries those terms (rounded to 4 digits)."""
    run = RunDir(built["run"])
    rd = load_run_data(run.root)
    captured = run.captured_steps()
    assert len(captured) > MAX_STEPS
    data = explorer_data(rd)
    steps = data["steps"]
    assert len(steps) == MAX_STEPS and set(steps) <= set(captured)
    assert steps == sorted(set(steps)) and steps[0] == captured[0] and steps[-1] == captured[-1]
    ps = ProbeSet.load(run.probe_set)
    row = example_row(ps)
    assert data["row"] == row
    cfg = run.run_config()
    for i in (0, len(steps) // 2, len(steps) - 1):
        s = steps[i]
        stored = json.loads(run.part_file(s).read_text())["source_example"]
        want = source_example(load_checkpoint_model(run.root, s, cfg), ps, value_candidates(ps), row=row)
        assert stored["row"] == want["row"] == row and stored["tokens"] == want["tokens"]
        for got, ref, shown in zip(stored["layers"], want["layers"], data["terms"][i]):
            np.testing.assert_allclose(got["terms"], ref["terms"], rtol=1e-5, atol=1e-7)
            assert got["roles"] == ref["roles"]
            np.testing.assert_allclose(shown["terms"], ref["terms"], rtol=1e-3, atol=1e-6)
    # the maps travel as log-scaled bytes of the capture's maps: brightest cell where the map peaks
    arr, _ = run.read_capture(steps[-1], keep=lambda k: k == capture_map_key(0))
    q = np.frombuffer(base64.b64decode(data["maps"]["data"][-1][0]), dtype=np.uint8).reshape(data["L"], data["L"])
    m = np.abs(arr[capture_map_key(0)])
    assert q.flat[int(np.argmax(m))] == q.max() and (q[m <= 0] == 0).all()
    assert data["maps"]["data"][0] != data["maps"]["data"][-1]  # the map changed over training
    assert data["filters"] is not None and data["filters"]["lags"] == data["L"]  # causal: forward lags only
    page = (built["out"] / "index.html").read_text(encoding="utf-8")
    assert page.count('class="hl-explorer"') == 1 and "Training-time explorer" in page
    assert "cdn" not in page.lower() and "src=\"http" not in page and "<script src" not in page


def test_rerun_adds_a_missing_example_and_keeps_rows(built, tmp_path):
    """A matching part written before parts held the example gets only the example added."""
    run = RunDir(shutil.copytree(built["run"], tmp_path / "run"))
    s = run.captured_steps()[3]
    part = json.loads(run.part_file(s).read_text())
    old_example = part.pop("source_example")
    run.part_file(s).write_text(json.dumps(part))
    other = run.part_file(run.captured_steps()[4])
    before = other.stat().st_mtime_ns
    probe_run(run.root, progress=False, floor=False, options=OPTIONS)
    again = json.loads(run.part_file(s).read_text())
    assert again["rows"] == part["rows"] and again["signature"] == part["signature"]
    np.testing.assert_allclose(again["source_example"]["layers"][0]["terms"], old_example["layers"][0]["terms"],
                               rtol=1e-6, atol=1e-8)
    assert other.stat().st_mtime_ns == before  # complete parts are not rewritten


def test_choose_steps_dense_around_the_jump():
    steps = list(range(0, 2001, 5))  # 401 steps
    plain = choose_steps(steps, None)
    assert len(plain) == MAX_STEPS and plain[0] == 0 and plain[-1] == 2000
    jump = {"onset": 300.0, "midpoint": 400.0, "end": 500.0}
    dense = choose_steps(steps, jump)
    assert len(dense) == MAX_STEPS == len(set(dense)) and dense[0] == 0 and dense[-1] == 2000
    inside = lambda xs: sum(250 <= x <= 600 for x in xs)
    assert inside(dense) >= 10 > inside(plain)
    assert choose_steps([0, 5, 9], jump) == [0, 5, 9]


def test_run_without_captures_gets_a_note(built, tmp_path):
    """No captured maps: a one-line note naming `hyenalens capture`, no explorer, no crash."""
    bare = tmp_path / "bare_run"
    bare.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "run.json"):
        shutil.copy(built["run"] / name, bare / name)
    write_report([bare], tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"explorer \(causal/all\) not drawn: run bare_run has no captured maps; run "
                     r"`hyenalens capture [^`]*bare_run`", page)
    assert 'class="hl-explorer"' not in page


# The page's slider moved from a script: canvases' pixels before and after, and the marker's x
SLIDER_CHECK = ('<script>window.addEventListener("load",function(){var x=document.querySelector(".hl-explorer"),'
                's=x.querySelector(".hlx-slider"),cv=Array.prototype.slice.call(x.querySelectorAll("canvas"));'
                'function snap(){return cv.map(function(c){return c.toDataURL();});}'
                'var mk=function(){return x.querySelector("canvas[data-marker-x]").getAttribute("data-marker-x");};'
                'var a=snap(),ma=mk(),la=x.querySelector(".hlx-label").textContent;s.value="0";'
                's.dispatchEvent(new Event("input"));var b=snap(),mb=mk(),lb=x.querySelector(".hlx-label").textContent;'
                'var d=document.createElement("pre");d.id="hl-slidercheck";d.textContent=JSON.stringify({n:cv.length,'
                'changed:a.map(function(v,i){return v!==b[i];}),blank:b.map(function(v){return v.length<200;}),'
                'ma:ma,mb:mb,la:la,lb:lb});document.body.appendChild(d);});</script>')


def test_explorer_slider_in_headless_chromium(built, tmp_path):
    got = page_check(_chromium(), tmp_path, built["out"], SLIDER_CHECK, "hl-slidercheck")
    # accuracy, 2 maps, 2 filters, 2 bar charts; every one redrawn (the run changes from step 0 to 44)
    assert got["n"] == 7 and all(got["changed"]), got
    assert not any(got["blank"])
    assert float(got["mb"]) < float(got["ma"])  # the marker moved left, to the first step
    assert got["la"].startswith("step 44 (20 of 20)") and got["lb"].startswith("step 0 (1 of 20)")
