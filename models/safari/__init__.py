"""Safari interop: converting safari's state dicts and configs (`conversion.py`) and importing a
safari run folder as a HyenaLens run (`run_import.py`)."""
from models.safari.conversion import load_state_dict

__all__ = ["load_state_dict"]
