"""`hyenalens sweep`: a tiny 2 regimes x 2 seeds sweep on the local backend and on a Ray cluster
started here, a rerun that does no work, an interrupted run that resumes, per-group bootstrap
CIs from `hyenalens analyze SWEEP_DIR`, and bad input as one line, exit 2, nothing written."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyenalens.cli import main
from hyenalens.sweep import analyze_sweep, run_sweep
from hyenalens.pipeline import DEMO
from models.config.schema import validate_config
from models.config.source import apply_overrides, read_config_source
from models.rundir.io import read_jsonl
from reports.study import RUN_COLUMNS
from models.config.sweep import expand, load_sweep
from models.training.loop import train

REPO = Path(__file__).resolve().parents[1]
# 48 steps: long enough that test accuracy leaves 0 (the untrained model never answers with a
# value token) in every run, too short for recall: no run has a recall jump (stage one only)
TINY = """\
seed: 0
loss: all
model: {kind: hyena, causal: true, d_model: 16, n_layers: 2, filter_order: 16, embed_dropout: 0.0}
data: {task: ar, vocab_size: 10, input_seq_len: 16, num_examples: 512, num_test_examples: 256}
optimizer: {lr: 3.0e-3}
schedule: {steps: 48, batch_size: 16, decay: constant}
checkpoints: {log_count: 8, every: 8, adaptive: false}
eval: {train_subset: 64}
"""
SWEEP = """\
base: tiny.yaml
seeds: 2
regimes:
  causal_all: {}
  noncausal_last: {loss: last, model: {causal: false}}
grid:
  data.vocab_size: [10]
"""
GROUPS = {"causal_all__vocab_size=10": "causal/all", "noncausal_last__vocab_size=10": "noncausal/last"}
NAMES = sorted(f"{g}__s{s}" for g in GROUPS for s in (0, 1))


def _spec(folder: Path, sweep: str = SWEEP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "sweep.yaml").write_text(sweep)
    return folder / "sweep.yaml"


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _curves(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sweep = _spec(root / "spec")
    assert main(["sweep", str(sweep), "--out", str(root / "local"), "--workers", "2", "--quiet"]) == 0
    return sweep, root / "local"


def test_local_sweep_writes_a_complete_run_directory_per_point(local):
    _, out = local
    assert sorted(p.name for p in (out / "runs").iterdir()) == NAMES
    for name in NAMES:
        run = out / "runs" / name
        total = json.loads((run / "run.json").read_text())["schedule"]["total_steps"]
        steps = [c["step"] for c in json.loads((run / "checkpoints" / "index.json").read_text())["checkpoints"]]
        assert steps[-1] == total == 48
        assert all((run / "capture" / f"step_{s:08d}.safetensors").is_file() for s in steps)
        assert (run / "analysis" / "metrics.csv").is_file() and (run / "analysis" / "formation.json").is_file()
        status = json.loads((out / "status" / f"{name}.json").read_text())
        assert status["finished"] and status["steps_trained"] == 48 and status["resumed_from"] is None
    record = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in record["points"]] == NAMES
    assert {p["config"]["seed"] for p in record["points"]} == {0, 1}


def test_rerun_does_no_work(local):
    sweep, out = local
    before = _stamps(out)
    res = run_sweep(str(sweep), out, workers=2, quiet=True)
    assert res["ran"] == [] and res["failed"] == []
    assert sorted(r["name"] for r in res["skipped"]) == NAMES
    assert all(r["steps_trained"] == 0 for r in res["skipped"])
    assert _stamps(out) == before  # no file written, not even the group analysis


def test_an_interrupted_run_resumes_and_ends_bit_identical(local, tmp_path):
    sweep, out = local
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # copy2 keeps mtimes, so the other runs stay done
    name = NAMES[0]
    shutil.rmtree(copy / "runs" / name)
    (copy / "status" / f"{name}.json").unlink()
    point = next(p for p in expand(load_sweep(str(sweep))) if p.name == name)
    cut = train(point.config, copy / "runs" / name, max_steps=20, quiet=True)  # "killed" after step 20
    assert not cut.finished
    res = run_sweep(str(sweep), copy, workers=1, quiet=True)
    assert [r["name"] for r in res["ran"]] == [name] and len(res["skipped"]) == 3
    ran = res["ran"][0]
    assert ran["resumed_from"] == cut.step and ran["steps_trained"] == 48 - cut.step > 0
    assert _curves(copy / "runs" / name) == _curves(out / "runs" / name)


def test_a_sweep_point_whose_runs_are_all_unfinished_is_named_not_pooled(local, tmp_path):
    sweep, out = local
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "analysis", ignore_errors=True)
    points = {p.name: p for p in expand(load_sweep(str(sweep)))}
    cut = [n for n in NAMES if n.startswith("causal_all")]
    for name in cut:  # both seeds of one point stopped early, as after a kill
        shutil.rmtree(copy / "runs" / name)
        assert not train(points[name].config, copy / "runs" / name, max_steps=20, quiet=True).finished
    group = analyze_sweep(copy)
    assert set(group["groups"]) == {"noncausal_last__vocab_size=10"}
    assert sorted(e["run"] for e in group["excluded"]) == cut
    assert all(e["reason"].startswith("stopped at step") for e in group["excluded"])


def test_analyze_sweep_dir_gives_per_group_bootstrap_cis(local, capsys):
    _, out = local
    assert main(["analyze", str(out)]) == 0
    assert "2 sweep groups" in capsys.readouterr().out
    group = json.loads((out / "analysis" / "formation_group.json").read_text())
    assert group["group_by"] == "sweep point" and set(group["groups"]) == set(GROUPS)
    for name, g in group["groups"].items():
        assert g["regime"] == GROUPS[name] and g["n_runs"] == 2 and sorted(g["seeds"]) == [0, 1]
        assert g["recall_jump_midpoint"]["runs_without_recall_jump"] == 2
        assert g["recall_jump_midpoint"]["steps"]["n"] == 0
        est = g["no_recall_baseline"]["value"]  # one baseline per seed's test split
        assert est["n"] == 2 and est["lo"] is not None, est
        assert est["lo"] <= est["value"] <= est["hi"]
        assert g["seed_claim"]["verdict"] in ("consistent", "not consistent", "undetermined")


def test_only_reruns_one_point_bit_identically(local, tmp_path):
    sweep, out = local
    name = NAMES[-1]
    fresh = tmp_path / "only"
    assert main(["sweep", str(sweep), "--out", str(fresh), "--only", name, "--quiet"]) == 0
    assert [p.name for p in (fresh / "runs").iterdir()] == [name]  # only that point ran
    assert _curves(fresh / "runs" / name) == _curves(out / "runs" / name)
    assert main(["study", str(out), "--out", str(tmp_path / "study")]) == 0
    row = next(r for r in csv.DictReader(open(tmp_path / "study" / "runs.csv")) if r["run"] == name)
    assert _curves(fresh / "runs" / name)[-1]["test_acc_last"] == float(row["final_test_acc_last"])  # exactly
    # the folder is the whole sweep's: the other points run into it later
    assert [p["name"] for p in json.loads((fresh / "sweep.json").read_text())["points"]] == NAMES


def test_only_with_an_unknown_run_is_one_line_exit_2_and_writes_nothing(local, tmp_path, capsys):
    sweep, _ = local
    out = tmp_path / "only"
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(out), "--only", "causal_al__vocab_size=10__s0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no run of that name; did you mean causal_all__vocab_size=10__s0?" in err[0], err
    assert not out.exists()


def test_sweep_answers_pair_the_regimes_of_one_experiment(local):
    _, out = local
    group = analyze_sweep(out)
    # labelled by regime, as `hyenalens analyze` labels runs; each label is one sweep group
    assert group["answer_groups"] == {"causal/all": ["causal_all__vocab_size=10"],
                                      "noncausal/last": ["noncausal_last__vocab_size=10"]}
    comps = group["answers"]["sooner"]["comparisons"]
    assert [(c["group"], c["versus"]) for c in comps] == [("causal/all", "noncausal/last")]
    assert group["answers"]["sooner"]["by_regime"]["causal/all"]["censored"] == 2  # no recall jump in 48 steps


def test_study_writes_one_row_per_run_with_the_issue_columns(local, tmp_path, capsys):
    _, out = local
    assert main(["study", str(out), "--out", str(tmp_path / "study")]) == 0
    with open(tmp_path / "study" / "runs.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RUN_COLUMNS == (
        "run", "task", "regime", "seed", "steps", "final_test_acc_last", "steps_to_99", "jump_midpoint",
        "recall_circuit_midpoint", "mechanism")
    assert [r["run"] for r in rows] == [p["name"] for p in json.loads((out / "sweep.json").read_text())["points"]]
    for r in rows:
        formation = json.loads((out / "runs" / r["run"] / "analysis" / "formation.json").read_text())
        group = r["run"].rsplit("__s", 1)[0]
        assert (r["task"], r["regime"], r["seed"], r["steps"]) == ("ar", GROUPS[group], r["run"][-1], "48")
        assert float(r["final_test_acc_last"]) == _curves(out / "runs" / r["run"])[-1]["test_acc_last"]
        assert r["steps_to_99"] == r["jump_midpoint"] == ""  # censored: not reached in 48 steps
        assert r["mechanism"] == (formation.get("mechanism") or {}).get("verdict", "")
    assert json.loads((tmp_path / "study" / "group_summary.json").read_text()) == json.loads(
        (out / "analysis" / "formation_group.json").read_text())
    tables = (tmp_path / "study" / "tables.md").read_text()
    assert "| causal/all | 2 |" in tables and "sooner** (causal/all against noncausal/last)" in tables
    assert (tmp_path / "study" / "fig_study_curves.png").stat().st_size > 10_000
    assert main(["study", str(out), "--out", str(tmp_path / "again")]) == 0  # the record is reproducible
    assert {p.name: p.read_bytes() for p in (tmp_path / "study").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()}
    capsys.readouterr()
    assert main(["study", str(out / "runs"), "--out", str(tmp_path / "bad")]) == 2  # not a sweep folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.json is missing; pass a folder written by hyenalens sweep" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_study_of_a_partial_sweep_names_the_missing_run(local, tmp_path, capsys):
    sweep, out = local
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    name = NAMES[0]
    point = next(p for p in expand(load_sweep(str(sweep))) if p.name == name)
    shutil.rmtree(copy / "runs" / name)
    assert not train(point.config, copy / "runs" / name, max_steps=20, quiet=True).finished
    capsys.readouterr()
    assert main(["study", str(copy), "--out", str(tmp_path / "study")]) == 2  # the group file predates the cut
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"covers other runs than the finished ones (1 differ, e.g. {name}); rerun hyenalens " \
        f"analyze {copy}" in err[0], err
    assert not (tmp_path / "study").exists()
    assert main(["analyze", str(copy)]) == 0
    capsys.readouterr()
    assert main(["study", str(copy), "--out", str(tmp_path / "study")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "study" / "runs.csv")))
    assert [r["run"] for r in rows] == NAMES[1:]  # the unfinished run is in no row
    assert f"**Partial:** 1 run(s) not finished, in no row: {name} (stopped at step" in (
        tmp_path / "study" / "tables.md").read_text()
    assert f"run {name} is in no row (stopped at step" in capsys.readouterr().err


def test_report_on_sweep_dir_groups_runs_by_sweep_point_with_cis(local, tmp_path, capsys):
    _, out = local
    assert main(["analyze", str(out)]) == 0
    group = json.loads((out / "analysis" / "formation_group.json").read_text())
    rep = tmp_path / "report"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    summary = json.loads((rep / "summary.json").read_text())
    assert set(summary["regimes"]) == set(GROUPS)  # one group per sweep point, not pooled by regime
    for name, reg in summary["regimes"].items():
        assert reg["n_runs"] == 2 and sorted(reg["seeds"]) == [0, 1]
        mid, want = reg["midpoint_test_acc_last"], group["groups"][name]["recall_jump_midpoint"]["steps"]
        assert want["n"] == 0 and mid["source"] == "analyze_group"  # no recall jump in 48 steps
        assert mid["mean"] is None and mid["ci"] is None
    page = (rep / "index.html").read_text()
    assert all(name in page for name in GROUPS)
    # the answers pair the regimes (a sweep label names no regime, so they group by experiment)
    assert summary["answers"]["sooner"]["comparisons"] == group["answers"]["sooner"]["comparisons"]


def test_ray_backend_on_a_local_cluster_gives_the_same_runs(local, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed here (pip install 'hyenalens[ray]'); the Ray backend was not run")
    import ray

    sweep, out = local
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ctx.address_info["address"]
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-m", "hyenalens", "sweep", str(sweep), "--out", str(tmp_path / "ray"),
                            "--backend", "ray", "--address", address, "--quiet"],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    finally:
        ray.shutdown()
    assert r.returncode == 0, r.stderr[-2000:]
    for name in NAMES:  # one torch thread per task, same configs: the same numbers as the pool
        assert _curves(tmp_path / "ray" / "runs" / name) == _curves(out / "runs" / name)
        assert (tmp_path / "ray" / "status" / f"{name}.json").is_file()
    group = json.loads((tmp_path / "ray" / "analysis" / "formation_group.json").read_text())
    assert set(group["groups"]) == set(GROUPS)


def _bad(text_from, tmp_path):
    return str(_spec(tmp_path / "spec", text_from(SWEEP)))


CASES = [  # (id, sweep text from the good one, extra args, needle in the one stderr line)
    ("unknown grid key", lambda s: s.replace("data.vocab_size:", "data.vocab_sz:"), [],
     "unknown grid key data.vocab_sz; did you mean data.vocab_size?"),
    ("empty grid", lambda s: s.replace("grid:\n  data.vocab_size: [10]", "grid: {}"), [], "grid is empty"),
    ("empty axis", lambda s: s.replace("[10]", "[]"), [], "grid axis data.vocab_size is an empty list"),
    ("no seeds", lambda s: s.replace("seeds: 2", "seeds: 0"), [], "empty grid"),
    ("duplicate seed", lambda s: s.replace("seeds: 2", "seeds: [0, 0]"), [], "duplicate run name causal_all__"),
    ("duplicate value", lambda s: s.replace("[10]", "[10, 10]"), [], "duplicate run name"),
    ("duplicate regime", lambda s: s.replace("  noncausal_last:", "  causal_all:"), [], "duplicate key 'causal_all'"),
    ("seed in the grid", lambda s: s.replace("data.vocab_size", "seed"), [], "list the seeds under seeds:"),
    ("unknown sweep key", lambda s: s.replace("seeds: 2", "seed: 2"), [], "did you mean seeds? sweep keys:"),
    ("bad value", lambda s: s.replace("loss: last", "loss: sideways"), [], "sweep run noncausal_last__vocab_size=10__s0: loss="),
    ("leaky regime", lambda s: s.replace("loss: last, ", ""), [], "invalid regime"),
    ("bad capture limit", lambda s: s + "capture_limit: 1\n", [], "capture_limit must be an integer >= 2"),
    ("missing base", lambda s: s.replace("tiny.yaml", "nope.yaml"), [], "does not exist"),
    ("unknown backend", lambda s: s, ["--backend", "slurm"], "invalid choice: 'slurm'"),
    ("address without ray", lambda s: s, ["--address", "auto"], "add --backend ray"),
    ("ray missing", lambda s: s, ["--backend", "ray"], "install it with pip install 'hyenalens[ray]'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    _, edit, extra, needle = case
    if case[0] == "ray missing":
        monkeypatch.setitem(sys.modules, "ray", None)  # find_spec and import both say: not installed
    sweep, out = _bad(edit, tmp_path), tmp_path / "out"
    capsys.readouterr()
    try:
        code = main(["sweep", sweep, "--out", str(out), "--quiet", *extra])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("what", ["another sweep", "a folder of other files"])
def test_an_existing_folder_that_is_not_this_sweep_is_refused(what, local, tmp_path, capsys):
    sweep, out = local
    if what == "a folder of other files":
        out = tmp_path / "notes"
        out.mkdir()
        (out / "todo.txt").write_text("x")
    else:
        sweep = _spec(tmp_path / "other", SWEEP.replace("seeds: 2", "seeds: 3"))
    before = _stamps(out)
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("different sweep (2 run(s) added" in err[0] or "without sweep.json" in err[0]), err
    assert _stamps(out) == before


def test_shipped_study_sweep_is_5_seeds_of_each_regime_at_the_demo_recipe():
    points = expand(load_sweep("causal_vs_noncausal"))
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    assert len(points) == 50 and all(sorted(p.seed for p in g) == list(range(5)) for g in groups.values())
    regimes, steps = set(), {}
    for p in points:
        preset = read_config_source(p.regime)[0]  # each regime is its preset, at the demo's recipe
        steps[p.config["data"]["task"]] = p.config["schedule"]["steps"]
        budget = f"schedule.steps={steps[p.config['data']['task']]}"
        want = apply_overrides(preset, [*DEMO.recipe, budget, f"seed={p.seed}"])
        assert validate_config(p.config) == validate_config(want), p.name
        regimes.add((p.config["data"]["task"], p.config["model"]["kind"], p.config["model"]["causal"], p.config["loss"]))
    assert steps == {"ar": 1750, "ih": 2500}  # one budget per task; AR's is the demo's
    assert regimes == {(t, k, c, l) for t in ("ar", "ih") for k, c, l in (
        ("hyena", True, "all"), ("hyena", True, "last"), ("hyena", False, "last"),
        ("attention", True, "all"), ("attention", False, "last"))}
    assert load_sweep("causal_vs_noncausal").capture_limit == DEMO.capture_limit
    lr = expand(load_sweep("causal_vs_noncausal_lr"))  # the robustness check: two other learning rates
    assert len(lr) == 8 and {p.config["optimizer"]["lr"] for p in lr} == {5e-4, 2e-3}
    assert {(p.config["loss"], p.config["data"]["task"]) for p in lr} == {("all", "ar"), ("last", "ar")}
    assert len(expand(load_sweep("quick_causal_vs_noncausal"))) == 18


def test_importing_the_sweep_code_pulls_no_ray_or_torch():
    code = ("import sys, models, models.config.sweep; a = [m for m in ('ray', 'torch') if m in sys.modules];"
            "import hyenalens.sweep; b = [m for m in ('ray',) if m in sys.modules]; print(','.join(a + b))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr)
