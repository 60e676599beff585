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

import json
from pathlib import Path
from typing import Any

import torch.nn as nn
from torch import Tensor

from models.errors import UserError
from models.rundir.io import atomic_save_tensors, atomic_write_json, load_tensors

CHECKPOINT_FORMAT = "hyenalens-checkpoint/1"
INDEX_FORMAT = "hyenalens-checkpoint-index/1"
STATE_FORMAT = "hyenalens-resume-state/1"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def state_name(step: int) -> str:
    return f"resume_{step:08d}.safetensors"


def save_checkpoint(path: Path, model: nn.Module, *, step: int, epoch: float, kind: str,
                    config_hash: str, model_config: dict[str, Any]) -> None:
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "epoch": epoch, "kind": kind,
            "config_hash": config_hash, "model": model_config}
    # clone: safetensors refuses shared storage (safari's one Sin frequency under three keys)
    atomic_save_tensors(path, {k: v.detach().clone() for k, v in model.state_dict().items()}, meta)


def load_checkpoint(path: Path, model: nn.Module, *, kind: str, config_hash: str | None = None) -> dict[str, Any]:
    """Load weights into `model` after checking the file's kind, keys and shapes (and the
    config hash when given). Any mismatch is a one-line UserError."""
    from models.safari.conversion import load_aligned

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


def read_index(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); it is damaged: delete the run "
                        "directory or restore the file") from None
    if not isinstance(index, dict) or not isinstance(index.get("checkpoints"), list):
        raise UserError(f"{path} is not a checkpoint index; delete the run directory or restore the file")
    return index


def write_index(path: Path, config_hash: str, entries: list[dict[str, Any]]) -> None:
    atomic_write_json(path, {"format": INDEX_FORMAT, "config_hash": config_hash,
                             "checkpoints": sorted(entries, key=lambda e: e["step"])})


def save_state(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    atomic_save_tensors(path, tensors, {"format": STATE_FORMAT, **meta})


def load_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a HyenaLens resume state; delete the run directory and retrain")
    return tensors, meta
