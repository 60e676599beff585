"""The stable public path of the synthetic tasks: `models.synthetics.icl_dataset` and friends
live in `models.data.synthetics`; this module re-exports them."""
from models.data.synthetics import ICLData, Roles, icl_dataset, train_acc_all_ceiling

__all__ = ["ICLData", "Roles", "icl_dataset", "train_acc_all_ceiling"]
