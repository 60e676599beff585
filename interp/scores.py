"""Map-based circuit scores (science.md, "Circuit metrics": prev-token score, recall score).

The map is [batch, L, L] (rows: query positions i, columns: source positions j), the one
`map_for_scores` returns: for Hyena the token-level implicit attention aggregated as mean |H|
over channels with each row divided by its sum; for attention the real pattern (head mean).
The scores re-normalize rows by the sum of their absolute values by default
(`normalize=True`), which leaves an already normalized map unchanged, so hand-built or value-
level maps are scored as shares too.

Role masks are plain bool tensors [batch, L] indexed like the inputs (models/data/synthetics.py
`Roles`: key, value, query, match_key, match_value, trigger, copy; `match_index` int64 [batch,
L]). Nothing here depends on the container type.

Reductions: `reduction="mean"` (default) pools every selected row of every sequence and
returns a 0-dim tensor (NaN when no row is selected); `reduction="none"` returns one value per
sequence [batch], the mean over that sequence's selected rows (NaN where it has none).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.errors import UserError

from interp.implicit_attention import implicit_attention, row_normalize

Reduction = Literal["mean", "none"]

__all__ = [
    "induction_score",
    "map_for_scores",
    "map_scores",
    "prev_token_score",
    "query_mass",
    "recall_score_keys",
    "recall_score_values",
]


def map_for_scores(
    model: nn.Module, tokens: Int[Tensor, "b L"], layer: int, row_block: int | None = None
) -> Float[Tensor, "b L L"]:
    """The map the scores are defined on, for either model kind: Hyena: implicit_attention
    with level="token", aggregate="mean_abs", rows normalized by the sum of |H|; attention:
    the head mean of hook_pattern (rows already sum to one)."""
    return implicit_attention(model, tokens, layer, level="token", aggregate="mean_abs",
                              row_block=row_block, normalize_rows=True)


def _prep(maps: Tensor, normalize: bool) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[-1] != maps.shape[-2]:
        raise UserError("maps must be a [batch, L, L] tensor")
    maps = maps.to(torch.float64)
    return row_normalize(maps) if normalize else maps


def _mask(m, maps: Tensor, name: str) -> Tensor:
    m = torch.as_tensor(m, device=maps.device)
    if m.dim() == 1:
        m = m[None].expand(maps.shape[0], -1)
    if m.shape != maps.shape[:2]:
        raise UserError(f"{name} mask has shape {tuple(m.shape)}; expected [batch, L] = {tuple(maps.shape[:2])}")
    if m.dtype != torch.bool:
        raise UserError(f"{name} mask must be bool, got {m.dtype}")
    return m


def _reduce(vals: Float[Tensor, "b L"], rows: Bool[Tensor, "b L"], reduction: Reduction) -> Tensor:
    """Mean of vals over the selected rows: pooled (0-dim) or per sequence ([b])."""
    w = rows.to(vals.dtype)
    v = torch.where(rows, vals, torch.zeros_like(vals))
    if reduction == "mean":
        return v.sum() / w.sum()  # NaN when nothing is selected
    if reduction == "none":
        return v.sum(dim=-1) / w.sum(dim=-1)
    raise UserError(f"reduction {reduction!r} is unknown; use 'mean' or 'none'")


def prev_token_score(
    maps: Float[Tensor, "b L L"],
    rows: Bool[Tensor, "b L"] | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Float[Tensor, ""] | Float[Tensor, "b"]:
    """Mean row-normalized mass at (i, i−1).

    Default: over every row i ≥ 1. `rows` restricts it to a role mask (e.g. the `value`
    positions, where copying the previous token (the key) is what the circuit needs); row 0 is
    always excluded since it has no previous token.
    """
    maps = _prep(maps, normalize)
    b, L, _ = maps.shape
    sel = torch.ones((b, L), dtype=torch.bool, device=maps.device)
    if rows is not None:
        sel = sel & _mask(rows, maps, "rows")
    sel[:, 0] = False
    vals = torch.zeros((b, L), dtype=maps.dtype, device=maps.device)
    if L > 1:
        vals[:, 1:] = maps.diagonal(offset=-1, dim1=-2, dim2=-1)
    return _reduce(vals, sel, reduction)


def query_mass(
    maps: Float[Tensor, "b L L"],
    query: Bool[Tensor, "b L"],
    targets: Bool[Tensor, "b L"],
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Float[Tensor, ""] | Float[Tensor, "b"]:
    """Each query row's normalized mass on the `targets` columns of its own sequence, averaged
    over query rows."""
    maps = _prep(maps, normalize)
    q = _mask(query, maps, "query")
    t = _mask(targets, maps, "targets")
    vals = (maps * t[:, None, :].to(maps.dtype)).sum(dim=-1)  # [b, L]: mass of row i on targets
    return _reduce(vals, q, reduction)


def _indexed_mass(maps: Tensor, query: Tensor, match_index: Tensor, offset: int, reduction: Reduction) -> Tensor:
    q = _mask(query, maps, "query")
    idx = torch.as_tensor(match_index, device=maps.device)
    if idx.shape != maps.shape[:2]:
        raise UserError(f"match_index has shape {tuple(idx.shape)}; expected {tuple(maps.shape[:2])}")
    L = maps.shape[-1]
    col = idx.to(torch.int64) + offset
    ok = q & (idx >= 0) & (col < L)
    if bool((q & ~ok).any()):
        raise UserError("a query position has no valid match_index (it must be >= 0 and its column < L)")
    vals = maps.gather(-1, col.clamp(0, L - 1)[..., None])[..., 0]
    return _reduce(vals, q, reduction)


def recall_score_values(
    maps: Float[Tensor, "b L L"],
    query: Bool[Tensor, "b L"],
    match_value: Bool[Tensor, "b L"] | None = None,
    *,
    match_index: Int[Tensor, "b L"] | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Float[Tensor, ""] | Float[Tensor, "b"]:
    """The query row's normalized mass on the matching value positions.

    AR / IH: pass the `match_value` mask (AR: every pair whose key is q; IH: the copy position,
    since there match_key is the trigger and match_value the position after it). MQAR: pass
    `match_index` instead; each query row i is scored on its own value, column
    match_index[b, i] + 1 (the masks are unions over all queries there).
    """
    return _recall(maps, query, match_value, match_index, 1, "match_value", normalize, reduction)


def recall_score_keys(
    maps: Float[Tensor, "b L L"],
    query: Bool[Tensor, "b L"],
    match_key: Bool[Tensor, "b L"] | None = None,
    *,
    match_index: Int[Tensor, "b L"] | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Float[Tensor, ""] | Float[Tensor, "b"]:
    """The query row's normalized mass on the matching key positions (the non-causal key
    mechanism). MQAR: `match_index` scores column match_index[b, i] itself."""
    return _recall(maps, query, match_key, match_index, 0, "match_key", normalize, reduction)


def _recall(maps, query, mask, match_index, offset, mask_name, normalize, reduction):
    """Query-row mass on a role mask, or (MQAR) on column match_index + offset per query."""
    maps = _prep(maps, normalize)
    if (mask is None) == (match_index is None):
        raise UserError(f"give exactly one of {mask_name} (mask) or match_index")
    if match_index is not None:
        return _indexed_mass(maps, query, match_index, offset, reduction)
    return query_mass(maps, query, mask, normalize=False, reduction=reduction)


def induction_score(
    maps: Float[Tensor, "b L L"],
    query: Bool[Tensor, "b L"],
    copy: Bool[Tensor, "b L"],
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Float[Tensor, ""] | Float[Tensor, "b"]:
    """Induction head: the query row's (the final `=>`) mass on the copy position (the token
    after the earlier `=>`, the trigger). Equal to recall_score_values with IH's match_value."""
    return query_mass(maps, query, copy, normalize=normalize, reduction=reduction)


def map_scores(
    maps: Float[Tensor, "b L L"],
    *,
    query: Bool[Tensor, "b L"],
    match_value: Bool[Tensor, "b L"] | None = None,
    match_key: Bool[Tensor, "b L"] | None = None,
    match_index: Int[Tensor, "b L"] | None = None,
    prev_rows: Bool[Tensor, "b L"] | None = None,
    normalize: bool = True,
) -> dict[str, float]:
    """All map scores at once, named as in metrics.csv: `prev_token_score` (rows i ≥ 1, or
    `prev_rows`), `recall_score_values` and `recall_score_keys` (masks when given, else
    `match_index`; a score whose inputs are missing is left out)."""
    maps = _prep(maps, normalize)
    out = {"prev_token_score": float(prev_token_score(maps, prev_rows, normalize=False))}
    if match_value is not None or match_index is not None:
        out["recall_score_values"] = float(recall_score_values(
            maps, query, match_value, match_index=None if match_value is not None else match_index,
            normalize=False))
    if match_key is not None or match_index is not None:
        out["recall_score_keys"] = float(recall_score_keys(
            maps, query, match_key, match_index=None if match_key is not None else match_index,
            normalize=False))
    return out
