"""Training: the loop (`loop.py`), AdamW (`optim.py`), evaluation (`evaluate.py`) and the
checkpoint schedule (`schedule.py`)."""
