"""Integrated-gradients completeness and patching recovery (science.md; issue 4)."""
from __future__ import annotations

import pytest
import torch

from interp.attribution import attribution_metrics, attribution_shares, integrated_gradients
from interp.probe_set import make_probe_set
from interp.patching import POSITION_GROUPS, patch_recovery, position_groups
from models import build_model
from models.data.synthetics import icl_dataset
from tests.conftest import jitter_, tiny_hyena_config

# Completeness tolerance: with 64 Gauss-Legendre nodes, |Σ attr − (F(x) − F(baseline))| must be
# ≤ IG_RTOL · |F(x) − F(baseline)| + IG_ATOL for every sequence.
IG_STEPS, IG_RTOL, IG_ATOL = 64, 1e-3, 1e-6
MODELS = ["hyena-causal", "hyena-noncausal", "attention"]


def _model(name: str) -> torch.nn.Module:
    if name == "attention":
        return build_model(dict(kind="attention", vocab_size=10, d_model=16, n_layers=2, l_max=16), seed=0).eval()
    cfg = tiny_hyena_config(causal=name == "hyena-causal")
    return jitter_(build_model(cfg, seed=0), scale=0.2).eval()


@pytest.fixture(scope="module")
def circuit():
    d = icl_dataset("assoc_recall", 10, 14, 64, 64, 0)  # inputs [64, 16]
    ps = make_probe_set(d.test_inputs, d.test_targets, d.test_roles, n_probe=64, n_circuit=12, seed=0)
    c = ps.circuit()
    assert bool(c["corrupt_valid"].all()) and len(c["inputs"]) == 12
    return c


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_completeness(name, circuit):
    model = _model(name)
    ig = integrated_gradients(model, circuit["inputs"], circuit["qpos"], circuit["answer"], n_steps=IG_STEPS)
    gap = ig["f_input"] - ig["f_baseline"]
    # captum's convergence delta is the completeness gap, and our per-position sums keep it
    assert torch.allclose(ig["attr"].sum(-1) - gap, ig["delta"], atol=1e-5)
    assert bool((ig["delta"].abs() <= IG_RTOL * gap.abs() + IG_ATOL).all()), (ig["delta"], gap)
    # F(x) really is the answer logit at the query
    with torch.no_grad():
        logits = model(circuit["inputs"])
    r = torch.arange(len(gap))
    assert torch.allclose(ig["f_input"], logits[r, circuit["qpos"], circuit["answer"]], atol=1e-5)


def test_attribution_shares_partition(circuit):
    rows = attribution_metrics(_model("hyena-causal"), circuit, n_steps=16)
    v = {r["metric"]: r["value"] for r in rows}
    assert v["attr_share_keys"] + v["attr_share_values"] + v["attr_share_rest"] == pytest.approx(1.0)
    assert 0 <= v["attr_share_query"] <= v["attr_share_rest"] <= 1
    assert v["attr_delta"] >= 0 and v["attr_delta_rel"] >= 0
    # shares are of |a|: a planted attribution on the matching keys gives share 1 there
    a = circuit["match_key"].float() * torch.randn(circuit["match_key"].shape).sign()
    sh = attribution_shares(a, circuit["match_key"], circuit["match_value"], circuit["qpos"])
    assert torch.allclose(sh["keys"], torch.ones(len(a), dtype=torch.float64))


def test_position_groups(circuit):
    g = position_groups(circuit)
    m = len(circuit["inputs"])
    assert set(g) == set(POSITION_GROUPS)
    assert bool(g["all"].all()) and not bool(g["none"].any())
    assert bool((g["query"].sum(1) == 1).all())
    for a in ("query", "match_key", "match_value", "other"):
        for b in ("query", "match_key", "match_value", "other"):
            if a < b:
                assert not bool((g[a] & g[b]).any())
    # clean and corrupted runs differ only at the query token
    diff = circuit["inputs"] != circuit["corrupt_inputs"]
    assert torch.equal(diff, g["query"][:m])


@pytest.mark.parametrize("name", MODELS)
def test_patching_all_recovers_one_and_none_zero(name, circuit):
    model = _model(name)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    if name != "attention":
        hooks += ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    # skip_identical=False: every variant goes through run_with_hooks, no shortcut
    rows = patch_recovery(model, circuit, hooks, groups=["all", "none"], skip_identical=False)
    rec = {(r["hook"], r["role"]): r["value"] for r in rows if r["metric"] == "patch_recovery"}
    ld = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("patch_ld")}
    assert abs(ld["patch_ld_clean"] - ld["patch_ld_corrupt"]) > 1e-3  # a real effect to recover
    for h in hooks:
        assert rec[(h, "all")] == pytest.approx(1.0, abs=1e-6), h
        assert rec[(h, "none")] == pytest.approx(0.0, abs=1e-6), h


@pytest.mark.parametrize("name", MODELS)
def test_patching_shortcuts_match_full_runs(name, circuit):
    """skip_identical only skips runs that cannot change the result."""
    model = _model(name)
    fast = patch_recovery(model, circuit)
    full = patch_recovery(model, circuit, skip_identical=False)
    key = lambda r: (r["metric"], r.get("hook"), r.get("role"))
    a, b = {key(r): r["value"] for r in fast}, {key(r): r["value"] for r in full}
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-4), k
