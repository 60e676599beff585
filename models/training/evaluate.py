"""Evaluation of one model state: the accuracy curves and losses of metrics.jsonl.

In eval mode, under `torch.inference_mode`, on a fixed train subset (the first
`eval.train_subset` train examples, as the safari fixture's metrics) and the test set:

    train_loss            training loss (the run's `loss`) on the train subset
    test_loss             cross-entropy on the scored test targets (!= -100)
    train_acc_all         every scored train target (!= -100; safari's train metric)
    train_acc_recallable  recallable targets only (roles.recallable)
    train_acc_last        answer targets (roles.answer: the last position for AR/IH, every
                          query for MQAR)
    test_acc_last         answer targets of the test set (safari's test metric)
    train_acc_all_ceiling Bayes-optimal train_acc_all on the same subset (constant per run)
    test_acc_last_baseline the no-recall baseline of test_acc_last on the same test rows
                          (models.data.baseline; constant per run)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.data.batches import IGNORE_INDEX, loss_targets
from models.data.baseline import no_recall_baseline
from models.data.synthetics import train_acc_all_ceiling

CHUNK = 250  # examples per forward; fixed, so sums are reproducible


@dataclass
class EvalSet:
    train_inputs: Tensor
    train_targets: Tensor
    train_loss_targets: Tensor
    train_recallable: Tensor
    train_answer: Tensor
    test_inputs: Tensor
    test_targets: Tensor
    test_answer: Tensor
    ceiling: float
    baseline: float


def make_eval_set(data, loss: str, train_subset: int | None, test_subset: int | None, device) -> EvalSet:
    n = data.train_inputs.shape[0] if train_subset is None else min(train_subset, data.train_inputs.shape[0])
    m = data.test_inputs.shape[0] if test_subset is None else min(test_subset, data.test_inputs.shape[0])
    rows = slice(0, n)
    sub = dataclasses.replace(data, train_inputs=data.train_inputs[rows], train_targets=data.train_targets[rows],
                              train_roles=data.train_roles.select(rows))
    ceiling = float(train_acc_all_ceiling(sub, split="train"))
    baseline = no_recall_baseline(data, rows=m)  # exact on the evaluated test rows; no RNG
    tr, te = data.train_roles, data.test_roles
    targets = data.train_targets[rows]
    return EvalSet(
        train_inputs=data.train_inputs[rows].to(device), train_targets=targets.to(device),
        train_loss_targets=loss_targets(targets, tr.answer[rows], loss).to(device),
        train_recallable=tr.recallable[rows].to(device), train_answer=tr.answer[rows].to(device),
        test_inputs=data.test_inputs[:m].to(device), test_targets=data.test_targets[:m].to(device),
        test_answer=te.answer[:m].to(device), ceiling=ceiling, baseline=baseline,
    )


class _Tally:
    def __init__(self):
        self.hit = 0
        self.count = 0

    def add(self, correct: Tensor, mask: Tensor) -> None:
        self.hit += int((correct & mask).sum())
        self.count += int(mask.sum())

    def value(self) -> float | None:
        return self.hit / self.count if self.count else None


def _split_metrics(model: nn.Module, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor],
                   loss_targets_: Tensor) -> tuple[dict[str, float | None], float | None]:
    tallies = {k: _Tally() for k in masks}
    loss_sum, loss_count = 0.0, 0
    for start in range(0, inputs.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        logits = model(inputs[sl])
        tgt = targets[sl]
        scored = tgt != IGNORE_INDEX
        correct = logits.argmax(-1) == tgt
        for k, mask in masks.items():
            tallies[k].add(correct, mask[sl] & scored)
        lt = loss_targets_[sl]
        n = int((lt != IGNORE_INDEX).sum())
        if n:
            loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), lt.reshape(-1),
                                              ignore_index=IGNORE_INDEX, reduction="sum"))
            loss_count += n
    return {k: t.value() for k, t in tallies.items()}, (loss_sum / loss_count if loss_count else None)


def evaluate(model: nn.Module, es: EvalSet) -> dict[str, float | None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ones = torch.ones_like(es.train_targets, dtype=torch.bool)
            tr, train_loss = _split_metrics(
                model, es.train_inputs, es.train_targets,
                {"all": ones, "recallable": es.train_recallable, "last": es.train_answer},
                es.train_loss_targets)
            te, test_loss = _split_metrics(model, es.test_inputs, es.test_targets,
                                           {"last": es.test_answer}, es.test_targets)
    finally:
        model.train(was_training)
    return {
        "train_loss": train_loss, "test_loss": test_loss,
        "train_acc_all": tr["all"], "train_acc_recallable": tr["recallable"],
        "train_acc_last": tr["last"], "test_acc_last": te["last"],
        "train_acc_all_ceiling": es.ceiling, "test_acc_last_baseline": es.baseline,
    }
