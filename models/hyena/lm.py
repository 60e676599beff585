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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from models.config.model import HyenaConfig  # defined with the run configs (torch-free); re-exported
from models.config.model import SYNTHETICS_DEFAULTS
from models.data.vocab import decode, encode, icl_vocab
from models.errors import UserError
from models.hyena.hooks import HyenaActivationCache, hook_idle, lm_hook_names, split_caching_hooks
from models.hyena.operator import HyenaOperator
from models.kernels import bias_gelu
from models.safari.conversion import lm_config_from_safari, lm_state_from_safari
from models.safari.conversion import load_aligned


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens' hooks: `hook_scale` (√(var + eps) per position, what
    ActivationCache's `apply_ln_to_stack` divides by) and `hook_normalized` (after centering
    and scaling, before the affine map); parameters named as nn.LayerNorm's for safari keys."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.hook_scale = HookPoint()  # [b, L, 1]
        self.hook_normalized = HookPoint()  # [b, L, d]

    def forward(self, x: Float[Tensor, "b L d"]) -> Float[Tensor, "b L d"]:
        if hook_idle(self.hook_scale) and hook_idle(self.hook_normalized):
            # one fused kernel (2.5x faster fwd+bwd, BENCHMARKS.md)
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=self.eps)
        if torch.is_grad_enabled() and x.requires_grad:  # gradients reach x through the scale too
            var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)  # [b, L, 1] each
            normalized = (x - mean) / self.hook_scale((var + self.eps).sqrt())
        else:  # no gradients (a cache, a patch): the fused kernel's own mean and 1/scale, ~4x cheaper
            normalized, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, self.eps)
            normalized = self._scaled_by_hook(x, normalized, mean, rstd.reciprocal())
        return torch.addcmul(self.bias, self.hook_normalized(normalized), self.weight)

    def _scaled_by_hook(self, x: Tensor, normalized: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        """Run `hook_scale` on `scale` [b, L, 1]; if a hook replaced or edited it, normalize by
        what it left, else keep `normalized`."""
        if hook_idle(self.hook_scale):
            return normalized
        before = scale.clone()  # [b, L, 1]: cheap; catches in-place edits
        hooked = self.hook_scale(scale)
        if hooked is scale and torch.equal(scale, before):
            return normalized
        return (x - mean) / hooked


class MLP(nn.Module):
    """fc1 → GELU-tanh → fc2. With `kernels="cpp"`, a training step (train mode, gradients on,
    both hooks idle) runs fc1's bias and the GELU as one compiled pass (models/kernels `bias_gelu`)."""

    def __init__(self, d_model: int, d_inner: int, kernels: str = SYNTHETICS_DEFAULTS["kernels"]):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.hook_pre = HookPoint()  # [b, L, d_inner]
        self.hook_post = HookPoint()  # [b, L, d_inner]
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels == "cpp" and self.training and torch.is_grad_enabled() and hook_idle(self.hook_pre) \
                and hook_idle(self.hook_post):
            return self.fc2(bias_gelu(x, self.fc1.weight, self.fc1.bias))
        pre = self.hook_pre(self.fc1(x))
        return self.fc2(self.hook_post(F.gelu(pre, approximate="tanh")))


class HyenaBlock(nn.Module):
    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mixer = HyenaOperator(**cfg.operator_kwargs())
        self.mixer.kernels = cfg.kernels  # not a safari operator argument: set after construction
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg.d_model, cfg.d_inner, cfg.kernels)
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


@dataclass(eq=False)
class HyenaLMConfig(HyenaConfig):
    """`HyenaLM.cfg`: the HyenaConfig's fields (and equal to it), plus the read-only names that
    TransformerLens' ActivationCache and tools read from `model.cfg`: `normalization_type`
    ("LN": centered LayerNorms with a cached `hook_scale`), `attn_only` (False: every block
    has an MLP), `final_rms`, `default_prepend_bos` (False: the synthetic vocabularies have
    no BOS), `d_mlp` (= d_inner), `d_vocab` (= vocab_size), `n_ctx` (= l_max), `eps`
    (= layer_norm_epsilon)."""

    normalization_type: ClassVar[str] = "LN"
    attn_only: ClassVar[bool] = False
    final_rms: ClassVar[bool] = False
    default_prepend_bos: ClassVar[bool] = False

    d_mlp = property(lambda self: self.d_inner)
    d_vocab = property(lambda self: self.vocab_size)
    n_ctx = property(lambda self: self.l_max)
    eps = property(lambda self: self.layer_norm_epsilon)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HyenaConfig):
            return NotImplemented
        return asdict(self) == asdict(other)


class HyenaLM(HookedRootModule):
    """Hyena language model with TransformerLens hooks (see docs/architecture.md).

    TransformerLens' model API on the synthetic vocabulary (`vocab`: safari's ICL vocabulary
    for `vocab_size` unless `set_vocab` gave another): `to_tokens`, `to_str_tokens`,
    `to_string`, `to_single_token`, and `tokens_to_residual_directions` for
    ActivationCache's `logit_attrs`. A text is its tokens separated by whitespace."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        cfg = HyenaLMConfig(**asdict(cfg))
        self.cfg = cfg
        self._vocab: list[str] | None = None
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

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True,
                       remove_batch_dim: bool = False, **kwargs: Any):
        """TransformerLens' `run_with_cache`: (logits, HyenaActivationCache), or the plain dict
        of hook name → tensor with `return_cache_object=False`."""
        out, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            cache = HyenaActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    # Filter hooks and hook_pos_embed have no batch axis, and TL slices names ending in `hook_v`
    # on dim −3 (its attention layout); they are cached here by our own rule instead.
    def get_caching_hooks(self, names_filter=None, incl_bwd=False, device=None,
                          remove_batch_dim=False, cache=None, pos_slice=None):
        return split_caching_hooks(
            super().get_caching_hooks, self.hook_dict, names_filter, incl_bwd, device,
            remove_batch_dim, cache, pos_slice,
        )

    # ------------------------------------------------ TransformerLens' model API on the vocabulary
    @property
    def vocab(self) -> list[str]:
        """Token strings by id: `set_vocab`'s list, else safari's ICL vocabulary for vocab_size."""
        return list(self._vocab) if self._vocab is not None else icl_vocab(self.cfg.vocab_size)

    def set_vocab(self, vocab: Sequence[str]) -> None:
        """Name the token ids (e.g. `models.data.vocab.mqar_vocab(vocab_size)` for MQAR)."""
        vocab = [str(t) for t in vocab]
        if len(vocab) != self.cfg.vocab_size:
            raise UserError(f"set_vocab got {len(vocab)} tokens for a model with vocab_size "
                            f"{self.cfg.vocab_size}; pass one string per token id")
        bad = [t for t in vocab if not t or t.split() != [t]]
        if bad or len(set(vocab)) != len(vocab):
            raise UserError(f"set_vocab needs distinct, non-empty tokens without whitespace "
                            f"(got {bad[:3] or 'duplicates'}); rename those tokens")
        self._vocab = vocab

    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None,
                  move_to_device: bool = True) -> Int[Tensor, "batch pos"]:
        """A text (tokens separated by whitespace) or a list of equally long texts → ids
        [batch, pos]. The synthetic vocabularies have no BOS: `prepend_bos=True` is refused."""
        if prepend_bos:
            raise UserError("HyenaLM's synthetic vocabulary has no BOS token; call to_tokens "
                            "without prepend_bos=True")
        texts = [input] if isinstance(input, str) else list(input)
        vocab = self.vocab
        ids = [encode(t, vocab) for t in texts]
        if len({len(row) for row in ids}) > 1:
            raise UserError(f"to_tokens got texts of {sorted({len(r) for r in ids})} tokens; the "
                            "synthetic vocabulary has no padding token, so pass equally long texts")
        tokens = torch.tensor(ids, dtype=torch.int64).reshape(len(texts), -1)  # [batch, pos]
        return tokens.to(self.embed.weight.device) if move_to_device else tokens

    def to_str_tokens(self, input: str | Tensor | np.ndarray | list,
                      prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """Token strings of a text, of one sequence of ids (a tensor or array that squeezes to
        1-D), or of each item of a list (as TransformerLens)."""
        if isinstance(input, list):
            return [self.to_str_tokens(item, prepend_bos) for item in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0]
        else:
            ids = torch.as_tensor(input).squeeze()  # one sequence: [pos], or a scalar
            if ids.dim() > 1:
                raise UserError(f"to_str_tokens takes one sequence of ids; got shape "
                                f"{tuple(torch.as_tensor(input).shape)} (pass a row, or a list of rows)")
            ids = ids.reshape(-1)
        return decode(ids.tolist(), self.vocab).split()

    def to_string(self, tokens: Tensor | np.ndarray | list) -> str | list[str]:
        """Ids [pos] → one text; ids [batch, pos] → one text per row."""
        t = torch.as_tensor(tokens)
        if t.dim() == 2:
            return [decode(row.tolist(), self.vocab) for row in t]
        if t.dim() > 2:
            raise UserError(f"to_string takes ids [pos] or [batch, pos]; got shape {tuple(t.shape)}")
        return decode(t.reshape(-1).tolist(), self.vocab)

    def to_single_token(self, string: str) -> int:
        ids = encode(string, self.vocab)
        if len(ids) != 1:
            raise UserError(f"{string!r} is {len(ids)} tokens, not one; pass a single vocabulary token")
        return ids[0]

    @property
    def W_U(self) -> Float[Tensor, "d vocab"]:
        """The unembedding (the tied head): logits = ln_final(x) @ W_U."""
        return self.embed.weight.T

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Float[Tensor, "... d"]:
        """For each token, the direction the final residual stream (after ln_final's centering
        and scaling) is dotted with to give its logit: ln_final.weight ⊙ W_U[:, token]. The
        LayerNorms are not folded into the head, so the weight is folded in here (what W_U[:, t]
        is in a TransformerLens model loaded with fold_ln); ln_final.bias · W_U[:, t] is the
        constant left out. Shape: the tokens' shape + [d]."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        ids = torch.as_tensor(tokens, device=self.embed.weight.device)
        return self.embed.weight[ids] * self.ln_final.weight

    @classmethod
    def from_safari(cls, state_dict: dict[str, Tensor], model_config: dict[str, Any]) -> "HyenaLM":
        """Load a safari `SimpleLMHeadModel` state dict; `model_config` is the `model`
        section of safari's config. Keys are aligned with asserted shapes."""
        model = cls(lm_config_from_safari(model_config))
        load_aligned(model, lm_state_from_safari(state_dict), source="safari SimpleLMHeadModel")
        return model
