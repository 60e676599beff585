"""Probes with control tasks (science.md "Probes"; Hewitt & Liang 2019; issue 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.probe_set import make_probe_set
from interp.probes import control_labels, probe_samples, probe_with_control, run_probes
from models.synthetics import icl_dataset

N, D, K, TYPES = 800, 24, 4, 8


def _planted(signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, N)
    types = rng.integers(0, TYPES, N)  # token types independent of the labels
    W = rng.normal(size=(K, D))
    X = signal * W[labels] + rng.normal(size=(N, D))
    train = np.zeros(N, dtype=bool)
    train[rng.permutation(N)[: N // 2]] = True
    return X, labels, types, train


def _majority(y: np.ndarray) -> float:
    return float(np.bincount(y).max() / len(y))


def test_probe_recovers_a_planted_linear_signal():
    X, y, types, train = _planted(signal=3.0)
    r = probe_with_control(X, y, types, train, control_seed="planted")
    ctrl = control_labels(types, y, "planted")
    # the features carry the label, not the token type: accuracy ≈ 1, control ≈ its chance
    assert r.accuracy >= 0.97
    assert r.control <= _majority(ctrl[~train]) + 0.08
    assert r.selectivity >= 0.4
    assert r.n_train == N // 2 and r.n_test == N - N // 2


def test_probe_stays_near_chance_on_noise():
    X, y, types, train = _planted(signal=0.0, seed=1)
    r = probe_with_control(X, y, types, train, control_seed="noise")
    ctrl = control_labels(types, y, "noise")
    assert r.accuracy <= _majority(y[~train]) + 0.08
    assert r.control <= _majority(ctrl[~train]) + 0.08


def test_control_task_reads_token_identity():
    """A probe on one-hot token types solves the control task (the point of the control)."""
    rng = np.random.default_rng(2)
    types = rng.integers(0, TYPES, N)
    y = rng.integers(0, K, N)
    X = np.eye(TYPES)[types] + 0.05 * rng.normal(size=(N, TYPES))
    train = rng.random(N) < 0.5
    r = probe_with_control(X, y, types, train, control_seed="types")
    assert r.control >= 0.97
    assert r.accuracy <= _majority(y[~train]) + 0.08


def test_control_labels_are_fixed_per_type_and_seeded():
    rng = np.random.default_rng(3)
    types = rng.integers(0, 20, 500)
    labels = rng.integers(0, 5, 500)
    a = control_labels(types, labels, "x")
    assert np.array_equal(a, control_labels(types, labels, "x"))
    for t in np.unique(types):
        assert len(np.unique(a[types == t])) == 1  # one label per type
    assert set(np.unique(a)) <= set(np.unique(labels))


def test_probe_samples_read_the_right_labels():
    d = icl_dataset("assoc_recall", 10, 14, 64, 64, 0)
    ps = make_probe_set(d.test_inputs, d.test_targets, d.test_roles, n_probe=64, n_circuit=8, seed=0)
    s = probe_samples(ps, "prev_token")
    pos = ps.slot_pos[s.seq, s.slot]
    assert bool(ps.roles["value"][s.seq, pos].all())
    assert np.array_equal(s.labels, ps.inputs[s.seq, pos - 1].numpy())
    s = probe_samples(ps, "next_token")
    pos = ps.slot_pos[s.seq, s.slot]
    assert bool(ps.roles["key"][s.seq, pos].all())
    assert np.array_equal(s.labels, ps.inputs[s.seq, pos + 1].numpy())
    s = probe_samples(ps, "answer")
    assert np.array_equal(s.labels, ps.answer.numpy())
    assert np.array_equal(s.train, ps.probe_train.numpy())
    # the three rows per (target, layer), on fake activations that carry the answer
    acts = {"blocks.0.hook_resid_post": torch.nn.functional.one_hot(ps.answer, 10).float()[:, None, :].expand(-1, 7, -1)}
    rows = run_probes(acts, ps, [(0, "blocks.0.hook_resid_post")], targets=["answer"])
    by = {r["metric"]: r for r in rows}
    assert set(by) == {"probe_answer", "probe_answer_control", "probe_answer_selectivity"}
    assert by["probe_answer"]["value"] == pytest.approx(1.0)
    assert by["probe_answer_selectivity"]["value"] == pytest.approx(1.0 - by["probe_answer_control"]["value"])
