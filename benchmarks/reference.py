"""The straightforward reference the benchmarks compare against: safari's algorithm, written
here from science.md ("Hyena operator") and Poli et al. 2023 ("Hyena Hierarchy", Alg. 1-3).

- FFT size exactly 2L (`torch.fft.rfft(n=2L)`), channels-first [b, d, L] as safari rearranges;
- the implicit filter re-materialized on every call (positional embedding → FFN with Sin →
  exponential window), no caching of anything;
- the short depthwise conv as `nn.Conv1d` (padding, then the first L outputs);
- autograd through every op (no hand-written backward);
- AdamW as a per-parameter loop (the arithmetic of `torch.optim.AdamW(foreach=False)`, the
  default on CPU), without torch.optim's own Python overhead.

It reads the parameters of a `HyenaOperator` / `HyenaLM`, so the same weights give the same
function: tests/test_benchmarks.py checks the reference against our operator to 1e-5. That
check is what keeps the benchmark's ratios honest.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from models.hyena.filters import HyenaFilter
from models.hyena.operator import HyenaOperator


def reference_filter(f: HyenaFilter, L: int) -> Tensor:
    """h_t = Window(t) · FFN(PosEmb(t)) for t < L, [L, channels] (Hyena eq. 7)."""
    z, t = f.pos_emb.z[:, :L], f.pos_emb.t[:, :L]
    h = f.implicit_filter(z)
    mod = f.modulation
    if mod.modulate:
        h = h * (torch.exp(-t * mod.deltas.abs()) + mod.shift)
    if f.normalized:
        h = h / torch.norm(h, dim=-1, p=1, keepdim=True)
    return h[0]


def fftconv_ref(u: Tensor, k: Tensor, D: Tensor, k_rev: Tensor | None = None) -> Tensor:
    """safari's FFT convolution: u [b, d, L], k [d, L] (lag 0 first), FFT size 2L."""
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) / n
    if k_rev is not None:
        k_f = k_f + torch.fft.rfft(k_rev, n=n).conj() / n
    u_f = torch.fft.rfft(u, n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return y + u * D.unsqueeze(-1)


class ReferenceHyenaOperator(nn.Module):
    """Gate then convolve (science.md), with the submodules (and so the parameters) of `op`."""

    def __init__(self, op: HyenaOperator):
        super().__init__()
        self.d_model, self.order, self.causal = op.d_model, op.order, op.causal
        self.in_proj, self.out_proj, self.short_filter = op.in_proj, op.out_proj, op.short_filter
        self.filter_fn = op.filter_fn
        if not op.causal:
            self.filter_fn_rev = op.filter_fn_rev
        self.dropout, self.activation = op.dropout, op.activation

    def _orders(self, h: Tensor) -> Tensor:
        L = h.shape[0]
        # HyenaOperator's channel layout: channel c·(N−1)+o is order step o
        return h.reshape(L, self.d_model, self.order - 1).permute(2, 1, 0)

    def forward(self, u: Tensor) -> Tensor:
        L, d, N = u.shape[-2], self.d_model, self.order
        z = self.in_proj(u).transpose(1, 2)  # b d l
        uc = self.short_filter(z)[..., :L]
        *x, v = uc.split(d, dim=1)
        k = self._orders(reference_filter(self.filter_fn, L))
        k_rev = None
        if not self.causal:
            k_rev = self._orders(reference_filter(self.filter_fn_rev, L))
            k_rev = torch.cat([torch.zeros_like(k_rev[..., :1]), k_rev[..., 1:]], dim=-1)
        bias = self.filter_fn.skip_bias().reshape(d, N - 1).t()
        for o, x_i in enumerate(reversed(x[1:])):
            v = self.dropout(v * x_i)
            v = fftconv_ref(v, k[o], bias[o], None if k_rev is None else k_rev[o])
        y = (v * x[0]).transpose(1, 2)
        return self.out_proj(self.activation(y))


def reference_lm(model: nn.Module) -> nn.Module:
    """A copy of a HyenaLM whose mixers are `ReferenceHyenaOperator`s (same weights, no hooks
    inside the mixer, as in safari); everything else is HyenaLM's own code."""
    ref = copy.deepcopy(model)
    for block in ref.blocks:
        block.mixer = ReferenceHyenaOperator(block.mixer)
    return ref


class ReferenceAdamW:
    """AdamW as a loop over parameters: the arithmetic of torch.optim.AdamW(foreach=False)."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(g, lr=lr) for g in groups]
        self.betas, self.eps, self.step_count = betas, eps, 0
        self.state: dict[int, tuple[Tensor, Tensor]] = {}

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bc1 = 1 - beta1 ** self.step_count
        bc2_sqrt = math.sqrt(1 - beta2 ** self.step_count)
        for g in self.param_groups:
            lr, wd = g["lr"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if id(p) not in self.state:
                    self.state[id(p)] = (torch.zeros_like(p), torch.zeros_like(p))
                m, v = self.state[id(p)]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
                p.addcdiv_(m, denom, value=-(lr / bc1))
