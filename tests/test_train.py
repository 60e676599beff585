"""Training runs: the regimes learn, the run directory is complete, resume is bit-identical,
checkpoints are dense around the transition, and the lock keeps one writer."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from models.errors import UserError
from models.rundir.io import read_jsonl
from models.rundir.layout import RunLock
from models.training.loop import train

CHANCE = 0.25  # AR vocab 10: a uniform guess over the 4 values


def tiny(**over) -> dict:
    """An AR run that learns above chance in a few seconds on one core."""
    cfg = {
        "seed": 0, "loss": "all",
        "model": {"kind": "hyena", "causal": True, "d_model": 32, "n_layers": 2},
        "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 2000, "num_test_examples": 256},
        "optimizer": {"lr": 1e-3},
        "schedule": {"steps": 200, "batch_size": 32, "decay": "constant"},
        "checkpoints": {"log_count": 4, "every": 50, "dense_every": 10},
        "eval": {"train_subset": 128},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg[section] = {**cfg[section], leaf: value}
        else:
            cfg[section] = value
    return cfg


def weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    return load_file(str(run_dir / index["checkpoints"][-1]["file"]))


def metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_jsonl(run_dir / "metrics.jsonl")]


REGIMES = {
    "causal_all": {},
    "causal_last": {"loss": "last"},
    "noncausal_last": {"loss": "last", "model__causal": False},
    "attention_causal_all": "quick_ar_attention_causal_all",  # a shipped preset, also used for density
}


@pytest.fixture(scope="module")
def regime_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("regimes")
    runs = {}
    for regime, cfg in REGIMES.items():
        runs[regime] = base / regime
        train(cfg if isinstance(cfg, str) else tiny(**cfg), runs[regime], quiet=True)
    return runs


@pytest.mark.parametrize("regime", list(REGIMES))
def test_each_regime_learns_above_chance_and_writes_a_complete_run(regime_runs, regime):
    out = regime_runs[regime]
    ms = read_jsonl(out / "metrics.jsonl")
    total = ms[-1]["step"]
    keys = {"step", "epoch", "lr", "wall_time", "train_loss", "test_loss", "train_acc_all", "train_acc_recallable",
            "train_acc_last", "test_acc_last", "train_acc_all_ceiling"}
    assert all(keys <= set(m) for m in ms)
    assert ms[0]["step"] == 0 and total == (200 if regime != "attention_causal_all" else 300)
    assert [m["step"] for m in ms] == sorted({m["step"] for m in ms})
    assert ms[0]["test_acc_last"] < CHANCE
    late = [m["test_acc_last"] for m in ms[-3:]]
    assert sum(late) / 3 > CHANCE + 0.08, [(m["step"], round(m["test_acc_last"], 3)) for m in ms]
    index = json.loads((out / "checkpoints" / "index.json").read_text())
    steps = [e["step"] for e in index["checkpoints"]]
    assert steps == [m["step"] for m in ms]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        [f"step_{s:08d}.safetensors" for s in steps] + ["index.json"])
    assert [p.name for p in (out / "state").iterdir()] == [f"resume_{total:08d}.safetensors"]
    assert not (out / "LOCK").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["generator"]["vocab_size"] == 10 and "overlap" in run["data"]
    assert run["versions"]["torch"] == torch.__version__
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / f"step_{total:08d}.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["step"]) == total and len(json.loads(meta["config_hash"])) == 16
    assert json.loads(meta["kind"]) == ("attention" if regime.startswith("attention") else "hyena")


def test_checkpoints_are_dense_inside_the_transition(regime_runs):
    """On a shipped preset with a transition: >= 5 checkpoints where test_acc_last climbs from
    20% to 80% of its total rise."""
    ms = read_jsonl(regime_runs["attention_causal_all"] / "metrics.jsonl")
    acc = [m["test_acc_last"] for m in ms]
    lo, hi = acc[0], max(acc)
    assert hi - lo > 0.5, acc  # the preset has a transition
    start = next(m["step"] for m in ms if m["test_acc_last"] >= lo + 0.2 * (hi - lo))
    end = next(m["step"] for m in ms if m["test_acc_last"] >= lo + 0.8 * (hi - lo))
    inside = [m["step"] for m in ms if start <= m["step"] <= end]
    assert len(inside) >= 5, (start, end, [(m["step"], round(m["test_acc_last"], 2)) for m in ms])


def test_same_config_is_bit_identical_and_max_steps_resume_continues_exactly(tmp_path):
    cfg = tiny(schedule__steps=60, model__d_model=16)  # embed dropout 0.1 is on: its reseeding is exercised
    full = tmp_path / "full"
    train(cfg, full, quiet=True)
    again = tmp_path / "again"
    train(cfg, again, quiet=True)
    assert metrics(full) == metrics(again)
    part = tmp_path / "part"
    first = train(cfg, part, quiet=True, max_steps=25)
    assert not first.finished and 25 <= first.step < 60
    assert train(cfg, part, quiet=True, max_steps=25).step == first.step  # nothing to do
    train(cfg, part, quiet=True)
    assert metrics(part) == metrics(full)
    w_full, w_part = weights(full), weights(part)
    assert w_full.keys() == w_part.keys() and all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    sessions = json.loads((part / "run.json").read_text())["sessions"]
    assert [s["from_step"] for s in sessions] == [0, first.step, first.step]


def test_a_different_config_on_an_existing_run_is_refused_naming_keys(tmp_path):
    out = tmp_path / "run"
    train(tiny(schedule__steps=10, model__d_model=16), out, quiet=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"different config \(.*optimizer.lr: 0.001 -> 0.003.*schedule.steps: 10 -> 12"):
        train(tiny(schedule__steps=12, model__d_model=16, optimizer__lr=3e-3), out, quiet=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = RunLock(out / "LOCK").acquire()  # a live writer (this process, its own flock)
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            train(tiny(schedule__steps=5), out, quiet=True)
    finally:
        holder.release()
    assert not out.exists() or not any(p.name != "LOCK" for p in out.iterdir())
    # a live process named in LOCK without holding it (e.g. another tool) is not overridden
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out.mkdir(exist_ok=True)
        (out / "LOCK").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(UserError, match="names a live process"):
            train(tiny(schedule__steps=5), out, quiet=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # now that pid is dead: the stale lock is taken over
    assert train(tiny(schedule__steps=5), out, quiet=True).finished
    assert not (out / "LOCK").exists()
    assert os.path.exists(out / "config.yaml")


@pytest.mark.parametrize("data", [
    {"task": "ih", "vocab_size": 10, "input_seq_len": 12, "num_examples": 64, "num_test_examples": 16},
    {"task": "mqar", "vocab_size": 16, "input_seq_len": 16, "num_kv_pairs": 2, "num_examples": 64, "num_test_examples": 16},
])
def test_ih_and_mqar_runs_record_their_own_positions(tmp_path, data):
    cfg = tiny(data=data, schedule__steps=4, model__d_model=8, loss="last")
    train(cfg, tmp_path / "r", quiet=True)
    ms = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert ms[-1]["step"] == 4 and all(0 <= m["test_acc_last"] <= 1 and m["train_loss"] > 0 for m in ms)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["data"]["seq_len"] == {"ih": 13, "mqar": 16}[data["task"]]
    if data["task"] == "mqar":  # only queries are scored: "all" and "last" coincide, ceiling 1
        assert ms[-1]["train_acc_all"] == ms[-1]["train_acc_last"] and ms[-1]["train_acc_all_ceiling"] == 1.0


def test_fresh_samples_resume_bit_identically(tmp_path):
    cfg = tiny(schedule__steps=24, schedule__batch_size=16, model__d_model=8,
               data={"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 48,
                     "num_test_examples": 16, "fresh_samples": True})
    train(cfg, tmp_path / "full", quiet=True)  # 3 steps per epoch: 8 epochs, 7 fresh sets
    train(cfg, tmp_path / "part", quiet=True, max_steps=10)
    train(cfg, tmp_path / "part", quiet=True)
    assert metrics(tmp_path / "full") == metrics(tmp_path / "part")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # fresh sets differ from the base set, so the two settings train differently
    base = tiny(schedule__steps=24, schedule__batch_size=16, model__d_model=8,
                data={"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 48, "num_test_examples": 16})
    train(base, tmp_path / "base", quiet=True)
    assert metrics(tmp_path / "base")[-1] != metrics(tmp_path / "full")[-1]
