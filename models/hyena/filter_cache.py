"""A one-entry cache for values computed from a module's tensors (the Hyena operator's
materialized long filters and their spectra, reused across eval forwards).

An entry is valid only while every key tensor is the same object with the same dtype, device
and content as when it was stored. Content is compared, not only `_version`: a write through
`param.data` does not bump the parameter's version counter, and a stale filter must never be
used. The snapshot costs one copy of the filter parameters (a few thousand numbers).
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch
from torch import Tensor


class FilterCache:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._key: Hashable | None = None
        self._refs: tuple[Tensor, ...] = ()
        self._snapshot: tuple[Tensor, ...] = ()
        self._value: Any = None

    def get(self, key: Hashable, tensors: Sequence[Tensor]) -> Any:
        """The stored value if `key` matches and no tensor changed; else None (and cleared)."""
        if self._value is None or key != self._key or len(tensors) != len(self._refs):
            return None
        for t, ref, snap in zip(tensors, self._refs, self._snapshot):
            if t is not ref or t.dtype != snap.dtype or t.device != snap.device or not torch.equal(t, snap):
                self.clear()
                return None
        return self._value

    def put(self, key: Hashable, tensors: Sequence[Tensor], value: Any) -> None:
        self._key = key
        self._refs = tuple(tensors)
        self._snapshot = tuple(t.detach().clone() for t in tensors)
        self._value = value

    def __deepcopy__(self, memo) -> "FilterCache":
        return FilterCache()  # a copied module starts cold (its tensors are new objects anyway)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()
