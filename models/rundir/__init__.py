"""The run-directory format (docs/architecture.md): its layout (`layout.py`), atomic file I/O
(`io.py`) and checkpoints (`checkpoint.py`)."""
