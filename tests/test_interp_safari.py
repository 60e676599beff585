"""Interp on the shared safari trajectory (safari_ar_v10_l64_o2): a real trained Hyena.

Two paths: its checkpoints loaded directly with HyenaLM.from_safari and evaluated by
`evaluate_model` (the `trajectory` fixture), and the run a researcher makes of it
(`import-safari`, then `capture` and `probe`, then `analyze`: the `fixture_run` fixture).

Measured on this fixture (probe set n=256, seed 0; 32 rows for the decomposition):
  step 0:    answer acc 0.00; recall_swap_follow 0.000, control 0.000; source totals ≈ 0.005
             logits (noise); recall_score_values 0.14 / 0.13 (layer 0 / 1; chance 0.126)
  step 1884: answer acc 0.996; recall_swap_follow 0.996, control 0.004, answer-logit drop 7.3;
             layer 0: source_share (direct) on the matching pairs' footprints 0.37 against
             −0.03 on every other pair together, path-patching the matching footprints makes
             0.81 of the answers follow the substitute; the map score stays 0.14 / 0.13.
The recall circuit is there, in layer 0, read from the matching values and the position after
them (the causal kernel-3 short conv carries each value one step forward): the verdict is the
value mechanism. The channel-mean |H| map cannot show it, because it drops each channel's sign:
see docs/findings.md.
"""
from __future__ import annotations

import csv
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

    from models.hyena.lm import HyenaLM
    from models.safari.conversion import load_state_dict
    from models.data.synthetics import icl_dataset

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

    The map-based recall score rises with the circuit on the attention baseline
    (tests/test_recall_score_control.py: 0.16 → 0.98). On safari's trained Hyena it stays at its
    chance level at both layers, although the swap test and the signed decomposition below show
    the model reading the matching values: mean |H| over channels throws away the signs that
    carry the recall. We keep the score as a contrast between the kinds and assert the measured
    fact, so a change of the score or of the model shows up here (docs/findings.md).
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


# ---------------------------------------------------------------- the run a researcher makes
@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """import-safari (steps 0 and the final one), capture, probe, analyze: the commands' own code."""
    if not SAFARI.is_dir():
        pytest.skip(f"safari fixture not found at {SAFARI} (it lives in ../shared beside the checkout)")
    import shutil

    from analysis import analyze_run
    from interp.capture import capture_run
    from interp.run_metrics import probe_run
    from models.safari.run_import import import_safari

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("safari_run")
    src = root / "safari"
    src.mkdir()
    for name in ("config.yaml", "metrics.json", "step_000000.safetensors", f"step_{FINAL:06d}.safetensors"):
        shutil.copy(SAFARI / name, src)
    run = import_safari(src, root / "run", quiet=True)
    capture_run(run, progress=False)
    probe_run(run, progress=False)
    rows = list(csv.DictReader(open(run / "analysis" / "metrics.csv")))
    table = {(int(r["step"]), r["metric"], int(r["layer"]), r["target"], r["role"]): float(r["value"] or "nan")
             for r in rows}
    return {"run": run, "m": table, "formation": analyze_run(run)}


def test_swap_test_sees_recall_on_the_fixture_run(fixture_run):
    m = fixture_run["m"]
    at = lambda step, metric: m[(step, "recall_swap_" + metric, -1, "", "")]  # noqa: E731
    assert at(FINAL, "follow") >= 0.9 and at(FINAL, "control") <= 0.2
    assert at(0, "follow") <= 0.05 and at(0, "control") <= 0.05
    assert at(FINAL, "drop") >= 3.0 and abs(at(0, "drop")) <= 0.05


def test_decomposition_locates_recall_in_layer_0_on_the_matching_pairs(fixture_run):
    m = fixture_run["m"]
    share = lambda step, layer, role: m[(step, "source_share", layer, "direct", role)]  # noqa: E731
    # the matching pairs' footprints carry the signal; all other pairs together carry none
    assert share(FINAL, 0, "match_pair") >= 0.25 and share(FINAL, 0, "other_pair") <= 0.05
    # and putting the swapped run's terms there alone makes the answer follow the substitute
    assert m[(FINAL, "source_patch_follow", 0, "", "match_pair")] >= 0.6
    assert m[(FINAL, "source_patch_follow", 0, "", "match_key")] <= 0.1
    for layer in (0, LAST):  # at init the decomposed totals are noise
        assert abs(m[(0, "source_total", layer, "direct", "")]) <= 0.05
        assert m[(0, "source_patch_follow", layer, "", "match_pair")] <= 0.05


def test_fixture_run_verdict_is_the_value_mechanism(fixture_run):
    mech = fixture_run["formation"]["mechanism"]
    assert mech["verdict"] == "value mechanism", mech
    assert mech["routing"]["holds"] and mech["evidence"]["value"]["layer"] == 0
    assert (fixture_run["run"] / "analysis" / "source_example.json").is_file()
