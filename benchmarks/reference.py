"""The reference the benchmarks compare against: safari's whole training step, written here from
science.md ("Hyena operator"), Poli et al. 2023 ("Hyena Hierarchy", Alg. 1-3) and safari's
`SimpleLMHeadModel`, with nothing of HyenaLens's model code in it:

- the operator: FFT size exactly 2L (`torch.fft.rfft(n=2L)`), channels-first [b, d, L] as safari
  rearranges, the implicit filter re-materialized on every call through its own modules
  (positional embedding → Linear/Sin FFN → exponential window), no caching of anything, the
  short depthwise conv as `nn.Conv1d`, autograd through every op;
- the block as safari's: dropout → add → `nn.LayerNorm` → mixer → dropout → add → `nn.LayerNorm`
  → MLP (`nn.Linear` → `nn.GELU(approximate="tanh")` → `nn.Linear`), the residual carried
  beside the hidden state; `nn.Embedding`, a final `nn.LayerNorm` and a tied `nn.Linear` head;
- `torch.optim.AdamW` (on CPU its default is the per-parameter loop).

`ReferenceLM(model)` copies the weights of a `HyenaLM` (clones: the two share no tensors), so
the same weights give the same function: tests/test_benchmarks.py checks logits, gradients and
two optimizer steps against ours to 1e-5. That check is what keeps the ratios honest.
`ReferenceAdamW` (the per-parameter loop without torch.optim's overhead) is kept for the
optimizer lever.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor


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


def _param(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)


def _linear(src: nn.Module) -> nn.Linear:
    """A fresh nn.Linear holding a copy of `src`'s weight and bias."""
    lin = nn.Linear(src.weight.shape[1], src.weight.shape[0], bias=src.bias is not None)
    lin.weight = _param(src.weight)
    if src.bias is not None:
        lin.bias = _param(src.bias)
    return lin


class RefSin(nn.Module):
    """sin(freq ⊙ x), one frequency shared by every FFN layer of a filter (safari's `Sin`)."""

    def __init__(self, freq: Tensor):
        super().__init__()
        self.freq = _param(freq)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class RefFilter(nn.Module):
    """safari's `HyenaFilter`: h_t = Window(t) · FFN(PosEmb(t)), [L, channels], every call."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.register_buffer("t", f.pos_emb.t.detach().clone())
        z = f.pos_emb.z
        if isinstance(z, nn.Parameter):
            self.z = _param(z)
        else:
            self.register_buffer("z", z.detach().clone())
        layers = list(f.implicit_filter)
        sin = RefSin(layers[1].freq)
        self.ffn = nn.Sequential(*[sin if isinstance(m, type(layers[1])) else _linear(m) for m in layers])
        mod = f.modulation
        self.modulate, self.shift, self.normalized = mod.modulate, mod.shift, f.normalized
        if isinstance(mod.deltas, nn.Parameter):
            self.deltas = _param(mod.deltas)
        else:
            self.register_buffer("deltas", mod.deltas.detach().clone())
        if hasattr(f, "bias"):
            self.bias = _param(f.bias)
            self.use_bias = f.use_bias

    def forward(self, L: int) -> Tensor:
        h = self.ffn(self.z[:, :L])
        if self.modulate:
            h = h * (torch.exp(-self.t[:, :L] * self.deltas.abs()) + self.shift)
        if self.normalized:
            h = h / torch.norm(h, dim=-1, p=1, keepdim=True)
        return h[0]

    def skip(self) -> Tensor:
        return self.bias if self.use_bias else 0 * self.bias


class ReferenceHyenaOperator(nn.Module):
    """Gate then convolve (science.md), safari's module path, on copies of `op`'s weights."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.d_model, self.order, self.causal = op.d_model, op.order, op.causal
        self.in_proj, self.out_proj = _linear(op.in_proj), _linear(op.out_proj)
        sf = op.short_filter
        self.short_filter = nn.Conv1d(sf.in_channels, sf.out_channels, sf.kernel_size[0], groups=sf.groups,
                                      padding=sf.padding[0], bias=sf.bias is not None)
        self.short_filter.weight = _param(sf.weight)
        if sf.bias is not None:
            self.short_filter.bias = _param(sf.bias)
        self.filter_fn = RefFilter(op.filter_fn)
        if not op.causal:
            self.filter_fn_rev = RefFilter(op.filter_fn_rev)
        self.dropout = nn.Dropout(op.dropout.p)
        self.activation = copy.deepcopy(op.activation)  # a parameter-free nn module (nn.Identity by default)

    def _orders(self, h: Tensor) -> Tensor:
        L = h.shape[0]
        # safari's channel layout: channel c·(N−1)+o is order step o
        return h.reshape(L, self.d_model, self.order - 1).permute(2, 1, 0)

    def forward(self, u: Tensor) -> Tensor:
        L, d, N = u.shape[-2], self.d_model, self.order
        z = self.in_proj(u).transpose(1, 2)  # b d l
        uc = self.short_filter(z)[..., :L]
        *x, v = uc.split(d, dim=1)
        k = self._orders(self.filter_fn(L))
        k_rev = None
        if not self.causal:
            k_rev = self._orders(self.filter_fn_rev(L))
            k_rev = torch.cat([torch.zeros_like(k_rev[..., :1]), k_rev[..., 1:]], dim=-1)
        bias = self.filter_fn.skip().reshape(d, N - 1).t()
        for o, x_i in enumerate(reversed(x[1:])):
            v = self.dropout(v * x_i)
            v = fftconv_ref(v, k[o], bias[o], None if k_rev is None else k_rev[o])
        y = (v * x[0]).transpose(1, 2)
        return self.out_proj(self.activation(y))


class RefBlock(nn.Module):
    """safari's prenorm `Block`: returns (hidden, residual)."""

    def __init__(self, block: nn.Module, dropout1: float):
        super().__init__()
        self.dropout1 = nn.Dropout(dropout1)
        self.norm1, self.norm2 = _layer_norm(block.ln1), _layer_norm(block.ln2)
        self.mixer = ReferenceHyenaOperator(block.mixer)
        self.dropout2 = nn.Dropout(block.drop_mlp.p)
        self.mlp = nn.Sequential(_linear(block.mlp.fc1), nn.GELU(approximate="tanh"), _linear(block.mlp.fc2))

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        dropped = self.dropout1(hidden)
        residual = dropped + residual if residual is not None else dropped
        hidden = self.mixer(self.norm1(residual))
        residual = self.dropout2(hidden) + residual
        return self.mlp(self.norm2(residual)), residual


def _layer_norm(ln: nn.Module) -> nn.LayerNorm:
    out = nn.LayerNorm(ln.weight.shape[0], eps=ln.eps)
    out.weight, out.bias = _param(ln.weight), _param(ln.bias)
    return out


class ReferenceLM(nn.Module):
    """safari's `SimpleLMHeadModel` (Hyena layers, no position embeddings) on copies of a
    HyenaLM's weights. Embedding dropout is the first block's `dropout1`, as in safari."""

    def __init__(self, model: nn.Module):
        super().__init__()
        cfg = model.cfg
        if cfg.max_position_embeddings > 0:
            raise ValueError("the reference has no position embeddings (safari's synthetics use none)")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed.weight = _param(model.embed.weight)
        self.layers = nn.ModuleList(RefBlock(b, cfg.embed_dropout if i == 0 else cfg.resid_dropout)
                                    for i, b in enumerate(model.blocks))
        self.drop_f = nn.Dropout(cfg.resid_dropout)
        self.ln_f = _layer_norm(model.ln_final)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as safari's tie_weights

    def forward(self, tokens: Tensor) -> Tensor:
        hidden, residual = self.embed(tokens), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = self.drop_f(hidden) + residual
        return self.lm_head(self.ln_f(residual))


def reference_param_groups(model: ReferenceLM, weight_decay: float) -> list[dict[str, Any]]:
    """safari's groups: weight decay on matrices, none on biases, norms, vectors and the implicit
    filters (safari registers their tensors with wd 0)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "filter_fn" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def reference_optimizer(model: ReferenceLM, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """`torch.optim.AdamW` over safari's groups (imports torch._dynamo: seconds, once)."""
    return torch.optim.AdamW(reference_param_groups(model, weight_decay), lr=lr)


class ReferenceAdamW:
    """AdamW as a loop over parameters: the arithmetic of torch.optim.AdamW(foreach=False),
    without torch.optim's Python overhead (the optimizer lever's baseline)."""

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
