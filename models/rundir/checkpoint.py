"""Checkpoint files of a run directory: weights, the index of complete ones, resume state.

    checkpoints/step_{step:08d}.safetensors   model.state_dict(); metadata (JSON values):
                                              format, step, epoch, kind, config_hash, model
    checkpoints/index.json                    {"format", "config_hash", "checkpoints":
                                              [{"step", "epoch", "file"}, ...]} in step order
    state/resume_{step:08d}.safetensors       optimizer tensors; metadata: step, epoch,
                                              config_hash, optimizer facts, schedule state

Every file is written atomically, and index.json is written last: a checkpoint is complete
once it is listed there. Loading reads safetensors only (no unpickling).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn
from torch import Tensor

from models.errors import UserError
from models.rundir.io import atomic_save_tensors, load_tensors
# the names and the index belong to the layout (torch-free); re-exported for the trainer
from models.rundir.layout import INDEX_FORMAT, checkpoint_name, read_index, state_name, write_index  # noqa: F401
from models.safari.conversion import load_aligned

CHECKPOINT_FORMAT = "hyenalens-checkpoint/1"
STATE_FORMAT = "hyenalens-resume-state/1"


def save_checkpoint(path: Path, model: nn.Module, *, step: int, epoch: float, kind: str,
                    config_hash: str, model_config: dict[str, Any]) -> None:
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "epoch": epoch, "kind": kind,
            "config_hash": config_hash, "model": model_config}
    # clone: safetensors refuses shared storage (safari's one Sin frequency under three keys)
    atomic_save_tensors(path, {k: v.detach().clone() for k, v in model.state_dict().items()}, meta)


def load_checkpoint(path: Path, model: nn.Module, *, kind: str, config_hash: str | None = None) -> dict[str, Any]:
    """Load weights into `model` after checking the file's kind, keys and shapes (and the
    config hash when given). Any mismatch is a one-line UserError."""
    tensors, meta = load_tensors(path)
    got_kind = meta.get("kind")
    if got_kind is not None and got_kind != kind:
        raise UserError(f"checkpoint {path} is from a {got_kind} model but this config builds a {kind} "
                        "model; use the run directory it came from")
    load_aligned(model, tensors, source=f"checkpoint {path}")
    if config_hash is not None and meta.get("config_hash") != config_hash:
        raise UserError(f"checkpoint {path} was written under another config (hash {meta.get('config_hash')}, "
                        f"this run's is {config_hash}); use the run directory it came from")
    return meta


def save_state(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    atomic_save_tensors(path, tensors, {"format": STATE_FORMAT, **meta})


def load_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a HyenaLens resume state; delete the run directory and retrain")
    return tensors, meta
