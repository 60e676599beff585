"""Hyena's implicit long filter (Poli et al. 2023, "Hyena Hierarchy", Sec. 3.3, eq. 7).

h_t = Window(t) · FFN(PositionalEncoding(t)), with Sin activations of a learnable shared
frequency and an exponential-decay window. Module and parameter names follow safari's
`HyenaFilter` so that safari state dicts load key for key (science.md, "Hyena operator").
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable


class Sin(nn.Module):
    """sin(w ⊙ x) with a learnable frequency w. One instance is shared by every FFN layer."""

    def __init__(self, dim: int, w: float = 10.0, train_freq: bool = True):
        super().__init__()
        freq = w * torch.ones(1, dim)
        if train_freq:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class _LinearSin(torch.autograd.Function):
    """s = sin(w ⊙ (x Aᵀ + b)): a Linear, then `Sin`, with a hand-written adjoint.

    The forward is safari's arithmetic (so parity holds to the last bit of the argument).
    The backward moves the frequency's chain rule onto [order, in] matrices: with
    gc = g ⊙ cos(w ⊙ pre) and M = gcᵀ x,
      ∂x = gc (w ⊙ A),  ∂A = w ⊙ M,  ∂b = w ⊙ Σ_l gc,  ∂w = Σ_i M ⊙ A + b ⊙ Σ_l gc,
    where autograd would run three more passes over [L, order] (g ⊙ w, g ⊙ pre and its sum).
    """

    @staticmethod
    def forward(ctx, x: Tensor, A: Tensor, b: Tensor | None, w: Tensor) -> Tensor:
        pre = torch.addmm(b, x, A.t()) if b is not None else x @ A.t()
        arg = pre * w
        ctx.save_for_backward(x, A, b, w, arg)
        return torch.sin(arg)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x, A, b, w, arg = ctx.saved_tensors
        gc = torch.cos(arg).mul_(g)  # [L, order]
        colsum = gc.sum(0)
        M = gc.t() @ x  # [order, in]
        gx = gc @ (A * w[:, None]) if ctx.needs_input_grad[0] else None
        gw = (M * A).sum(1)
        if b is not None:
            gw = gw + b * colsum
        gb = colsum * w if b is not None else None
        return gx, M * w[:, None], gb, gw


def linear_sin(x: Float[Tensor, "L i"], A: Float[Tensor, "o i"], b: Tensor | None,
               w: Float[Tensor, " o"]) -> Float[Tensor, "L o"]:
    """sin(w ⊙ (x Aᵀ + b)), i.e. `Sin(w)(Linear(A, b)(x))`, with fewer backward passes."""
    return _LinearSin.apply(x, A, b, w)


class PositionalEmbedding(nn.Module):
    """z_t = [t, Re e^{-i f w_t}, Im e^{-i f w_t}] with (emb_dim−1)//2 bands (Hyena eq. 7).

    `z` is a parameter, or a buffer when `lr_pos_emb == 0` (safari's `OptimModule.register`).
    """

    def __init__(self, emb_dim: int, seq_len: int, lr_pos_emb: float = 1e-5):
        super().__init__()
        self.seq_len = seq_len
        t = torch.linspace(0, 1, seq_len)[None, :, None]  # [1, L, 1], normalized time
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len  # [1, L, 1]
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]  # [1, 1, bands]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)  # [1, L, emb_dim]
        if lr_pos_emb == 0.0:
            self.register_buffer("z", z)
        else:
            self.z = nn.Parameter(z)
        self.register_buffer("t", t)

    def forward(self, L: int) -> tuple[Tensor, Tensor]:
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    """Window(t) = exp(−|δ_c| t) + shift, with decay rates δ spread over the channels."""

    def __init__(
        self,
        d_model: int,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        modulation_lr: float = 0.0,
        modulate: bool = True,
        shift: float = 0.0,
    ):
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        deltas = torch.linspace(min_decay, max_decay, d_model)[None, None]  # [1, 1, d]
        if modulation_lr == 0.0:
            self.register_buffer("deltas", deltas)
        else:
            self.deltas = nn.Parameter(deltas)
        self._cached_window: tuple[Tensor, Tensor, Tensor] | None = None  # (δ, t, window)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if not self.modulate:
            return x
        decay = torch.exp(-t * self.deltas.abs())
        return x * (decay + self.shift)

    def forward_t(self, t: Tensor, x: Float[Tensor, "d L"]) -> Float[Tensor, "d L"]:
        """`forward` for a channels-first x = h.T (t as `PositionalEmbedding` gives it)."""
        if not self.modulate:
            return x
        return x * self.window_t(t)

    def window_t(self, t: Tensor) -> Float[Tensor, "d L"]:
        """exp(−|δ| t) + shift, channels first, the same products as `forward`.

        With δ and t buffers (safari's default, modulation_lr = 0) the window is a constant:
        it is kept after the first call and handed out again while δ and t are equal, by
        content, to what it was made from (a `.data` write or a reloaded state dict misses).
        At L = 8192 that saves an exp and two passes over [d, L] per layer and step."""
        if self.deltas.requires_grad or t.requires_grad:
            return self._window(t)
        hit = self._cached_window
        # torch.equal ignores dtype (and needs one device), so those are compared first
        if hit is not None and hit[2].dtype == t.dtype and hit[2].device == t.device \
                and torch.equal(hit[0], self.deltas) and torch.equal(hit[1], t):
            return hit[2]
        # normal tensors even under inference_mode: the window is reused when training later
        with torch.inference_mode(False), torch.no_grad():
            window = self._window(t.clone() if t.is_inference() else t)
            self._cached_window = (self.deltas.detach().clone(), t.detach().clone(), window)
        return window

    def _window(self, t: Tensor) -> Tensor:
        decay = torch.exp(-t[0, :, 0] * self.deltas[0, 0, :, None].abs())  # [d, L]
        return decay + self.shift if self.shift != 0 else decay  # + 0.0 is exact: skipped


class HyenaFilter(nn.Module):
    """The implicit filter of one direction: L lags for `d_out` channels.

    `bias` is the per-channel D of the `D ⊙ z` skip term (science.md); the backward filter
    of a non-causal operator has none, because lag 0 belongs to the forward filter.
    """

    def __init__(
        self,
        d_out: int,
        seq_len: int,
        emb_dim: int = 3,
        order: int = 16,
        w: float = 1.0,
        num_inner_mlps: int = 2,
        lr_pos_emb: float = 1e-5,
        normalized: bool = False,
        bias: bool = True,
        with_bias_param: bool = True,
        **modulation_kwargs,
    ):
        super().__init__()
        if emb_dim % 2 == 0 or emb_dim < 3:
            raise ValueError(f"emb_dim must be odd and >= 3 (time, cos and sin bands), got {emb_dim}")
        self.d_out = d_out
        self.use_bias = bias
        self.normalized = normalized
        if with_bias_param:
            self.bias = nn.Parameter(torch.randn(d_out))
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len, lr_pos_emb)
        act = Sin(order, w=w)  # shared by every layer, as in safari
        layers: list[nn.Module] = [nn.Linear(emb_dim, order), act]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(order, order), act]
        layers.append(nn.Linear(order, d_out, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d_out, **modulation_kwargs)

    def filter(self, L: int) -> Float[Tensor, "L d_out"]:
        """safari's path, module by module. The operator uses `filter_t`, the same function."""
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)  # [1, L, d_out]
        h = self.modulation(t, h)
        if self.normalized:
            # safari normalizes over the channel axis (dim −1), not over lags; kept for parity
            h = h / torch.norm(h, dim=-1, p=1, keepdim=True)
        return h[0]

    def filter_t(self, L: int) -> Float[Tensor, "d_out L"]:
        """`filter(L).T`, lags contiguous (the layout the FFT reads), in fewer passes: each
        Linear → Sin pair is one `linear_sin`, and the last Linear writes [d_out, L] directly,
        with no transposed copy before the FFT's zero padding."""
        z, t = self.pos_emb(L)
        layers = list(self.implicit_filter)
        x = z[0]  # [L, emb_dim]
        for lin, act in zip(layers[0:-1:2], layers[1:-1:2]):
            x = linear_sin(x, lin.weight, lin.bias, act.freq[0])  # [L, order]
        last = layers[-1]
        h = torch.mm(last.weight, x.t())  # [d_out, L]
        if last.bias is not None:
            h = h + last.bias[:, None]
        h = self.modulation.forward_t(t, h)
        if self.normalized:
            h = h / torch.norm(h, dim=0, p=1, keepdim=True)
        return h

    def skip_bias(self) -> Tensor:
        """D, or zeros when `bias=False` (safari multiplies it by 0 rather than dropping it)."""
        return self.bias if self.use_bias else 0 * self.bias
