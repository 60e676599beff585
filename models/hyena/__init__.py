"""The Hyena architecture: the operator (`operator.py`, Poli et al. 2023, Alg. 1), its implicit
long filters (`filters.py`), the fast convolution kernels (`fftconv.py`) and the eval-mode filter
cache (`filter_cache.py`), the hooked LM (`lm.py`) and the hook helpers (`hooks.py`)."""
from models.hyena.operator import HyenaOperator
from models.hyena.lm import HyenaConfig, HyenaLM

__all__ = ["HyenaConfig", "HyenaLM", "HyenaOperator"]
