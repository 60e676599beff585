"""The exact implicit attention matrix H(u) of a Hyena layer, and the attention pattern of the
TransformerLens baseline behind the same entry point.

Definitions: /work/shared/docs/science.md, "Hyena operator" and "Implicit attention H(u)".

A Hyena operator of order N computes, per channel c (gate then convolve, safari semantics)

    z = v;  for o = 0 … N−2:  z ← x^{N−1−o} ⊙ z;  z ← (T(h^o) + D^o I) z;   y = x^0 ⊙ z

so y_c = H_c(u) v_c with the data-controlled matrix

    H_c = diag(x^0_c) · M^{N−2}_c · … · M^0_c,     M^o_c = (T(h^o_c) + D^o_c I) · diag(x^{N−1−o}_c)

(order 2: H_c = diag(x^0_c)(T(h_c) + D_c I) diag(x^1_c)). T(h) is the Toeplitz matrix of the
long filter: T[i, j] = h[i − j] for i ≥ j, and, non-causal only, T[i, j] = h_rev[j − i] for
j > i (the backward filter; its lag 0 is zero, lag 0 belongs to the forward filter). Causal
H is therefore exactly lower-triangular.

Token level (`level="token"`) folds in v's short depthwise conv: v = S_c v_in + b_c with S_c
the Toeplitz matrix of the conv taps (S[t, j] = w[j − t + pad]; causal pad = k−1, non-causal
centered pad = (k−1)//2). H_tok,c = H_c S_c, and hook_y = H_tok · v_in + H · b.

Everything is computed in float64 from the layer's own hooks (`hook_gate_{i}`, `hook_v`,
`hook_filter`, `hook_filter_rev`) and parameters (D, short-conv taps), so the identity
`hook_y[b, i, c] = Σ_j H[b, c, i, j] · hook_v[b, j, c]` holds to float32 round-off (the model's
FFT convolution is the only inexact side). One exception, for speed: the channel aggregates of
an order-2 layer (interp/implicit_order2.py, the scores' map) use float32 arithmetic when the
result is float32 (≤1e-6 relative from float64), float64 when `dtype=torch.float64`.

Return convention (shared by every caller; figures and scores never branch on model type):

| model     | aggregate=None                    | aggregate="mean_abs" / "out_weighted" |
|-----------|-----------------------------------|---------------------------------------|
| HyenaLM   | H per channel [batch, d, L, L]    | channel aggregate [batch, L, L]       |
| attention | hook_pattern [batch, heads, L, L] | head mean of hook_pattern [batch, L, L]|

Rows are query positions i, columns source positions j. `normalize_rows=True` divides each row
by the sum of its absolute values (the display / score normalization of science.md; an
attention pattern is unchanged by it up to round-off).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from models.build import is_hyena
from models.errors import UserError

from interp.implicit_order2 import order2_aggregate

Level = Literal["value", "token"]
Aggregate = Literal["mean_abs", "out_weighted"]
LEVELS = ("value", "token")
AGGREGATES = ("mean_abs", "out_weighted")

# Auto row block: at most this many float64 elements in one [batch, d, rows, L] block.
_BLOCK_ELEMENTS = 1 << 22

__all__ = [
    "HyenaLayerOperands",
    "hyena_operands",
    "hyena_implicit_attention",
    "implicit_attention",
    "row_normalize",
    "toeplitz_rows",
]


# ---------------------------------------------------------------------------- building blocks
def toeplitz_rows(
    h: Float[Tensor, "d L"],
    rows: Int[Tensor, "r"],
    h_rev: Float[Tensor, "d L"] | None = None,
) -> Float[Tensor, "d r L"]:
    """Rows `rows` of the per-channel Toeplitz matrix T(h) (science.md, "Implicit attention").

    T[i, j] = h[i − j] for i ≥ j; for j > i it is h_rev[j − i] (non-causal) or 0 (causal).
    Only the requested rows are built, so a block costs [d, r, L].
    """
    L = h.shape[-1]
    cols = torch.arange(L, device=h.device)
    lag = rows[:, None] - cols[None, :]  # [r, L]
    fwd = h[:, lag.clamp(min=0)]  # [d, r, L]
    if h_rev is None:
        back = torch.zeros((), dtype=h.dtype, device=h.device)
    else:
        back = h_rev[:, (-lag).clamp(min=0)]
    return torch.where(lag >= 0, fwd, back)


def row_normalize(
    m: Float[Tensor, "*batch L L"], eps: float = 0.0
) -> Float[Tensor, "*batch L L"]:
    """Divide each row (last dim) by the sum of its absolute values; all-zero rows stay zero."""
    s = m.abs().sum(dim=-1, keepdim=True)
    return torch.where(s > eps, m / torch.where(s > eps, s, torch.ones_like(s)), torch.zeros_like(m))


@dataclass
class HyenaLayerOperands:
    """Everything H(u) of one Hyena layer needs, channels first, float64.

    gates[i] is x^i [b, d, L] (hook_gate_i); v [b, d, L] (hook_v); y [b, d, L] (hook_y, kept
    for checks); h, h_rev [N−1, d, L] (hook_filter, hook_filter_rev; h_rev None when causal);
    D [N−1, d]; short_w [d, k] and short_b [d] are v's short-conv taps and bias, short_pad its
    left padding; v_in [b, d, L] is v's slice of hook_in_proj; out_norm [d] = ‖W_out[:, c]‖.
    """

    gates: list[Tensor]
    v: Tensor
    y: Tensor
    h: Tensor
    h_rev: Tensor | None
    D: Tensor
    short_w: Tensor
    short_b: Tensor
    short_pad: int
    v_in: Tensor
    out_norm: Tensor
    out_dtype: torch.dtype

    @property
    def order(self) -> int:
        return len(self.gates)

    @property
    def shape(self) -> tuple[int, int, int]:
        b, d, L = self.v.shape
        return b, d, L


def _check_layer(layer: int, n_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise UserError(f"layer must be an int, got {layer!r}")
    if not -n_layers <= layer < n_layers:
        raise UserError(f"layer {layer} is out of range; the model has {n_layers} layers")
    return layer % n_layers


def _check_tokens(tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        raise UserError("tokens must be an int64 tensor [batch, pos]")
    return tokens


class _EvalMode:
    """Run a model in eval mode and restore its training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def hyena_operands(model: nn.Module, tokens: Int[Tensor, "b L"], layer: int) -> HyenaLayerOperands:
    """Run `model` (eval mode, no grad) with a cache of layer `layer`'s mixer hooks and collect
    the operands of H(u) in float64, channels first."""
    _check_tokens(tokens)
    layer = _check_layer(layer, len(model.blocks))
    op = model.blocks[layer].mixer
    N, d = op.order, op.d_model
    pre = f"blocks.{layer}.mixer."
    names = [pre + f"hook_gate_{i}" for i in range(N)]
    names += [pre + n for n in ("hook_v", "hook_y", "hook_in_proj", "hook_filter")]
    if not op.causal:
        names.append(pre + "hook_filter_rev")
    device = next(model.parameters()).device
    with _EvalMode(model), torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(device), names_filter=names)
        f64 = torch.float64
        chan = lambda t: t.detach().to(f64).transpose(-1, -2).contiguous()  # [b, L, d] → [b, d, L]
        layout = op.layout()  # refuses a strided or dilated short conv
        w, b = op.short_taps("v")  # v's taps [d, k] and bias [d]
        v_hook = cache[pre + "hook_v"]
        return HyenaLayerOperands(
            gates=[chan(cache[pre + f"hook_gate_{i}"]) for i in range(N)],
            v=chan(v_hook),
            y=chan(cache[pre + "hook_y"]),
            h=cache[pre + "hook_filter"].detach().to(f64),
            h_rev=None if op.causal else cache[pre + "hook_filter_rev"].detach().to(f64),
            D=op.skip_bias().detach().to(f64).reshape(N - 1, d),
            short_w=w.detach().to(f64),
            short_b=b.detach().to(f64),
            short_pad=layout.pad,
            v_in=chan(cache[pre + "hook_in_proj"][..., layout.block("v")]),  # v's block [b, L, d] → [b, d, L]
            out_norm=op.out_proj.weight.detach().to(f64).norm(dim=0),
            out_dtype=v_hook.dtype,
        )


def _times_toeplitz(
    R: Float[Tensor, "b d r L"], h: Float[Tensor, "d L"], h_rev: Float[Tensor, "d L"] | None
) -> Float[Tensor, "b d r L"]:
    """R · T(h) per channel, by FFT (size 2L, no wrap-around), in R's dtype (float64 here).

    (R T)[i, j] = Σ_m R[i, m] k[m − j] with k[l] = h[l] (l ≥ 0), h_rev[−l] (l < 0): a
    cross-correlation of each row with k, i.e. irfft(rfft(R) · conj(rfft(k))). Costs
    O(b d r L log L) instead of the O(b d r L²) of a matmul with T.
    """
    L = R.shape[-1]
    n = 2 * L
    k = torch.zeros(h.shape[0], n, dtype=R.dtype, device=R.device)
    k[:, :L] = h
    if h_rev is not None and L > 1:
        k[:, n - L + 1:] = h_rev[:, 1:].flip(-1)  # k[n − l] = h_rev[l], l = 1 … L−1
    k_f = torch.fft.rfft(k, n=n, dim=-1).conj()  # [d, L+1]
    return torch.fft.irfft(torch.fft.rfft(R, n=n, dim=-1) * k_f[None, :, None, :], n=n, dim=-1)[..., :L]


def _h_rows(ops: HyenaLayerOperands, rows: Tensor) -> Float[Tensor, "b d r L"]:
    """Rows `rows` of H_c for every batch element and channel (value level).

    H[rows, :] = diag(x^0)[rows] · M^{N−2}[rows, :] · M^{N−3} ⋯ M^0: the leftmost factor is
    built exactly for these rows only; each further factor multiplies the [b, d, r, L] block
    on the right (T(h^o) by FFT). Causal: the entries above the diagonal are set to exact zeros
    (they are zero in exact arithmetic; the FFT would leave round-off there).
    """
    N = ops.order
    h, h_rev, D = ops.h, ops.h_rev, ops.D
    rev = (lambda o: None) if h_rev is None else (lambda o: h_rev[o])
    L = h.shape[-1]
    o = N - 2
    T = toeplitz_rows(h[o], rows, rev(o))  # [d, r, L]
    T[:, torch.arange(len(rows), device=rows.device), rows] += D[o][:, None]
    R = T[None] * ops.gates[N - 1 - o][:, :, None, :]  # [b, d, r, L]
    for o in range(N - 3, -1, -1):
        # R ← R (T(h^o) + D^o I) diag(x^{N−1−o})
        R = (_times_toeplitz(R, h[o], rev(o)) + R * D[o][None, :, None, None]) * ops.gates[N - 1 - o][:, :, None, :]
    if N > 2 and h_rev is None:
        upper = torch.arange(L, device=rows.device)[None, :] > rows[:, None]  # [r, L]
        R = R.masked_fill(upper, 0.0)
    return R * ops.gates[0][:, :, rows, None]


def _fold_short_conv(R: Float[Tensor, "b d r L"], w: Float[Tensor, "d k"], pad: int) -> Float[Tensor, "b d r L"]:
    """R · S_c with S[t, j] = w[c, j − t + pad]: out[..., j] = Σ_m w[m] R[..., j + pad − m]."""
    L = R.shape[-1]
    out = torch.zeros_like(R)
    for m in range(w.shape[-1]):
        s = pad - m  # source column t = j + s
        lo, hi = max(0, -s), min(L, L - s)
        if lo < hi:
            out[..., lo:hi] += w[None, :, None, m:m + 1] * R[..., lo + s:hi + s]
    return out


def _auto_row_block(b: int, d: int, L: int) -> int:
    return max(1, min(L, _BLOCK_ELEMENTS // max(1, b * d * L)))


def hyena_implicit_attention(
    ops: HyenaLayerOperands,
    level: Level = "value",
    aggregate: Aggregate | None = None,
    row_block: int | None = None,
    normalize: bool = False,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "b d L L"] | Float[Tensor, "b L L"]:
    """H(u) from collected operands (see `implicit_attention` for the contract).

    Built in blocks of `row_block` query rows; an aggregate never holds more than one
    [b, d, row_block, L] block, so no [b, d, L, L] tensor exists at once.
    """
    if level not in LEVELS:
        raise UserError(f"level {level!r} is unknown; use one of {', '.join(LEVELS)}")
    if aggregate is not None and aggregate not in AGGREGATES:
        raise UserError(f"aggregate {aggregate!r} is unknown; use None or one of {', '.join(AGGREGATES)}")
    b, d, L = ops.shape
    dev = ops.v.device
    r = _auto_row_block(b, d, L) if row_block is None else int(row_block)
    if r < 1:
        raise UserError(f"row_block must be >= 1, got {row_block}")
    out_dtype = ops.out_dtype if dtype is None else dtype
    if aggregate is None:
        out = torch.empty((b, d, L, L), dtype=out_dtype, device=dev)
    else:
        out = torch.empty((b, L, L), dtype=out_dtype, device=dev)
        if aggregate == "out_weighted":
            wts = ops.out_norm / ops.out_norm.sum().clamp_min(torch.finfo(torch.float64).tiny)
    if aggregate is not None and ops.order == 2:  # the fast path (interp/implicit_order2.py)
        if aggregate == "mean_abs":
            wts = torch.full((d,), 1.0 / d, dtype=torch.float64, device=dev)
        return order2_aggregate(ops, level, wts, out, row_normalize if normalize else None, row_block)
    for i0 in range(0, L, r):
        rows = torch.arange(i0, min(L, i0 + r), device=dev)
        R = _h_rows(ops, rows)
        if level == "token":
            R = _fold_short_conv(R, ops.short_w, ops.short_pad)
        if aggregate is None:
            blk = R
        elif aggregate == "mean_abs":
            blk = R.abs().mean(dim=1)
        else:
            blk = torch.einsum("bdrl,d->brl", R.abs(), wts)
        if normalize:
            blk = row_normalize(blk)
        out[..., i0:i0 + len(rows), :] = blk.to(out_dtype)
    return out


def _attention_pattern(model: nn.Module, tokens: Tensor, layer: int, aggregate, normalize: bool, dtype):
    if aggregate is not None and aggregate not in AGGREGATES:
        raise UserError(f"aggregate {aggregate!r} is unknown; use None or one of {', '.join(AGGREGATES)}")
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if n_layers is None:
        n_layers = len(model.blocks)
    layer = _check_layer(layer, n_layers)
    name = f"blocks.{layer}.attn.hook_pattern"
    if name not in model.hook_dict:
        raise UserError(f"model has no hook {name!r}; implicit_attention needs a HyenaLM or a "
                        "TransformerLens model with attention patterns")
    device = next(model.parameters()).device
    with _EvalMode(model), torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(device), names_filter=[name])
    p = cache[name].detach()  # [b, heads, L, L]
    if aggregate is not None:
        p = p.mean(dim=1)
    if normalize:
        p = row_normalize(p)
    return p if dtype is None else p.to(dtype)


def implicit_attention(
    model: nn.Module,
    tokens: Int[Tensor, "b L"],
    layer: int,
    level: Level = "value",
    aggregate: Aggregate | None = None,
    row_block: int | None = None,
    normalize_rows: bool = False,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "b d L L"] | Float[Tensor, "b heads L L"] | Float[Tensor, "b L L"]:
    """The exact implicit attention of layer `layer` (science.md, "Implicit attention H(u)").

    HyenaLM:
      - aggregate=None, level="value": H [b, d_model, L, L] with
        hook_y[b, i, c] = Σ_j H[b, c, i, j] · hook_v[b, j, c] (orders ≥ 2, causal H exactly
        lower-triangular, non-causal two-sided).
      - level="token": H_tok[c] = H[c] · S_c (v's short conv folded in), so that
        hook_y = H_tok · v_in + H · b with v_in = hook_in_proj[..., −d:] and b v's conv bias.
      - aggregate="mean_abs": mean_c |H_c| → [b, L, L]; aggregate="out_weighted":
        Σ_c w_c |H_c| with w_c = ‖W_out[:, c]‖ / Σ_c' ‖W_out[:, c']‖ (out_proj column norms).
        Built in blocks of `row_block` query rows (None: automatic, bounded memory), so no
        [b, d, L, L] tensor is ever allocated for an aggregate.
    Attention baseline (any TransformerLens model with `blocks.{l}.attn.hook_pattern`):
      - aggregate=None: hook_pattern [b, heads, L, L], exactly as run_with_cache gives it;
      - any aggregate: its head mean [b, L, L]. `level` and `row_block` do not apply.
    `normalize_rows=True` divides each row by the sum of its |entries| (display and scores).
    The model runs in eval mode without gradients (its training flag is restored); the result
    is in the activations' dtype unless `dtype` is given (Hyena maps are computed in float64,
    order-2 aggregates in the result's dtype: see the module doc).
    """
    _check_tokens(tokens)
    if level not in LEVELS:
        raise UserError(f"level {level!r} is unknown; use one of {', '.join(LEVELS)}")
    if not is_hyena(model):
        return _attention_pattern(model, tokens, layer, aggregate, normalize_rows, dtype)
    ops = hyena_operands(model, tokens, layer)
    return hyena_implicit_attention(ops, level=level, aggregate=aggregate, row_block=row_block,
                                    normalize=normalize_rows, dtype=dtype)
