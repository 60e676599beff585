"""Linear probes with a label-permutation control (science.md, "Circuit metrics: Probes").

A probe is a multinomial logistic regression (scikit-learn, lbfgs, L2 with C=1 on standardized
features, max_iter 100, tol 1e-3) trained on one half of the probe set and scored on the other half (the halves are
disjoint by sequence: `ProbeSet.probe_train`).

Control: label permutation. Hewitt & Liang's control task (a random label per current token
type) is trivially solvable on these tasks: at vocab 10 the residual always encodes the current
token, so it scored ≈ 1.0 and drove every selectivity to ≤ 0. Instead the same probe (same
features, classifier and train/test halves) is fit on the training half with its labels permuted
(seeded by the probe's name, the same for every layer and checkpoint) and scored on the test
half's TRUE labels: it measures what the probe reaches with no signal (≈ the majority-class rate),
so selectivity = accuracy − control says how far the probe is above chance. The other baseline
is the `floor` column of analysis/metrics.csv (the same probe on the random-initialized model); at
a Hyena the prev-token floor is already ≈ 0.99, because the short convolution mixes neighbours.

The three targets (`PROBE_TARGETS`), evaluated on captured activations at the probe set's slots:
- `prev_token`: the previous token's identity at value positions (the key of the pair);
- `next_token`: the next token's identity at key positions (the value of the pair; only
  predictable where the key already appeared, so its ceiling is below 1);
- `answer`: the answer (the target) at the query position.

sklearn is imported inside the functions, so `import interp` stays light.
"""
from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

PROBE_TARGETS = ("prev_token", "next_token", "answer")
PROBE_ROLE = {"prev_token": "value", "next_token": "key", "answer": "query"}


@dataclass
class ProbeResult:
    accuracy: float
    control: float
    n_train: int
    n_test: int
    n_classes: int

    @property
    def selectivity(self) -> float:
        return self.accuracy - self.control

    @property
    def ci(self) -> float:
        """95% normal-approximation half-width of the test accuracy."""
        if self.n_test == 0:
            return float("nan")
        p = self.accuracy
        return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / self.n_test)


def fit_probe(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
    C: float = 1.0, max_iter: int = 100,
) -> float:
    """Test accuracy of a multinomial logistic regression (standardized features)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(y_test) == 0 or len(y_train) == 0:
        return float("nan")
    X_train = np.asarray(X_train, dtype=np.float64)
    X_test = np.asarray(X_test, dtype=np.float64)
    classes = np.unique(y_train)
    if len(classes) == 1:  # nothing to learn: predict the only class seen
        return float(np.mean(y_test == classes[0]))
    mu = X_train.mean(axis=0)
    sd = X_train.std(axis=0)
    sd[sd < 1e-8] = 1.0
    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-3)
    # small fits: one BLAS thread is faster than many, and fair to a shared machine
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X_train - mu) / sd, y_train)
    return float(np.mean(clf.predict((X_test - mu) / sd) == y_test))


def permuted_labels(labels: np.ndarray, train: np.ndarray, seed: int | str = 0) -> np.ndarray:
    """The control's labels: `labels` with the training rows (`train`, a bool mask) permuted among
    themselves and the test rows unchanged, so the control is scored on the true test labels. The
    training label counts are kept; the same (labels, train, seed) always give the same array."""
    labels = np.asarray(labels)
    train = np.asarray(train, dtype=bool)
    if labels.shape != train.shape:
        raise ValueError(f"labels {labels.shape} and train mask {train.shape} differ in shape")
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    rng = np.random.default_rng(seed)
    out = labels.copy()
    idx = np.flatnonzero(train)
    out[idx] = labels[idx[rng.permutation(len(idx))]]
    return out


def probe_with_control(
    X: np.ndarray, labels: np.ndarray, train: np.ndarray,
    control_seed: int | str = 0, control: np.ndarray | None = None, C: float = 1.0,
) -> ProbeResult:
    """Accuracy and label-permutation-control accuracy on one feature matrix [n, d] (rows:
    samples; `train` a bool mask of the training rows, the rest are the test rows). `control`:
    precomputed `permuted_labels(labels, train, control_seed)`."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    train = np.asarray(train, dtype=bool)
    test = ~train
    ctrl = permuted_labels(labels, train, control_seed) if control is None else np.asarray(control)
    acc = fit_probe(X[train], labels[train], X[test], labels[test], C=C)
    # the permuted fit is scored on the TRUE test labels: what the probe reaches with no signal
    cacc = fit_probe(X[train], ctrl[train], X[test], labels[test], C=C)
    return ProbeResult(acc, cacc, int(train.sum()), int(test.sum()), int(len(np.unique(labels))))


# ---------------------------------------------------------------------- on a probe set
@dataclass
class ProbeSamples:
    """Which (sequence, slot) pairs a target uses, with labels, the current token types, the
    split and the control's labels (`permuted_labels`)."""

    seq: Tensor
    slot: Tensor
    labels: np.ndarray
    types: np.ndarray
    train: np.ndarray
    control: np.ndarray


def probe_samples(ps: Any, target: str) -> ProbeSamples | None:
    """The samples of `target` (PROBE_TARGETS) on a `ProbeSet`; None when the task has no
    such positions (e.g. key/value probes on induction-head data)."""
    if target not in PROBE_TARGETS:
        raise ValueError(f"unknown probe target {target!r}; use one of {', '.join(PROBE_TARGETS)}")
    if target == "answer":
        seq = torch.arange(ps.n)
        slot = torch.zeros(ps.n, dtype=torch.int64)
        labels = ps.answer
    else:
        mask = ps.slot_role(PROBE_ROLE[target])
        seq, slot = torch.nonzero(mask, as_tuple=True)
        if len(seq) == 0:
            return None
        pos = ps.slot_pos[seq, slot]
        L = ps.length
        if target == "prev_token":
            ok = pos >= 1
            seq, slot, pos = seq[ok], slot[ok], pos[ok]
            labels = ps.inputs[seq, pos - 1]
        else:
            ok = pos + 1 < L
            seq, slot, pos = seq[ok], slot[ok], pos[ok]
            labels = ps.inputs[seq, pos + 1]
    pos = ps.slot_pos[seq, slot]
    types = ps.inputs[seq, pos].numpy()
    labels = labels.numpy()
    train = ps.probe_train[seq].numpy()
    control = permuted_labels(labels, train, f"control/{target}/{ps.meta.get('probe_seed', 0)}")
    return ProbeSamples(seq, slot, labels, types, train, control)


def probe_hooks(acts: dict[str, Tensor], n_layers: int) -> list[tuple[int, str]]:
    """(layer, hook) probed per layer: the block's residual output `blocks.{l}.hook_resid_post`."""
    return [(l, f"blocks.{l}.hook_resid_post") for l in range(n_layers) if f"blocks.{l}.hook_resid_post" in acts]


def run_probes(
    acts: dict[str, Tensor], ps: Any, hooks: Sequence[tuple[int, str]],
    targets: Sequence[str] = PROBE_TARGETS, samples: dict[str, ProbeSamples | None] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows for every (target, layer): `probe_{target}` (accuracy, with the control
    accuracy in the `control` column and a 95% CI), `probe_{target}_control` (the
    label-permutation control), `probe_{target}_selectivity` (accuracy − control)."""
    rows: list[dict[str, Any]] = []
    samples = {} if samples is None else samples
    for target in targets:
        if target not in samples:
            samples[target] = probe_samples(ps, target)
        s = samples[target]
        if s is None:
            continue
        for layer, hook in hooks:
            X = acts[hook][s.seq, s.slot].reshape(len(s.seq), -1).float().numpy()
            r = probe_with_control(X, s.labels, s.train, control=s.control)
            base = dict(layer=layer, hook=hook, role=PROBE_ROLE[target], target=target, n=r.n_test)
            name = f"probe_{target}"
            rows.append(dict(base, metric=name, value=r.accuracy, control=r.control, ci=r.ci))
            rows.append(dict(base, metric=name + "_control", value=r.control,
                             ci=1.96 * math.sqrt(max(r.control * (1 - r.control), 0) / max(r.n_test, 1))))
            rows.append(dict(base, metric=name + "_selectivity", value=r.selectivity))
    return rows
