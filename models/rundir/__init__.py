"""The run-directory format (docs/architecture.md): its one owner `RunDir` with every path,
the staleness rule and the step-name pattern (`layout.py`), finding runs (`discover.py`), the
writer lock (`lock.py`), atomic file I/O (`io.py`), checkpoints (`checkpoint.py`) and a run's
models and test split for interp (`run.py`, the one module here that needs torch at import)."""
