"""The attention baseline: TransformerLens' own native transformer.

transformer-lens 4.x removed `HookedTransformer`; `TransformerBridge.boot_native` builds the
TL-native model offline from a `TransformerBridgeConfig`. It gives `run_with_cache`,
`run_with_hooks`, `blocks.{l}.attn.hook_pattern` and both `attention_dir` values, which is all
the analysis needs, so no `transformer-lens<4` pin is required.
"""
from __future__ import annotations

import contextlib
import io

import torch.nn as nn

from models.config.model import AttentionConfig  # defined with the run configs (torch-free)


def build_attention(cfg: AttentionConfig, seed: int = 0) -> nn.Module:
    """A TransformerBridge around TL's native model; `seed` fixes its initialization."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model {cfg.d_model} must be divisible by n_heads {cfg.n_heads}")
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
