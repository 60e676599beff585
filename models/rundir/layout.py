"""A run directory (layout: docs/architecture.md, "Run-directory format"): the one owner of
its paths, of what "is a run" means, of its parsed config, checkpoints by step, captured steps
and the one rule for whether an output is stale; the writer lock; provenance; and the clean-up
that makes a resumed run continue from its latest complete checkpoint.

Nothing here imports torch (the report reads run directories without it): the config schema
is torch-free, and the capture reader uses safetensors' numpy view.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from safetensors import SafetensorError, safe_open

from models.config.schema import validate_config
from models.config.source import parse_yaml
from models.errors import UserError
from models.rundir.io import atomic_write_json, decode_metadata, read_jsonl, rewrite_jsonl
from models.rundir.lock import RunLock

RUN_FORMAT = "hyenalens-run/1"
INDEX_FORMAT = "hyenalens-checkpoint-index/1"
_STEP_RE = re.compile(r"^([a-z]+)_(\d+)\.[a-z]+$")


# ---- names by step -------------------------------------------------------------------------
def step_name(step: int, suffix: str = ".safetensors", prefix: str = "step") -> str:
    """The one spelling of a per-step file name: `{prefix}_{step:08d}{suffix}`."""
    return f"{prefix}_{int(step):08d}{suffix}"


def step_glob(suffix: str = ".safetensors", prefix: str = "step") -> str:
    """The glob pattern matching every `step_name(…, suffix, prefix)`."""
    return f"{prefix}_*{suffix}"


def step_of(path: str | os.PathLike, prefix: str = "step") -> int | None:
    """The step of a per-step file name (`step_name`'s inverse), None for any other name."""
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(2)) if m and m.group(1) == prefix else None


def checkpoint_name(step: int) -> str:
    return step_name(step)


def state_name(step: int) -> str:
    return step_name(step, prefix="resume")


CAPTURE_MAP_PREFIX = "example_map."


def capture_map_key(layer: int) -> str:
    """The tensor of a capture file holding layer `layer`'s map of the report's example."""
    return f"{CAPTURE_MAP_PREFIX}blocks.{int(layer)}"


# ---- staleness -----------------------------------------------------------------------------
def is_stale(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> bool:
    """The one freshness rule for derived files: `output` is stale when it is missing or any
    existing input was modified after it (mtime in ns; an equal time counts as fresh)."""
    out = Path(output)
    if not out.is_file():
        return True
    stamp = out.stat().st_mtime_ns
    return any(Path(p).is_file() and Path(p).stat().st_mtime_ns > stamp for p in inputs)


# ---- the checkpoint index ------------------------------------------------------------------
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


class RunDir:
    """Every path of a run directory, and the facts read from them."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.run_json = self.root / "run.json"
        self.metrics = self.root / "metrics.jsonl"
        self.safari_metrics = self.root / "safari_metrics.json"
        self.checkpoints = self.root / "checkpoints"
        self.index = self.checkpoints / "index.json"
        self.state = self.root / "state"
        self.capture = self.root / "capture"
        self.probe_set = self.capture / "probe_set.safetensors"
        self.analysis = self.root / "analysis"
        self.metrics_csv = self.analysis / "metrics.csv"
        self.metrics_parts = self.analysis / "metrics_parts"
        self.source_example = self.analysis / "source_example.json"
        self.formation = self.analysis / "formation.json"
        self.lock_path = self.root / "LOCK"

    # ---- paths by step -------------------------------------------------------------------
    def checkpoint_file(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def state_file(self, step: int) -> Path:
        return self.state / state_name(step)

    def index_entry(self, step: int, epoch: float) -> dict[str, Any]:
        """checkpoints/index.json's record of a checkpoint (`file` relative to the run)."""
        return {"step": step, "epoch": epoch, "file": self.checkpoint_file(step).relative_to(self.root).as_posix()}

    def capture_file(self, step: int) -> Path:
        return self.capture / step_name(step)

    def part_file(self, step: int) -> Path:
        """analysis/metrics_parts/step_{step:08d}.json: one checkpoint's metric rows."""
        return self.metrics_parts / step_name(step, ".json")

    # ---- what it is ----------------------------------------------------------------------
    def is_run(self) -> bool:
        """A run directory: `hyenalens train` (or import-safari) wrote its config.yaml."""
        return self.config.is_file()

    def evaluated(self) -> bool:
        """The run has evaluation records (metrics.jsonl): something to analyze or report."""
        return self.metrics.is_file()

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a mapping (the one parser of it); a missing, unreadable or non-mapping
        file is a one-line UserError."""
        if not self.is_run():
            raise UserError(f"{self.root} is not a run directory (no config.yaml); pass a RUN_DIR made by "
                            "`hyenalens train`")
        try:
            text = self.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {self.config} ({getattr(e, 'strerror', None) or type(e).__name__}); "
                            "fix the file or its permissions") from None
        cfg = parse_yaml(text, str(self.config))
        if cfg is not None and not isinstance(cfg, dict):
            raise UserError(f"{self.config}: expected a mapping of config keys; fix the file")
        return cfg or {}

    def run_config(self):
        """The run's resolved, validated `RunConfig` (models.config.schema)."""
        return validate_config(self.read_config(), source=self.config, run_dir=self.root)

    # ---- checkpoints and captures --------------------------------------------------------
    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, weights file) of every complete checkpoint (listed in index.json), in step order."""
        index = read_index(self.index)
        if index is None:
            return []
        out = []
        for e in index["checkpoints"]:
            if isinstance(e, dict) and "step" in e:
                # `file` is relative to the run directory ("checkpoints/step_….safetensors")
                name = Path(str(e.get("file") or checkpoint_name(int(e["step"])))).name
                out.append((int(e["step"]), self.checkpoints / name))
        return sorted(out)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints whose file is present; with a damaged index, the
        steps of the checkpoint files."""
        try:
            return [s for s, p in self.list_checkpoints() if p.is_file()]
        except UserError:
            return self._steps_in(self.checkpoints)

    def captured_steps(self) -> list[int]:
        """Steps with a capture file (capture/step_*.safetensors), in order."""
        return self._steps_in(self.capture)

    @staticmethod
    def _steps_in(folder: Path) -> list[int]:
        if not folder.is_dir():
            return []
        return sorted(s for p in folder.glob(step_glob()) if (s := step_of(p)) is not None)

    def capture_meta(self, step: int) -> dict[str, Any] | None:
        """A capture file's metadata, or None when it is missing or unreadable."""
        path = self.capture_file(step)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                return decode_metadata(f.metadata() or {})
        except Exception:  # noqa: BLE001 - a torn or foreign file is "not captured"
            return None

    def read_capture(self, step: int, keep=lambda name: True) -> tuple[dict[str, Any], dict[str, Any]]:
        """numpy arrays (the names `keep` accepts) and metadata of a capture file, read without
        torch; a bad file is a UserError."""
        path = self.capture_file(step)
        if not path.is_file():
            raise UserError(f"missing file {path}; run `hyenalens capture {self.root}`")
        try:
            with safe_open(str(path), framework="numpy") as f:
                return ({k: f.get_tensor(k) for k in f.keys() if keep(k)}, decode_metadata(f.metadata() or {}))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({str(e).splitlines()[0]}); delete it and rerun "
                            f"`hyenalens capture {self.root}`") from None

    # ---- writing -------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Refuse a path that is a file, or a non-empty folder that is not a run directory."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} is a file; give a directory path for the run")
        if self.root.is_dir() and not self.is_run():
            extra = [p.name for p in self.root.iterdir() if not _leftover(p)]
            if extra:
                raise UserError(f"--out {self.root} is a non-empty folder that is not a HyenaLens run "
                                f"(it holds {extra[0]}); choose a new --out")

    def cleanup_temp(self) -> None:
        """Remove temp files an atomic write left behind when it was killed."""
        for folder in (self.root, self.checkpoints, self.state):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                        p.unlink(missing_ok=True)

    def prune_after(self, step: int | None, keep_checkpoints: set[str]) -> list[dict[str, Any]]:
        """Drop what a killed run wrote after its latest complete checkpoint `step` (None: all):
        unlisted checkpoint files, newer resume states, and metrics lines past `step`."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.glob(step_glob()):
                if p.name not in keep_checkpoints:
                    p.unlink()
        if self.state.is_dir():
            for p in self.state.glob(step_glob(prefix="resume")):
                if step is None or step_of(p, "resume") != step:
                    p.unlink()
        records = [r for r in read_jsonl(self.metrics) if step is not None and r.get("step", -1) <= step]
        if self.metrics.exists():
            rewrite_jsonl(self.metrics, records)
        return records

    def lock(self) -> RunLock:
        return RunLock(self.lock_path)


def _leftover(p: Path) -> bool:
    return p.name == "LOCK" or (p.name.startswith(".") and p.name.endswith(".tmp"))


# ---- provenance ----------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def hyenalens_version() -> str:
    v = _version("hyenalens")
    if v:
        return v
    cfg = Path(__file__).resolve().parents[2] / "setup.cfg"
    try:
        for line in cfg.read_text().splitlines():
            if line.replace(" ", "").startswith("version="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_revision() -> dict[str, Any] | None:
    where = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, Any]:
    import numpy
    import torch

    return {"hyenalens": hyenalens_version(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "transformer_lens": _version("transformer-lens") or _version("transformer_lens"),
            "safetensors": _version("safetensors")}


def session_record(device: str, threads: int, from_step: int) -> dict[str, Any]:
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
            "pid": os.getpid(), "device": device, "threads": threads, "from_step": from_step,
            "argv": sys.argv[1:]}


def data_provenance(data: Any, **extra: Any) -> dict[str, Any]:
    """run.json's `data` block: generator arguments, train/test overlap, sizes, vocabulary."""
    return {"generator": data.args, "overlap": int(data.overlap), "removed_overlap": int(data.removed_overlap),
            "num_train": int(data.train_inputs.shape[0]), "num_test": int(data.test_inputs.shape[0]),
            "seq_len": int(data.train_inputs.shape[1]), "vocab": list(data.vocab), **extra}
