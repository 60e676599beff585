"""Channel aggregates of an order-2 Hyena layer's implicit attention, in two passes per block.

science.md, "Implicit attention H(u)": for order 2, H_c = diag(x^0_c) (T(h_c) + D_c I) diag(x^1_c),
and the token level folds in v's short conv S_c: H_tok,c = H_c S_c. The aggregates are
Σ_c a_c |H_c[i, j]| (a_c = 1/d for mean_abs, the out_proj column-norm share for out_weighted).

The general block builder (implicit_attention._h_rows) gathers a Toeplitz block, scales it,
folds the short conv and reduces, about a dozen passes over [b, d, rows, L]. Here:

- T'_c = T(h_c) + D_c I is read without a gather: with the lags laid out once as one reversed
  row `hr` (length 2L−1, forward lags and, non-causal, backward lags), row i of T'_c is the
  contiguous slice hr_c[L−1−i : 2L−1−i], so a block of rows is a strided view;
- token level: H_tok,c[i, j] = x^0_ci Σ_m T'_c[i, j+pad−m] · w_cm x^1_c[j+pad−m], i.e. one
  multiply-add per tap on shifted views (value level: one multiply, |T'| |x^1|);
- the channel sum Σ_c (a_c |x^0_ci|) M[i, c, j] is a batched matrix product (BLAS), not an
  elementwise pass plus a reduction.

In float64 the same numbers as the general path (tested to 1e-10); for a float32 result the
arithmetic is float32. Causal maps stay exactly zero above the diagonal (the zero lags
contribute exact zeros). Peak memory: the output plus one
[b, rows, d, cols] block (`BLOCK_ELEMENTS`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# one [b, rows, d, cols] block: on CPU small enough to stay in a core's L2 cache between its
# passes (measured flat from 2^16 to 2^20 elements); on a GPU large enough to fill the device
BLOCK_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 25}


def _block_shape(b: int, d: int, L: int, row_block: int | None, device: torch.device) -> tuple[int, int]:
    per_row = b * d
    budget = BLOCK_ELEMENTS.get(device.type, BLOCK_ELEMENTS["cpu"])
    if row_block is not None:
        r = max(1, min(L, int(row_block)))
        return r, max(1, min(L, budget // (per_row * r)))
    cols = min(L, 256 if device.type == "cpu" else L)
    return max(1, min(L, budget // (per_row * cols))), cols


def order2_aggregate(ops, level: str, weights: Tensor, out: Tensor, normalize, row_block: int | None = None) -> Tensor:
    """Fill `out` [b, L, L] with Σ_c weights_c |H_c| (value level) or |H_tok,c| (token level).

    `ops` is a HyenaLayerOperands of order 2 (channels first); `normalize` is applied to each
    finished [b, rows, L] block of rows (None: raw). Arithmetic in out's dtype when that is
    float32 (2x faster; ≤1e-6 relative from float64, measured), else in float64."""
    dt = torch.float32 if out.dtype == torch.float32 else torch.float64
    x0, x1 = ops.gates[0].to(dt), ops.gates[1].to(dt)  # [b, d, L]
    b, d, L = x1.shape
    dev = x1.device
    h = ops.h[0].to(dt, copy=True)
    h[:, 0] += ops.D[0].to(dt)  # T' = T + D·I: the D term sits at lag 0
    lags = torch.zeros(d, 2 * L - 1, dtype=dt, device=dev)  # lags[:, L−1+k] = lag k
    lags[:, L - 1:] = h
    if ops.h_rev is not None and L > 1:
        lags[:, :L - 1] = ops.h_rev[0][:, 1:].flip(-1).to(dt)  # lag −l at L−1−l (index 0 unused)
    short_w = ops.short_w.to(dt)
    k, pad = (short_w.shape[-1], ops.short_pad) if level == "token" else (1, 0)
    P = k - 1  # zero margin so that every tap's shifted slice stays inside
    hr = F.pad(lags.flip(-1), (P, P))  # T'_c[i, t] = hr[c, P + L−1−i+t]
    if level == "token":
        taps = []
        for m in range(k):
            s = pad - m  # source column t = j + s
            xm = torch.zeros_like(x1)
            lo, hi = max(0, -s), min(L, L - s)
            if lo < hi:
                xm[..., lo:hi] = x1[..., lo + s:hi + s] * short_w[None, :, m:m + 1]
            taps.append((s, xm))
    else:
        hr = hr.abs()
        taps = [(0, x1.abs())]
    hr = hr.contiguous()
    row_stride = hr.stride(0)
    a = (x0.abs() * weights.to(dt)[None, :, None]).transpose(1, 2)  # [b, L, d]
    r, cols = _block_shape(b, d, L, row_block, dev)
    buf = torch.empty(b * r * d * cols, dtype=dt, device=dev)
    for i0 in range(0, L, r):
        rr = min(r, L - i0)
        # rows i0 … i0+rr−1 in reverse order (ascending slice start); flipped back below
        start = P + L - i0 - rr
        blk_rows = torch.empty(b, rr, L, dtype=dt, device=dev)
        a_rows = a[:, i0:i0 + rr].flip(1).reshape(b * rr, 1, d)
        for j0 in range(0, L, cols):
            cc = min(cols, L - j0)
            M = buf[:b * rr * d * cc].view(b, rr, d, cc)
            for n, (s, xm) in enumerate(taps):
                # S[q, c, j] = hr[c, start + s + q + j0 + j]: rows q of T' (reversed), columns j0…
                S = hr.as_strided((1, rr, d, cc), (0, 1, row_stride, 1), hr.storage_offset() + start + s + j0)
                X = xm[:, None, :, j0:j0 + cc]  # [b, 1, d, cc]
                if n == 0:
                    torch.mul(S, X, out=M)
                else:
                    M.addcmul_(S, X)
            if level == "token":
                M.abs_()
            blk_rows[:, :, j0:j0 + cc] = torch.bmm(a_rows, M.view(b * rr, d, cc)).view(b, rr, cc)
        blk = blk_rows.flip(1)
        if normalize is not None:
            blk = normalize(blk)
        out[:, i0:i0 + rr] = blk.to(out.dtype)
    return out
