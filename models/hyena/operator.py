"""The Hyena operator (Poli et al. 2023, "Hyena Hierarchy", Alg. 1 and eq. 3), hooked.

Safari semantics, gate then convolve (science.md, "Hyena operator"):

    u = in_proj(x);  u = short_conv(u);  x^0 … x^{N-1}, v = split(u)
    z = v;  for o = 0 … N−2:  z ← x^{N-1-o} ⊙ z;  z ← h^o ∗ z + D^o ⊙ z
    y = out_proj(act(x^0 ⊙ z))

Causal: linear convolution by FFT (size ≥ 2L−1, first L outputs kept; safari's `fftconv_ref`
uses exactly 2L), short conv left-padded. Non-causal: a backward implicit filter covers lags
−1…−(L−1) (lag 0 stays with the forward filter), and the short conv is centered.

Speed (models/fftconv.py, numbers in BENCHMARKS.md): both convolutions are custom autograd
Functions in the [b, L, channels] layout, the FFT size is the smallest even n ≥ 2L−1 without
prime factors above 13 (`fftconv.fft_size`), and in eval without gradients the materialized filters and their spectra are cached (models/filter_cache.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from models.hyena.fftconv import circular_kernel, fft_conv, fft_size, short_conv
from models.hyena.filter_cache import FilterCache
from models.hyena.filters import HyenaFilter


def _sqrelu(x: Tensor) -> Tensor:
    return F.relu(x) ** 2


def _laplace(x: Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


# safari's `Activation` names that keep the width (glu halves it, ln is a module: refused)
ACTIVATIONS: dict[str, Any] = {
    "id": nn.Identity, "identity": nn.Identity, "linear": nn.Identity,
    "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid, "softplus": nn.Softplus,
}
_FUNCTIONAL = {"sqrelu": _sqrelu, "relu2": _sqrelu, "laplace": _laplace}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def make_activation(name: str | None) -> nn.Module:
    name = "id" if name is None else name
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]()
    if name in _FUNCTIONAL:
        return _Fn(_FUNCTIONAL[name])
    known = sorted(ACTIVATIONS) + sorted(_FUNCTIONAL)
    raise ValueError(f"activation {name!r} is not supported; use one of {', '.join(known)}")


def long_conv(
    z: Float[Tensor, "b L d"],
    h: Float[Tensor, "d L"],
    D: Float[Tensor, "d"],
    h_rev: Float[Tensor, "d L"] | None = None,
) -> Float[Tensor, "b L d"]:
    """y_i = Σ_{j≤i} h[i−j] z_j + Σ_{j>i} h_rev[j−i] z_j + D z_i (second sum only if h_rev).

    A linear convolution by FFT of size `fft_size(L)` ≥ 2L−1, so the circular convolution never
    wraps: lags 0…L−1 sit at indices 0…L−1 and lags −1…−(L−1) at n−1…n−L+1.
    """
    return fft_conv(z, D, k=circular_kernel(h, h_rev, fft_size(z.shape[-2])))


def _untouched(out: Tensor, given: Tensor) -> bool:
    """True when a hook passed `given` (a fresh copy, version 0) through unchanged."""
    return out is given and given._version == 0


class HyenaOperator(nn.Module):
    """Hyena mixer of any order N ≥ 2, causal or non-causal, with TransformerLens hooks.

    Hooks (shapes with positions on dim −2; see docs/architecture.md): `hook_in_proj`,
    `hook_short`, `hook_gate_{i}`, `hook_v`, `hook_filter` [N−1, d, L] (lag k at index k),
    `hook_filter_rev` (non-causal; lag −k at index k, index 0 zero), `hook_conv_{o}`, `hook_y`.
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 3,
        w: float = 1.0,
        num_inner_mlps: int = 2,
        short_filter_order: int = 3,
        modulate: bool = True,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        shift: float = 0.0,
        normalized: bool = False,
        bias: bool = True,
        lr_pos_emb: float = 1e-5,
        modulation_lr: float = 0.0,
        dropout: float = 0.0,
        filter_dropout: float = 0.0,
        activation: str | None = "id",
        causal: bool = True,
    ):
        super().__init__()
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        if not causal and short_filter_order % 2 == 0:
            raise ValueError("a non-causal operator needs an odd short_filter_order to center it")
        self.d_model, self.l_max, self.order, self.causal = d_model, l_max, order, causal
        # safari builds a filter dropout but never applies it ("filter_dropout is not
        # implemented" in its HyenaFilter); kept as a number so configs round-trip
        self.filter_dropout = filter_dropout
        width = d_model * (order + 1)
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        pad = short_filter_order - 1 if causal else (short_filter_order - 1) // 2
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width, padding=pad)
        filter_kwargs = dict(
            emb_dim=emb_dim, order=filter_order, w=w, num_inner_mlps=num_inner_mlps,
            lr_pos_emb=lr_pos_emb, normalized=normalized, bias=bias, modulate=modulate,
            fast_decay_pct=fast_decay_pct, slow_decay_pct=slow_decay_pct, target=target,
            shift=shift, modulation_lr=modulation_lr,
        )
        self.filter_fn = HyenaFilter(d_model * (order - 1), l_max, **filter_kwargs)
        if not causal:
            self.filter_fn_rev = HyenaFilter(
                d_model * (order - 1), l_max, with_bias_param=False, **filter_kwargs
            )
        self.dropout = nn.Dropout(dropout)
        self.activation = make_activation(activation)
        self._filter_cache = FilterCache()

        self.hook_in_proj = HookPoint()
        self.hook_short = HookPoint()
        for i in range(order):
            setattr(self, f"hook_gate_{i}", HookPoint())
        self.hook_v = HookPoint()
        self.hook_filter = HookPoint()
        if not causal:
            self.hook_filter_rev = HookPoint()
        for o in range(order - 1):
            setattr(self, f"hook_conv_{o}", HookPoint())
        self.hook_y = HookPoint()

    def hook_names(self) -> list[str]:
        """Local hook names, in forward order (the LM prefixes `blocks.{l}.mixer.`)."""
        names = ["hook_in_proj", "hook_short"]
        names += [f"hook_gate_{i}" for i in range(self.order)] + ["hook_v", "hook_filter"]
        names += [] if self.causal else ["hook_filter_rev"]
        return names + [f"hook_conv_{o}" for o in range(self.order - 1)] + ["hook_y"]

    # ---- filters --------------------------------------------------------------------------
    def _split_orders(self, h: Float[Tensor, "dn L"]) -> Float[Tensor, "n d L"]:
        L = h.shape[-1]
        # safari's channel layout interleaves (v o): channel v*(N−1)+o is step o
        return h.view(self.d_model, self.order - 1, L).transpose(0, 1)

    def filters(self, L: int) -> Float[Tensor, "n d L"]:
        """Forward long filters h^o, entry k at lag k."""
        return self._split_orders(self.filter_fn.filter_t(L))

    def filters_rev(self, L: int) -> Float[Tensor, "n d L"]:
        """Backward long filters, entry k at lag −k; lag 0 is zeroed (it is the forward's)."""
        h = self._split_orders(self.filter_fn_rev.filter_t(L))
        return torch.cat([torch.zeros_like(h[..., :1]), h[..., 1:]], dim=-1)

    def skip_bias(self) -> Float[Tensor, "n d"]:
        """D^o per step, from safari's `(v o)` layout of `filter_fn.bias`."""
        return self.filter_fn.skip_bias().view(self.d_model, self.order - 1).t()

    def _filter_tensors(self) -> list[Tensor]:
        """Every tensor the long filters are a function of (the cache's key)."""
        mods = [self.filter_fn] + ([] if self.causal else [self.filter_fn_rev])
        return [t for m in mods for t in (*m.parameters(), *m.buffers())]

    def _long_filters(self, L: int, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(h, h_rev, spectrum of their circular kernel or None) for one forward.

        With gradients (or in train mode) the filters are re-materialized, as safari does.
        In eval without gradients they come from the cache, which re-checks every filter
        tensor by identity and content (a changed parameter, a reloaded state dict, a `.data`
        write all miss) and hands out fresh copies, so a hook that edits them in place cannot
        corrupt it."""
        if self.training or torch.is_grad_enabled():
            return self.filters(L), (None if self.causal else self.filters_rev(L)), None
        # normal tensors even under inference_mode: the hook check below reads their versions
        with torch.inference_mode(False), torch.no_grad():
            tensors = self._filter_tensors()
            hit = self._filter_cache.get((L, n), tensors)
            if hit is None:
                h = self.filters(L).contiguous()
                h_rev = None if self.causal else self.filters_rev(L).contiguous()
                hit = (h, h_rev, torch.fft.rfft(circular_kernel(h, h_rev, n), n=n))
                self._filter_cache.put((L, n), tensors, hit)
            h, h_rev, spec = hit
            return h.clone(), (None if h_rev is None else h_rev.clone()), spec

    def train(self, mode: bool = True) -> "HyenaOperator":
        self._filter_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._filter_cache.clear()  # .to(), .float(), .cuda(): new tensors
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._filter_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, u: Float[Tensor, "b L d"]) -> Float[Tensor, "b L d"]:
        L = u.shape[-2]
        if L > self.l_max:
            raise ValueError(f"sequence length {L} exceeds l_max {self.l_max}; build with l_max >= {L}")
        d, N = self.d_model, self.order
        z = self.hook_in_proj(self.in_proj(u))  # [b, L, (N+1)d]
        conv = self.short_filter
        zc = self.hook_short(short_conv(z, conv.weight, conv.bias, conv.padding[0]))  # [b, L, (N+1)d]
        *xs, v = zc.split(d, dim=-1)
        xs = [getattr(self, f"hook_gate_{i}")(x) for i, x in enumerate(xs)]
        v = self.hook_v(v)
        n = fft_size(L)
        h0, h_rev0, spec = self._long_filters(L, n)
        h = self.hook_filter(h0)
        h_rev = None if self.causal else self.hook_filter_rev(h_rev0)
        if spec is not None and not (_untouched(h, h0) and (h_rev is None or _untouched(h_rev, h_rev0))):
            spec = None  # a hook replaced or edited a filter: use what it gave
        D = self.skip_bias()
        if torch.is_grad_enabled():
            k, spec = circular_kernel(h, h_rev, n), None
        elif spec is None:
            spec = torch.fft.rfft(circular_kernel(h, h_rev, n), n=n)
        for o in range(N - 1):
            v = self.dropout(v * xs[N - 1 - o])
            v = fft_conv(v, D[o], k=k[o]) if spec is None else fft_conv(v, D[o], spectrum=spec[o])
            v = getattr(self, f"hook_conv_{o}")(v)
        y = self.hook_y(v * xs[0])
        return self.out_proj(self.activation(y))

    # ---- safari import --------------------------------------------------------------------
    @classmethod
    def from_safari(cls, state_dict: dict[str, Tensor], **safari_kwargs) -> "HyenaOperator":
        """Build from a safari `HyenaOperator` state dict and its constructor kwargs.

        Every kwarg that changes the math is honored; options HyenaLens does not implement
        are refused by name (never silently ignored). Keys and shapes are checked one by one.
        """
        from models.safari.conversion import operator_kwargs_from_safari, load_aligned

        op = cls(**operator_kwargs_from_safari(safari_kwargs))
        load_aligned(op, state_dict, source="safari HyenaOperator")
        return op
