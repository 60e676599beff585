"""The no-recall baseline: the best test accuracy at the answer positions that a model reaches
without binding a key to its value (docs/metrics.md, "The recall jump").

A model that does not bind can still count. Every task's baseline is the same rule over a
per-task set of *candidate positions* in each sequence's context: guess the token that occurs
there most often, ties broken uniformly at random. A row scores 1/|ties| when its answer is
among the most frequent tokens, else 0 (the expected accuracy of the random tie-break); the
baseline is the mean over the answer targets. It is exact on the split given, uses no RNG, and
is vectorized over the batch.

Candidate positions, per task:

- AR: the context's value positions (``roles.value``): the "most frequent value" heuristic that
  quick runs stall at. Without the key the answer is a value of the context, and a value paired
  with more keys is more likely.
- IH: positions 1..L-2 of the length-(L+1) input. The trigger p lies in 0..L-3, so the copied
  token at p+1 is one of those positions, each equally likely. A model that ignores where the
  trigger is can still guess the token that fills most of them. The earlier ``=>`` is excluded
  (it is never the answer). This is count-weighted chance among the tokens that could be the
  answer, which is at least uniform chance among the distinct tokens.
- MQAR: the N pair values (``roles.value``). They are distinct within a row, so every
  candidate ties and a query scores 1/N: uniform chance among the values of the context.
  Filler ids are never candidates: a noise token is never the answer.
"""
from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.data.synthetics import ICLData, Roles
from models.data.vocab import IGNORE_INDEX
from models.errors import UserError

# task names as `ICLData.args["task"]` and as `data.task` of a run config
_TASK_NAMES = {"assoc_recall": "ar", "ar": "ar", "induction_head": "ih", "ih": "ih", "mqar": "mqar"}

__all__ = ["no_recall_baseline", "most_frequent_accuracy"]


def most_frequent_accuracy(inputs: Int[Tensor, "n L"], candidates: Bool[Tensor, "n L"],
                           answer: Bool[Tensor, "n L"], targets: Int[Tensor, "n L"]) -> float:
    """Mean over the answer targets (``answer`` marks them, ``targets`` holds them) of the
    expected accuracy of guessing the most frequent token among ``candidates`` positions of the
    same row, ties broken uniformly at random."""
    n = inputs.shape[0]
    if not bool(answer.any()):
        raise UserError("the split has no answer targets; the no-recall baseline needs a test split "
                        "with answers (roles.answer)")
    answers = targets[answer]  # [a]: the answer tokens, in row-major order
    if bool((answers == IGNORE_INDEX).any()):
        raise UserError("an answer target is masked (-100); pass the split's own targets")
    vocab = max(int(inputs.max()), int(answers.max())) + 1
    # counts[r, t]: how often token t fills a candidate position of row r (a per-row bincount)
    counts: Int[Tensor, "n V"] = torch.zeros(n, vocab, dtype=torch.int64, device=inputs.device)
    counts.scatter_add_(1, inputs, candidates.to(torch.int64))
    top = counts == counts.max(1, keepdim=True).values  # [n, V]: the most frequent tokens
    top &= counts > 0  # a row without candidates guesses nothing right
    # [n, L] row indices, then [a]: the row of each answer
    rows = torch.arange(n, device=inputs.device).unsqueeze(1).expand_as(answer)[answer]
    ties = top.sum(1).clamp(min=1).to(torch.float64)  # [n]
    score: Float[Tensor, " a"] = top[rows, answers].to(torch.float64) / ties[rows]
    return float(score.mean())


def _candidates(task: str, inputs: Tensor, roles: Roles) -> Tensor:
    if task in ("ar", "mqar"):
        return roles.value
    cand = torch.zeros_like(roles.value)  # IH: the positions that can hold the copy
    cand[:, 1:inputs.shape[1] - 2] = True  # input length L+1: positions 1..L-2
    return cand & ~roles.trigger


def no_recall_baseline(data_or_split: ICLData | tuple[Tensor, Tensor, Roles], task: str | None = None,
                       *, rows: int | None = None) -> float:
    """The no-recall baseline of the test split (module doc): AR the most-frequent-value
    heuristic, IH count-weighted chance among the tokens that could be copied, MQAR 1/N.

    ``data_or_split`` is an ``ICLData`` (its test split; ``task`` defaults to its
    ``args["task"]``) or an ``(inputs, targets, roles)`` split such as
    ``models.rundir.run.run_test_split`` returns (``task`` required). ``task`` is "ar", "ih"
    or "mqar" (or safari's "assoc_recall" / "induction_head"). ``rows`` keeps the first rows
    only, as ``eval.test_subset`` does."""
    if isinstance(data_or_split, ICLData):
        inputs, targets, roles = data_or_split.split("test")
        task = data_or_split.args.get("task") if task is None else task
    elif isinstance(data_or_split, (tuple, list)) and len(data_or_split) == 3:
        inputs, targets, roles = data_or_split
    else:
        raise UserError(f"no_recall_baseline takes an ICLData or an (inputs, targets, roles) split, got "
                        f"{type(data_or_split).__name__}; pass data or data.split('test')")
    if task not in _TASK_NAMES:
        raise UserError(f"unknown task {task!r} for the no-recall baseline; use ar, ih or mqar")
    if rows is not None:
        inputs, targets, roles = inputs[:rows], targets[:rows], roles.select(slice(0, rows))
    name = _TASK_NAMES[task]
    return most_frequent_accuracy(inputs, _candidates(name, inputs, roles), roles.answer, targets)
