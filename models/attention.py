"""The attention baseline: TransformerLens' own native transformer.

transformer-lens 4.x removed `HookedTransformer`; `TransformerBridge.boot_native` builds the
TL-native model offline from a `TransformerBridgeConfig`. It gives `run_with_cache`,
`run_with_hooks`, `blocks.{l}.attn.hook_pattern` and both `attention_dir` values, which is all
the analysis needs, so no `transformer-lens<4` pin is required.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, fields
from typing import Any

import torch.nn as nn


@dataclass
class AttentionConfig:
    """Matched to HyenaLM: same layers, width and MLP, one head, GELU(tanh), LayerNorm,
    learned absolute positions (attention has no other source of order)."""

    vocab_size: int = 10
    d_model: int = 64
    n_layers: int = 2
    d_inner: int | None = None  # None: 4 · d_model
    causal: bool = True
    l_max: int = 66
    n_heads: int = 1

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AttentionConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown attention model key(s): {', '.join(unknown)}")
        return cls(**d)


def build_attention(cfg: AttentionConfig, seed: int = 0) -> nn.Module:
    """A TransformerBridge around TL's native model; `seed` fixes its initialization."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=cfg.d_inner, d_vocab=cfg.vocab_size,
        n_ctx=cfg.l_max, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard",
        attention_dir="causal" if cfg.causal else "bidirectional", seed=seed,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model to device" here
        return TransformerBridge.boot_native(tl_cfg)
