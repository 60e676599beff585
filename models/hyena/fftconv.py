"""The two convolutions of the Hyena operator, written for speed on CPU (and correct on CUDA).

science.md, "Hyena operator": a short depthwise convolution (kernel 3, left-padded when causal,
centered otherwise) and, per order step, a long convolution `h ∗ z + D ⊙ z` computed by FFT as a
*linear* convolution (FFT size ≥ 2L−1, first L outputs kept; Poli et al. 2023, "Hyena
Hierarchy", Sec. 3.3). Both are custom autograd Functions because the generic paths are slow
where it matters (measured in BENCHMARKS.md):

- torch's backward of `rfft(x, n)` runs a complex-to-complex FFT over the zero-padded signal; the
  adjoint written here needs one real FFT of the incoming gradient and two inverse ones;
- `nn.Conv1d`'s depthwise backward (oneDNN) is about 3x slower than three shifted multiply-adds
  in the [batch, L, channels] layout the operator already has, and that layout needs no
  transposes.

Layouts: activations are [batch, L, channels] as the hooks see them; the FFT runs along L on a
transposed view, so no rearrange copies are made beyond the zero padding the FFT needs.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


_FAST_PRIMES = (2, 3, 5, 7, 11, 13)


@lru_cache(maxsize=None)
def fft_size(L: int) -> int:
    """The smallest even n ≥ 2L−1 with no prime factor above 13.

    n ≥ 2L−1 keeps the circular convolution from wrapping (lags 0…L−1 and −1…−(L−1) fit side
    by side). This is 2L itself, safari's size, whenever 2L has only small prime factors (then
    the rounding also matches safari's `fftconv_ref` on its fixtures); otherwise a nearby fast
    length: L = 67 → 140 instead of 134 = 2·67 (measured 4.8x faster), L = 1021 → 2048.

    Not `scipy.fft.next_fast_len(2L−1, real=True)`: importing scipy.fft costs ~0.3 s per
    process, and its 5-smooth answer can be odd (135 for L = 66), which torch's MKL backend
    transforms 1.4x slower than 132 = 2L. The even 5-smooth 144 was faster for L = 66 but moved
    the safari fixture's logits to 1.4e-5 from safari's (the parity bound is 1e-5).
    """
    n = max(2 * L - 1, 2)
    n += n % 2
    while True:
        m = n
        for p in _FAST_PRIMES:
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


def circular_kernel(h: Tensor, h_rev: Tensor | None, n: int) -> Tensor:
    """[..., L] lags → one circular kernel [..., n]: lag k at index k, lag −l at index n − l.

    h_rev[..., l] is lag −l (index 0 is zero by contract; if not, it adds to lag 0, as
    `rfft(h) + conj(rfft(h_rev))` would)."""
    L = h.shape[-1]
    k = F.pad(h, (0, n - L))
    if h_rev is not None:
        k = k + torch.roll(F.pad(h_rev.flip(-1), (n - L, 0)), 1, dims=-1)
    return k


def _conv_fwd(z: Tensor, K: Tensor, D: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """y = irfft(rfft(z) · K)[:L] + D ⊙ z along dim −2 of z [b, L, d]; also returns rfft(z)."""
    L = z.shape[-2]
    Z = torch.fft.rfft(z.transpose(-1, -2), n=n)  # [b, d, n//2+1]
    y = torch.fft.irfft(Z * K, n=n)[..., :L]
    return _addcmul_rows(y.transpose(-1, -2), z, D), Z


def _addcmul_rows(yt: Tensor, z: Tensor, D: Tensor) -> Tensor:
    """yt + z ⊙ D, laid out like z ([b, L, d] rows). Left to itself, addcmul follows yt's
    transposed strides, and every elementwise op downstream (gates, the split's backward cat)
    then runs 5-10x slower on the mixed layouts (measured at L = 8192)."""
    return torch.addcmul(yt, z, D, out=torch.empty_like(z, memory_format=torch.contiguous_format))


class _FFTConv(torch.autograd.Function):
    """out = k ⊛ z (linear, via FFT of size n) + D ⊙ z, with a hand-written adjoint:
    ∂z = irfft(G · conj K)[:L] + D ⊙ g,  ∂k = irfft(Σ_b G · conj Z),  ∂D = Σ g ⊙ z,
    where G = rfft(g, n). Valid because n ≥ 2L − 1 (no wrap-around either way)."""

    @staticmethod
    def forward(ctx, z: Tensor, k: Tensor, D: Tensor, n: int) -> Tensor:
        K = torch.fft.rfft(k, n=n)
        out, Z = _conv_fwd(z, K, D, n)
        ctx.save_for_backward(z, D, Z, K)
        ctx.n, ctx.k_dim = n, k.dim()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        z, D, Z, K = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (*fft_conv_backward(g, z, Z, K, D, ctx.n, ctx.k_dim, need[0], need[1], need[2]), None)


def fft_conv_backward(g: Tensor, z: Tensor, Z: Tensor, K: Tensor, D: Tensor, n: int, k_dim: int, need_z: bool,
                      need_k: bool, need_D: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(∂z, ∂k, ∂D) of `_conv_fwd` for the incoming gradient g [b, L, d] (None where not
    needed): Z = rfft(z) and K = rfft(k) as the forward made them, k of `k_dim` dims."""
    L = z.shape[-2]
    G = torch.fft.rfft(g.transpose(-1, -2), n=n)
    gz = gk = gD = None
    if need_z:
        gz = _addcmul_rows(torch.fft.irfft(G * K.conj(), n=n)[..., :L].transpose(-1, -2), g, D)
    if need_k:
        lead = G.dim() - k_dim
        if lead == 1 and G.shape[0] == 1:  # one sequence: a product, no reduction (0.26x)
            G, Z, lead = G[0], Z[0], 0
        GZ = G * Z.conj() if lead == 0 else torch.linalg.vecdot(Z, G, dim=0) if lead == 1 \
            else (G * Z.conj()).sum(tuple(range(lead)))
        gk = torch.fft.irfft(GZ, n=n)
    if need_D:
        gD = (g * z).sum(tuple(range(g.dim() - 1)))
    return gz, gk, gD


def fft_conv(z: Tensor, D: Tensor, k: Tensor | None = None, spectrum: Tensor | None = None) -> Tensor:
    """Long convolution of z [b, L, d] with one circular kernel per channel, plus D ⊙ z.

    Give either `k` [d, n] (time domain, from `circular_kernel`; differentiable) or its
    `spectrum` rfft(k) [d, n//2+1] (precomputed, e.g. cached in eval; no gradient to it).
    """
    if spectrum is not None:
        n = 2 * (spectrum.shape[-1] - 1)
        return _conv_fwd(z, spectrum, D, n)[0]
    return _FFTConv.apply(z, k, D, k.shape[-1])


class _ShortConv(torch.autograd.Function):
    """Depthwise conv along L in the [b, L, C] layout: out[t] = bias + Σ_m wt[m] z[t + m − pad]
    (zero outside 0…L−1), wt [k, C] the tap-major weight; `nn.Conv1d(padding=pad)` then
    `[..., :L]`, as shifted multiply-adds."""

    @staticmethod
    def forward(ctx, z: Tensor, wt: Tensor, bias: Tensor | None, pad: int) -> Tensor:
        ctx.save_for_backward(z, wt)
        ctx.pad, ctx.has_bias = pad, bias is not None
        return _short_fwd(z, wt, bias, pad)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        z, wt = ctx.saved_tensors
        return (*short_conv_backward(g, z, wt, ctx.pad, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                     ctx.has_bias and ctx.needs_input_grad[2]), None)


def short_conv_backward(g: Tensor, z: Tensor, wt: Tensor, pad: int, need_z: bool, need_w: bool,
                        need_b: bool, buf: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(∂z, ∂wt, ∂bias) of `_short_fwd` for the incoming gradient g [b, L, C] (None where not
    needed); wt [k, C] tap-major, as `_short_fwd` reads it. `buf`: scratch like g, reused
    if given (its contents are overwritten)."""
    L, k = z.shape[-2], wt.shape[0]
    gz = gw = gb = None
    if need_z:
        # out[t] += w_m z[t+s]  ⇒  gz[t+s] += w_m g[t]
        gz = g * wt[pad] if 0 <= pad < k else torch.zeros_like(z)
        for m, a, b, s in _taps(k, pad, L):
            gz[..., a + s:b + s, :].addcmul_(g[..., a:b, :], wt[m])
    if need_w:
        red = tuple(range(g.dim() - 1))
        gw = torch.zeros_like(wt)
        buf = torch.empty_like(g) if buf is None else buf  # one scratch tensor for every tap's products
        for m in range(k):
            s = m - pad
            a, b = max(0, -s), min(L, L - s)
            if a < b:
                torch.mul(g[..., a:b, :], z[..., a + s:b + s, :], out=buf[..., a:b, :])
                # zero the rows the tap misses and sum the whole contiguous buffer:
                # a sum over the strided slice is 10x slower (measured)
                buf[..., :a, :].zero_()
                buf[..., b:, :].zero_()
                gw[m] = buf.sum(red)
    if need_b:
        gb = g.sum(tuple(range(g.dim() - 1)))
    return gz, gw, gb


def _taps(k: int, pad: int, L: int):
    """(tap m, output rows a:b, shift s) of every off-centre tap that touches the sequence."""
    for m in range(k):
        s = m - pad
        a, b = max(0, -s), min(L, L - s)
        if s != 0 and a < b:
            yield m, a, b, s


def _short_fwd(z: Tensor, wt: Tensor, bias: Tensor | None, pad: int) -> Tensor:
    """wt [k, C]: tap-major and contiguous. A strided [C] weight row (w[:, m] of the
    conv's [C, k]) drops addcmul off its vectorized path, 5x slower (measured, L=64 b=32)."""
    L, k = z.shape[-2], wt.shape[0]
    if 0 <= pad < k:
        out = z * wt[pad] if bias is None else torch.addcmul(bias, z, wt[pad])
    else:
        out = torch.zeros_like(z) if bias is None else bias.expand_as(z).clone()
    for m, a, b, s in _taps(k, pad, L):
        out[..., a:b, :].addcmul_(z[..., a + s:b + s, :], wt[m])
    return out


def short_conv(z: Tensor, weight: Tensor, bias: Tensor | None, pad: int) -> Tensor:
    """Depthwise conv of z [b, L, C] with `weight` [C, 1, k] (an nn.Conv1d's), left padding `pad`."""
    wt = weight.reshape(weight.shape[0], weight.shape[-1]).t().contiguous()  # [k, C] (see _short_fwd)
    if torch.is_grad_enabled() and (z.requires_grad or wt.requires_grad or (bias is not None and bias.requires_grad)):
        return _ShortConv.apply(z, wt, bias, pad)
    return _short_fwd(z, wt, bias, pad)
