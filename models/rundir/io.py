"""Atomic file writes: a temp file in the same folder, fsync, then `os.replace`.

A killed process leaves either the old file or the new one, never a torn one. Appends to a
JSONL log write whole lines in one call and fsync them; `read_jsonl` drops a torn last line,
which only an append interrupted mid-write can leave.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from models.errors import UserError

if TYPE_CHECKING:  # torch is imported lazily so analysis can use these helpers cheaply
    from torch import Tensor

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode for new files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> None:
    """safetensors, atomically; metadata values are JSON-encoded strings."""
    from safetensors.torch import save

    meta = {k: json.dumps(v, default=_json_default) for k, v in (metadata or {}).items()}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(flat, metadata=meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a safetensors file and its JSON-decoded metadata; a bad file is a UserError."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"missing file {p}; check the path or rerun the step that writes it")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read {p} ({str(e).splitlines()[0]}); it is truncated or not safetensors: delete it and rerun") from None
    return tensors, decode_metadata(meta)


def decode_metadata(meta: dict[str, str] | None) -> dict[str, Any]:
    """safetensors metadata values are JSON-encoded strings; decode what parses."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL log ([] when absent). Only a torn last line, which an interrupted
    append leaves, is skipped; a bad line anywhere else is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise UserError(f"{p}:{i}: not JSON ({e.msg}); fix or delete that line") from None
    return out


def rewrite_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist") and hasattr(o, "dim"):  # a torch tensor (torch is imported lazily)
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")
