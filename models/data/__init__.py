"""Synthetic recall tasks with token roles: safari's associative recall and induction head
(`synthetics.py`), zoology's MQAR (`mqar.py`), their vocabularies (`vocab.py`) and the
training batches (`batches.py`)."""
