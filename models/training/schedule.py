"""When to evaluate and checkpoint: log-spaced steps ∪ every N ∪ adaptive densification.

Every evaluation writes a checkpoint, and every checkpoint has its evaluation (one line of
metrics.jsonl per checkpoint). With T total steps:

- planned steps: 0, T, `log_count` log-spaced steps in [1, T], and every `every` steps
  (`every: null` is ceil(T/50); 0 turns it off);
- adaptive rule: after the evaluation at step s, take the reference evaluation r, the latest
  one at or before s − W (W = the `every` spacing, or ceil(T/50) when it is off; the first
  evaluation if none is that old). If any watched accuracy (test_acc_last, train_acc_all,
  train_acc_recallable, train_acc_last) differs by at least `steep` between r and s, the run
  is steep: the next evaluation comes at most `dense_every` steps later (`null`: max(1,
  T // 250)). It stays dense until an evaluation sees every change over its window below
  `steep` again (it has calmed).

The rule is a pure function of the evaluations so far, and its state (the history of
watched values and the dense flag) is saved with the resume state, so a resumed run makes
the same choices as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.config.schema import CheckpointConfig

WATCHED = ("test_acc_last", "train_acc_all", "train_acc_recallable", "train_acc_last")


def auto_every(total: int) -> int:
    return max(1, math.ceil(total / 50))


def auto_dense(total: int) -> int:
    return max(1, total // 250)


class CheckpointSchedule:
    def __init__(self, cfg: CheckpointConfig, total: int):
        self.cfg, self.total = cfg, total
        every = auto_every(total) if cfg.every is None else cfg.every
        self.every = every
        self.window = every if every > 0 else auto_every(total)
        self.dense_every = auto_dense(total) if cfg.dense_every is None else cfg.dense_every
        planned = {0, total}
        if cfg.log_count > 0:
            planned |= {int(round(x)) for x in np.geomspace(1, total, cfg.log_count)}
        if every > 0:
            planned |= set(range(every, total + 1, every))
        self.planned = sorted(s for s in planned if 0 <= s <= total)
        self.history: list[tuple[int, list[float | None]]] = []
        self.dense = False

    def observe(self, step: int, metrics: dict[str, Any]) -> None:
        values = [metrics.get(k) for k in WATCHED]
        self.history.append((step, values))
        if not self.cfg.adaptive or len(self.history) < 2:
            return
        ref = self.history[0]
        for s, v in self.history[:-1]:
            if s <= step - self.window:
                ref = (s, v)
        change = max((abs(a - b) for a, b in zip(values, ref[1]) if a is not None and b is not None), default=0.0)
        self.dense = change >= self.cfg.steep

    def next_after(self, step: int) -> int:
        nxt = next((s for s in self.planned if s > step), self.total)
        if self.dense:
            nxt = min(nxt, step + self.dense_every)
        return min(nxt, self.total)

    def state(self) -> dict[str, Any]:
        return {"history": [[s, v] for s, v in self.history], "dense": self.dense}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [(int(s), list(v)) for s, v in state["history"]]
        self.dense = bool(state["dense"])
