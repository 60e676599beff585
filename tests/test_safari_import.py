"""import-safari: a safari run folder becomes a normal run directory with safari's numbers."""
import json
import shutil

import pytest

from models.errors import UserError
from models.rundir.io import read_jsonl
from models.safari.run_import import import_safari

TRAJ = "safari_ar_v10_l64_o2"


def _subset(fixtures, tmp_path, steps):
    src = tmp_path / "safari"
    src.mkdir()
    shutil.copy(fixtures / TRAJ / "config.yaml", src)
    shutil.copy(fixtures / TRAJ / "metrics.json", src)
    for s in steps:
        shutil.copy(fixtures / TRAJ / f"step_{s:06d}.safetensors", src)
    return src


def _check_against_safari(run, safari_metrics, steps):
    mine = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl")}
    theirs = {r["step"]: r for r in safari_metrics}
    assert sorted(mine) == sorted(steps)
    for s in steps:
        for key in ("test_acc_last", "train_acc_all", "train_acc_last"):
            assert abs(mine[s][key] - theirs[s][key]) <= 0.01, (s, key)


def test_import_subset_matches_safari_metrics_and_is_a_run_dir(fixtures, tmp_path):
    steps = [0, 150, 1884]
    src = _subset(fixtures, tmp_path, steps)
    run = import_safari(src, tmp_path / "run", quiet=True)
    _check_against_safari(run, json.loads((src / "metrics.json").read_text()), steps)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert [e["step"] for e in index["checkpoints"]] == steps
    assert (run / "safari_metrics.json").is_file() and (run / "config.yaml").is_file()
    assert import_safari(src, tmp_path / "run", quiet=True) == run  # a finished import is a no-op


def test_import_refuses_bad_folders(fixtures, tmp_path):
    with pytest.raises(UserError, match="config.yaml"):
        import_safari(tmp_path, tmp_path / "run", quiet=True)
    src = _subset(fixtures, tmp_path, [0])
    (src / "model_final.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="training step"):
        import_safari(src, tmp_path / "run2", quiet=True)


@pytest.mark.slow
def test_full_trajectory_import_and_transition(fixtures, tmp_path):
    run = import_safari(fixtures / TRAJ, tmp_path / "run", quiet=True)
    safari = json.loads((fixtures / TRAJ / "metrics.json").read_text())
    _check_against_safari(run, safari, [r["step"] for r in safari])
    from analysis import analyze_run

    formation = analyze_run(run)
    jumps = formation["transitions"]["test_acc_last"]
    assert jumps, "the safari trajectory has a test-accuracy transition"
    # every climbing interval (prev_step, step) where accuracy rises by more than 0.02
    curve = [(r["step"], r["test_acc_last"]) for r in safari]
    climbs = [(s0, s1) for (s0, a0), (s1, a1) in zip(curve, curve[1:]) if a1 - a0 > 0.02]
    for t in jumps:
        assert any(s0 <= t["midpoint"] <= s1 for s0, s1 in climbs), (t, climbs)
