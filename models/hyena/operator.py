"""The Hyena operator (Poli et al. 2023, "Hyena Hierarchy", Alg. 1 and eq. 3), hooked.

Safari semantics, gate then convolve (science.md, "Hyena operator"):

    u = in_proj(x);  u = short_conv(u);  x^0 … x^{N-1}, v = split(u)
    z = v;  for o = 0 … N−2:  z ← x^{N-1-o} ⊙ z;  z ← h^o ∗ z + D^o ⊙ z
    y = out_proj(act(x^0 ⊙ z))

Causal: linear convolution by FFT (size ≥ 2L−1, first L outputs kept; safari's `fftconv_ref`
uses exactly 2L), short conv left-padded. Non-causal: a backward implicit filter covers lags
−1…−(L−1) (lag 0 stays with the forward filter), and the short conv is centered.

Speed (models/hyena/fftconv.py, numbers in BENCHMARKS.md): both convolutions are custom autograd
Functions in the [b, L, channels] layout, the FFT size is the smallest even n ≥ 2L−1 without
prime factors above 13 (`fftconv.fft_size`), and in eval without gradients the materialized filters and their spectra are cached (models/hyena/filter_cache.py).
With gradients and no hook attached between in_proj and the activation, the core runs as one
autograd Function (models/hyena/fused.py), bit-identical to the hooked op-by-op path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from models.config.model import SAFARI_OPERATOR_DEFAULTS, SYNTHETICS_DEFAULTS
from models.errors import UserError
from models.hyena.fftconv import circular_kernel, fft_conv, fft_size, short_conv
from models.hyena.filter_cache import FilterCache
from models.hyena.filters import HyenaFilter
from models.hyena.fused import gated_conv
from models.hyena.hooks import hook_idle, mixer_hook_names
from models.safari.conversion import operator_kwargs_from_safari, load_aligned


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


@dataclass(frozen=True)
class ChannelLayout:
    """The operator's (N+1)·d projected channels (`hook_in_proj`, `hook_short`, the short conv's
    weight rows) and the short conv's window, as `forward` reads them. Fields:

    d:      channels per block (d_model)
    order:  N; the blocks in channel order are x^0 … x^{N−1}, then v (`blocks`)
    kernel: k, the short conv's kernel size
    pad:    its padding: stream position t reads inputs t − pad … t − pad + k − 1 (zero outside
            0 … L−1); causal pad = k − 1, non-causal centered pad = (k − 1)//2
    """

    d: int
    order: int
    kernel: int
    pad: int

    @property
    def blocks(self) -> tuple[str, ...]:
        """Block names in channel order, as their hooks are named: gate_0 … gate_{N−1}, v."""
        return tuple(f"gate_{i}" for i in range(self.order)) + ("v",)

    def block(self, name: str) -> slice:
        """The channels of block `name` (one of `blocks`) in the (N+1)·d layout."""
        if name not in self.blocks:
            raise UserError(f"no channel block {name!r}; the blocks are {', '.join(self.blocks)}")
        j = self.blocks.index(name)
        return slice(j * self.d, (j + 1) * self.d)


class HyenaOperator(nn.Module):
    """Hyena mixer of any order N ≥ 2, causal or non-causal, with TransformerLens hooks.

    Hooks: names, shapes and meanings are the `blocks.{l}.mixer.` rows of models/hyena/hooks.py's
    `HOOKS` (docs/architecture.md, "Hook names"); `hook_names()` lists them. The channel layout
    and the short conv's window are `layout()`; one block's short-conv taps are `short_taps`.
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        # safari's constructor defaults, from their one table (models/config/model.py)
        order: int = SAFARI_OPERATOR_DEFAULTS["order"],
        filter_order: int = SAFARI_OPERATOR_DEFAULTS["filter_order"],
        emb_dim: int = SAFARI_OPERATOR_DEFAULTS["emb_dim"],
        w: float = SAFARI_OPERATOR_DEFAULTS["w"],
        num_inner_mlps: int = SAFARI_OPERATOR_DEFAULTS["num_inner_mlps"],
        short_filter_order: int = SAFARI_OPERATOR_DEFAULTS["short_filter_order"],
        modulate: bool = SAFARI_OPERATOR_DEFAULTS["modulate"],
        fast_decay_pct: float = SAFARI_OPERATOR_DEFAULTS["fast_decay_pct"],
        slow_decay_pct: float = SAFARI_OPERATOR_DEFAULTS["slow_decay_pct"],
        target: float = SAFARI_OPERATOR_DEFAULTS["target"],
        shift: float = SAFARI_OPERATOR_DEFAULTS["shift"],
        normalized: bool = SAFARI_OPERATOR_DEFAULTS["normalized"],
        bias: bool = SAFARI_OPERATOR_DEFAULTS["bias"],
        lr_pos_emb: float = SAFARI_OPERATOR_DEFAULTS["lr_pos_emb"],
        modulation_lr: float = SAFARI_OPERATOR_DEFAULTS["modulation_lr"],
        dropout: float = SAFARI_OPERATOR_DEFAULTS["dropout"],
        filter_dropout: float = SAFARI_OPERATOR_DEFAULTS["filter_dropout"],
        activation: str | None = SAFARI_OPERATOR_DEFAULTS["activation"],
        causal: bool = SAFARI_OPERATOR_DEFAULTS["causal"],
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
        # "cpp": the core by compiled kernels in train mode (HyenaConfig.kernels sets it)
        self.kernels = SYNTHETICS_DEFAULTS["kernels"]

        # the rows of models/hyena/hooks.py's HOOKS; the per-order ones need a loop
        self.hook_in_proj = HookPoint()  # [b, L, (N+1)·d]
        self.hook_short = HookPoint()  # [b, L, (N+1)·d]
        for i in range(order):
            setattr(self, f"hook_gate_{i}", HookPoint())  # hook_gate_{i}: [b, L, d], gate x^i
        self.hook_v = HookPoint()  # [b, L, d]
        self.hook_filter = HookPoint()  # [N−1, d, L]
        if not causal:
            self.hook_filter_rev = HookPoint()  # [N−1, d, L]
        for o in range(order - 1):
            setattr(self, f"hook_conv_{o}", HookPoint())  # hook_conv_{o}: [b, L, d], long conv o
        self.hook_y = HookPoint()  # [b, L, d]

    def hook_names(self) -> list[str]:
        """Local hook names, in forward order (the LM prefixes `blocks.{l}.mixer.`)."""
        return mixer_hook_names(self.order, self.causal)

    # ---- channel layout -------------------------------------------------------------------
    def layout(self) -> ChannelLayout:
        """Which projected channels are x^0 … x^{N−1} and v, and the short conv's window."""
        conv = self.short_filter
        if conv.dilation[0] != 1 or conv.stride[0] != 1:
            raise UserError("the short conv must have stride 1 and dilation 1")
        return ChannelLayout(self.d_model, self.order, int(conv.weight.shape[-1]), int(conv.padding[0]))

    def short_taps(self, block: str = "v") -> tuple[Float[Tensor, "d k"], Float[Tensor, "d"]]:
        """The short conv's taps [d, k] and bias [d] of one channel block (`layout().blocks`):
        views of the parameters that `forward` reads (detach to read them; a missing bias is
        zeros). Output channel c at stream position t is bias[c] + Σ_m taps[c, m] ·
        in[t − pad + m, c]."""
        conv, rows = self.short_filter, self.layout().block(block)
        taps = conv.weight[rows, 0, :]  # [(N+1)·d, 1, k] → [d, k]
        bias = conv.bias[rows] if conv.bias is not None else taps.new_zeros(self.d_model)
        return taps, bias

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

    def _long_conv(self, L: int) -> Callable[[int, Tensor], Tensor]:
        """`conv(o, z) = h^o ∗ z + D^o ⊙ z` for one forward at length L, z [b, L, d]: the long
        filters, passed through `hook_filter` (and `hook_filter_rev`), as the FFT reads them.

        The filter-cache choice lives here. With gradients (or in train mode) the filters are
        re-materialized, as safari does. In eval without gradients they and their spectra come
        from the cache (models/hyena/filter_cache.py), which re-checks every filter tensor by identity
        and content (a changed parameter, a reloaded state dict, a `.data` write all miss) and
        hands the hooks fresh copies, so a hook that edits them in place cannot corrupt it; a
        hook that edited or replaced its copy has that filter used instead of the cached
        spectrum. With gradients the convolution takes the time-domain kernel (differentiable),
        else a spectrum."""
        n = fft_size(L)
        if self.training or torch.is_grad_enabled():
            h0, h_rev0, spec = self.filters(L), (None if self.causal else self.filters_rev(L)), None
        else:
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
                h0, h_rev0 = h.clone(), (None if h_rev is None else h_rev.clone())
        h = self.hook_filter(h0)  # [N−1, d, L]: lag k at index k
        h_rev = None if self.causal else self.hook_filter_rev(h_rev0)  # [N−1, d, L]: lag −k at k
        if spec is not None and not (_untouched(h, h0) and (h_rev is None or _untouched(h_rev, h_rev0))):
            spec = None  # a hook replaced or edited a filter: use what it gave
        D = self.skip_bias()  # [N−1, d]
        if torch.is_grad_enabled():
            k = circular_kernel(h, h_rev, n)  # [N−1, d, n]
            return lambda o, z: fft_conv(z, D[o], k=k[o])
        if spec is None:
            spec = torch.fft.rfft(circular_kernel(h, h_rev, n), n=n)  # [N−1, d, n//2+1]
        return lambda o, z: fft_conv(z, D[o], spectrum=spec[o])

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
        N, conv = self.order, self.short_filter
        u = self.hook_in_proj(self.in_proj(u))  # [b, L, (N+1)·d]
        if self._fused_ok():
            return self.out_proj(self.activation(self._fused_core(u, L)))
        u = self.hook_short(short_conv(u, conv.weight, conv.bias, conv.padding[0]))  # [b, L, (N+1)·d]
        *xs, v = u.split(self.d_model, dim=-1)  # N+1 × [b, L, d]: x^0 … x^{N−1}, v (`layout()`)
        xs = [getattr(self, f"hook_gate_{i}")(x) for i, x in enumerate(xs)]
        z = self.hook_v(v)  # [b, L, d]
        conv_long = self._long_conv(L)  # fires hook_filter (and hook_filter_rev)
        for o in range(N - 1):
            z = self.dropout(z * xs[N - 1 - o])  # z ← x^{N−1−o} ⊙ z (dropout: safari's)
            z = getattr(self, f"hook_conv_{o}")(conv_long(o, z))  # z ← h^o ∗ z + D^o ⊙ z
        y = self.hook_y(z * xs[0])  # [b, L, d]: x^0 ⊙ z
        return self.out_proj(self.activation(y))

    def _fused_ok(self) -> bool:
        """The one-Function core (models/hyena/fused.py) computes what the hooked path does, to the
        bit; it is taken with gradients on (a training step; in eval without gradients the cached
        filters are faster), when no hook between in_proj and the activation is attached and the
        gated-stream dropout does nothing."""
        if not torch.is_grad_enabled() or (self.training and self.dropout.p > 0):
            return False
        return all(hook_idle(getattr(self, name)) for name in self._core_hooks())

    def _core_hooks(self) -> list[str]:
        names = ["hook_short", "hook_v", "hook_filter", "hook_y"]
        names += [f"hook_gate_{i}" for i in range(self.order)] + [f"hook_conv_{o}" for o in range(self.order - 1)]
        return names + ([] if self.causal else ["hook_filter_rev"])

    def _fused_core(self, u: Float[Tensor, "b L C"], L: int) -> Float[Tensor, "b L d"]:
        """`hook_y`'s value from u = in_proj(x), by `gated_conv` (the same filters, kernels and
        taps as the hooked path reads)."""
        n, conv = fft_size(L), self.short_filter
        k = circular_kernel(self.filters(L), None if self.causal else self.filters_rev(L), n)  # [N−1, d, n]
        wt = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[-1]).t().contiguous()  # [k, C]
        cpp = self.kernels == "cpp" and self.training  # compiled kernels: training steps only
        return gated_conv(u, wt, conv.bias, k, self.skip_bias(), conv.padding[0], cpp=cpp)

    # ---- safari import --------------------------------------------------------------------
    @classmethod
    def from_safari(cls, state_dict: dict[str, Tensor], **safari_kwargs) -> "HyenaOperator":
        """Build from a safari `HyenaOperator` state dict and its constructor kwargs.

        Every kwarg that changes the math is honored; options HyenaLens does not implement
        are refused by name (never silently ignored). Keys and shapes are checked one by one.
        """
        op = cls(**operator_kwargs_from_safari(safari_kwargs))
        load_aligned(op, state_dict, source="safari HyenaOperator")
        return op
