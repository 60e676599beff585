"""Groups mean the same experiment (analysis/groups.py; issue 14 part 6): runs pool only when
their configs are equal apart from the seed, unfinished runs are named and left out of every
estimate, runs not probed stay in the accuracy estimates only, and a figure is drawn from a run
of the group that has its inputs."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_report import add_swap_source_rows, make_run, write_circuit_csv

from analysis import analyze_group
from analysis.groups import experiment_config, experiment_key, plan_groups, run_status
from models.errors import UserError

torch.set_num_threads(1)

BASE = {
    "seed": 0, "loss": "all",
    "model": {"kind": "hyena", "causal": True, "d_model": 32, "n_layers": 2},
    "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 64, "num_test_examples": 32},
    "optimizer": {"lr": 1e-3},
    "schedule": {"steps": 100, "batch_size": 16},
}


def cfg_with(**over) -> dict:
    """BASE with dotted overrides (`model__d_model=64`); a value of None removes the key."""
    cfg = copy.deepcopy(BASE)
    for key, value in over.items():
        *path, leaf = key.split("__")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return cfg


# ------------------------------------------------------------------ the experiment key
# (name, overrides of run a, overrides of run b, same experiment?, labels when grouped)
CASES = [
    ("seed only", {}, {"seed": 1}, True, ["causal/all"]),
    ("data.seed filled from seed", {"data__seed": 0}, {"seed": 1}, True, ["causal/all"]),
    ("data.seed filled from seed, both stated", {"data__seed": 0}, {"seed": 1, "data__seed": 1}, True, ["causal/all"]),
    ("one fixed data.seed over model seeds", {"data__seed": 7}, {"seed": 1, "data__seed": 7}, True, ["causal/all"]),
    ("a default stated or omitted", {"optimizer__weight_decay": 0.1, "model__d_inner": 128},
     {"seed": 1}, True, ["causal/all"]),
    ("a regime label and a note are not the experiment", {"regime": "causal/all", "note": "x"}, {"seed": 1},
     True, ["causal/all"]),
    ("data.seed fixed vs drawn per seed", {}, {"seed": 1, "data__seed": 0}, False,
     ["causal/all (data.seed 0)", "causal/all (data.seed –)"]),
    ("d_model", {}, {"seed": 1, "model__d_model": 64}, False,
     ["causal/all (d_model 32)", "causal/all (d_model 64)"]),
    ("lr", {}, {"seed": 1, "optimizer__lr": 3e-3}, False, ["causal/all (lr 0.001)", "causal/all (lr 0.003)"]),
    ("steps", {}, {"seed": 1, "schedule__steps": 200}, False, ["causal/all (steps 100)", "causal/all (steps 200)"]),
    ("loss", {}, {"seed": 1, "loss": "last"}, False, ["causal/all", "causal/last"]),
    ("task", {}, {"seed": 1, "data__task": "ih"}, False, ["ar causal/all", "ih causal/all"]),
]


def hand_run(path: Path, cfg: dict | None, last_step: int | None = None, *, total: int | None = None) -> Path:
    """A run directory with config.yaml, a metrics.jsonl ending at `last_step` (the config's
    schedule.steps by default) and, with `total`, run.json's schedule.total_steps."""
    path.mkdir(parents=True)
    if cfg is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    end = last_step if last_step is not None else (cfg or {}).get("schedule", {}).get("steps", 100)
    steps = sorted({0, end // 2, end})
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "test_acc_last": 0.1 + 0.8 * s / max(end, 1)})
                                                + "\n" for s in steps))
    if total is not None:
        info = {"seed": (cfg or {}).get("seed"), "schedule": {"total_steps": total}}
        (path / "run.json").write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("name,over_a,over_b,same,labels", CASES, ids=[c[0] for c in CASES])
def test_groups_pool_only_the_same_experiment(tmp_path: Path, name, over_a, over_b, same, labels):
    a, b = cfg_with(**over_a), cfg_with(**over_b)
    assert (experiment_key(a) == experiment_key(b)) is same, (experiment_config(a), experiment_config(b))
    runs = [hand_run(tmp_path / "a_s0", a), hand_run(tmp_path / "b_s1", b)]
    plan = plan_groups(runs)
    assert sorted(plan["groups"]) == sorted(labels)
    assert plan["excluded"] == [] and len(plan["groups"]) == (1 if same else 2)
    for label, paths in plan["groups"].items():
        info = plan["info"][label]
        assert len(paths) == (2 if same else 1)
        assert info["experiment_key"] == experiment_key(yaml.safe_load(Path(paths[0], "config.yaml").read_text()))
        if not same:  # the fields that tell the groups apart, with this group's values
            assert info["config_diff"], label
    res = analyze_group(runs, write_runs=False)
    assert sorted(res["groups"]) == sorted(labels) and res["excluded"] == []
    assert {k: g["n_runs"] for k, g in res["groups"].items()} == {k: len(v) for k, v in plan["groups"].items()}
    assert all(g["experiment_key"] == plan["info"][k]["experiment_key"] for k, g in res["groups"].items())


def test_experiment_key_reads_a_resolved_config_like_the_yaml_it_came_from(tmp_path: Path):
    """config.yaml as training stores it (every default filled) is the same experiment as the
    short YAML it came from, apart from its seed."""
    from models.config import config_yaml, resolve_config, validate_config

    stored = yaml.safe_load(config_yaml(resolve_config(validate_config(BASE), 10, 18)))
    assert "d_inner" in stored["model"] and stored["data"]["seed"] == 0 and stored["model"]["vocab_size"] == 10
    short = cfg_with(model__l_max=18)  # l_max is derived from the data's length: given here, as stored
    assert experiment_key(stored) == experiment_key(short) == experiment_key(dict(short, seed=5))
    assert experiment_key(stored) != experiment_key(cfg_with(model__l_max=18, model__n_layers=1))
    with pytest.raises(UserError, match="mapping"):
        experiment_key(["not", "a", "mapping"])


def test_a_run_without_config_is_grouped_by_its_name(tmp_path: Path):
    runs = [hand_run(tmp_path / f"solo_seed{s}", None, 50) for s in (0, 1)] + [hand_run(tmp_path / "x_s0", BASE)]
    plan = plan_groups(runs)
    assert {k: len(v) for k, v in plan["groups"].items()} == {"solo": 2, "causal/all": 1}
    assert plan_groups(runs, group_by="run")["groups"].keys() == {"solo", "x"}
    with pytest.raises(UserError, match="group_by"):
        plan_groups(runs, group_by="seed")


# ------------------------------------------------------------------ a run's status
def _capture(run: Path, step: int = 0, later: bool = False) -> None:
    f = run / "capture" / f"step_{step:08d}.safetensors"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"")
    if later:  # written after metrics.csv: the probe results are stale
        t = (run / "analysis" / "metrics.csv").stat().st_mtime_ns + 10**9
        os.utime(f, ns=(t, t))


def _csv(run: Path) -> None:
    (run / "analysis").mkdir(exist_ok=True)
    (run / "analysis" / "metrics.csv").write_text("step,metric,layer,value\n0,prev_token_score,0,0.1\n")


# (name, build(run), finished, captured, probed, reason pattern)
STATUS = [
    ("finished and probed", lambda r: (_capture(r), _csv(r)), True, True, True, None),
    ("total from run.json", lambda r: None, False, False, False, r"stopped at step 40 of 100"),
    ("not captured", lambda r: None, True, False, False, r"^not captured \(run `hyenalens capture .*`\)$"),
    ("captured, not probed", lambda r: _capture(r), True, True, False, r"^not probed \(run `hyenalens probe .*`\)$"),
    ("probe older than a capture", lambda r: (_csv(r), _capture(r, 50, later=True)), True, True, False,
     r"^probe results older than its captures \(rerun `hyenalens probe .*`\)$"),
    ("probed, captures since deleted", lambda r: _csv(r), True, False, True, None),
]


@pytest.mark.parametrize("name,build,finished,captured,probed,reason", STATUS, ids=[c[0] for c in STATUS])
def test_run_status(tmp_path: Path, name, build, finished, captured, probed, reason):
    unfinished = name == "total from run.json"
    run = hand_run(tmp_path / "r", cfg_with(schedule__steps=None), 40 if unfinished else 100, total=100)
    build(run)
    st = run_status(run)
    assert (st["finished"], st["captured"], st["probed"]) == (finished, captured, probed)
    assert st["accuracy"] is finished and st["circuit"] is (finished and probed)
    assert (st["reason"] is None) if reason is None else re.search(reason, st["reason"]), st["reason"]
    assert st["total_steps"] == 100 and st["total_from"] == "run.json schedule.total_steps"


def test_status_without_a_known_total_counts_as_finished(tmp_path: Path):
    st = run_status(hand_run(tmp_path / "r", cfg_with(schedule__steps=None), 40))
    assert st["finished"] and st["total_steps"] is None and "unknown" in st["note"]
    st = run_status(hand_run(tmp_path / "q", BASE, 40))  # the config's schedule.steps: 100
    assert not st["finished"] and st["reason"] == "stopped at step 40 of 100"


# ------------------------------------------------------------------ real runs, stopped early
TINY = {
    "seed": 0, "loss": "all",
    "model": {"kind": "hyena", "causal": True, "d_model": 8, "n_layers": 1, "filter_order": 8},
    "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 64, "num_test_examples": 32},
    "schedule": {"steps": 12, "batch_size": 16},
    "checkpoints": {"log_count": 0, "every": 4, "adaptive": False},
    "eval": {"train_subset": 32},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two finished tiny runs and one stopped by --max-steps, in one folder."""
    from models.training.loop import train

    root = tmp_path_factory.mktemp("groups") / "runs"
    for seed in (0, 1):
        assert train(dict(TINY, seed=seed), root / f"tiny_s{seed}", quiet=True).finished
    part = train(dict(TINY, seed=2), root / "tiny_s2", quiet=True, max_steps=5)
    assert not part.finished and part.step == 8
    return root


def test_an_unfinished_run_is_excluded_with_its_reason(trained: Path, tmp_path: Path):
    from reports import write_report

    runs = sorted(trained.iterdir())
    res = analyze_group(runs, write_runs=False)
    assert list(res["groups"]) == ["causal/all"]
    assert sorted(res["groups"]["causal/all"]["runs"]) == ["tiny_s0", "tiny_s1"]
    assert res["groups"]["causal/all"]["n_runs"] == 2
    assert res["excluded"] == [{"run": "tiny_s2", "reason": "stopped at step 8 of 12"}]

    summary = write_report([trained], tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert summary["regimes"]["causal/all"]["n_runs"] == 2 and summary["regimes"]["causal/all"]["seeds"] == [0, 1]
    assert summary["excluded"] == [{"run": "tiny_s2", "reason": "stopped at step 8 of 12"}]
    # named right under the run table, with its reason, and drawn in no figure
    runs_table = page.index("<h3 id=\"runs\">Runs</h3>")
    note = page.index('id="excluded-runs"')
    assert runs_table < note and "<b>tiny_s2</b>: stopped at step 8 of 12" in page[note:]
    assert not any("tiny_s2" in f["figure"] for f in summary["figures"])


# ------------------------------------------------------------------ accuracy yes, circuit no
def _curves_run(path: Path, seed: int, mid: float, swap: bool) -> Path:
    """A finished run with sigmoid accuracy curves (jump at `mid`) and, with `swap`, the swap
    test's selectivity rising at mid / 3 in a fresh metrics.csv."""
    steps = np.unique(np.round(np.geomspace(1, 3000, 30)).astype(int))
    steps = np.concatenate([[0], steps])
    sig = 1 / (1 + np.exp(-(np.log1p(steps) - np.log1p(mid)) / 0.3))
    hand_run(path, cfg_with(seed=seed, schedule__steps=int(steps[-1]), data__num_examples=32,
                            data__num_test_examples=16), int(steps[-1]))
    with open(path / "metrics.jsonl", "w") as f:
        for s, v in zip(steps, sig):
            rec = {"step": int(s), "test_acc_last": 0.05 + 0.94 * v, "train_acc_all": 0.3 + 0.3 * v}
            f.write(json.dumps(rec) + "\n")
    if swap:
        sw = 1 / (1 + np.exp(-(np.log1p(steps) - np.log1p(mid / 3)) / 0.3))
        (path / "analysis").mkdir()
        (path / "analysis" / "metrics.csv").write_text(
            "step,metric,layer,value\n" + "".join(f"{s},recall_swap_selectivity,-1,{0.9 * v:.5f}\n"
                                                    for s, v in zip(steps, sw)))
    return path


def test_a_run_not_probed_counts_for_accuracy_not_for_the_recall_circuit(tmp_path: Path):
    from reports import write_report

    runs = [_curves_run(tmp_path / "runs" / f"r_s{s}", s, mid, swap=True) for s, mid in ((0, 300.0), (1, 400.0))]
    runs.append(_curves_run(tmp_path / "runs" / "r_s2", 2, 500.0, swap=False))  # never probed
    runs.append(_curves_run(tmp_path / "runs" / "r_s3", 3, 600.0, swap=True))
    _capture(runs[-1], 10, later=True)  # captured again after probing: its swap curve is stale
    res = analyze_group(runs)  # each run's formation.json too: the report reads r_s3's swap lead/lag there
    (label, g), = res["groups"].items()
    assert label == "causal/all" and g["n_runs"] == 4 and res["excluded"] == []
    assert g["steps_to_99_test_acc"]["n"] == 4  # the accuracy estimates hold every finished run
    assert g["seed_claim"]["train_minus_test_midpoint_log_steps"]["n"] == 4
    rc = g["recall_circuit"]
    assert rc["midpoint"]["n"] == 2 and rc["runs_without"] == 2  # the stale one would make it 3
    assert 90 <= rc["midpoint"]["lo"] <= rc["midpoint"]["hi"] <= 140
    reasons = {a["run"]: a["reason"] for a in g["accuracy_only"]}
    assert reasons.keys() == {"r_s2", "r_s3"}
    assert reasons["r_s2"].startswith("not captured") and reasons["r_s3"].startswith("probe results older")

    summary = write_report([tmp_path / "runs"], tmp_path / "report", group=res)
    s = summary["regimes"]["causal/all"]
    assert s["n_runs"] == 4 and s["midpoint_train_acc_all"]["n"] == 4
    assert {a["run"] for a in s["accuracy_only"]} == {"r_s2", "r_s3"}
    assert not any("recall_swap" in m for r in summary["runs"] if r["name"] in ("r_s2", "r_s3") for m in r["lead_lag"])
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    acc = page.index('id="accuracy-only-runs"')
    assert "<b>r_s2</b> (causal/all): not captured" in page[acc:] and "<b>r_s3</b> (causal/all)" in page[acc:]


# ------------------------------------------------------------------ figures from a run with the data
def test_a_figure_is_drawn_from_a_run_of_the_group_that_has_its_inputs(tmp_path: Path):
    from reports import write_report

    root = tmp_path / "runs"
    make_run(root / "g_s0", 0, full=False)  # the lowest seed: no captures, no metrics.csv
    full = make_run(root / "g_s1", 1, full=True)  # captures; its metrics.csv removed below
    for f in ("metrics.csv", "formation.json", "source_example.json"):
        (full / "analysis" / f).unlink()
    probed = make_run(root / "g_s2", 2, full=False)  # probed (metrics.csv), never captured
    write_circuit_csv(probed, 400.0)
    add_swap_source_rows(probed, 400.0)
    summary = write_report([root], tmp_path / "report")
    assert list(summary["regimes"]) == ["causal/all"] and summary["regimes"]["causal/all"]["n_runs"] == 3
    rec = {f["figure"].split(" (")[0]: f for f in summary["figures"]}  # the last record of each figure
    runs_of: dict[str, set] = {}
    for f in summary["figures"]:  # each figure's records (one per file) name one run: no stray skip
        runs_of.setdefault(f["figure"].split(" (")[0], set()).add(f["figure"])
    assert all(len(v) == 1 for v in runs_of.values()), runs_of
    # figure 2 (metrics.csv) from the probed run; figures 3, 4 (captures) from the captured one
    assert rec["figure 2"]["status"] == "ok" and rec["figure 2"]["figure"] == "figure 2 (g_s2)"
    for n in ("figure 3", "figure 4"):
        assert rec[n]["status"] == "ok" and rec[n]["figure"] == f"{n} (g_s1)", rec[n]
        assert rec[n]["instead_of"] == [f"{n} (g_s2)"]
    assert not any("g_s0" in f["figure"] for f in summary["figures"])  # the run without data draws none
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "figure 4 is drawn from run g_s1: g_s2 lacks its inputs." in page
