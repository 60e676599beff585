"""`build_model`: one entry point for both model kinds (tokens in, logits out, hooks by name)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from models.config.model import DERIVED_MODEL_KEYS, MODEL_CONFIGS, AttentionConfig, HyenaConfig
from models.errors import UserError
from models.hyena.lm import HyenaLM
from models.attention import build_attention

KINDS = tuple(MODEL_CONFIGS)  # ("hyena", "attention")


def build_model(model_config: dict[str, Any] | HyenaConfig | AttentionConfig, seed: int = 0) -> nn.Module:
    """Build `kind: hyena` (HyenaLM) or `kind: attention` (TL native) from a flat dict
    (`{"kind": "hyena", "d_model": 32, ...}`) or a typed config (a `RunConfig.model`).

    The same config and seed give the same initial weights, and the global RNG is left as
    it was.
    """
    if isinstance(model_config, (HyenaConfig, AttentionConfig)):
        kind = model_config.kind
        # a derived key still None (not resolved) builds with the class default, as it does
        # when a flat dict lacks it
        flat = {k: v for k, v in asdict(model_config).items() if v is not None or k not in DERIVED_MODEL_KEYS}
    else:
        flat = dict(model_config)
        kind = flat.pop("kind", "hyena")
        if kind not in KINDS:
            raise UserError(f"model.kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    try:
        cfg = MODEL_CONFIGS[kind].from_dict(flat)  # a new one: the model never shares the caller's
        if kind == "hyena":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return HyenaLM(cfg)

        return build_attention(cfg, seed=seed)
    except (TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"bad model config: {e}") from None


def model_kind(model: nn.Module) -> str:
    return "hyena" if isinstance(model, HyenaLM) else "attention"


def is_hyena(model: nn.Module) -> bool:
    return model_kind(model) == "hyena"
