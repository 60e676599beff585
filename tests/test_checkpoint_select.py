"""Capturing at most N checkpoints, dense around the transitions (interp.checkpoint_select)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.checkpoint_select import select_steps
from models.errors import UserError


def _records(steps, acc):
    return [{"step": int(s), "test_acc_last": float(a), "train_acc_all": float(a), "train_acc_last": float(a)}
            for s, a in zip(steps, acc)]


def _two_phase():
    """Checkpoints every 10 steps to 2000; accuracy flat at 0.5, a jump to 1.0 over 900-1100."""
    steps = np.arange(0, 2001, 10)
    acc = 0.5 + 0.5 / (1 + np.exp(-(steps - 1000) / 40.0))
    return steps, acc


def test_keeps_first_last_and_is_dense_in_the_transition():
    steps, acc = _two_phase()
    got = select_steps(_records(steps, acc), steps, 20)
    assert len(got) == 20 and got[0] == 0 and got[-1] == 2000 and got == sorted(set(got))
    inside = [s for s in got if 880 <= s <= 1120]
    # the transition window is 12% of the saved checkpoints and holds most of the curve's change
    assert len(inside) >= 8, got
    # flat stretches still get some (the log-step term), early on where log-steps are wide
    assert any(s < 100 for s in got[1:])
    assert select_steps(_records(steps, acc), steps, 20) == got  # deterministic


def test_no_cap_when_under_the_limit_and_unlogged_steps():
    steps = [0, 5, 9, 40]
    assert select_steps([], steps, 10) == steps
    got = select_steps([], list(range(0, 101)), 5)  # no metrics at all: spread in log-steps
    assert got[0] == 0 and got[-1] == 100 and len(got) == 5
    assert got[1] < 10  # log spacing puts early steps first


def test_bad_limit():
    with pytest.raises(UserError, match="at least 2"):
        select_steps([], [0, 1, 2], 1)


def test_capture_run_limit(tmp_path):
    from interp.capture import capture_run
    from models.rundir.layout import RunDir
    from models.training.loop import train

    cfg = {"seed": 0, "loss": "all",
           "model": {"kind": "hyena", "d_model": 8, "n_layers": 1, "filter_order": 8, "embed_dropout": 0.0},
           "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 14, "num_examples": 48, "num_test_examples": 40},
           "schedule": {"steps": 8, "batch_size": 16},
           "checkpoints": {"every": 1, "adaptive": False}}
    with torch.random.fork_rng():
        train(cfg, tmp_path / "run", quiet=True)
    run = RunDir(tmp_path / "run")
    assert len(run.checkpoint_steps()) == 9
    out = capture_run(run.root, progress=False, limit=4, n_probe=16)
    assert sorted(out["captured"]) == run.captured_steps() and len(out["captured"]) == 4
    assert {0, 8} <= set(out["captured"])
