"""`hyenalens train`: one run, recorded in a run directory, resumable bit for bit.

Determinism: every step's randomness is a pure function of (seed, step). The batch comes
from the epoch's permutation, seeded by (seed, epoch); dropout draws from the global torch
generator, reseeded from (seed, step) before each update; the learning rate is a function of
the step. So a resume needs only the weights, the optimizer state and the step (plus the
checkpoint schedule's history), and a run interrupted and resumed on CPU at the same thread
count ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.data.batches import Batches, data_vocab_size, dropout_seed, generate
from models.build import build_model
from models.rundir.checkpoint import (checkpoint_name, load_checkpoint, load_state, read_index, save_checkpoint,
                               save_state, state_name, write_index)
from models.training.schedule import CheckpointSchedule
from models.config import (RunConfig, apply_overrides, config_diff, config_hash, config_yaml, load_config,
                           resolve_config, validate_config)
from models import kernels
from models.errors import UserError
from models.training.evaluate import EvalSet, evaluate, make_eval_set
from models.rundir.io import append_jsonl, atomic_write_json, atomic_write_text
from models.training.optim import load_optimizer_tensors, lr_factor, make_optimizer, optimizer_tensors, set_lr
from models.rundir.layout import RUN_FORMAT, RunDir, data_provenance, git_revision, session_record, versions


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    finished: bool
    last_metrics: dict[str, Any] | None
    checkpoints: int
    resumed_from: int | None


def resolve_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
        return torch.device(device)
    raise UserError(f"unknown device {device!r}; use cpu or cuda")


class Trainer:
    def __init__(self, cfg: RunConfig, out: str | Path, *, device: str = "cpu", quiet: bool = False,
                 max_steps: int | None = None):
        if max_steps is not None and max_steps < 1:
            raise UserError(f"--max-steps {max_steps} must be >= 1")
        self.device = resolve_device(device)
        self.quiet, self.max_steps = quiet, max_steps
        # Everything that can fail on bad input runs before the run directory is touched.
        if getattr(cfg.model, "kernels", "torch") == "cpp":  # a CPU path, compiled on first use
            if self.device.type != "cpu":
                raise UserError(f"model.kernels=cpp runs on the CPU only; use model.kernels=torch with --device {device}")
            kernels.load()
        self.data = generate(cfg, cfg.data_seed)
        self.cfg = resolve_config(cfg, data_vocab_size(self.data), int(self.data.train_inputs.shape[1]))
        self.hash = config_hash(self.cfg)
        self.kind = self.cfg.model.kind
        model = build_model(self.cfg.model, seed=self.cfg.seed)
        # TransformerBridge.to prints "Moving model to device" unless told not to; on stdout it
        # lands in the middle of a progress bar (the demo's, or this run's on a resume)
        self.model = (model.to(self.device, print_details=False) if self.kind == "attention"
                      else model.to(self.device))
        self.model.train()
        self.batches = Batches(self.cfg, self.data, self.device)
        self.total = self.batches.total_steps
        self.schedule = CheckpointSchedule(self.cfg.checkpoints, self.total)
        self.opt = make_optimizer(self.model, self.cfg.optimizer)
        self.run = RunDir(out)
        self.run.check_usable()
        self.entries: list[dict[str, Any]] = []
        self.eval_set: EvalSet | None = None
        self.wall_offset = 0.0
        self.last: dict[str, Any] | None = None

    # ---- run directory ---------------------------------------------------------------------
    def _provenance(self, resumed_from: int) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT, "versions": versions(), "git": git_revision(), "seed": self.cfg.seed,
            "config_hash": self.hash, "model_kind": self.kind,
            "data": data_provenance(self.data, fresh_samples=self.cfg.data.fresh_samples),
            "schedule": {"total_steps": self.total, "steps_per_epoch": self.batches.steps_per_epoch,
                         "planned_checkpoints": self.schedule.planned, "window": self.schedule.window,
                         "dense_every": self.schedule.dense_every},
            "sessions": [session_record(str(self.device), torch.get_num_threads(), resumed_from)],
        }

    def _open(self) -> int | None:
        """Create or check the run directory; returns the step to resume from (None: new)."""
        run = self.run
        run.cleanup_temp()
        if run.is_run():
            raw = validate_config(run.read_config(), source=run.config, run_dir=run.root)
            stored = resolve_config(raw, data_vocab_size(self.data), int(self.data.train_inputs.shape[1]), check=False)
            diff = config_diff(stored, self.cfg)
            if diff:
                shown = "; ".join(diff[:4]) + (" …" if len(diff) > 4 else "")
                raise UserError(f"{run.root} was trained with a different config ({shown}); "
                                "rerun with the same config to resume, or use another --out")
        index = read_index(run.index)
        entries = [] if index is None else [e for e in index["checkpoints"] if isinstance(e, dict) and "step" in e]
        if index is not None and index.get("config_hash") != self.hash:
            raise UserError(f"{run.index} belongs to another config (hash {index.get('config_hash')}); "
                            "use the run directory's own config or another --out")
        latest = entries[-1]["step"] if entries else None
        if latest is not None:
            self._restore(latest)  # everything is read and checked before anything is changed
        records = run.prune_after(latest, {checkpoint_name(e["step"]) for e in entries})
        self.entries = entries
        provenance = self._provenance(latest or 0)
        if latest is None:
            if not run.is_run():
                atomic_write_text(run.config, config_yaml(self.cfg))
            atomic_write_json(run.run_json, provenance)
            return None
        try:
            old = json.loads(run.run_json.read_text(encoding="utf-8"))
            provenance["sessions"] = list(old.get("sessions", [])) + provenance["sessions"]
        except (OSError, ValueError, AttributeError):
            pass
        atomic_write_json(run.run_json, provenance)
        if records:
            self.last = records[-1]
            self.wall_offset = float(records[-1].get("wall_time") or 0.0)
        return latest

    def _restore(self, step: int) -> None:
        ckpt = self.run.checkpoints / checkpoint_name(step)
        path = self.run.state / state_name(step)
        for p in (ckpt, path):
            if not p.is_file():
                raise UserError(f"{p} is missing, so the run cannot resume from checkpoint {step}; "
                                f"delete {self.run.root} and retrain")
        try:
            load_checkpoint(ckpt, self.model, kind=self.kind, config_hash=self.hash)
            tensors, meta = load_state(path)
        except UserError as e:
            raise UserError(f"cannot resume {self.run.root} from checkpoint {step}: {e}") from None
        if meta.get("step") != step or meta.get("config_hash") != self.hash:
            raise UserError(f"{path} does not belong to checkpoint {step} of this config; delete {self.run.root} "
                            "and retrain")
        load_optimizer_tensors(self.opt, tensors, meta.get("optimizer", {}), str(path))
        self.schedule.load_state(meta["schedule"])

    # ---- one checkpoint ------------------------------------------------------------------------
    def _checkpoint(self, step: int, batch_loss: float | None, t0: float) -> dict[str, Any]:
        run = self.run
        if self.eval_set is None:
            ev = self.cfg.eval
            self.eval_set = make_eval_set(self.data, self.cfg.loss, ev.train_subset, ev.test_subset, self.device)
        epoch = self.batches.epochs_done(step)
        record = {"step": step, "epoch": epoch,
                  "lr": self.cfg.optimizer.lr * lr_factor(step, self.total, self.cfg.schedule),
                  "wall_time": round(self.wall_offset + time.perf_counter() - t0, 3),
                  "batch_loss": batch_loss, **evaluate(self.model, self.eval_set)}
        append_jsonl(run.metrics, record)
        self.schedule.observe(step, record)
        save_checkpoint(run.checkpoint_file(step), self.model, step=step, epoch=epoch,
                        kind=self.kind, config_hash=self.hash, model_config=self.cfg.model.to_dict())
        tensors, opt_meta = optimizer_tensors(self.opt)
        save_state(run.state_file(step), tensors,
                   {"step": step, "epoch": epoch, "config_hash": self.hash, "optimizer": opt_meta,
                    "schedule": self.schedule.state(),
                    "rng": "derived from (seed, step): epoch order from (seed, epoch), dropout reseeded per step"})
        self.entries.append(run.index_entry(step, epoch))
        write_index(run.index, self.hash, self.entries)  # the commit point
        for p in run.state.glob("resume_*.safetensors"):
            if p.name != state_name(step):
                p.unlink(missing_ok=True)
        self.last = record
        return record

    def _stop_here(self, step: int) -> bool:
        """--max-steps N stops at the first checkpoint at or after step N (the run directory
        is then exactly a prefix of the full run, and rerunning continues it)."""
        return self.max_steps is not None and step >= self.max_steps and bool(self.entries) \
            and step == self.entries[-1]["step"]

    # ---- the loop ----------------------------------------------------------------------------
    def run_training(self) -> TrainResult:
        with self.run.lock(), _rng_sandbox(self.device):
            resumed = self._open()
            step = resumed or 0
            t0 = time.perf_counter()
            if resumed is None:
                self._checkpoint(0, None, t0)
            # a finished run (or one already at --max-steps) trains nothing: no bar, whose first
            # and closing draws would print two 100% lines
            bar = _progress(self.total, step, self.quiet or step >= self.total or self._stop_here(step))
            loss_sum, loss_n = 0.0, 0
            nxt = self.schedule.next_after(step)
            try:
                while step < self.total and not self._stop_here(step):
                    set_lr(self.opt, self.cfg.optimizer.lr * lr_factor(step, self.total, self.cfg.schedule))
                    x, y = self.batches.batch(step)
                    torch.manual_seed(dropout_seed(self.cfg, step))
                    logits = self.model(x)
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
                    self.opt.zero_grad()
                    loss.backward()
                    self.opt.step()
                    step += 1
                    loss_sum += loss.detach().item()
                    loss_n += 1
                    bar.update(1)
                    if step == nxt:
                        rec = self._checkpoint(step, loss_sum / loss_n, t0)
                        loss_sum, loss_n = 0.0, 0
                        nxt = self.schedule.next_after(step)
                        bar.set_postfix(_postfix(rec), refresh=False)
                    elif step % 10 == 0:
                        bar.set_postfix({**_postfix(self.last), "loss": f"{loss_sum / loss_n:.3f}"}, refresh=False)
            finally:
                bar.close()
        return TrainResult(self.run.root, step, self.total, step >= self.total, self.last, len(self.entries), resumed)


def _postfix(rec: dict[str, Any] | None) -> dict[str, str]:
    if not rec:
        return {}
    out = {}
    for key, short in (("batch_loss", "loss"), ("train_acc_all", "all"), ("test_acc_last", "test")):
        if rec.get(key) is not None:
            out[short] = f"{rec[key]:.3f}"
    return out


def _progress(total: int, initial: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=quiet, desc="train", unit="step", dynamic_ncols=True,
                mininterval=0.5)


@contextlib.contextmanager
def _rng_sandbox(device: torch.device):
    """Reseeding per step must not leak into the caller's global RNG."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def train(config: str | RunConfig | dict, out: str | Path, overrides: list[str] | None = None, *,
          device: str = "cpu", quiet: bool = False, max_steps: int | None = None) -> TrainResult:
    """Train (or resume) one run. `config`: a preset name, a YAML path, a mapping or a RunConfig."""
    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = validate_config(apply_overrides(config, list(overrides or [])))
    else:
        cfg = load_config(str(config), overrides)
    return Trainer(cfg, out, device=device, quiet=quiet, max_steps=max_steps).run_training()
