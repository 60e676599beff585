"""`HyenaLM`: safari's `lm_simple` (SimpleLMHeadModel) as a TransformerLens HookedRootModule.

    x = embed(tokens) [+ pos_embed]            hook_embed
    for each block:                            blocks.{l}.hook_resid_pre
        x = x + drop(mixer(ln1(x)))            hook_mixer_out, hook_resid_mid
        x = x + drop(mlp(ln2(x)))              hook_mlp_out, hook_resid_post
    logits = ln_final(x) @ embed.weightᵀ       tied head

This is safari's pre-norm block rewritten in the usual residual form: safari's dropout-add-norm
ordering computes the same stream. The MLP is Linear → GELU(tanh) → Linear with d_inner.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from models.config.model import HyenaConfig  # defined with the run configs (torch-free); re-exported
from models.hyena.hooks import hook_idle, lm_hook_names, split_caching_hooks
from models.hyena.operator import HyenaOperator
from models.safari.conversion import lm_config_from_safari, lm_state_from_safari
from models.safari.conversion import load_aligned


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens' `hook_normalized` (after centering and scaling,
    before the affine map); parameters named as nn.LayerNorm's for safari keys."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.hook_normalized = HookPoint()  # [b, L, d]

    def forward(self, x: Float[Tensor, "b L d"]) -> Float[Tensor, "b L d"]:
        if hook_idle(self.hook_normalized):  # one fused kernel (2.5x faster fwd+bwd, BENCHMARKS.md)
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=self.eps)
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return torch.addcmul(self.bias, self.hook_normalized(x), self.weight)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.hook_pre = HookPoint()  # [b, L, d_inner]
        self.hook_post = HookPoint()  # [b, L, d_inner]

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(self.fc1(x))
        return self.fc2(self.hook_post(F.gelu(pre, approximate="tanh")))


class HyenaBlock(nn.Module):
    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mixer = HyenaOperator(**cfg.operator_kwargs())
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg.d_model, cfg.d_inner)
        self.drop_mixer = nn.Dropout(cfg.resid_dropout)
        self.drop_mlp = nn.Dropout(cfg.resid_dropout)
        # the blocks.{l}. rows of models/hyena/hooks.py's HOOKS
        self.hook_resid_pre = HookPoint()  # [b, L, d]
        self.hook_mixer_out = HookPoint()  # [b, L, d]
        self.hook_resid_mid = HookPoint()  # [b, L, d]
        self.hook_mlp_out = HookPoint()  # [b, L, d]
        self.hook_resid_post = HookPoint()  # [b, L, d]

    def forward(self, x: Float[Tensor, "b L d"]) -> Float[Tensor, "b L d"]:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.drop_mixer(self.hook_mixer_out(self.mixer(self.ln1(x)))))
        return self.hook_resid_post(x + self.drop_mlp(self.hook_mlp_out(self.mlp(self.ln2(x)))))


def _init_weights(module: nn.Module, n_layers: int, std: float) -> None:
    """safari's GPT-2 init: N(0, std) linears and embeddings, zero biases, and the residual
    output projections (out_proj, fc2) scaled by 1/√(2·n_layers). Like safari, this also
    reaches the implicit filter's FFN layers."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    for child_name in ("out_proj", "fc2"):
        child = getattr(module, child_name, None)
        if isinstance(child, nn.Linear):
            nn.init.normal_(child.weight, std=std / math.sqrt(2 * n_layers))


class HyenaLM(HookedRootModule):
    """Hyena language model with TransformerLens hooks (see docs/architecture.md)."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()  # [b, L, d]
        if cfg.max_position_embeddings > 0:
            self.pos_embed = nn.Embedding(cfg.max_position_embeddings, cfg.d_model)
            self.hook_pos_embed = HookPoint()  # [L, d]: no batch axis
        self.drop_embed = nn.Dropout(cfg.embed_dropout)
        self.blocks = nn.ModuleList(HyenaBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.apply(partial(_init_weights, n_layers=cfg.n_layers, std=cfg.initializer_range))
        self.setup()

    def forward(self, tokens: Int[Tensor, "b L"]) -> Float[Tensor, "b L vocab"]:
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.max_position_embeddings > 0:
            pos = torch.arange(tokens.shape[-1], device=tokens.device)
            x = x + self.hook_pos_embed(self.pos_embed(pos))[None]
        x = self.drop_embed(x)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_final(x), self.embed.weight)  # tied head

    def hook_names(self) -> list[str]:
        """Every hook name, in forward order: models/hyena/hooks.py's `HOOKS` for this model."""
        c = self.cfg
        return lm_hook_names(c.n_layers, c.order, c.causal, learned_pos=c.max_position_embeddings > 0)

    # Filter hooks have no batch axis, and TL slices names ending in `hook_v` on dim −3 (its
    # attention layout); both are cached here by our own rule instead.
    def get_caching_hooks(self, names_filter=None, incl_bwd=False, device=None,
                          remove_batch_dim=False, cache=None, pos_slice=None):
        return split_caching_hooks(
            super().get_caching_hooks, self.hook_dict, names_filter, incl_bwd, device,
            remove_batch_dim, cache, pos_slice,
        )

    @classmethod
    def from_safari(cls, state_dict: dict[str, Tensor], model_config: dict[str, Any]) -> "HyenaLM":
        """Load a safari `SimpleLMHeadModel` state dict; `model_config` is the `model`
        section of safari's config. Keys are aligned with asserted shapes."""
        model = cls(lm_config_from_safari(model_config))
        load_aligned(model, lm_state_from_safari(state_dict), source="safari SimpleLMHeadModel")
        return model
