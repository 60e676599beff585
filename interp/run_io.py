"""Reading a run directory for interp, through the trainer's own API (models.config.schema,
models.rundir.checkpoint, models.rundir.layout, models.data.batches): the resolved config, the complete
checkpoints (those listed in checkpoints/index.json), a checkpoint's model, the test split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from models.errors import UserError


def read_run_config(run_dir: str | Path):
    """The run's resolved `RunConfig` (config.yaml, validated)."""
    from models.config.schema import parse_yaml, validate_config
    from models.rundir.layout import RunDir

    run = RunDir(run_dir)
    if not run.is_run():
        raise UserError(f"{run.root} is not a run directory (no config.yaml); pass a RUN_DIR made by `hyenalens train`")
    try:
        text = run.config.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {run.config} ({e.strerror}); fix its permissions") from None
    return validate_config(parse_yaml(text, str(run.config)))


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, weights file) of every complete checkpoint (listed in index.json), in step order."""
    from models.rundir.checkpoint import checkpoint_name, read_index
    from models.rundir.layout import RunDir

    run = RunDir(run_dir)
    index = read_index(run.index)
    if index is None:
        return []
    out = []
    for e in index["checkpoints"]:
        if isinstance(e, dict) and "step" in e:
            # `file` is relative to the run directory ("checkpoints/step_….safetensors")
            name = Path(str(e.get("file") or checkpoint_name(int(e["step"])))).name
            out.append((int(e["step"]), run.checkpoints / name))
    return sorted(out)


def load_checkpoint_model(run_dir: str | Path, step: int, cfg: Any | None = None) -> nn.Module:
    """The model of checkpoint `step` (eval mode), checked against the run's kind."""
    from models.rundir.checkpoint import checkpoint_name, load_checkpoint

    cfg = read_run_config(run_dir) if cfg is None else cfg
    model = random_init_model(cfg)
    files = dict(list_checkpoints(run_dir))
    path = files.get(int(step), Path(run_dir) / "checkpoints" / checkpoint_name(int(step)))
    load_checkpoint(path, model, kind=cfg.model.get("kind", "hyena"))
    return model.eval()


def random_init_model(cfg: Any) -> nn.Module:
    """`build_model(cfg.model, seed=cfg.seed)`: the run's own initialization, untrained (the
    probes' floor; equal to a step-0 checkpoint when the run saved one)."""
    from models.build import build_model

    return build_model(dict(cfg.model), seed=int(cfg.seed)).eval()


def run_test_split(cfg: Any):
    """(inputs, targets, roles) of the run's test split, regenerated exactly from its config
    (`models.data.batches.generate(cfg, cfg.data_seed)`, what the trainer evaluates on)."""
    from models.data.batches import generate

    return generate(cfg, cfg.data_seed).split("test")
