"""Capture: the probe set, one model's capture, and the incremental run-level capture and
metrics table (issue 4, "Capture" and "Output")."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import interp.capture as capture
import interp.run_metrics as run_metrics
from interp.capture import capture_model, capture_run
from interp.probe_set import SLOTS, ProbeSet, make_probe_set
from interp.metrics_table import METRIC_COLUMNS
from interp.run_metrics import MetricOptions, probe_run
from models import build_model
from models.errors import UserError
from models.rundir.layout import RunDir
from models.data.synthetics import icl_dataset
from tests.conftest import jitter_, tiny_hyena_config


@pytest.fixture(scope="module")
def data():
    return icl_dataset("assoc_recall", 10, 14, 64, 64, 0)


@pytest.fixture(scope="module")
def ps(data):
    return make_probe_set(data.test_inputs, data.test_targets, data.test_roles, n_probe=48, n_circuit=8, seed=3)


def test_probe_set_is_seeded_and_consistent(data, ps):
    again = make_probe_set(data.test_inputs, data.test_targets, data.test_roles, n_probe=48, n_circuit=8, seed=3)
    other = make_probe_set(data.test_inputs, data.test_targets, data.test_roles, n_probe=48, n_circuit=8, seed=4)
    assert ps.digest() == again.digest() != other.digest()
    n, L = ps.inputs.shape
    r = torch.arange(n)
    # every probe row is a test row, with its answer
    rows = {tuple(x) for x in data.test_inputs.tolist()}
    assert all(tuple(x) in rows for x in ps.inputs.tolist())
    assert torch.equal(ps.qpos, torch.full((n,), L - 1))
    assert bool(ps.roles["query"][r, ps.qpos].all())
    # slots: query, its latest matching key and value, two other keys, two other values
    assert ps.slot_pos.shape == (n, len(SLOTS)) and bool(ps.slot_valid.all())
    q = ps.inputs[r, ps.qpos]
    assert torch.equal(ps.slot_pos[:, 0], ps.qpos)
    assert torch.equal(ps.inputs[r, ps.slot_pos[:, 1]], q)
    assert torch.equal(ps.slot_pos[:, 2], ps.slot_pos[:, 1] + 1)
    assert torch.equal(ps.inputs[r, ps.slot_pos[:, 2]], ps.answer)
    assert bool(ps.roles["match_key"].gather(1, ps.slot_pos[:, 1:2]).all())
    for first, role in ((3, "key"), (5, "value")):
        pos = ps.slot_pos[:, first:first + 2]
        assert bool(ps.roles[role].gather(1, pos).all())
        assert not bool(ps.roles["match_" + role].gather(1, pos).any())
        assert bool((pos[:, 0] != pos[:, 1]).all())
    # disjoint halves
    assert int(ps.probe_train.sum()) == n // 2
    # corrupted: only q changes, to another key of the context whose value differs
    ok = ps.corrupt_valid
    assert bool(ok.float().mean() > 0.5)
    diff = ps.inputs != ps.corrupt_inputs
    assert bool((diff.sum(1)[ok] == 1).all()) and bool((diff.sum(1)[~ok] == 0).all())
    for b in torch.nonzero(ok).flatten().tolist():
        k = int(ps.corrupt_inputs[b, -1])
        at = torch.nonzero((ps.inputs[b] == k) & ps.roles["key"][b]).flatten()
        assert len(at) > 0
        assert int(ps.inputs[b, at[-1] + 1]) == int(ps.corrupt_answer[b]) != int(ps.answer[b])
    assert bool(ok[ps.circuit_idx].all()) and len(ps.circuit_idx) == 8


def test_probe_set_round_trips(ps, tmp_path):
    ps.save(tmp_path / "ps.safetensors")
    back = ProbeSet.load(tmp_path / "ps.safetensors")
    assert back.digest() == ps.digest()
    assert back.meta["n_probe"] == 48


@pytest.mark.parametrize("kind", ["hyena", "attention"])
def test_capture_model_matches_a_plain_cache(kind, ps):
    if kind == "hyena":
        model = jitter_(build_model(tiny_hyena_config(causal=False), seed=0), 0.1).eval()
    else:
        model = build_model(dict(kind="attention", vocab_size=10, d_model=16, n_layers=2, l_max=16), seed=0).eval()
    acts = capture_model(model, ps, batch_size=20)  # several batches
    logits, cache = model.run_with_cache(ps.inputs)
    r = torch.arange(ps.n)[:, None]
    assert torch.allclose(acts["logits"], logits[r, ps.slot_pos], atol=1e-5)
    resid = acts["blocks.1.hook_resid_post"]
    d = 8 if kind == "hyena" else 16
    assert resid.dtype == torch.float16 and resid.shape == (ps.n, len(SLOTS), d)
    assert torch.allclose(resid.float(), cache["blocks.1.hook_resid_post"][r, ps.slot_pos], atol=2e-3, rtol=2e-3)
    if kind == "hyena":
        assert acts["blocks.0.mixer.hook_filter"].shape == (1, 8, 16)
        assert torch.equal(acts["blocks.0.mixer.hook_filter_rev"], cache["blocks.0.mixer.hook_filter_rev"])
        assert "blocks.0.mixer.hook_gate_1" in acts and "blocks.0.mixer.hook_y" in acts
    else:
        pat = cache["blocks.0.attn.hook_pattern"]
        assert torch.allclose(acts["blocks.0.attn.hook_pattern"], pat[torch.arange(ps.n), :, ps.qpos])


# ---------------------------------------------------------------------- a real run directory
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from models.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = {"seed": 0, "loss": "all",
           "model": {"kind": "hyena", "d_model": 8, "n_layers": 2, "filter_order": 8, "embed_dropout": 0.0},
           "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 14, "num_examples": 48,
                    "num_test_examples": 40},
           "schedule": {"steps": 4, "batch_size": 16},
           "checkpoints": {"every": 1, "adaptive": False}}
    with torch.random.fork_rng():
        train(cfg, out, quiet=True)
    return out


def _counting(monkeypatch, fail_at: int | None = None) -> list:
    calls = []
    real = capture.capture_model

    def wrapped(model, ps, *a, **kw):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return real(model, ps, *a, **kw)

    monkeypatch.setattr(capture, "capture_model", wrapped)
    return calls


def test_capture_resumes_without_redoing_work(run_dir, monkeypatch):
    steps = [s for s, _ in RunDir(run_dir).list_checkpoints()]
    assert len(steps) == 5
    calls = _counting(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        capture_run(run_dir, progress=False, n_probe=32)
    assert len(calls) == 3
    cap = run_dir / "capture"
    assert sorted(p.name for p in cap.iterdir()) == ["probe_set.safetensors"] + [
        f"step_{s:08d}.safetensors" for s in steps[:2]]  # no torn or temp file
    done = {s: RunDir(run_dir).capture_file(s).stat().st_mtime_ns for s in steps[:2]}

    calls = _counting(monkeypatch)
    out = capture_run(run_dir, progress=False)
    assert out["skipped"] == steps[:2] and out["captured"] == steps[2:]
    assert len(calls) == len(steps) - 2
    assert all(RunDir(run_dir).capture_file(s).stat().st_mtime_ns == t for s, t in done.items())

    calls = _counting(monkeypatch)
    assert capture_run(run_dir, progress=False)["captured"] == [] and not calls
    # a different probe-set size is refused once the set exists
    with pytest.raises(UserError, match="n_probe"):
        capture_run(run_dir, progress=False, n_probe=16)
    # an extra hook recaptures (every checkpoint lacks it), then is skipped again
    calls = _counting(monkeypatch)
    out = capture_run(run_dir, hooks=["blocks.0.mlp.hook_post"], progress=False)
    assert out["captured"] == steps and len(calls) == len(steps)
    acts, meta = capture.load_step(run_dir, steps[-1])
    assert acts["blocks.0.mlp.hook_post"].shape == (32, len(SLOTS), 32)
    assert meta["step"] == steps[-1] and meta["layout"]["blocks.0.mixer.hook_filter"] == "param"
    assert capture_run(run_dir, hooks=["blocks.0.mlp.hook_post"], progress=False)["captured"] == []


def test_probe_run_writes_one_tidy_table_incrementally(run_dir, monkeypatch):
    steps = [s for s, _ in RunDir(run_dir).list_checkpoints()]
    capture_run(run_dir, progress=False)
    calls = []
    real = run_metrics.evaluate_model

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(run_metrics, "evaluate_model", counted)
    opts = MetricOptions(ig_steps=8, n_attr=4, n_scores=8)
    path = probe_run(run_dir, progress=False, options=opts)
    assert len(calls) == len(steps) + 1  # every checkpoint and the floor
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert sorted({int(r["step"]) for r in rows}) == steps
    names = {r["metric"] for r in rows}
    for m in ("prev_token_score", "recall_score_values", "recall_score_keys", "filter_lag1_mass",
              "filter_effective_length", "attr_share_keys", "attr_share_values", "attr_share_rest",
              "attr_delta", "patch_recovery"):
        assert m in names, m
    for t in ("prev_token", "next_token", "answer"):
        for suffix in ("", "_control", "_selectivity"):
            assert f"probe_{t}{suffix}" in names
    # tidy: one row per (step, metric, layer, hook, role, target), numbers parse, floor filled
    keys = [(r["step"], r["metric"], r["layer"], r["hook"], r["role"], r["target"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(not math.isnan(float(r["value"])) for r in rows if r["metric"].startswith(("probe_", "attr_share")))
    assert all(r["floor"] != "" for r in rows if r["metric"].startswith("probe_"))
    pr = [r for r in rows if r["metric"] == "patch_recovery"]
    assert {r["role"] for r in pr} == {"query", "match_key", "match_value", "other", "all", "none"}
    assert all(r["hook"] for r in pr)
    # step 0 is the run's own initialization: its values are the floor
    s0 = [r for r in rows if r["step"] == "0" and r["metric"].startswith("probe_")]
    assert all(float(r["value"]) == float(r["floor"]) for r in s0)

    calls.clear()
    probe_run(run_dir, progress=False, options=opts)
    assert calls == []  # nothing new
    (run_dir / "analysis" / "metrics_parts" / f"step_{steps[2]:08d}.json").unlink()
    probe_run(run_dir, progress=False, options=opts)
    assert len(calls) == 1  # only the missing checkpoint
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    meta = json.loads((run_dir / "analysis" / "metrics_parts" / "floor.json").read_text())
    assert meta["signature"]["options"]["ig_steps"] == 8


def test_capture_adds_the_report_maps_to_an_older_capture(run_dir, monkeypatch):
    """A capture file written before the report's maps were stored gets them on the next
    capture, without recapturing anything else; the maps are figure 4's."""
    from interp import implicit_attention
    from models.rundir.io import atomic_save_tensors
    from models.rundir.layout import CAPTURE_MAP_PREFIX, capture_map_key
    from models.rundir.run import load_checkpoint_model

    run = RunDir(run_dir)
    capture_run(run_dir, progress=False)
    step = run.captured_steps()[-1]
    tensors, meta = capture.load_step(run_dir, step)
    old = {k: v for k, v in tensors.items() if not k.startswith(CAPTURE_MAP_PREFIX)}
    assert len(old) < len(tensors) and "maps" in meta
    meta.pop("maps")
    atomic_save_tensors(run.capture_file(step), old, meta)  # as an older capture wrote it
    calls = _counting(monkeypatch)
    out = capture_run(run_dir, progress=False)
    assert calls == [] and out["maps_added"] == [step] and out["captured"] == [step]
    new, meta = capture.load_step(run_dir, step)
    assert all(torch.equal(new[k], v) for k, v in old.items())
    ps = ProbeSet.load(run.probe_set)
    model = load_checkpoint_model(run_dir, step)
    row = meta["maps"]["row"]
    assert row == int(ps.circuit_idx[0]) and meta["maps"]["layers"] == 2
    assert meta["maps"]["roles"]["query"] == [int(ps.qpos[row])]
    for l in range(2):
        want = implicit_attention(model, ps.inputs[row:row + 1], l, level="token", aggregate="mean_abs",
                                  normalize_rows=True)[0].abs()
        assert new[capture_map_key(l)].shape == want.shape and torch.allclose(new[capture_map_key(l)], want.float())
    assert capture_run(run_dir, progress=False)["captured"] == [] and calls == []
