"""A run directory's models and data, for interp: a checkpoint's model, the run's own
initialization, and its test split regenerated from the config. The paths and the config come
from `RunDir` (models/rundir/layout.py); this module imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from models.build import build_model
from models.data.batches import generate
from models.rundir.checkpoint import load_checkpoint
from models.rundir.layout import RunDir


def load_checkpoint_model(run_dir: str | Path, step: int, cfg: Any | None = None) -> nn.Module:
    """The model of checkpoint `step` (eval mode), checked against the run's kind."""
    run = RunDir(run_dir)
    cfg = run.run_config() if cfg is None else cfg
    model = random_init_model(cfg)
    path = dict(run.list_checkpoints()).get(int(step), run.checkpoint_file(int(step)))
    load_checkpoint(path, model, kind=cfg.model.kind)
    return model.eval()


def random_init_model(cfg: Any) -> nn.Module:
    """`build_model(cfg.model, seed=cfg.seed)`: the run's own initialization, untrained (the
    probes' floor; equal to a step-0 checkpoint when the run saved one)."""
    return build_model(cfg.model, seed=int(cfg.seed)).eval()


def run_test_split(cfg: Any):
    """(inputs, targets, roles) of the run's test split, regenerated exactly from its config
    (`models.data.batches.generate(cfg, cfg.data_seed)`, what the trainer evaluates on)."""
    return generate(cfg, cfg.data_seed).split("test")
