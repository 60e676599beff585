"""Interp on the shared safari trajectory (safari_ar_v10_l64_o2): a real trained Hyena, its
checkpoints loaded directly with HyenaLM.from_safari, evaluated by `evaluate_model` on a
probe set drawn from the task's test split (issue 4, "Tests this issue must show").

Measured on this fixture (probe set n=256, seed 0; circuit rows 32):
  step 0:    answer acc 0.00, answer probe (last layer) 0.44, recall_score_values 0.14 / 0.13
             (layer 0 / 1; uniform-row chance 0.126), attr share keys+values 0.02
  step 1884: answer acc 0.996, answer probe 0.99, recall_score_values 0.14 / 0.13,
             attr share keys+values 0.22, patch recovery of blocks.1.hook_mixer_out at the
             query 0.49 (step 0: 0.03)
The recall score staying at chance is a measured result, not a defect: see docs/findings.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp.probe_set import probe_set_from_data
from interp.run_metrics import MetricOptions, evaluate_model

SAFARI = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "safari_ar_v10_l64_o2"
FINAL = 1884
LAST = 1  # the fixture's last layer


@pytest.fixture(scope="module")
def trajectory():
    if not SAFARI.is_dir():
        pytest.skip(f"safari fixture not found at {SAFARI} (it lives in ../shared beside the checkout)")
    import yaml
    from safetensors.torch import load_file

    from models.lm import HyenaLM
    from models.safari import load_state_dict
    from models.synthetics import icl_dataset

    cfg = yaml.safe_load((SAFARI / "config.yaml").read_text())
    data = icl_dataset("assoc_recall", 10, 64, 5000, 500, 0)
    expected = load_file(str(SAFARI / "expected.safetensors"))
    assert torch.equal(data.test_inputs, expected["test_inputs"])  # the fixture's own test set
    ps = probe_set_from_data(data, n_probe=256, n_circuit=32, seed=0)
    opts = MetricOptions(n_scores=32, n_attr=8, ig_steps=16)
    out = {}
    for step in (0, FINAL):
        model = HyenaLM.from_safari(load_state_dict(SAFARI / f"step_{step:06d}.safetensors"), cfg["model"])
        rows = evaluate_model(model, ps, options=opts)
        out[step] = {(r["metric"], r["layer"], r.get("hook") or "", r.get("role") or ""): r["value"] for r in rows}
    c = ps.circuit()
    out["recall_chance"] = float((c["match_value"].sum(1).double() / (c["qpos"] + 1)).mean())
    test_half = ~ps.probe_train
    out["answer_majority"] = float(torch.bincount(ps.answer[test_half]).max() / test_half.sum())
    return out


def _probe(res, layer=LAST):
    return res[("probe_answer", layer, f"blocks.{layer}.hook_resid_post", "query")]


def test_answer_probe_rises_from_chance(trajectory):
    s0, s1 = trajectory[0], trajectory[FINAL]
    assert s0[("answer_acc", -1, "", "")] <= 0.05 and s1[("answer_acc", -1, "", "")] >= 0.95
    chance = 0.25  # 4 values
    assert _probe(s0) <= chance + 0.30, _probe(s0)  # near chance (majority class ≈ 0.30)
    assert _probe(s1) >= 0.90, _probe(s1)
    assert _probe(s1) - _probe(s0) >= 0.40


def test_recall_score_is_near_chance_at_init(trajectory):
    chance = trajectory["recall_chance"]
    for layer in (0, LAST):
        assert abs(trajectory[0][("recall_score_values", layer, "", "")] - chance) <= 0.05


def test_recall_score_stays_at_chance_on_trained_hyena(trajectory):
    """The measured answer to the issue's "recall score far above step 0": not for this model.

    The issue expected the map-based recall score to rise with the circuit, as it does on the
    attention baseline (tests/test_recall_score_control.py: 0.16 → 0.98). On safari's trained
    Hyena it stays at its chance level at both layers while the answer probe, attribution and
    patching show the circuit. We keep science.md's definition (we do not redefine the score
    until it rises) and assert the measured fact, so a change of the score or of the model
    shows up here. Why, and the variants tried, are in docs/findings.md.
    """
    chance = trajectory["recall_chance"]
    s0, s1 = trajectory[0], trajectory[FINAL]
    for layer in (0, LAST):
        assert abs(s1[("recall_score_values", layer, "", "")] - chance) <= 0.05
        assert abs(s1[("recall_score_values", layer, "", "")] - s0[("recall_score_values", layer, "", "")]) <= 0.05
    # the circuit is there all the same: the last layer's answer probe is far above step 0
    assert _probe(s1) - _probe(s0) >= 0.40


def test_attribution_and_patching_find_the_circuit(trajectory):
    s0, s1 = trajectory[0], trajectory[FINAL]
    kv = lambda s: s[("attr_share_keys", -1, "embed", "")] + s[("attr_share_values", -1, "embed", "")]
    assert kv(s0) <= 0.08 and kv(s1) >= 0.15
    assert s1[("attr_delta_rel", -1, "embed", "")] <= 0.05  # completeness at 16 nodes
    h = f"blocks.{LAST}.hook_mixer_out"
    assert s1[("patch_recovery", LAST, h, "query")] - s0[("patch_recovery", LAST, h, "query")] >= 0.25
    assert s1[("patch_ld_clean", -1, "", "")] - s1[("patch_ld_corrupt", -1, "", "")] >= 5.0
