"""Probes with a label-permutation control (science.md "Probes"; issue 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.probe_set import make_probe_set
from interp.probes import permuted_labels, probe_samples, probe_with_control, run_probes
from models.data.synthetics import icl_dataset

N, D, K, TYPES = 800, 24, 4, 8
SKEW = (0.55, 0.25, 0.1, 0.1)  # an imbalanced label distribution: majority ≠ 1/K


def _planted(signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, N, p=SKEW)
    W = rng.normal(size=(K, D))
    X = signal * W[labels] + rng.normal(size=(N, D))
    train = np.zeros(N, dtype=bool)
    train[rng.permutation(N)[: N // 2]] = True
    return X, labels, train


def _majority(y: np.ndarray) -> float:
    return float(np.bincount(y).max() / len(y))


def test_probe_is_far_above_its_control_on_a_planted_signal():
    X, y, train = _planted(signal=3.0)
    r = probe_with_control(X, y, train, control_seed="planted")
    maj = _majority(y[~train])
    # the features carry the label: accuracy ≈ 1; the permuted-label fit reaches only ≈ chance
    assert r.accuracy >= 0.97
    assert maj - 0.12 <= r.control <= maj + 0.05
    assert r.selectivity >= 0.9 - maj
    assert r.n_train == N // 2 and r.n_test == N - N // 2


def test_probe_and_control_stay_near_chance_on_noise():
    X, y, train = _planted(signal=0.0, seed=1)
    r = probe_with_control(X, y, train, control_seed="noise")
    maj = _majority(y[~train])
    assert r.accuracy <= maj + 0.05
    assert maj - 0.12 <= r.control <= maj + 0.05
    assert abs(r.selectivity) <= 0.1


def test_current_token_features_give_no_selectivity_to_an_independent_label():
    """The case that broke Hewitt & Liang's control at vocab 10: the features encode only the
    current token. A label independent of it gets selectivity ≈ 0 (the old control measured ≈ 1
    there, driving every selectivity below 0)."""
    rng = np.random.default_rng(2)
    types = rng.integers(0, TYPES, N)
    X = np.eye(TYPES)[types] + 0.05 * rng.normal(size=(N, TYPES))
    train = rng.random(N) < 0.5
    # the features do carry the current token: a per-type label (the old control task) is solved
    per_type = rng.integers(0, K, TYPES)[types]
    assert probe_with_control(X, per_type, train).accuracy >= 0.97
    y = rng.integers(0, K, N)  # independent of the current token
    r = probe_with_control(X, y, train, control_seed="types")
    assert r.accuracy <= _majority(y[~train]) + 0.05
    assert r.control <= _majority(y[~train]) + 0.05
    assert abs(r.selectivity) <= 0.08


def test_control_is_scored_on_the_true_test_labels():
    """Known answer: with the true labels as the 'permuted' training labels the control fit is
    the probe itself, whatever the control array holds at the test rows."""
    X, y, train = _planted(signal=1.0, seed=4)
    r = probe_with_control(X, y, train)
    scrambled = np.where(train, y, (y + 1) % K)
    same = probe_with_control(X, y, train, control=scrambled)
    assert same.control == pytest.approx(same.accuracy) and same.accuracy == pytest.approx(r.accuracy)
    assert r.control < r.accuracy - 0.2


def test_permuted_labels_are_seeded_and_permute_only_the_training_half():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 500)
    train = rng.random(500) < 0.5
    a = permuted_labels(labels, train, "x")
    assert np.array_equal(a, permuted_labels(labels, train, "x"))
    assert not np.array_equal(a, permuted_labels(labels, train, "y"))
    assert np.array_equal(a[~train], labels[~train])  # test rows untouched
    assert np.array_equal(np.sort(a[train]), np.sort(labels[train]))  # same label counts
    assert (a[train] != labels[train]).mean() > 0.5  # actually shuffled
    X, y, tr = _planted(signal=1.0, seed=5)
    r1, r2 = probe_with_control(X, y, tr, control_seed=7), probe_with_control(X, y, tr, control_seed=7)
    assert (r1.accuracy, r1.control) == (r2.accuracy, r2.control)
    with pytest.raises(ValueError, match="shape"):
        permuted_labels(labels, train[:-1])


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
    assert np.array_equal(s.control[~s.train], s.labels[~s.train])  # permuted on the training half only
    assert np.array_equal(np.sort(s.control[s.train]), np.sort(s.labels[s.train]))
    # the three rows per (target, layer), on fake activations that carry the answer
    acts = {"blocks.0.hook_resid_post": torch.nn.functional.one_hot(ps.answer, 10).float()[:, None, :].expand(-1, 7, -1)}
    rows = run_probes(acts, ps, [(0, "blocks.0.hook_resid_post")], targets=["answer"])
    by = {r["metric"]: r for r in rows}
    assert set(by) == {"probe_answer", "probe_answer_control", "probe_answer_selectivity"}
    assert by["probe_answer"]["value"] == pytest.approx(1.0)
    # the permutation control sits at chance, far below the probe
    assert by["probe_answer_control"]["value"] <= _majority(s.labels[~s.train]) + 0.05
    assert by["probe_answer"]["control"] == by["probe_answer_control"]["value"]
    assert by["probe_answer_selectivity"]["value"] == pytest.approx(1.0 - by["probe_answer_control"]["value"])
