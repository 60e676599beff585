"""HyenaLens models layer: synthetic data, the hooked Hyena operator and LM, the
TransformerLens attention baseline, training and checkpoints.

Importing it never imports matplotlib, seaborn, sklearn or captum.
"""
from models.build import build_model, model_kind
from models.errors import UserError
from models.hyena import HyenaOperator
from models.lm import HyenaConfig, HyenaLM

__all__ = ["HyenaConfig", "HyenaLM", "HyenaOperator", "UserError", "build_model", "model_kind"]
