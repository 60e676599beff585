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
`hook_pos_embed` [L, d] has no batch axis either (positions are sliced, the batch is not dropped).

`HyenaActivationCache` is what `HyenaLM.run_with_cache` returns: TL's ActivationCache with the
same rules, and TL's `attn_out` read as Hyena's mixer output.
"""
from __future__ import annotations

import copy
import itertools
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch.nn as nn
import torch.nn.modules.module as _nn_module
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice, get_act_name
from transformer_lens.utilities import remove_batch_dim as drop_batch_dim

PARAM_LIKE = (".hook_filter", ".hook_filter_rev")
NO_BATCH = ("hook_pos_embed",)  # besides PARAM_LIKE: the full names with no batch axis
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
    Hook("blocks.{l}.ln1.hook_scale", "[b, L, 1]", "hyena, attention", "always", "no",
         "ln1 scale √(var + eps) per position (TransformerLens' `apply_ln_to_stack` divides by it)"),
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
    Hook("blocks.{l}.ln2.hook_scale", "[b, L, 1]", "hyena, attention", "always", "no",
         "ln2 scale √(var + eps) per position (TransformerLens' `apply_ln_to_stack` divides by it)"),
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
    Hook("ln_final.hook_scale", "[b, L, 1]", "hyena, attention", "always", "no",
         "final LayerNorm scale √(var + eps) per position (TransformerLens' `apply_ln_to_stack` divides by it)"),
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


def has_batch_axis(name: str) -> bool:
    """False for the hooks the table documents without a batch axis (filters, hook_pos_embed),
    and for their gradients."""
    name = name.removesuffix("_grad")
    return not (is_param_like(name) or name in NO_BATCH)


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
    special = [n for n in hook_dict if keep(n) and (not has_batch_axis(n) or n.endswith("mixer.hook_v"))]
    special_set = set(special)
    cache, fwd, bwd = parent(
        names_filter=lambda n: keep(n) and n not in special_set, incl_bwd=incl_bwd, device=device,
        remove_batch_dim=remove_batch_dim, cache=cache, pos_slice=pos_slice,
    )
    slicer = Slice.unwrap(pos_slice)

    def save(tensor, hook, is_backward=False):
        t = tensor.detach().to(device)
        if remove_batch_dim and has_batch_axis(hook.name):
            t = drop_batch_dim(t)
        if not is_param_like(hook.name):
            t = slicer.apply(t, dim=-2)
        cache[hook.name + ("_grad" if is_backward else "")] = t

    for name in special:
        fwd.append((name, lambda t, hook: save(t, hook)))
        if incl_bwd:
            bwd.append((name, lambda t, hook: save(t, hook, True)))
    return cache, fwd, bwd


# TransformerLens' per-block names that HyenaLM spells its own way: TL's cache helpers
# (`decompose_resid`) read `attn_out`, which in a Hyena block is the mixer's output.
_TL_ALIASES = ((re.compile(r"(blocks\.\d+\.)hook_attn_out"), r"\1hook_mixer_out"),)


def tl_alias(name: str) -> str | None:
    """HyenaLM's name for TransformerLens name `name`, or None when it has no alias."""
    for pattern, repl in _TL_ALIASES:
        if pattern.fullmatch(name):
            return pattern.sub(repl, name)
    return None


class HyenaActivationCache(ActivationCache):
    """TransformerLens' ActivationCache for a HyenaLM (`run_with_cache` returns it), with:

    - dict-style `get(key, default)` and `key in cache` (exact names, as the plain dict had);
    - TL's `attn_out` read as the mixer output: `cache["attn_out", l]` and
      `blocks.{l}.hook_attn_out` resolve to `blocks.{l}.hook_mixer_out` (a key alias, not a
      second hook: the tensor is stored and listed once, under Hyena's name);
    - the hooks without a batch axis (`has_batch_axis`: filters [N−1, d, L], hook_pos_embed
      [L, d]) left alone by `remove_batch_dim` and `apply_slice_to_batch_dim` and not counted
      for the batch size; `decompose_resid` broadcasts hook_pos_embed over the batch.
    """

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            alias = tl_alias(self._full_name(key))
            if alias is None or alias not in self.cache_dict:
                raise
            return self.cache_dict[alias]

    def _full_name(self, key) -> str:
        """TL's name for a key: a name or shorthand, or (name, layer[, layer_type]) with a
        negative layer counted from the end."""
        if isinstance(key, str):
            return get_act_name(key)
        key = tuple(key)
        if len(key) > 1 and key[1] is not None and key[1] < 0:
            key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
        return get_act_name(*key)

    def __contains__(self, key) -> bool:
        return key in self.cache_dict

    def get(self, key, default: Any = None):
        try:
            return self[key]
        except KeyError:
            return default

    def _batch_size(self) -> int:
        counts = Counter(v.size(0) for k, v in self.cache_dict.items() if has_batch_axis(k) and v.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self, batch_size: int | None = None) -> "HyenaActivationCache":
        """TL's `remove_batch_dim` (batch size 1 only), leaving the hooks without a batch axis."""
        if not self.has_batch_dim:
            logging.warning("Tried removing batch dimension after already having removed it.")
            return self
        batch_size = self._batch_size() if batch_size is None else batch_size
        assert batch_size == 1, f"Cannot remove batch dimension from cache with batch size {batch_size}"
        for k, v in self.cache_dict.items():
            if has_batch_axis(k) and v.ndim > 0 and v.size(0) == 1:
                self.cache_dict[k] = v[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "HyenaActivationCache":
        """TL's batch slice on the hooks with a batch axis; the others are kept as they are."""
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        assert self.has_batch_dim or batch_slice.mode == "empty", "Cannot index into a cache without a batch dim"
        sliced = {k: batch_slice.apply(v, dim=0) if has_batch_axis(k) and v.ndim > 0 and self.has_batch_dim else v
                  for k, v in self.cache_dict.items()}
        return HyenaActivationCache(sliced, self.model,
                                    has_batch_dim=self.has_batch_dim and batch_slice.mode != "int")

    def decompose_resid(self, *args, **kwargs):
        """TL's `decompose_resid`; hook_pos_embed ([L, d], no batch axis) enters broadcast to
        hook_embed's shape, so the components stack and sum to the residual stream."""
        pos, emb = self.cache_dict.get("hook_pos_embed"), self.cache_dict.get("hook_embed")
        if pos is None or emb is None or pos.shape == emb.shape:
            return super().decompose_resid(*args, **kwargs)
        view = copy.copy(self)  # the same cache with the broadcast position embedding
        view.cache_dict = {**self.cache_dict, "hook_pos_embed": pos.expand_as(emb)}
        return ActivationCache.decompose_resid(view, *args, **kwargs)
