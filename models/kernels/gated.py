"""The operator core's forward and backward with `model.kernels=cpp` (models/hyena/fused.py
dispatches here): the same algorithm as `_GatedConv`, with every elementwise pass fused into the
FFT's input or output pass by the kernels in cpu.cpp.

Per order step the torch path runs a gate product, a zero-padding copy (inside `rfft(x, n)`), the
FFT pair, the skip term `addcmul` on a transposed read, and the next gate product; its backward
as many again. Here each side of an FFT is one pass (`gate_pad`, `unpad_skip`, `grad_pad`,
`unpad_grad`), and the gate gradients are written straight into the shared gradient buffer. The
short conv is the kernels' one-pass version too. Tensors are [B, L, ·] with one batch axis.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.kernels import load, short_conv_backward, short_conv_forward


def block(t: Tensor, j: int, d: int) -> Tensor:
    """Channel block j of a [B, L, (N+1)·d] tensor: a strided view (x^0 … x^{N−1}, then v); the
    torch path (models/hyena/fused.py) reads its blocks with this too."""
    return t[..., j * d:(j + 1) * d]


def forward(u: Tensor, wt: Tensor, sbias: Tensor | None, k: Tensor, D: Tensor, pad: int
            ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """(y, s, Ks, saved): y = x^0 ⊙ c_{N−2} [B, L, d]; s the short conv's output
    [B, L, (N+1)·d]; Ks the kernels' spectra; saved (zin, Z, z) per step, as `_GatedConv` keeps."""
    K = load()
    N, d, n = k.shape[0] + 1, D.shape[-1], k.shape[-1]
    D = D.contiguous()  # [N−1, d]: each row is read as one [d] vector
    s = short_conv_forward(u, wt, sbias, pad)  # [B, L, (N+1)·d]
    Ks = [torch.fft.rfft(k[o], n=n) for o in range(N - 1)]  # [d, n//2+1] each
    z, y, saved = block(s, N, d), None, []
    for o in range(N - 1):
        zin, buf = K.gate_pad(z, block(s, N - 1 - o, d), n)  # [B, L, d], zinᵀ padded [B, d, n]
        Z = torch.fft.rfft(buf)  # [B, d, n//2+1]
        last = o == N - 2
        z, y = K.unpad_skip(torch.fft.irfft(Z * Ks[o], n=n), zin, D[o], block(s, 0, d) if last else None)
        saved += [zin, Z, z]
    return y, s, Ks, saved


def backward(gy: Tensor, u: Tensor, wt: Tensor, s: Tensor, D: Tensor, Ks: list[Tensor], saved: list[Tensor],
             pad: int, needs: tuple[bool, ...], has_bias: bool) -> tuple[Tensor | None, ...]:
    """(∂u, ∂wt, ∂bias, ∂k, ∂D) for the incoming gradient gy [B, L, d] (None where not needed)."""
    K = load()
    N, d = len(Ks) + 1, D.shape[-1]
    D = D.contiguous()
    n = 2 * (Ks[0].shape[-1] - 1)
    need_u, need_w, need_b, need_k, need_D = needs[:5]
    gs = torch.empty_like(s)  # [B, L, (N+1)·d]: every block's gradient, written in place
    gks: list[Tensor] = [None] * (N - 1)  # type: ignore[list-item]
    gDs: list[Tensor] = [None] * (N - 1)  # type: ignore[list-item]
    gz = gy
    for o in reversed(range(N - 1)):
        zin, Z = saved[3 * o], saved[3 * o + 1]
        if o == N - 2:  # gz = gy ⊙ x^0, and ∂x^0 = gy ⊙ c_{N−2} on the way
            gbuf, gDs[o] = K.grad_pad(gy, block(s, 0, d), saved[-1], block(gs, 0, d), zin, n)
        else:
            gbuf, gDs[o] = K.grad_pad(gz, None, None, None, zin, n)
        G = torch.fft.rfft(gbuf)  # [B, d, n//2+1]
        if need_k:
            GZ = G[0] * Z[0].conj() if G.shape[0] == 1 else torch.linalg.vecdot(Z, G, dim=0)
            gks[o] = torch.fft.irfft(GZ, n=n)
        prev = block(s, N, d) if o == 0 else saved[3 * o - 1]  # what the gate multiplied
        gz = block(gs, N, d) if o == 0 else torch.empty_like(zin)  # ∂v, or the next step's gz
        K.unpad_grad(torch.fft.irfft(G * Ks[o].conj(), n=n), gbuf, D[o], prev, block(s, N - 1 - o, d),
                     block(gs, N - 1 - o, d), gz)
    gu, gw, gb = short_conv_backward(gs, u, wt, pad, need_u, need_w, has_bias and need_b)
    gk = torch.stack(gks) if need_k else None
    gD = torch.stack(gDs) if need_D else None
    return gu, gw, gb, gk, gD
