"""A run directory (layout: docs/architecture.md, "Run-directory format"): paths, the writer
lock, provenance, and the clean-up that makes a resumed run continue from its latest complete
checkpoint.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.errors import UserError
from models.rundir.io import read_jsonl, rewrite_jsonl

RUN_FORMAT = "hyenalens-run/1"


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.run_json = self.root / "run.json"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.index = self.checkpoints / "index.json"
        self.state = self.root / "state"
        self.lock_path = self.root / "LOCK"

    def is_run(self) -> bool:
        return self.config.is_file()

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
            for p in self.checkpoints.glob("step_*.safetensors"):
                if p.name not in keep_checkpoints:
                    p.unlink()
        if self.state.is_dir():
            for p in self.state.glob("resume_*.safetensors"):
                if step is None or _step_of(p) != step:
                    p.unlink()
        records = [r for r in read_jsonl(self.metrics) if step is not None and r.get("step", -1) <= step]
        if self.metrics.exists():
            rewrite_jsonl(self.metrics, records)
        return records

    def lock(self) -> "RunLock":
        return RunLock(self.lock_path)


def _leftover(p: Path) -> bool:
    return p.name == "LOCK" or (p.name.startswith(".") and p.name.endswith(".tmp"))


def _step_of(p: Path) -> int:
    try:
        return int(p.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


# ---- the lock ------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """One writer per run directory: `flock` on RUN_DIR/LOCK, which also names its owner
    (pid, host). A lock whose owner is dead (no flock held, and its pid is gone on this host)
    is taken over. LOCK is the one file not written by rename: its inode carries the flock."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def _owner(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
            return data if isinstance(data, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        host, me = socket.gethostname(), os.getpid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise UserError(f"{self.path.parent} is being trained by another process (pid {owner.get('pid', '?')} "
                                f"on {owner.get('host', '?')}); wait for it to finish or use another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file as we opened it: retry
                os.close(fd)
                continue
            owner = self._owner(fd)
            pid, owner_host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and pid != me:
                if owner_host not in (None, host):
                    os.close(fd)
                    raise UserError(f"{self.path} is held by pid {pid} on host {owner_host}, which cannot be checked "
                                    f"from here; if no run uses it there, delete {self.path}")
                if _pid_alive(pid):
                    os.close(fd)
                    raise UserError(f"{self.path} names a live process (pid {pid}); if it is not training "
                                    f"this run, delete {self.path}")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"pid": me, "host": host, "since": time.time()}).encode())
            os.fsync(fd)
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
