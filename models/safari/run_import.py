"""`hyenalens import-safari SAFARI_DIR --out RUN_DIR`: a safari training run as a HyenaLens run.

Reads safari's `config.yaml` (`model`, `dataset`, `optimizer`, `trainer` sections) and its
checkpoints: safetensors state dicts named by step (`step_000150.safetensors`), or Lightning
`.ckpt` files (`epoch=3-step=1000.ckpt`) loaded with `weights_only=True` unless
`trust_pickle`. It regenerates safari's exact dataset from the config, evaluates every
checkpoint as the trainer does, and writes a normal run directory (docs/architecture.md), so
capture, probe, analyze and report work on it. Safari's own metrics file is kept beside it
as `safari_metrics.json`.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.data.batches import generate
from models.rundir.checkpoint import save_checkpoint
from models.config import config_hash, config_yaml, parse_yaml, resolve_config, validate_config
from models.errors import UserError
from models.training.evaluate import evaluate, make_eval_set
from models.rundir.io import atomic_write_json, atomic_write_text, rewrite_jsonl
from models.rundir.layout import (RUN_FORMAT, RunDir, data_provenance, git_revision, read_index, versions,
                                  write_index)
from models.safari.conversion import lm_config_from_safari, load_state_dict
from models.hyena.lm import HyenaLM

_TASKS = {"assoc_recall": "ar", "induction_head": "ih"}
_STEP = re.compile(r"(?:^|[_=-])step[_=]?(\d+)")


def safari_checkpoints(safari_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) for every checkpoint file, in step order; a file without a step is refused."""
    found = []
    for p in sorted(safari_dir.rglob("*")):
        if p.suffix not in (".safetensors", ".ckpt") or p.name == "expected.safetensors":
            continue
        m = _STEP.search(p.stem)
        if m is None:
            raise UserError(f"cannot tell the training step of {p}; name it step_<N>{p.suffix} or epoch=E-step=N.ckpt")
        found.append((int(m.group(1)), p))
    steps = [s for s, _ in found]
    if len(set(steps)) != len(steps):
        raise UserError(f"{safari_dir} holds two checkpoints for one step; keep one file per step")
    if not found:
        raise UserError(f"no checkpoints (*.safetensors or *.ckpt) in {safari_dir}; point at a safari run folder")
    return sorted(found)


def run_config_from_safari(cfg: dict[str, Any]) -> dict[str, Any]:
    """A HyenaLens run config (raw dict) equivalent to a safari config."""
    try:
        model, dataset = dict(cfg["model"]), dict(cfg["dataset"])
    except (KeyError, TypeError):
        raise UserError("safari config.yaml needs `model` and `dataset` sections; is this a safari run folder?") from None
    method = dataset.get("copy_method")
    if method not in _TASKS:
        raise UserError(f"safari dataset copy_method {method!r} is not supported; use assoc_recall or induction_head")
    hc = lm_config_from_safari(model)
    opt = dict(cfg.get("optimizer") or {})
    trainer = dict(cfg.get("trainer") or {})
    return {
        "seed": int(dataset.get("seed", 0)),
        "loss": "all",  # safari's synthetics train on every next token
        "model": {"kind": "hyena", **asdict(hc)},
        "data": {"task": _TASKS[method], "vocab_size": int(dataset["vocab_size"]),
                 "input_seq_len": int(dataset["input_seq_len"]),
                 "num_examples": int(dataset["num_examples"]),
                 "num_test_examples": int(dataset["num_test_examples"])},
        "optimizer": {"lr": float(opt.get("lr", 5e-4)), "weight_decay": float(opt.get("weight_decay", 0.1))},
        "schedule": {"epochs": int(trainer.get("max_epochs", 12)), "batch_size": int(dataset.get("batch_size", 32))},
    }


def import_safari(safari_dir: str | Path, out: str | Path, *, trust_pickle: bool = False,
                  quiet: bool = False) -> Path:
    """Write RUN_DIR from a safari run folder; returns RUN_DIR. Rerunning on a finished import
    with the same source is a no-op; any other existing RUN_DIR is refused."""
    src = Path(safari_dir)
    cfg_path = src / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path} not found; import-safari needs a safari run folder with config.yaml")
    safari_cfg = parse_yaml(cfg_path.read_text(encoding="utf-8"), str(cfg_path))
    raw = run_config_from_safari(safari_cfg)
    ckpts = safari_checkpoints(src)
    cfg = validate_config(raw)
    data = generate(cfg, cfg.data_seed)
    cfg = resolve_config(cfg, len(data.vocab), int(data.train_inputs.shape[1]))
    digest = config_hash(cfg)
    run = RunDir(out)
    if run.is_run():
        index = read_index(run.index)
        if index and index.get("config_hash") == digest and len(index.get("checkpoints", [])) == len(ckpts):
            return run.root
        raise UserError(f"{run.root} already holds a run; choose a new --out for the import")
    run.root.mkdir(parents=True, exist_ok=True)
    with run.lock():
        es = make_eval_set(data, cfg.loss, cfg.eval.train_subset, cfg.eval.test_subset, "cpu")
        steps_per_epoch = -(-data.train_inputs.shape[0] // cfg.schedule.batch_size)
        records, entries = [], []
        for step, path in tqdm(ckpts, desc="import-safari", disable=quiet, unit="ckpt"):
            model = HyenaLM.from_safari(load_state_dict(path, trust_pickle=trust_pickle), safari_cfg["model"])
            epoch = step / steps_per_epoch
            records.append({"step": step, "epoch": epoch, "lr": None, "wall_time": None, "batch_loss": None,
                            **evaluate(model, es)})
            ckpt = run.checkpoint_file(step)
            save_checkpoint(ckpt, model, step=step, epoch=epoch,
                            kind="hyena", config_hash=digest, model_config=cfg.model.to_dict())
            entries.append(run.index_entry(step, epoch))
        rewrite_jsonl(run.metrics, records)
        if (src / "metrics.json").is_file():
            shutil.copyfile(src / "metrics.json", run.safari_metrics)
        atomic_write_json(run.run_json, {
            "format": RUN_FORMAT, "versions": versions(), "git": git_revision(), "seed": cfg.seed,
            "config_hash": digest, "model_kind": "hyena", "imported_from": str(src.resolve()),
            "data": data_provenance(data),
        })
        atomic_write_text(run.config, config_yaml(cfg))
        write_index(run.index, digest, entries)  # the commit point: the import is complete
    return run.root
