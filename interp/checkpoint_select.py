"""Which checkpoints to capture when a run has more than a budget allows.

A run checkpoints at every evaluation, and the adaptive schedule (models.training.schedule)
makes those dense where the accuracies move. Capturing and probing every one costs about a
second each at the demo's size, so `hyenalens demo` (and `hyenalens capture --limit N`) keeps
`limit` of them, chosen so that the kept ones stay dense around the transitions:

- the first and the last checkpoint are always kept;
- between kept neighbours a and b, the *gap* is the largest change of any watched accuracy
  (test_acc_last, train_acc_all, train_acc_last) between them, plus `LOG_WEIGHT` · |ln(1+b) −
  ln(1+a)| so that flat stretches still get a checkpoint every so often in log-steps;
- greedily, the widest gap is split at the saved checkpoint nearest its middle (in cumulative
  gap), until `limit` are kept or no gap has a checkpoint inside it.

Pure and deterministic: the same metrics give the same steps. Written here rather than taken
from a library because it is a greedy split of a 1-D curve by its own cost, a dozen lines.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Sequence

from models.errors import UserError

WATCHED = ("test_acc_last", "train_acc_all", "train_acc_last")
LOG_WEIGHT = 0.05  # one log-step (a factor e in steps) of flat curve weighs as a 0.05 accuracy change


def _position(records: Sequence[dict[str, Any]]) -> list[float]:
    """Cumulative cost along the saved checkpoints (the curve's 'arc length')."""
    pos = [0.0]
    for prev, cur in zip(records, records[1:]):
        change = max((abs(cur[k] - prev[k]) for k in WATCHED
                      if isinstance(cur.get(k), (int, float)) and isinstance(prev.get(k), (int, float))),
                     default=0.0)
        pos.append(pos[-1] + change + LOG_WEIGHT * abs(math.log1p(cur["step"]) - math.log1p(prev["step"])))
    return pos


def select_steps(records: Sequence[dict[str, Any]], saved: Sequence[int], limit: int) -> list[int]:
    """`limit` of the `saved` checkpoint steps, dense where the accuracies of `records`
    (metrics.jsonl lines, one per evaluation) move. Steps without a record are placed by
    their neighbours; with `limit` ≥ len(saved) every saved step is returned."""
    if limit < 2:
        raise UserError(f"a checkpoint limit of {limit} is too small; use at least 2 (first and last)")
    saved = sorted({int(s) for s in saved})
    if len(saved) <= limit:
        return saved
    by_step = {int(r["step"]): r for r in records if "step" in r}
    recs = [by_step.get(s, {"step": s}) for s in saved]
    pos = _position(recs)
    keep = {0, len(saved) - 1}
    heap = [(-(pos[-1] - pos[0]), 0, len(saved) - 1)]  # widest gap first; ties: the earlier
    while len(keep) < limit and heap:
        _, a, b = heapq.heappop(heap)
        if b - a < 2:
            continue
        mid = (pos[a] + pos[b]) / 2
        m = min(range(a + 1, b), key=lambda i: (abs(pos[i] - mid), i))
        keep.add(m)
        heapq.heappush(heap, (-(pos[m] - pos[a]), a, m))
        heapq.heappush(heap, (-(pos[b] - pos[m]), m, b))
    return [saved[i] for i in sorted(keep)]
