"""The writer lock of a run directory (RUN_DIR/LOCK; docs/architecture.md, "Run-directory
format"): one writer per run, a dead owner's lock taken over."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from models.errors import UserError


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
