"""Synthetic recall tasks with token roles: safari's associative recall and induction head
(`synthetics.py`), zoology's MQAR (`mqar.py`), their vocabularies (`vocab.py`), the
training batches (`batches.py`) and the no-recall baseline of the test accuracy (`baseline.py`)."""
