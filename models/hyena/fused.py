"""The Hyena operator's core as one autograd Function, for the training step with idle hooks.

Between `in_proj` and the output activation, `HyenaOperator.forward` runs the short conv, the
split into gates and v, and per order step a gate product and a long convolution, then the last
gate (models/hyena/operator.py). Taken op by op, autograd records a node per product, the
split's backward concatenates the gate gradients into a fresh [b, L, (N+1)·d] tensor, and every
hook point is a module call. `gated_conv` runs the same ops, in the same order, as one Function:
its backward writes each block's gradient straight into one buffer, and nothing in between is
recorded. The values and gradients are the op-by-op path's to the bit (tests/test_speed_fused.py),
so this changes the speed, not the numerics. The operator takes it only when every hook of the
core is idle and its dropout is off (`HyenaOperator._fused_ok`).
"""
from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.hyena.fftconv import _conv_fwd, _short_fwd, fft_conv_backward, short_conv_backward
from models.kernels import check_cpu, gated
from models.kernels.gated import block as _block


class _GatedConv(torch.autograd.Function):
    """y = x^0 ⊙ c_{N−2},  c_o = h^o ∗ (x^{N−1−o} ⊙ c_{o−1}) + D^o ⊙ (x^{N−1−o} ⊙ c_{o−1}),
    c_{−1} = v, where [x^0 … x^{N−1}, v] = short_conv(u).

    The short conv runs on all (N+1)·d channels at once, forward and backward, as in the
    op-by-op path: its weight and bias gradients are sums over (batch, position) whose rounding
    depends on the width of the tensor summed, so a block-by-block version (measured: 5% faster
    on the core, BENCHMARKS.md) would not be bit-identical."""

    @staticmethod
    def forward(ctx, u: Tensor, wt: Tensor, sbias: Tensor | None, k: Tensor, D: Tensor, pad: int,
                cpp: bool) -> Tensor:
        N = k.shape[0] + 1
        d, n = D.shape[-1], k.shape[-1]
        ctx.pad, ctx.N, ctx.n, ctx.has_bias, ctx.cpp = pad, N, n, sbias is not None, cpp
        if cpp:  # the same algorithm with fused passes (models/kernels/gated.py)
            y, s, Ks, saved = gated.forward(u, wt, sbias, k, D, pad)
            ctx.save_for_backward(u, wt, s, D, *Ks, *saved)
            return y
        s = _short_fwd(u, wt, sbias, pad)  # [b, L, (N+1)·d]
        Ks = [torch.fft.rfft(k[o], n=n) for o in range(N - 1)]  # per step, as _FFTConv makes them
        z = _block(s, N, d)  # v
        saved = []
        for o in range(N - 1):
            zin = z * _block(s, N - 1 - o, d)  # [b, L, d]
            z, Z = _conv_fwd(zin, Ks[o], D[o], n)
            saved += [zin, Z, z]
        y = z * _block(s, 0, d)
        ctx.save_for_backward(u, wt, s, D, *Ks, *saved)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor):
        u, wt, s, D, *rest = ctx.saved_tensors
        N, n = ctx.N, ctx.n
        Ks, saved = rest[:N - 1], rest[N - 1:]
        if ctx.cpp:
            return (*gated.backward(gy, u, wt, s, D, list(Ks), list(saved), ctx.pad, ctx.needs_input_grad,
                                    ctx.has_bias), None, None)
        d = D.shape[-1]
        need_u, need_w, need_b, need_k, need_D = ctx.needs_input_grad[:5]
        gs = torch.empty_like(s)  # [b, L, (N+1)·d]: every block's gradient, written in place
        torch.mul(gy, saved[-1], out=_block(gs, 0, d))  # ∂x^0 = gy ⊙ c_{N−2}
        gz = gy * _block(s, 0, d)
        gks: list[Tensor | None] = [None] * (N - 1)
        gDs: list[Tensor | None] = [None] * (N - 1)
        for o in reversed(range(N - 1)):
            zin, Z = saved[3 * o], saved[3 * o + 1]
            gzin, gks[o], gDs[o] = fft_conv_backward(gz, zin, Z, Ks[o], D[o], n, 2, True, need_k, need_D)
            prev = _block(s, N, d) if o == 0 else saved[3 * o - 1]  # what the gate multiplied
            gate = _block(s, N - 1 - o, d)
            torch.mul(gzin, prev, out=_block(gs, N - 1 - o, d))  # ∂x^{N−1−o}
            if o == 0:
                torch.mul(gzin, gate, out=_block(gs, N, d))  # ∂v
            else:
                gz = gzin * gate
        gu, gw, gb = short_conv_backward(gs, u, wt, ctx.pad, need_u, need_w, ctx.has_bias and need_b)
        gk = torch.stack(gks) if need_k else None
        gD = torch.stack(gDs) if need_D else None
        return gu, gw, gb, gk, gD, None, None


def gated_conv(
    u: Float[Tensor, "b L C"],
    wt: Float[Tensor, "k C"],
    sbias: Float[Tensor, " C"] | None,
    k: Float[Tensor, "n_o d n"],
    D: Float[Tensor, "n_o d"],
    pad: int,
    cpp: bool = False,
) -> Float[Tensor, "b L d"]:
    """The operator's core for u = in_proj(x) [b, L, (N+1)·d]: the short conv (taps wt [k, C]
    tap-major, `pad` as `short_conv`), then the gate products and long convolutions with the
    circular kernels k [N−1, d, n] (`circular_kernel`) and skips D [N−1, d]; returns x^0 ⊙ the
    last convolution [b, L, d], i.e. `hook_y`'s value. `cpp`: the same algorithm with its
    elementwise passes fused, by the compiled kernels (models/kernels/gated.py; other bits, CPU
    only, one batch axis)."""
    if cpp:
        check_cpu(u)
    return _GatedConv.apply(u, wt, sbias, k, D, pad, cpp and u.dim() == 3)

