"""The four answers on built run directories with known outcomes (censored ones included):
analyze_group and the report agree, summary.json carries the schema, and the answers sit in
the first screen of the page at 1280 × 800 (headless Chromium)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import analyze_group
from analysis.answers import ANSWER_KEYS
from tests.test_report import _chromium, make_run, page_check

FIRST_SCREEN = ('<script>window.addEventListener("load",function(){var a=document.getElementById("answers");'
                'var r=a.getBoundingClientRect();var d=document.createElement("pre");d.id="hl-answers";'
                'd.textContent=JSON.stringify({top:r.top,bottom:r.bottom,w:window.innerWidth,h:window.innerHeight,'
                'items:a.querySelectorAll("li").length,toc:!!document.getElementById("toc")});'
                'document.body.appendChild(d);});</script>')


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from reports import write_report

    root = tmp_path_factory.mktemp("answers")
    runs = root / "runs"
    # causal/all: recall jump near 300, probed (mechanism measured)
    make_run(runs / "causal_all_s0", 0, mid=300.0, full=True)
    make_run(runs / "causal_all_s1", 1, mid=320.0, full=True)
    # causal/last: later, near 700; a third seed never jumps (censored at its last step, 1000)
    make_run(runs / "causal_last_s0", 0, loss="last", mid=700.0, full=False)
    make_run(runs / "causal_last_s1", 1, loss="last", mid=720.0, full=False)
    make_run(runs / "causal_last_s2", 2, loss="last", mid=5000.0, full=False)
    # noncausal/last near 650, not probed
    make_run(runs / "noncausal_last_s0", 0, causal=False, loss="last", mid=650.0, full=False)
    make_run(runs / "noncausal_last_s1", 1, causal=False, loss="last", mid=660.0, full=False)
    # a second causal/all experiment (another width): its own group, never pooled with the first
    make_run(runs / "causal_all_wide_s0", 0, mid=310.0, full=False, extra_cfg={})
    cfg = (runs / "causal_all_wide_s0" / "config.yaml")
    cfg.write_text(cfg.read_text().replace("d_model: 8", "d_model: 16"))
    group = analyze_group(sorted(p for p in runs.iterdir()), write_runs=True)
    out = root / "report"
    summary = write_report([runs], out)
    return {"group": group, "summary": summary, "out": out}


def test_answers_known_outcomes(built):
    a = built["summary"]["answers"]
    assert set(ANSWER_KEYS) <= set(a)
    for k in ANSWER_KEYS:
        assert a[k]["verdict"] and a[k]["rule"]
        for e in a[k]["by_regime"].values():
            assert {"value", "ci", "n", "censored"} <= set(e)
    s = a["sooner"]
    assert s["verdict"].startswith("sooner"), s["verdict"]
    by = s["by_regime"]
    # the curves rise 0.1 → 1.0 around step 300/320 over a baseline near 0.5: the recall jump is the
    # rise of the curve floored at the baseline, centred where it crosses ~0.75, about 25 steps later
    assert 300 < by["causal/all (d_model 8)"]["value"] < 370 and by["causal/all (d_model 8)"]["n"] == 2
    assert by["causal/last"]["n"] == 2 and by["causal/last"]["censored"] == 1
    assert 650 < by["causal/last"]["value"] < 770
    # steps to 0.99 are censored, never forced: these curves top out near 1.0 − noise
    for e in by.values():
        st = e["steps_to_99"]
        assert st["n"] + st["censored"] == (3 if e is by["causal/last"] else st["n"] + st["censored"])
    # the circuit is measured on the probed causal/all runs only; the others are censored
    assert a["mechanism"]["by_regime"]["causal/last"]["censored"] == 3
    assert a["mechanism"]["by_regime"]["causal/all (d_model 8)"]["n"] == 2
    # the two causal/all experiments are separate groups
    assert {"causal/all (d_model 8)", "causal/all (d_model 16)"} <= set(by)


def test_report_and_analyze_agree(built):
    g, s = built["group"]["answers"], built["summary"]["answers"]
    for k in ANSWER_KEYS:
        assert g[k]["verdict"] == s[k]["verdict"]
        assert json.dumps(g[k]["by_regime"], sort_keys=True, default=str) == \
            json.dumps(s[k]["by_regime"], sort_keys=True, default=str)


def test_answers_in_the_first_screen(built, tmp_path: Path):
    page = (built["out"] / "index.html").read_text(encoding="utf-8")
    assert page.index('id="answers"') < page.index('id="summary"') < page.index('id="figures"')
    assert "metrics.md#the-four-answers" in page
    got = page_check(_chromium(), tmp_path, built["out"], FIRST_SCREEN, "hl-answers", window="1280,800")
    assert got["w"] == 1280 and got["h"] <= 800 and got["items"] == 4 and got["toc"]
    assert got["top"] >= 0 and got["bottom"] <= got["h"], got
