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
from models.data.vocab import NOOP, icl_vocab


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
        model = TransformerBridge.boot_native(tl_cfg)
    set_vocab(model, icl_vocab(cfg.vocab_size))
    return model


def set_vocab(model: nn.Module, vocab: list[str]) -> None:
    """Give the attention baseline the task's vocabulary (token id = index in `vocab`), so that
    TransformerLens' `to_tokens`, `to_str_tokens` and `to_string` work on the synthetic tokens
    as HyenaLM's do: a whitespace-split word-level tokenizer, no BOS. `build_attention` sets
    safari's ICL vocabulary; an MQAR run passes `models.data.vocab.mqar_vocab(vocab_size)`."""
    # HF's own word-level tokenizer (a dependency of transformer_lens), built from the list;
    # deferred: only a bridge model needs it
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(vocab) != model.cfg.d_vocab:
        raise ValueError(f"a vocabulary of {len(vocab)} tokens for a model of {model.cfg.d_vocab}; "
                         "pass one name per token id")
    # an unknown word gets an id past the vocabulary, so the model's embedding refuses it loudly
    # (TransformerLens also encodes a probe string when a tokenizer is set)
    words = {t: i for i, t in enumerate(vocab)} | {"[UNK]": len(vocab)}
    tok = Tokenizer(tok_models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    pad = NOOP if NOOP in vocab else vocab[0]  # safari's filler token pads a batch
    model.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad)
    model.cfg.default_prepend_bos = False
    model.cfg.tokenizer_prepends_bos = False
