"""HyenaLens models layer: synthetic data, the hooked Hyena operator and LM, the
TransformerLens attention baseline, training and checkpoints.

Importing it never imports matplotlib, seaborn, sklearn or captum.
"""
from models.build import build_model, model_kind
from models.errors import UserError
from models.hyena import HyenaOperator
from models.lm import HyenaConfig, HyenaLM
from models.mqar import mqar_dataset
from models.synthetics import ICLData, Roles, icl_dataset, train_acc_all_ceiling

__all__ = ["HyenaConfig", "HyenaLM", "HyenaOperator", "ICLData", "Roles", "UserError", "build_model",
           "icl_dataset", "model_kind", "mqar_dataset", "train_acc_all_ceiling"]
