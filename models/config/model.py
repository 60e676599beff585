"""The model configs (`HyenaConfig`, `AttentionConfig`) and the two tables of Hyena defaults.

Torch-free on purpose: validating a run config (models/config/schema.py) reads these classes,
and `load_config` must not pay for torch or transformer_lens. `models.hyena.lm` and
`models.attention` build their models from them.

Two default sets, one table each:

- `SAFARI_OPERATOR_DEFAULTS`: safari's `HyenaOperator(d_model, l_max, **kwargs)` constructor
  defaults, i.e. what a safari config means when it omits a key (the `hyena_o2_d32_defaults`
  operator fixture is built from them). `HyenaOperator`'s signature and the safari argument
  sets in models/safari/conversion.py are read from it.
- `SYNTHETICS_DEFAULTS`: HyenaLens's own defaults, safari's synthetics settings (the shared
  `safari_ar_v10_l64_o2` fixture's `model` section). `HyenaConfig`'s fields are read from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar

SAFARI_OPERATOR_DEFAULTS = MappingProxyType({
    "order": 2,                 # N: gates x^0 … x^{N−1} and N−1 long convolutions
    "filter_order": 64,         # width of the implicit filter's FFN
    "emb_dim": 3,               # positional features: time plus (emb_dim−1)/2 cos/sin bands
    "w": 1.0,                   # initial (learnable) frequency of the FFN's Sin activations
    "num_inner_mlps": 2,        # hidden Linear → Sin layers of the filter FFN
    "short_filter_order": 3,    # taps of the short depthwise conv
    "modulate": True,           # exponential decay window on the filters
    "fast_decay_pct": 0.3,      # the fastest channel's window reaches `target` at this t ∈ [0, 1]
    "slow_decay_pct": 1.5,      # ... and the slowest channel's at this t
    "target": 1e-2,
    "shift": 0.0,               # added to the window
    "normalized": False,        # filters divided by their L1 norm (over channels, as safari)
    "bias": True,               # the skip term D (safari's `filter_fn.bias`)
    "lr_pos_emb": 1e-5,         # 0: the positional embedding is a frozen buffer
    "modulation_lr": 0.0,       # 0: the decay rates are a frozen buffer
    "dropout": 0.0,             # on the gated stream, before each long conv
    "filter_dropout": 0.0,      # kept for round trips; safari never applies it
    "activation": "id",         # on x^0 ⊙ z, before out_proj
    "causal": True,             # HyenaLens's switch: safari's operator is always causal
})

SYNTHETICS_DEFAULTS = MappingProxyType({
    # the LM around the operators (safari's lm_simple on AR, vocab 10, input length 64)
    "vocab_size": 10,
    "d_model": 64,
    "n_layers": 2,
    "d_inner": None,            # None: 4 · d_model, as safari
    "causal": True,
    "l_max": 66,
    "embed_dropout": 0.1,
    "resid_dropout": 0.0,
    "layer_norm_epsilon": 1e-5,
    "max_position_embeddings": 0,
    "initializer_range": 0.02,
    # the operator: safari's synthetics settings
    "order": 2,
    "filter_order": 64,
    "emb_dim": 5,
    "w": 10.0,
    "num_inner_mlps": 2,
    "short_filter_order": 3,
    "modulate": True,
    "fast_decay_pct": 0.3,
    "slow_decay_pct": 1.5,
    "target": 1e-2,
    "shift": 0.0,
    "normalized": False,
    "filter_bias": True,
    "lr_pos_emb": 0.0,
    "modulation_lr": 0.0,
    "dropout": 0.0,
    "filter_dropout": 0.0,
    "activation": "id",
    # HyenaLens's switch: the training step's elementwise kernels (models/kernels), one of KERNELS
    "kernels": "torch",
})

# "torch": eager PyTorch ops (the default; safari's numerics); "cpp": compiled CPU kernels for the
# training step (opt-in, other bits; models/kernels/__init__.py)
KERNELS = ("torch", "cpp")

_S = SYNTHETICS_DEFAULTS


def _flat_dict(cfg: Any) -> dict[str, Any]:
    """`kind`, `causal`, then every other field sorted by name (the order config.yaml keeps)."""
    d = asdict(cfg)
    causal = d.pop("causal")
    return {"kind": cfg.kind, "causal": causal, **dict(sorted(d.items()))}


def _from_dict(cls, d: dict[str, Any], what: str):
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}")
    return cls(**d)


@dataclass
class HyenaConfig:
    """One flat config for `HyenaLM` (`kind: hyena`); defaults from `SYNTHETICS_DEFAULTS`.

    LM: `vocab_size` (token ids), `d_model` (width), `n_layers` (blocks), `d_inner` (MLP
    width; None: 4 · d_model), `causal` (causal or non-causal mixers), `l_max` (longest
    sequence), `embed_dropout`, `resid_dropout`, `layer_norm_epsilon`,
    `max_position_embeddings` (> 0: learned absolute positions), `initializer_range` (std of
    the GPT-2 init). In a `RunConfig` before `resolve_config`, `vocab_size` and `l_max` are None
    when they are to be derived from the data.

    Operator (`HyenaOperator`'s arguments, see `SAFARI_OPERATOR_DEFAULTS` for their meaning):
    `order`, `filter_order`, `emb_dim`, `w`, `num_inner_mlps`, `short_filter_order`,
    `modulate`, `fast_decay_pct`, `slow_decay_pct`, `target`, `shift`, `normalized`,
    `filter_bias` (the operator's `bias`), `lr_pos_emb`, `modulation_lr`, `dropout`,
    `filter_dropout`, `activation`.

    Speed: `kernels` ("torch" or "cpp", `KERNELS`): "cpp" runs the training step's MLP
    bias + GELU and the operator's short conv as compiled CPU kernels (models/kernels). It
    changes the bits of training, not what evaluation or hooks compute; `to_dict` writes it only
    when it is not the default, so configs and hashes from before the key existed stay valid.
    """

    kind: ClassVar[str] = "hyena"

    vocab_size: int | None = _S["vocab_size"]
    d_model: int = _S["d_model"]
    n_layers: int = _S["n_layers"]
    d_inner: int | None = _S["d_inner"]
    order: int = _S["order"]
    causal: bool = _S["causal"]
    l_max: int | None = _S["l_max"]
    filter_order: int = _S["filter_order"]
    emb_dim: int = _S["emb_dim"]
    w: float = _S["w"]
    num_inner_mlps: int = _S["num_inner_mlps"]
    short_filter_order: int = _S["short_filter_order"]
    modulate: bool = _S["modulate"]
    fast_decay_pct: float = _S["fast_decay_pct"]
    slow_decay_pct: float = _S["slow_decay_pct"]
    target: float = _S["target"]
    shift: float = _S["shift"]
    normalized: bool = _S["normalized"]
    filter_bias: bool = _S["filter_bias"]
    lr_pos_emb: float = _S["lr_pos_emb"]
    modulation_lr: float = _S["modulation_lr"]
    dropout: float = _S["dropout"]
    filter_dropout: float = _S["filter_dropout"]
    activation: str = _S["activation"]
    embed_dropout: float = _S["embed_dropout"]
    resid_dropout: float = _S["resid_dropout"]
    layer_norm_epsilon: float = _S["layer_norm_epsilon"]
    max_position_embeddings: int = _S["max_position_embeddings"]
    initializer_range: float = _S["initializer_range"]
    kernels: str = _S["kernels"]

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r} is not one of {', '.join(KERNELS)}")

    def operator_kwargs(self) -> dict[str, Any]:
        """`HyenaOperator(**kwargs)` for one block."""
        kw = {k: v for k, v in asdict(self).items() if k in _OPERATOR_FIELDS}
        kw["bias"] = self.filter_bias
        return kw

    def to_dict(self) -> dict[str, Any]:
        """The flat `model` mapping `build_model` takes (`kind` first, as config.yaml has it);
        `kernels` only when it is not the default (see the class docstring)."""
        d = _flat_dict(self)
        if d["kernels"] == _S["kernels"]:
            del d["kernels"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HyenaConfig":
        return _from_dict(cls, d, "HyenaConfig")


# HyenaConfig fields passed to HyenaOperator under their own name (filter_bias becomes `bias`)
_OPERATOR_FIELDS = frozenset({"d_model", "l_max", *SAFARI_OPERATOR_DEFAULTS} - {"bias"})


@dataclass
class AttentionConfig:
    """The attention baseline (`kind: attention`), matched to HyenaLM: the same `vocab_size`,
    `d_model`, `n_layers`, `d_inner` (None: 4 · d_model), `causal` (False: bidirectional) and
    `l_max` defaults (`SYNTHETICS_DEFAULTS`), plus `n_heads`; one head, GELU(tanh), LayerNorm,
    learned absolute positions (attention has no other source of order). As in `HyenaConfig`,
    `vocab_size` and `l_max` are None in a `RunConfig` until `resolve_config` fills them."""

    kind: ClassVar[str] = "attention"

    vocab_size: int | None = _S["vocab_size"]
    d_model: int = _S["d_model"]
    n_layers: int = _S["n_layers"]
    d_inner: int | None = _S["d_inner"]
    causal: bool = _S["causal"]
    l_max: int | None = _S["l_max"]
    n_heads: int = 1

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        """The flat `model` mapping `build_model` takes (`kind` first, as config.yaml has it)."""
        return _flat_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AttentionConfig":
        return _from_dict(cls, d, "attention model")


MODEL_CONFIGS: dict[str, type] = {"hyena": HyenaConfig, "attention": AttentionConfig}  # by `kind`
# keys a run config derives from the data when null or absent (None until resolve_config)
DERIVED_MODEL_KEYS = ("vocab_size", "l_max")
