"""Run configs: the schema and its validation (`schema.py`), reading YAML files and presets
(`source.py`, presets in `presets/`), and sweep grids (`sweep.py`)."""
