"""Process settings HyenaLens applies to every process that uses it: the CLI, its worker
processes, the benchmarks, and any process that imports `hyenalens` (a notebook, a script).

glibc malloc hands every block above its mmap threshold (dynamic, at most 32 MiB) straight to
the kernel and unmaps it on free, and returns the top of its heap to the kernel once more than
its trim threshold is free. A forward that keeps its activations (`run_with_cache`, the capture
at every checkpoint) then gets fresh pages for each of them on every call: ~2,500 to 7,000
minor page faults per forward of the capture batch, which made `run_with_cache` 1.15x a plain
forward instead of 1.07x (BENCHMARKS.md, "Hooks"), and 1.22-2.21x in a notebook-like process
that never raised the thresholds (issue 17). Raising the mmap and trim thresholds keeps freed
blocks in the heap for reuse, which is what PyTorch's CPU tuning guide gets from
jemalloc/tcmalloc, without a preload. The cost: up to `TRIM_BYTES` of freed memory stays with
the process instead of going back to the system.

When: `hyenalens/__init__.py` calls `tune_malloc()` on import (not `models/__init__.py`: models
must not reach up into hyenalens; a script that imports only `models` calls it itself). This reverses the earlier "only
when HyenaLens runs as a program, never on import" rule on purpose: the process researchers
actually use is a notebook, which never calls the CLI, so the fast path has to come with the
import. The call is ctypes' `mallopt` only (no torch), runs once per process, and changes
nothing but those two thresholds.

Set `HYENALENS_MALLOC_TUNING=0` (before the import) to keep the system's defaults. Elsewhere
than glibc (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_BYTES = 256 << 20  # blocks below this come from the reusable heap
TRIM_BYTES = 512 << 20  # free heap kept before it is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_ENV = "HYENALENS_MALLOC_TUNING"

_applied: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds once per process. True if they are set.

    Idempotent; returns False (and changes nothing) off glibc or with HYENALENS_MALLOC_TUNING=0.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; setting either threshold also stops glibc's dynamic
    # adjustment of both, which is the point
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _applied


def malloc_tuned() -> bool:
    """Whether `tune_malloc` has set the thresholds in this process (changes nothing)."""
    return bool(_applied)
