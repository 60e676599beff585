"""Materialized Hyena long filters and their summaries, per layer and order.

Definitions: /work/shared/docs/science.md ("Hyena operator"; "Circuit metrics": filter lag-1
mass, filter effective length). Layouts follow docs/architecture.md:

- forward filters `hook_filter` [N−1, d, L]: entry k is lag k (k = 0 … L−1);
- backward filters `hook_filter_rev` [N−1, d, L] (non-causal only): entry k is lag −k, entry 0
  is zero (lag 0 belongs to the forward filter).

Every summary takes a tensor whose last two dims are [d (channels), L (lags)], with any leading
dims (e.g. the order axis), so it works on captured activations without a model. The backward
filter goes through the same functions: its index k is |lag|.

Definitions used here (both directions, per order):
- lag profile p[k] = mean_c |h_c[k]|.
- lag-1 mass = p[1] / Σ_k p[k] = Σ_c |h_c[1]| / Σ_c Σ_k |h_c[k]|: channels pooled. For the
  backward filter this is the share of lag −1 in the backward filter's own mass (lags −1…−(L−1)).
  0 for an all-zero filter.
- effective length = the smallest lag K with Σ_{k=0..K} p[k] ≥ 0.9 · Σ_k p[k] (default
  `reduce="profile"`: on the channel-pooled profile). K is a lag, not a count: all mass at lag 0
  gives 0, all mass at lag 1 gives 1. For the backward filter K is |lag| (≥ 1 when nonzero).
  `reduce="median"` takes K per channel and then the median over channels (float: the mean of
  the two middle values for an even count); `reduce="none"` returns K per channel. 0 for an
  all-zero filter.
- spectrum = mean_c |rfft(h_c, n)| with n = L by default → n//2 + 1 frequencies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from models.errors import UserError
from models.hyena.lm import HyenaLM

__all__ = [
    "LayerFilters",
    "effective_length",
    "filter_metrics",
    "filters_from_cache",
    "lag1_mass",
    "lag_profile",
    "layer_filters",
    "model_filters",
    "spectrum",
]

DEFAULT_FRAC = 0.9
# relative slack on the cumulative-mass comparison, so an exact 90% boundary is not lost to
# round-off
_REL_TOL = 1e-9


@dataclass
class LayerFilters:
    """The long filters of one Hyena layer: forward [N−1, d, L] (lag k at index k) and, for a
    non-causal layer, backward [N−1, d, L] (lag −k at index k, index 0 zero), else None."""

    forward: Float[Tensor, "n d L"]
    backward: Float[Tensor, "n d L"] | None = None

    @property
    def order(self) -> int:
        """The operator order N (the filters have N−1 entries)."""
        return self.forward.shape[0] + 1


def layer_filters(model: nn.Module, layer: int, L: int | None = None) -> LayerFilters:
    """Materialize layer `layer`'s filters for length L (default: the model's l_max)."""
    if not isinstance(model, HyenaLM):
        raise UserError("filters exist only for Hyena models (HyenaLM)")
    n = len(model.blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise UserError(f"layer {layer!r} is out of range; the model has {n} layers")
    op = model.blocks[layer].mixer
    L = op.l_max if L is None else int(L)
    with torch.no_grad():
        fwd = op.filters(L).detach().clone()
        bwd = None if op.causal else op.filters_rev(L).detach().clone()
    return LayerFilters(fwd, bwd)


def model_filters(model: nn.Module, L: int | None = None) -> list[LayerFilters]:
    """`layer_filters` for every layer, in layer order."""
    return [layer_filters(model, l, L) for l in range(len(model.blocks))]


def filters_from_cache(cache: Mapping[str, Tensor] | Any, layer: int) -> LayerFilters:
    """Read `blocks.{layer}.mixer.hook_filter` (and `hook_filter_rev` when present) from a
    run_with_cache ActivationCache or any mapping of hook name → tensor."""
    pre = f"blocks.{layer}.mixer."
    try:
        fwd = cache[pre + "hook_filter"]
    except KeyError:
        raise UserError(f"cache has no {pre}hook_filter; capture it first") from None
    try:
        bwd = cache[pre + "hook_filter_rev"]
    except KeyError:
        bwd = None
    return LayerFilters(fwd, bwd)


def _check(h: Tensor) -> Tensor:
    if not isinstance(h, Tensor) or h.dim() < 2:
        raise UserError("a filter tensor needs at least 2 dims: [..., channels, lags]")
    return h


def lag_profile(h: Float[Tensor, "*lead d L"]) -> Float[Tensor, "*lead L"]:
    """p[k] = mean over channels of |h_c[k]|."""
    return _check(h).abs().mean(dim=-2)


def lag1_mass(h: Float[Tensor, "*lead d L"]) -> Float[Tensor, "*lead"]:
    """Share of Σ|h| at index 1 (lag 1; lag −1 for a backward filter), channels pooled.

    Σ_c |h_c[1]| / Σ_c Σ_k |h_c[k]|; 0 where the filter is all zero.
    """
    p = lag_profile(h).to(torch.float64)
    if p.shape[-1] < 2:
        raise UserError("lag-1 mass needs filters with at least 2 lags")
    tot = p.sum(dim=-1)
    out = torch.where(tot > 0, p[..., 1] / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.zeros_like(tot))
    return out.to(h.dtype if h.is_floating_point() else torch.float64)


def _first_lag_reaching(mass: Tensor, frac: float) -> Tensor:
    """Smallest index K along the last dim with cumsum[K] ≥ frac · total (0 for zero mass)."""
    mass = mass.to(torch.float64)
    cum = mass.cumsum(dim=-1)
    tot = cum[..., -1:]
    reached = cum >= frac * tot - _REL_TOL * tot
    return reached.to(torch.int64).argmax(dim=-1)  # first True; all-True (K=0) for zero mass


def effective_length(
    h: Float[Tensor, "*lead d L"],
    frac: float = DEFAULT_FRAC,
    reduce: Literal["profile", "median", "none"] = "profile",
) -> Int[Tensor, "*lead"] | Float[Tensor, "*lead"] | Int[Tensor, "*lead d"]:
    """The smallest lag K holding `frac` (default 90%) of |h| (see the module doc).

    reduce="profile" (default): on the channel-pooled lag profile, int64 [*lead];
    reduce="median": per channel, then the median over channels, float64 [*lead];
    reduce="none": per channel, int64 [*lead, d].
    """
    _check(h)
    if not 0.0 < frac <= 1.0:
        raise UserError(f"frac must be in (0, 1], got {frac}")
    if reduce == "profile":
        return _first_lag_reaching(lag_profile(h), frac)
    per_channel = _first_lag_reaching(h.abs(), frac)
    if reduce == "none":
        return per_channel
    if reduce == "median":
        return torch.quantile(per_channel.to(torch.float64), 0.5, dim=-1)
    raise UserError(f"reduce {reduce!r} is unknown; use 'profile', 'median' or 'none'")


def spectrum(h: Float[Tensor, "*lead d L"], n: int | None = None) -> Float[Tensor, "*lead F"]:
    """Magnitude spectrum mean_c |rfft(h_c, n)| (n = L by default), F = n//2 + 1 frequencies."""
    _check(h)
    return torch.fft.rfft(h, n=n, dim=-1).abs().mean(dim=-2)


def filter_metrics(
    filters: nn.Module | list[LayerFilters],
    frac: float = DEFAULT_FRAC,
    L: int | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows {metric, layer, order, direction, value} for `filter_lag1_mass` and
    `filter_effective_length` (profile definition), for every layer, order step o = 0 … N−2
    (h^o) and direction ("forward"; "backward" for non-causal layers, lag −1 / |lag|).

    `filters` is a HyenaLM (materialized at length L, default l_max) or a list of
    LayerFilters (e.g. from `filters_from_cache`), one per layer in layer order.
    """
    if isinstance(filters, nn.Module):
        filters = model_filters(filters, L)
    rows: list[dict[str, Any]] = []
    for layer, lf in enumerate(filters):
        for direction, h in (("forward", lf.forward), ("backward", lf.backward)):
            if h is None:
                continue
            m1 = lag1_mass(h)
            el = effective_length(h, frac)
            for o in range(h.shape[0]):
                base = {"layer": layer, "order": o, "direction": direction}
                rows.append({"metric": "filter_lag1_mass", **base, "value": float(m1[o])})
                rows.append({"metric": "filter_effective_length", **base, "value": float(el[o])})
    return rows
