"""A run directory as a notebook reads it: `hyenalens.load_run(path)` → `Run`.

    run = hl.load_run("runs/ar_s0")
    run.steps                        # saved checkpoint steps, in order
    model = run.model(150)           # checkpoint 150 (eval mode); a step not saved is a UserError
    model = run.model(151, nearest=True)   # the nearest saved step instead
    for step, model in run.checkpoints(): ...
    run.metrics                      # metrics.jsonl as a DataFrame (one row per evaluation)
    run.circuit_metrics              # analysis/metrics.csv (`hyenalens probe`) as a DataFrame
    inputs, targets, roles = run.test_split()
    ps = run.probe_set()             # capture/probe_set.safetensors (`hyenalens capture`)
    run.config                       # the typed RunConfig

Both model kinds (Hyena and the TransformerLens attention baseline) load the same way. Every
path comes from `models.rundir.RunDir`, the one owner of the run-directory format; the models
and the test split from `models.rundir.run`. This module imports torch; `import hyenalens`
loads it only when `load_run` is first touched.
"""
from __future__ import annotations

import bisect
import operator
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import pandas as pd
import torch
import torch.nn as nn
from torch import Tensor

from interp.probe_set import ProbeSet
from models.config.schema import RunConfig
from models.data.synthetics import Roles
from models.errors import UserError
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir
from models.rundir.run import load_checkpoint_model, run_test_split

__all__ = ["Run", "Split", "load_run"]

NEARBY = 3  # saved steps listed on each side of a step that was not saved


class Split(NamedTuple):
    """One split of the run's data, regenerated from its config. Fields: inputs [n, L] int64,
    targets [n, L] int64 (−100 where not scored), roles (`models.data.synthetics.Roles`,
    masks [n, L])."""

    inputs: Tensor
    targets: Tensor
    roles: Roles


class Run:
    """One run directory (made by `hyenalens train` or `hyenalens import-safari`).

    Fields: `path` (the directory), `dir` (its `RunDir`: every path), `config` (the validated
    `RunConfig`, read once), `kind` ("hyena" or "attention"). `steps`, `metrics` and
    `circuit_metrics` are read from disk on each access, so a run still training shows its
    newest checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.dir = RunDir(path)
        self.path: Path = self.dir.root
        if not self.dir.is_run():
            raise UserError(f"{self.path} is not a HyenaLens run directory (no config.yaml); pass a folder "
                            "made by `hyenalens train` or `hyenalens import-safari`")
        self.config: RunConfig = self.dir.run_config()

    def __repr__(self) -> str:
        steps = self.steps
        span = f"{len(steps)} checkpoints, steps {steps[0]}…{steps[-1]}" if steps else "no checkpoints"
        return f"Run({str(self.path)!r}, kind={self.kind}, {span})"

    @property
    def kind(self) -> str:
        return str(self.config.model.kind)

    # ---- checkpoints ---------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """The steps of the complete saved checkpoints (listed in index.json), in order."""
        return self.dir.checkpoint_steps()

    def nearest_step(self, step: int) -> int:
        """The saved step closest to `step` (the earlier one on a tie)."""
        steps = self._saved()
        step = _as_step(step)
        i = bisect.bisect_left(steps, step)
        near = steps[max(i - 1, 0): i + 1]
        return min(near, key=lambda s: (abs(s - step), s))

    def model(self, step: int | None = None, nearest: bool = False,
              device: str | torch.device | None = None) -> nn.Module:
        """The model of checkpoint `step` in eval mode (None: the last saved step), on `device`
        when given. A step that was not saved is a UserError listing the saved steps around
        it, unless `nearest=True`, which loads the nearest saved step instead."""
        steps = self._saved()
        if step is None:
            step = steps[-1]
        step = _as_step(step)
        if step not in steps:
            if not nearest:
                raise UserError(f"step {step} was not saved in {self.path}; nearby saved steps: "
                                f"{_nearby(steps, step)} ({len(steps)} saved, {steps[0]}…{steps[-1]}); "
                                "pass one of them, or nearest=True")
            step = self.nearest_step(step)
        model = load_checkpoint_model(self.path, step, self.config)
        return model if device is None else model.to(device)

    def checkpoints(self, steps: Iterable[int] | None = None) -> Iterator[tuple[int, nn.Module]]:
        """(step, model) for each saved step (or each of `steps`, which must be saved), in
        order; each model is loaded when its turn comes."""
        for step in (self._saved() if steps is None else [_as_step(s) for s in steps]):
            yield step, self.model(step)

    def _saved(self) -> list[int]:
        steps = self.steps
        if not steps:
            raise UserError(f"{self.path} has no saved checkpoints yet; train it with "
                            f"`hyenalens train CONFIG --out {self.path}`")
        return steps

    # ---- tables --------------------------------------------------------------------------
    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl: one row per evaluation (= per checkpoint), sorted by step; columns
        in docs/architecture.md ("metrics.jsonl keys")."""
        if not self.dir.evaluated():
            raise UserError(f"{self.path} has no metrics.jsonl yet; train it with "
                            f"`hyenalens train CONFIG --out {self.path}`")
        rows = [r for r in read_jsonl(self.dir.metrics) if isinstance(r, dict) and "step" in r]
        df = pd.DataFrame(rows)
        return df.sort_values("step", kind="stable").reset_index(drop=True) if rows else df

    @property
    def circuit_metrics(self) -> pd.DataFrame:
        """analysis/metrics.csv: the tidy table of every circuit metric per checkpoint (columns
        step, metric, layer, value, target, hook, role, control, ci, n, floor; docs/metrics.md)."""
        if not self.dir.metrics_csv.is_file():
            raise UserError(f"{self.path} has no analysis/metrics.csv; run `hyenalens capture {self.path}` "
                            f"and then `hyenalens probe {self.path}`")
        return pd.read_csv(self.dir.metrics_csv)

    # ---- data ----------------------------------------------------------------------------
    def test_split(self) -> Split:
        """(inputs, targets, roles) of the run's test split, regenerated exactly from its
        config: the examples `test_acc_last` is measured on."""
        return Split(*run_test_split(self.config))

    def probe_set(self) -> ProbeSet:
        """The run's probe set (capture/probe_set.safetensors), which `hyenalens capture` draws."""
        if not self.dir.probe_set.is_file():
            raise UserError(f"{self.path} has no probe set (capture/probe_set.safetensors); run "
                            f"`hyenalens capture {self.path}` first")
        return ProbeSet.load(self.dir.probe_set)


def load_run(path: str | os.PathLike) -> Run:
    """The run directory at `path` as a `Run` (module doc); not a run: a one-line UserError."""
    return Run(path)


def _as_step(step: Any) -> int:
    """An integer step (int, numpy or 0-d tensor integer); anything else is a UserError."""
    try:
        if not isinstance(step, bool):
            return operator.index(step)
    except TypeError:
        pass
    raise UserError(f"a checkpoint step is an integer, got {step!r}; see run.steps")


def _nearby(steps: list[int], step: int) -> str:
    i = bisect.bisect_left(steps, step)
    return ", ".join(str(s) for s in steps[max(i - NEARBY, 0): i + NEARBY])
