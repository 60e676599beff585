"""Reading safari's files: state dicts, operator kwargs, the `lm_simple` model config.

Loading never unpickles by default: safetensors are read as tensors, and Lightning `.ckpt`
files go through `torch.load(weights_only=True)`. Full unpickling needs `trust_pickle=True`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from models.config.model import SAFARI_OPERATOR_DEFAULTS, HyenaConfig
from models.errors import UserError

# safari HyenaOperator kwargs that change the math, mapped to ours (same names): every key of
# safari's constructor defaults but `causal`, which is HyenaLens's (safari's is always causal)
_OPERATOR_MATH = frozenset(SAFARI_OPERATOR_DEFAULTS) - {"causal"}
# optimizer hints and bookkeeping: they do not change the function the module computes
_OPERATOR_NO_MATH = {"lr", "wd", "layer_idx", "device", "dtype", "channels", "_name_"}
# safari options HyenaLens does not implement, with the value that is safe to accept
_OPERATOR_REFUSED = {
    "num_heads": 1, "inner_factor": 1, "num_blocks": 1, "outer_mixing": False,
    "post_order_ffn": False, "fused_bias_fc": False, "fused_fft_conv": False,
    "jit_filter": False, "return_state": False, "filter_cls": "hyena-filter",
}


def operator_kwargs_from_safari(safari_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Translate safari `HyenaOperator(d_model, l_max, **kwargs)` arguments to ours.

    Raises UserError naming any unsupported option, and any key safari would not accept.
    """
    kw = dict(safari_kwargs)
    missing = [k for k in ("d_model", "l_max") if k not in kw]
    if missing:
        raise UserError(f"safari operator kwargs lack {', '.join(missing)}; pass them as in HyenaOperator(d_model, l_max, ...)")
    out: dict[str, Any] = {"d_model": int(kw.pop("d_model")), "l_max": int(kw.pop("l_max"))}
    for name, ok_value in _OPERATOR_REFUSED.items():
        if name in kw:
            value = kw.pop(name)
            if value != ok_value:
                raise UserError(
                    f"safari option {name}={value!r} is not supported by HyenaLens "
                    f"(only {name}={ok_value!r}); retrain or convert without it"
                )
    unknown = sorted(set(kw) - _OPERATOR_MATH - _OPERATOR_NO_MATH)
    if unknown:
        raise UserError(f"unknown safari HyenaOperator option(s): {', '.join(unknown)}; remove them or check the spelling")
    for name in _OPERATOR_MATH & set(kw):
        out[name] = kw[name]
    return out


def load_aligned(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Copy `state_dict` into `module` key for key, asserting shapes (nanoGPT-style).

    Missing or unexpected keys, and shape mismatches, raise UserError naming them: a
    checkpoint from a different architecture never half-loads.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
        raise UserError(f"{source} does not match this architecture ({'; '.join(parts)}); check the model config")
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(
                f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; check the model config"
            )
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a safari state dict from safetensors, or a Lightning `.ckpt`.

    A `.ckpt` keeps the state dict under `state_dict` with keys prefixed `model.`; the prefix
    is stripped. Only `torch.load(weights_only=True)` is used unless `trust_pickle=True`.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such checkpoint file: {p}; check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read {p} as safetensors ({str(e).splitlines()[0]}); the file is truncated or not safetensors") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not trust_pickle and ("weights_only" in str(e) or "Unsupported global" in str(e)):
            raise UserError(
                f"{p} needs full unpickling, which can run arbitrary code; pass trust_pickle=True "
                "(--trust-pickle) only for files you trust"
            ) from None
        raise UserError(f"cannot read checkpoint {p} ({msg}); the file is truncated or not a torch checkpoint") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise UserError(f"{p} holds no state dict of tensors; expected a Lightning .ckpt or a state dict")
    if any(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    return sd


# ---- SimpleLMHeadModel (safari's lm_simple) ------------------------------------------------
_LM_REFUSED = {"attn_layer_idx": None, "attn_cfg": None, "process_group": None}
_LM_NO_MATH = {"_name_", "residual_in_fp32", "initializer_cfg", "device", "dtype",
               "pad_vocab_size_multiple", "fused_mlp", "fused_dropout_add_ln", "checkpoint_mlp",
               "checkpoint_mixer", "return_hidden_state"}


def lm_config_from_safari(model_config: dict[str, Any]) -> HyenaConfig:
    """`HyenaConfig` from the `model` section of a safari config (`_name_: lm_simple`)."""
    cfg = dict(model_config)
    name = cfg.pop("_name_", "lm_simple")
    if name != "lm_simple":
        raise UserError(f"safari model {name!r} is not supported; HyenaLens imports lm_simple models")
    for key, ok in _LM_REFUSED.items():
        if cfg.get(key, ok) != ok:
            raise UserError(f"safari model option {key}={cfg[key]!r} is not supported by HyenaLens (hybrid attention layers); remove it")
    pad = int(cfg.get("pad_vocab_size_multiple", 1))
    if pad != 1 and int(cfg["vocab_size"]) % pad != 0:
        raise UserError("safari pad_vocab_size_multiple changes the vocabulary size; HyenaLens needs it to divide vocab_size")
    layer = dict(cfg.pop("layer", None) or {})
    if layer.pop("_name_", "hyena") != "hyena":
        raise UserError("safari layer is not 'hyena'; HyenaLens imports Hyena layers only")
    try:
        required = {k: cfg.pop(k) for k in ("d_model", "n_layer", "vocab_size")}
    except KeyError as e:
        raise UserError(f"safari model config lacks {e.args[0]}; it must have d_model, n_layer, vocab_size") from None
    lm = {
        "vocab_size": int(required["vocab_size"]), "d_model": int(required["d_model"]),
        "n_layers": int(required["n_layer"]),
        "d_inner": cfg.pop("d_inner", None),
        "embed_dropout": float(cfg.pop("embed_dropout", 0.1)),
        "resid_dropout": float(cfg.pop("resid_dropout", 0.0)),
        "layer_norm_epsilon": float(cfg.pop("layer_norm_epsilon", 1e-5)),
        "max_position_embeddings": int(cfg.pop("max_position_embeddings", 0)),
    }
    init_cfg = cfg.pop("initializer_cfg", None) or {}
    if "initializer_range" in init_cfg:
        lm["initializer_range"] = float(init_cfg["initializer_range"])
    unknown = sorted(set(cfg) - _LM_NO_MATH)
    if unknown:
        raise UserError(f"unknown safari model option(s): {', '.join(unknown)}; remove them or check the spelling")
    op = operator_kwargs_from_safari({"d_model": lm["d_model"], **layer})
    op.pop("d_model")
    # a key the safari layer omits means safari's default, not HyenaConfig's synthetics one
    op = {**{k: SAFARI_OPERATOR_DEFAULTS[k] for k in _OPERATOR_MATH}, **op}
    op["filter_bias"] = op.pop("bias")
    return HyenaConfig(**lm, **op, causal=True)


def lm_state_from_safari(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename safari `SimpleLMHeadModel` keys to HyenaLM keys; the tied head is checked and
    dropped (HyenaLM ties it to `embed.weight`)."""
    renames = (
        ("backbone.embeddings.word_embeddings.", "embed."),
        ("backbone.embeddings.position_embeddings.", "pos_embed."),
        ("backbone.layers.", "blocks."),
        ("backbone.ln_f.", "ln_final."),
    )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            continue
        new = key
        for old, rep in renames:
            if new.startswith(old):
                new = rep + new[len(old):]
                break
        new = new.replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.")
        out[new] = value
    head = state_dict.get("lm_head.weight")
    emb = out.get("embed.weight")
    if head is not None and emb is not None and not torch.equal(head, emb):
        raise UserError("safari lm_head.weight differs from the word embedding; HyenaLens needs tied weights")
    return out
