"""`python -m benchmarks --safari-src PATH`: safari's own `SimpleLMHeadModel` with its
`HyenaOperator`, imported from a checkout of https://github.com/HazyResearch/safari that the
user fetched. No safari code is part of HyenaLens: PATH is put on `sys.path` for this process.

safari's modules import packages its training needs and the model does not (hydra, omegaconf,
pytorch_lightning, torchvision's StochasticDepth, opt_einsum, rich). Each one that is not
installed is replaced by a small stand-in module here, with just the names safari's model code
reads: `hydra.utils.get_method`/`get_class` (importlib), omegaconf's config classes (plain
list/dict subclasses), `rank_zero_only` (the identity), `StochasticDepth` (the identity at
p = 0, the only value the benchmark uses), `opt_einsum.contract` (torch.einsum). The model code
itself runs unmodified.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.config.model import SAFARI_OPERATOR_DEFAULTS
from models.errors import UserError

MODEL_FILE = Path("src") / "models" / "sequence" / "simple_lm.py"


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__hyenalens_stub__ = True
    return mod


def _locate(path: str) -> Any:
    mod, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


class _StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        raise NotImplementedError("the stand-in StochasticDepth only does p = 0; install torchvision")


def _rank_zero_only(fn):
    return fn


def _stubs() -> dict[str, types.ModuleType]:
    class OmegaConf:  # only its name is read at import time
        pass

    hydra_utils = _module("hydra.utils", get_method=_locate, get_class=_locate)
    pl_utils = _module("pytorch_lightning.utilities", rank_zero_only=_rank_zero_only)
    tv_ops = _module("torchvision.ops", StochasticDepth=_StochasticDepth)
    return {
        "hydra": _module("hydra", utils=hydra_utils), "hydra.utils": hydra_utils,
        "omegaconf": _module("omegaconf", ListConfig=type("ListConfig", (list,), {}),
                             DictConfig=type("DictConfig", (dict,), {}), OmegaConf=OmegaConf),
        "pytorch_lightning": _module("pytorch_lightning", utilities=pl_utils),
        "pytorch_lightning.utilities": pl_utils,
        "torchvision": _module("torchvision", ops=tv_ops), "torchvision.ops": tv_ops,
        "opt_einsum": _module("opt_einsum", contract=lambda eq, *ops, **kw: torch.einsum(eq, *ops)),
        "rich": _module("rich"), "rich.syntax": _module("rich.syntax"), "rich.tree": _module("rich.tree"),
    }


def _install_stubs() -> list[str]:
    """Stand-ins for the packages that cannot be imported here; returns their names."""
    stubs = _stubs()
    missing = set()
    for top in {name.split(".")[0] for name in stubs}:
        present = sys.modules.get(top)
        if present is None and importlib.util.find_spec(top) is None:
            missing.add(top)
    done = []
    for name, mod in stubs.items():
        if name.split(".")[0] in missing and name not in sys.modules:
            sys.modules[name] = mod
            done.append(name)
    return done


def load_safari(src: str | Path) -> Any:
    """safari's `SimpleLMHeadModel` class from the checkout at `src`."""
    root = Path(src).expanduser().resolve()
    if not (root / MODEL_FILE).is_file():
        raise UserError(f"--safari-src {src}: no {MODEL_FILE} there; point it at a checkout of "
                        "https://github.com/HazyResearch/safari (the folder that holds src/)")
    _install_stubs()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    mod = importlib.import_module("src.models.sequence.simple_lm")
    if not str(Path(mod.__file__).resolve()).startswith(str(root)):
        raise UserError(f"--safari-src {src}: `src.models.sequence.simple_lm` was imported from {mod.__file__}, "
                        "another package named `src`; run from a folder without one")
    return mod.SimpleLMHeadModel


def safari_model_config(cfg: Any) -> dict[str, Any]:
    """The `model` section of a safari config for a HyenaConfig (causal: safari's only kind)."""
    if not cfg.causal or cfg.max_position_embeddings > 0:
        raise UserError("safari's lm_simple is causal without position embeddings; benchmark that config")
    layer = {k: getattr(cfg, k) for k in SAFARI_OPERATOR_DEFAULTS if k not in ("causal", "bias")}
    layer.update({"_name_": "hyena", "l_max": cfg.l_max, "bias": cfg.filter_bias})
    return {"_name_": "lm_simple", "d_model": cfg.d_model, "n_layer": cfg.n_layers, "d_inner": cfg.d_inner,
            "vocab_size": cfg.vocab_size, "embed_dropout": cfg.embed_dropout, "resid_dropout": cfg.resid_dropout,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "max_position_embeddings": 0, "layer": layer}


class SafariLogits(nn.Module):
    """safari's model returning its logits tensor (it returns `(CausalLMOutput(logits), None)`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)[0].logits


def safari_pair(src: str | Path, cfg: Any, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(safari's model, the HyenaLM with its weights via `HyenaLM.from_safari`) for `cfg`."""
    from models.hyena.lm import HyenaLM

    cls = load_safari(src)
    model_config = safari_model_config(cfg)
    kwargs = {k: v for k, v in model_config.items() if k != "_name_"}
    kwargs["layer"] = dict(kwargs["layer"])
    torch.manual_seed(seed)
    safari = cls(**kwargs)
    ours = HyenaLM.from_safari(safari.state_dict(), model_config)
    return SafariLogits(safari), ours
