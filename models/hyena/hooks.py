"""Caching rules for HyenaLM hooks that TransformerLens' generic rule gets wrong.

TL drops the batch axis and slices positions on dim −2 (dim −3 for names ending in
`hook_q/k/v/z`, its attention layout). Two kinds of Hyena hooks need their own rule:
- `*.hook_filter`, `*.hook_filter_rev` are parameter-like [order−1, d, L] with no batch axis:
  `remove_batch_dim` and `pos_slice` do not apply, they are cached as they are;
- `*.mixer.hook_v` is [b, L, d]: positions on dim −2, not −3.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.modules.module as _nn_module
from transformer_lens.utilities import Slice
from transformer_lens.utilities import remove_batch_dim as drop_batch_dim

PARAM_LIKE = (".hook_filter", ".hook_filter_rev")


def hook_idle(hp) -> bool:
    """True when calling HookPoint `hp` would be the identity with no side effect: no forward
    or backward hook on it, and no global module hook. Modules may then take a fused path that
    skips the hooked intermediate (same math, float round-off apart)."""
    return not (hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks or hp._backward_pre_hooks
                or _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
                or _nn_module._global_backward_hooks or _nn_module._global_backward_pre_hooks)


def is_param_like(name: str) -> bool:
    return name.endswith(PARAM_LIKE)


def _as_filter(names_filter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        allowed = set(names_filter)
        return lambda name: name in allowed
    if callable(names_filter):
        return names_filter
    raise ValueError("names_filter must be a string, a list of strings, or a function")


def split_caching_hooks(parent, hook_dict, names_filter, incl_bwd, device, remove_batch_dim, cache, pos_slice):
    """TL's caching hooks for ordinary names, ours for the special ones (see module doc)."""
    keep = _as_filter(names_filter)
    special = [n for n in hook_dict if keep(n) and (is_param_like(n) or n.endswith("mixer.hook_v"))]
    special_set = set(special)
    cache, fwd, bwd = parent(
        names_filter=lambda n: keep(n) and n not in special_set, incl_bwd=incl_bwd, device=device,
        remove_batch_dim=remove_batch_dim, cache=cache, pos_slice=pos_slice,
    )
    slicer = Slice.unwrap(pos_slice)

    def save(tensor, hook, is_backward=False):
        t = tensor.detach().to(device)
        if not is_param_like(hook.name):
            if remove_batch_dim:
                t = drop_batch_dim(t)
            t = slicer.apply(t, dim=-2)
        cache[hook.name + ("_grad" if is_backward else "")] = t

    for name in special:
        fwd.append((name, lambda t, hook: save(t, hook)))
        if incl_bwd:
            bwd.append((name, lambda t, hook: save(t, hook, True)))
    return cache, fwd, bwd
