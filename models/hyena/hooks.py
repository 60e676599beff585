"""The hook table, and the caching rules for HyenaLM hooks that TransformerLens' generic rule
gets wrong.

`HOOKS` is the one list of hook names HyenaLens reads by name: each name pattern with its shape,
the model kinds that have it, when it exists, whether capture stores it by default, and what it
is. `HyenaOperator.hook_names()`, `HyenaLM.hook_names()` and `default_capture_hooks` are derived
from it, and docs/architecture.md's "Hook names" table lists it row for row (a test holds them
equal; tests/test_hook_table.py).

TL drops the batch axis and slices positions on dim −2 (dim −3 for names ending in
`hook_q/k/v/z`, its attention layout). Two kinds of Hyena hooks need their own rule:
- `*.hook_filter`, `*.hook_filter_rev` are parameter-like [order−1, d, L] with no batch axis:
  `remove_batch_dim` and `pos_slice` do not apply, they are cached as they are;
- `*.mixer.hook_v` is [b, L, d]: positions on dim −2, not −3.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Literal

import torch.nn as nn
import torch.nn.modules.module as _nn_module
from transformer_lens.utilities import Slice
from transformer_lens.utilities import remove_batch_dim as drop_batch_dim

PARAM_LIKE = (".hook_filter", ".hook_filter_rev")
MIXER = "blocks.{l}.mixer."  # the prefix of the Hyena operator's hooks in HyenaLM


@dataclass(frozen=True)
class Hook:
    """One row of `HOOKS`.

    name:    the full name pattern: `{l}` the block (0 … n_layers−1), `{i}` a gate (0 … N−1),
             `{o}` a long-convolution step (0 … N−2)
    shape:   b batch, L positions, d d_model, N the Hyena order, d_inner the MLP width, heads
             the attention heads
    models:  the model kinds that have the hook under this name and shape
    when:    when it exists: "always", "non-causal", or "learned positions" (Hyena with
             max_position_embeddings > 0)
    capture: whether `hyenalens capture` stores it by default: "yes", "no", or "block 0" (only
             blocks.0: a later block's resid_pre is the block before's resid_post)
    meaning: one line
    """

    name: str
    shape: str
    models: Literal["hyena", "attention", "hyena, attention"]
    when: Literal["always", "non-causal", "learned positions"]
    capture: Literal["yes", "no", "block 0"]
    meaning: str


# In forward order (the order HyenaLM fires them; the attention row sits where its mixer would).
HOOKS: tuple[Hook, ...] = (
    Hook("hook_embed", "[b, L, d]", "hyena, attention", "always", "no", "token embedding"),
    Hook("hook_pos_embed", "[L, d]", "hyena", "learned positions", "no",
         "learned absolute position embedding, no batch axis (added to every row)"),
    Hook("blocks.{l}.hook_resid_pre", "[b, L, d]", "hyena, attention", "always", "block 0",
         "residual stream into block l"),
    Hook("blocks.{l}.ln1.hook_normalized", "[b, L, d]", "hyena, attention", "always", "no",
         "ln1 after centering and scaling, before its affine map"),
    Hook(MIXER + "hook_in_proj", "[b, L, (N+1)·d]", "hyena", "always", "no",
         "after `in_proj`, before the short conv; channel blocks x^0 … x^{N−1}, v"),
    Hook(MIXER + "hook_short", "[b, L, (N+1)·d]", "hyena", "always", "no",
         "after the short depthwise conv; channel blocks x^0 … x^{N−1}, v"),
    Hook(MIXER + "hook_gate_{i}", "[b, L, d]", "hyena", "always", "yes", "gate `x^i`"),
    Hook(MIXER + "hook_v", "[b, L, d]", "hyena", "always", "yes", "`v`"),
    Hook(MIXER + "hook_filter", "[N−1, d, L]", "hyena", "always", "yes",
         "materialized long filters used in this forward; entry `k` is lag `k`; no batch axis"),
    Hook(MIXER + "hook_filter_rev", "[N−1, d, L]", "hyena", "non-causal", "yes",
         "backward long filters: entry `k` is lag −k; entry 0 is zero; no batch axis"),
    Hook(MIXER + "hook_conv_{o}", "[b, L, d]", "hyena", "always", "no",
         "output of long conv `o`, `D` term included"),
    Hook(MIXER + "hook_y", "[b, L, d]", "hyena", "always", "yes",
         "`x^0 ⊙ z`, before the activation and `out_proj`"),
    Hook("blocks.{l}.attn.hook_pattern", "[b, heads, L, L]", "attention", "always", "yes",
         "attention pattern (TransformerLens' name); capture stores the query row"),
    Hook("blocks.{l}.hook_mixer_out", "[b, L, d]", "hyena", "always", "no",
         "mixer output, before dropout and the residual add"),
    Hook("blocks.{l}.hook_resid_mid", "[b, L, d]", "hyena, attention", "always", "yes",
         "residual stream after the mixer"),
    Hook("blocks.{l}.ln2.hook_normalized", "[b, L, d]", "hyena, attention", "always", "no",
         "ln2 after centering and scaling, before its affine map"),
    Hook("blocks.{l}.mlp.hook_pre", "[b, L, d_inner]", "hyena, attention", "always", "no",
         "MLP hidden layer before the GELU"),
    Hook("blocks.{l}.mlp.hook_post", "[b, L, d_inner]", "hyena, attention", "always", "no",
         "MLP hidden layer after the GELU"),
    Hook("blocks.{l}.hook_mlp_out", "[b, L, d]", "hyena, attention", "always", "no",
         "MLP output, before dropout and the residual add"),
    Hook("blocks.{l}.hook_resid_post", "[b, L, d]", "hyena, attention", "always", "yes",
         "residual stream out of block l"),
    Hook("ln_final.hook_normalized", "[b, L, d]", "hyena, attention", "always", "no",
         "final LayerNorm after centering and scaling, before its affine map"),
)


def _exists(row: Hook, kind: str, causal: bool, learned_pos: bool) -> bool:
    if kind not in row.models.split(", "):
        return False
    return {"always": True, "non-causal": not causal, "learned positions": learned_pos}[row.when]


def _expand(pattern: str, order: int, layer: int | None = None) -> list[str]:
    """The names of one pattern: `{l}` → `layer`, `{i}` → 0 … N−1, `{o}` → 0 … N−2."""
    name = pattern if layer is None else pattern.replace("{l}", str(layer))
    if "{i}" in name:
        return [name.replace("{i}", str(i)) for i in range(order)]
    if "{o}" in name:
        return [name.replace("{o}", str(o)) for o in range(order - 1)]
    return [name]


def mixer_hook_names(order: int, causal: bool) -> list[str]:
    """The Hyena operator's local hook names (without `blocks.{l}.mixer.`), in forward order."""
    rows = [r for r in HOOKS if r.name.startswith(MIXER) and _exists(r, "hyena", causal, False)]
    return [n for r in rows for n in _expand(r.name[len(MIXER):], order)]


def lm_hook_names(n_layers: int, order: int, causal: bool, learned_pos: bool) -> list[str]:
    """Every hook name of a HyenaLM, in forward order (the per-block rows block by block)."""
    rows = [r for r in HOOKS if _exists(r, "hyena", causal, learned_pos)]
    out: list[str] = []
    for per_block, run in itertools.groupby(rows, key=lambda r: "{l}" in r.name):
        run = list(run)
        layers = range(n_layers) if per_block else [None]
        out += [n for l in layers for r in run for n in _expand(r.name, order, l)]
    return out


def is_param_like(name: str) -> bool:
    return name.endswith(PARAM_LIKE)


def default_capture_hooks(model: nn.Module) -> list[str]:
    """The hooks `hyenalens capture` stores by default, for a HyenaLM or the attention baseline:
    the `HOOKS` rows with capture "yes" (and "block 0" in blocks.0) that the model has, block by
    block in `_capture_rank` order."""
    names = set(model.hook_dict)
    rows = [r for r in HOOKS if r.capture != "no"]
    out = [n for r in rows if "{l}" not in r.name for n in _expand_present(r.name, None, names)]
    per_block = sorted((r for r in rows if "{l}" in r.name), key=_capture_rank)  # stable sort
    for l in range(len(model.blocks)):
        out += [n for r in per_block if r.capture == "yes" or l == 0 for n in _expand_present(r.name, l, names)]
    return [n for n in out if n in names]


def _capture_rank(row: Hook) -> int:
    """Within a block: the residual stream (0), then the mixer's activations or the attention
    pattern (1), then the parameter-like filters, stored whole (2); table order within each."""
    if is_param_like(row.name):
        return 2
    return 1 if row.name.startswith((MIXER, "blocks.{l}.attn.")) else 0


def _expand_present(pattern: str, layer: int | None, names: set[str]) -> list[str]:
    """`_expand` for a model of unknown order: `{i}` / `{o}` count up while the name exists."""
    name = pattern if layer is None else pattern.replace("{l}", str(layer))
    if "{i}" not in name and "{o}" not in name:
        return [name]
    key = "{i}" if "{i}" in name else "{o}"
    return list(itertools.takewhile(names.__contains__, (name.replace(key, str(j)) for j in itertools.count())))


def hook_idle(hp) -> bool:
    """True when calling HookPoint `hp` would be the identity with no side effect: no forward
    or backward hook on it, and no global module hook. Modules may then take a fused path that
    skips the hooked intermediate (same math, float round-off apart)."""
    return not (hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks or hp._backward_pre_hooks
                or _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
                or _nn_module._global_backward_hooks or _nn_module._global_backward_pre_hooks)


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
