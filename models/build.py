"""`build_model`: one entry point for both model kinds (tokens in, logits out, hooks by name)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from models.errors import UserError

KINDS = ("hyena", "attention")


def build_model(model_config: dict[str, Any], seed: int = 0) -> nn.Module:
    """Build `kind: hyena` (HyenaLM) or `kind: attention` (TL native) from a flat dict.

    The same config and seed give the same initial weights, and the global RNG is left as
    it was.
    """
    cfg = dict(model_config)
    kind = cfg.pop("kind", "hyena")
    if kind not in KINDS:
        raise UserError(f"model.kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    try:
        if kind == "hyena":
            from models.hyena.lm import HyenaConfig, HyenaLM

            hcfg = HyenaConfig.from_dict(cfg)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return HyenaLM(hcfg)
        from models.attention import AttentionConfig, build_attention

        return build_attention(AttentionConfig.from_dict(cfg), seed=seed)
    except (TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"bad model config: {e}") from None


def model_kind(model: nn.Module) -> str:
    from models.hyena.lm import HyenaLM

    return "hyena" if isinstance(model, HyenaLM) else "attention"


def is_hyena(model: nn.Module) -> bool:
    return model_kind(model) == "hyena"
