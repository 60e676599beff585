"""Peak memory of one call, measured honestly on CPU and on CUDA.

CPU: `tracemalloc` does not see torch's allocations, so two other measures are used.
- `torch_peak`: a TorchDispatchMode sees every tensor an aten op returns. Each new storage (one
  that is not an input's: views, in-place and out= results are not new) is counted from its
  creation until it is freed; storage Python objects are kept alive exactly as long as the
  storage (torch preserves them), so a `weakref.finalize` on the storage fires when its
  memory is released. The peak of the running sum is the largest amount of tensor memory
  the call held at once. Op-internal scratch space (an FFT's work buffer) is not seen.
- `rss_peak`: the growth of the process's resident-set high-water mark (Linux: the peak is
  reset through /proc/self/clear_refs, then VmHWM is read). It sees every allocation, but only
  pages the process had not made resident before: memory that earlier work freed to the
  allocator and that is reused does not show. A cross-check where the call needs more memory
  than the process held before (the longest sequence), not a bound.
CUDA: torch.cuda.max_memory_allocated after resetting the peak, minus what was allocated before.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveStorageBytes(TorchDispatchMode):
    """Running sum and peak of the bytes of storages created while the mode is active."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self.largest = 0  # the largest single storage created
        self._live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            st = t.untyped_storage()
            key = id(st)
            if st.data_ptr() in inputs or key in self._live or st.nbytes() == 0:
                continue
            self._live[key] = st.nbytes()
            self.current += st.nbytes()
            self.peak = max(self.peak, self.current)
            self.largest = max(self.largest, st.nbytes())
            weakref.finalize(st, self._release, key)
        return out


def _vm_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak_growth(fn: Callable[[], object]) -> tuple[object, int | None]:
    """(fn(), bytes the resident-set high-water mark rose above the RSS before the call);
    None where /proc does not allow the reset (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
    except OSError:
        return fn(), None
    before = _vm_kb("VmRSS")
    result = fn()
    hwm = _vm_kb("VmHWM")
    if before is None or hwm is None:
        return result, None
    return result, max(0, hwm - before) * 1024


def torch_peak_bytes(fn: Callable[[], object], device: str = "cpu") -> tuple[object, int]:
    """(fn(), the peak bytes of tensor memory the call allocated)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - base
    mode = LiveStorageBytes()
    with mode:
        result = fn()
    return result, mode.peak
