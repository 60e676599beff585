"""Formation analysis over run directories, and bootstrap CIs over seeds
(analysis/formation.py, analysis/bootstrap.py; science.md, "Timing a transition")."""
from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

import analysis
from analysis import analyze_group, analyze_run, bootstrap_ci, curve_name, read_curves, run_info
from models.errors import UserError

LN9 = math.log(9.0)
STEPS = np.unique(np.concatenate([[0], np.round(np.geomspace(1, 20000, 20))]))


def logistic(steps, mid, width, low, high):
    return low + (high - low) * expit((np.log1p(steps) - math.log1p(mid)) / (width / (2 * LN9)))


def make_run(path, *, test_mid=600.0, train_mid=600.0, seed=0, config=None, csv_rows=None,
             final_acc=0.95, baseline=0.25):
    """A run directory as training writes it: metrics.jsonl (with its no-recall baseline),
    optional config.yaml and analysis/metrics.csv. Seeded noise sd 0.01 on the accuracies."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    noise = lambda: 0.01 * rng.standard_normal(STEPS.size)  # noqa: E731
    test = np.clip(logistic(STEPS, test_mid, 0.8, 0.25, final_acc) + noise(), 0, 1)
    train = logistic(STEPS, train_mid, 0.8, 0.40, 0.59) + noise()
    with open(path / "metrics.jsonl", "w") as f:
        for i, s in enumerate(STEPS):
            f.write(json.dumps({"step": int(s), "epoch": 0, "train_loss": None,
                                "test_acc_last": float(test[i]),
                                "train_acc_all": float(train[i]),
                                "test_acc_last_baseline": baseline}) + "\n")
    if config is not None:
        (path / "config.yaml").write_text(config)
    if csv_rows is not None:
        (path / "analysis").mkdir()
        (path / "analysis" / "metrics.csv").write_text(csv_rows)
    return path


def csv_for(steps, lead_mid=300.0):
    """recall score of layer 1 (target values) rising before the jump; a flat probe curve."""
    rows = ["step,metric,layer,value,target,hook,role,control"]
    rec = logistic(steps, lead_mid, 0.8, 0.05, 0.6)
    for s, r in zip(steps, rec):
        rows.append(f"{int(s)},recall_score,1,{r:.5f},values,,,")
        rows.append(f"{int(s)},probe_acc,0,0.31,,blocks.0.hook_resid_post,query,False")
    return "\n".join(rows) + "\n"


def test_analyze_run_writes_formation_json(tmp_path):
    cfg = "seed: 3\nloss: all\nmodel:\n  kind: hyena\n  causal: true\n"
    run = make_run(tmp_path / "r", config=cfg, csv_rows=csv_for(STEPS))
    res = analyze_run(run)
    on_disk = json.loads((run / "analysis" / "formation.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert {"transitions", "recall_jump", "lead_lag", "seed_claim", "run"} <= set(on_disk)
    assert not list((run / "analysis").glob("*.tmp"))  # atomic write left no temp file
    tr = on_disk["transitions"]
    (jump,) = tr["test_acc_last"]
    assert {"onset", "midpoint", "end"} <= set(jump)
    assert abs(math.log1p(jump["midpoint"]) - math.log1p(600)) < 0.1
    # the recall jump is read on the curve floored at the baseline (0.25, at the curve's start): the same rise
    assert on_disk["recall_jump"]["midpoint"] == pytest.approx(jump["midpoint"], rel=0.01)
    assert on_disk["recall_jump"]["phase"] == 0
    assert on_disk["no_recall_baseline"] == {"value": 0.25, "margin": 0.1,
                                             "source": "metrics.jsonl (test_acc_last_baseline)"}
    # metrics.csv curves, by their readable names; the flat probe has no transition
    assert tr["probe_acc@L0/blocks.0.hook_resid_post:query"] == []
    ll = on_disk["lead_lag"]["recall_score_values@L1"]
    assert ll["steps"] < 0 and ll["log_steps"] == pytest.approx(math.log(301 / 601), abs=0.1)
    assert "probe_acc@L0/blocks.0.hook_resid_post:query" not in on_disk["lead_lag"]
    sc = on_disk["seed_claim"]
    assert sc["status"] == "measured" and abs(sc["train_minus_test_midpoint_log_steps"]) < 0.1
    assert on_disk["run"]["regime"] == "causal/all" and on_disk["run"]["seed"] == 3
    assert on_disk["steps_to_99_test_acc"] is None  # the curve tops out at 0.95


def test_analyze_run_no_jump_is_reported_as_none(tmp_path):
    run = make_run(tmp_path / "flat", test_mid=1e9, train_mid=1e9)  # nothing happens
    res = analyze_run(run, write=False)
    assert res["transitions"]["test_acc_last"] == [] and res["recall_jump"] is None
    assert res["lead_lag"] == {} and res["seed_claim"]["status"].startswith("no transition")
    assert not (run / "analysis" / "formation.json").exists()


def test_metrics_jsonl_resume_duplicates_and_torn_last_line(tmp_path):
    run = make_run(tmp_path / "r")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    stale = json.loads(lines[-1]) | {"test_acc_last": 0.0}  # re-logged after a resume
    text = "\n".join(lines[:-1] + [json.dumps(stale), lines[-1]]) + '\n{"step": 99'
    (run / "metrics.jsonl").write_text(text)
    from analysis import read_curves
    steps, acc = read_curves(run)["test_acc_last"]
    assert len(steps) == len(STEPS) and acc[-1] > 0.9  # last record per step wins


@pytest.mark.parametrize("setup,match", [
    (lambda d: None, "metrics.jsonl"),
    (lambda d: (d / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n'), ":2:"),
    (lambda d: ((d / "metrics.jsonl").write_text('{"step": 1}\n'),
                (d / "config.yaml").write_text("model: [unclosed\n")), "YAML"),
    (lambda d: ((d / "metrics.jsonl").write_text('{"step": 1}\n'), (d / "analysis").mkdir(),
                (d / "analysis" / "metrics.csv").write_text("step,metric\n1,a\n")), "layer"),
])
def test_bad_run_directory_is_a_user_error(tmp_path, setup, match):
    (tmp_path / "r").mkdir()
    setup(tmp_path / "r")
    with pytest.raises(UserError, match=match) as e:
        analyze_run(tmp_path / "r")
    assert "\n" not in str(e.value)


def test_missing_run_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        analyze_run(tmp_path / "nope")


def test_regimes_and_curve_names(tmp_path):
    for cfg, regime in [("loss: last\nmodel: {kind: hyena, causal: false}\n", "noncausal/last"),
                        ("loss: all\nmodel: {kind: attention, causal: true}\n",
                         "attention/causal/all"),
                        ("regime: custom/x\n", "custom/x"), ("model: {kind: hyena}\n", None)]:
        d = tmp_path / str(abs(hash(cfg)))
        d.mkdir()
        (d / "config.yaml").write_text(cfg)
        assert run_info(d)["regime"] == regime
    assert curve_name("recall_score", "1", target="values") == "recall_score_values@L1"
    assert curve_name("probe", "2", "hook_y", "query") == "probe@L2/hook_y:query"
    assert curve_name("filter_len", "") == "filter_len"


def test_analyze_group_bootstraps_over_seeds(tmp_path):
    same = "loss: all\nmodel: {kind: hyena, causal: true}\n"
    late = "loss: last\nmodel: {kind: hyena, causal: true}\n"
    dirs = []
    for seed, mid in enumerate([500.0, 600.0, 700.0]):
        # causal/all: train and test jump together; causal/last: train jumps 4× later
        dirs.append(make_run(tmp_path / f"all_s{seed}", test_mid=mid, train_mid=mid, seed=seed,
                             config=same, final_acc=0.995))
        dirs.append(make_run(tmp_path / f"last_s{seed}", test_mid=mid, train_mid=4 * mid,
                             seed=seed, config=late))
    out = tmp_path / "group.json"
    res = analyze_group(dirs, out_path=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    g_all, g_last = res["groups"]["causal/all"], res["groups"]["causal/last"]
    assert g_all["n_runs"] == 3 and sorted(g_all["runs"]) == ["all_s0", "all_s1", "all_s2"]
    jm = g_all["recall_jump_midpoint"]["steps"]
    assert jm["n"] == 3 and jm["lo"] <= 600 <= jm["hi"] and jm["lo"] < jm["hi"]
    assert g_all["seed_claim"]["verdict"] == "consistent"
    assert g_last["seed_claim"]["verdict"] == "not consistent"
    off = g_last["seed_claim"]["train_minus_test_midpoint_log_steps"]
    assert off["lo"] > math.log(2) and off["n"] == 3
    assert g_all["lead_lag"]["train_acc_all"]["log_steps"]["n"] == 3
    assert g_all["steps_to_99_test_acc"]["reached"] == 3
    assert g_last["steps_to_99_test_acc"]["steps"] == "not reached"
    assert (tmp_path / "all_s0" / "analysis" / "formation.json").exists()


def test_analyze_group_never_pools_tasks(tmp_path):
    cfg = "loss: all\nmodel: {kind: hyena, causal: true}\ndata: {task: TASK}\n"
    dirs = [make_run(tmp_path / f"{task}_s{seed}", seed=seed, config=cfg.replace("TASK", task))
            for task in ("ar", "ih") for seed in (0, 1)]
    res = analyze_group(dirs)
    assert {k: sorted(g["runs"]) for k, g in res["groups"].items()} == {
        "ar causal/all": ["ar_s0", "ar_s1"], "ih causal/all": ["ih_s0", "ih_s1"]}
    # one task: the plain regime name, as before
    assert list(analyze_group(dirs[:2])["groups"]) == ["causal/all"]


def test_group_without_config_groups_by_name_and_one_run_has_no_ci(tmp_path):
    res = analyze_group([make_run(tmp_path / "solo_seed0")], group_by="regime")
    g = res["groups"]["solo"]
    assert g["recall_jump_midpoint"]["steps"]["n"] == 1 and g["recall_jump_midpoint"]["steps"]["lo"] is None
    assert g["seed_claim"]["verdict"] == "undetermined"
    with pytest.raises(UserError):
        analyze_group([], group_by="regime")


# --- bootstrap -----------------------------------------------------------------------------
def test_bootstrap_ci_contains_true_mean_and_reports_n():
    est = bootstrap_ci(np.random.default_rng(0).normal(3.0, 1.0, 40))
    assert est.lo < 3.0 < est.hi and est.n == 40 and est.method == "BCa"
    assert est == bootstrap_ci(np.random.default_rng(0).normal(3.0, 1.0, 40))  # seeded


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(100):
        e = bootstrap_ci(rng.exponential(2.0, 30), n_resamples=999, seed=int(rng.integers(1e9)))
        hits += e.lo <= 2.0 <= e.hi
    assert hits >= 85  # nominal 95; bootstrap CIs under-cover a little at n = 30


def test_bootstrap_small_n():
    one = bootstrap_ci([5.0])
    assert (one.value, one.lo, one.hi, one.n) == (5.0, None, None, 1) and "n=1" in one.note
    three = bootstrap_ci([1.0, None, 2.0, float("nan"), 4.0])
    assert three.n == 3 and three.lo <= three.value <= three.hi and "n=3" in three.note
    same = bootstrap_ci([2.0, 2.0])
    assert (same.lo, same.hi, same.n) == (2.0, 2.0, 2)
    assert bootstrap_ci([]).value is None


def test_analysis_imports_only_lower_layers():
    """architecture.md: analysis imports models and interp only (never reports), and no
    plotting library. Checked on the source, so other tests' imports cannot mask it."""
    allowed = {"models", "interp", "analysis", "numpy", "scipy", "pandas", "yaml"}
    for path in Path(analysis.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, (path.name, name)


def test_control_values_do_not_split_a_curve(tmp_path):
    """interp writes the control accuracy beside each probe row: it is a value, not a curve id."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "test_acc_last": 0.1}\n')
    (tmp_path / "analysis").mkdir()
    rows = ["step,metric,layer,value,hook,role,control"]
    rows += [f"{s},probe_answer,1,{0.3 + s / 100},blocks.1.hook_resid_post,query,{0.2 + s / 1000}" for s in range(10)]
    (tmp_path / "analysis" / "metrics.csv").write_text("\n".join(rows) + "\n")
    curves = {k: v for k, v in read_curves(tmp_path).items() if k.startswith("probe_answer")}
    assert list(curves) == ["probe_answer@L1/blocks.1.hook_resid_post:query"]
    assert len(curves["probe_answer@L1/blocks.1.hook_resid_post:query"][0]) == 10


def test_analyze_group_reuses_fresh_formation_and_redoes_stale(tmp_path, monkeypatch):
    import os

    import analysis.formation as formation

    cfg = "seed: 0\nloss: all\nmodel:\n  kind: hyena\n  causal: true\n"
    run = make_run(tmp_path / "r", config=cfg, csv_rows=csv_for(STEPS))
    analyze_run(run)
    calls = []
    real = formation.analyze_run
    monkeypatch.setattr(formation, "analyze_run", lambda d, **kw: calls.append(d) or real(d, **kw))
    analyze_group([run])
    assert calls == []  # formation.json is newer than every input: read, not recomputed
    csv = run / "analysis" / "metrics.csv"
    later = (run / "analysis" / "formation.json").stat().st_mtime_ns + 10**9
    os.utime(csv, ns=(later, later))  # a new probe result makes it stale
    analyze_group([run])
    assert calls == [run]


def _swap_csv(steps, mid):
    rows = ["step,metric,layer,value,target,hook,role,control"]
    for s, v in zip(steps, logistic(steps, mid, 0.8, 0.0, 0.9)):
        rows.append(f"{int(s)},recall_swap_selectivity,-1,{v:.5f},,,,")
    return "\n".join(rows) + "\n"


def test_recall_circuit_is_timed_by_swap_selectivity_against_the_jump(tmp_path):
    run = make_run(tmp_path / "r", test_mid=600.0, csv_rows=_swap_csv(STEPS, 150.0))
    rc = analyze_run(run, write=False)["recall_circuit"]
    assert rc["status"] == "measured" and rc["curve"] == "recall_swap_selectivity@L-1"
    assert abs(math.log1p(rc["midpoint"]) - math.log1p(150)) < 0.15
    assert rc["steps"] < 0 and rc["log_steps"] == pytest.approx(math.log(151 / 601), abs=0.15)
    # without the swap test (no metrics.csv) the field says what is missing
    bare = analyze_run(make_run(tmp_path / "bare"), write=False)["recall_circuit"]
    assert bare["midpoint"] is None and bare["status"].startswith("not measured")


def test_analyze_group_bootstraps_the_recall_circuit(tmp_path):
    cfg = "seed: {s}\nloss: all\nmodel:\n  kind: hyena\n  causal: true\n"
    runs = [make_run(tmp_path / f"r{s}", seed=s, config=cfg.format(s=s),
                     csv_rows=_swap_csv(STEPS, mid)) for s, mid in enumerate((100.0, 150.0, 220.0))]
    runs.append(make_run(tmp_path / "r9", seed=9, config=cfg.format(s=9)))  # never probed
    g = analyze_group(runs, write_runs=False)["groups"]["causal/all"]["recall_circuit"]
    assert g["runs_without"] == 1 and g["midpoint"]["n"] == 3
    assert 90 <= g["midpoint"]["lo"] <= g["midpoint"]["value"] <= g["midpoint"]["hi"] <= 240
    assert g["steps"]["hi"] < 0  # every seed's circuit forms before its jump at 600
