"""HyenaLens models layer: synthetic data, the hooked Hyena operator and LM, the
TransformerLens attention baseline, training and checkpoints.

Names are resolved lazily (PEP 562), so `import models.errors` or `models.rundir.io` does not pay
for torch and transformer-lens. Importing it never imports matplotlib, seaborn, sklearn or
captum.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "HyenaConfig": "models.config.model", "HyenaLM": "models.hyena.lm", "HyenaOperator": "models.hyena.operator",
    "build_model": "models.build", "model_kind": "models.build", "UserError": "models.errors",
    "ICLData": "models.data.synthetics", "Roles": "models.data.synthetics", "icl_dataset": "models.data.synthetics",
    "train_acc_all_ceiling": "models.data.synthetics", "mqar_dataset": "models.data.mqar",
    "no_recall_baseline": "models.data.baseline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__():
    return __all__
