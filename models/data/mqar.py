"""Zoology's multi-query associative recall (MQAR), with token roles (science.md, "MQAR").

Split from `models.data.synthetics`, whose return type, checks and overlap handling it shares.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.errors import UserError
from models.data.synthetics import ICLData, Roles, blank_roles, check_counts, check_int, finish_dataset
from models.data.vocab import IGNORE_INDEX, mqar_vocab


def _mqar_roles(qpos: np.ndarray, length: int) -> Roles:
    n, pairs = qpos.shape
    r = blank_roles(n, length)
    q = torch.from_numpy(qpos)
    for name in ("key", "match_key"):
        r[name][:, 0:2 * pairs:2] = True
    for name in ("value", "match_value"):
        r[name][:, 1:2 * pairs:2] = True
    for name in ("query", "answer", "recallable"):
        r[name].scatter_(1, q, True)
    r["match_index"].scatter_(1, q, 2 * torch.arange(pairs).expand(n, pairs))
    return Roles(**r)


# ------------------------------------------------------------------ assembling ICLData


def _distinct_ints(rng: np.random.Generator, count: int, low: int, high: int, k: int) -> np.ndarray:
    """[count, k] rows of distinct ints in [low, high): later duplicates are redrawn until none
    is left. The procedure is symmetric under relabelling, so it is uniform over ordered tuples."""
    out = rng.integers(low, high, size=(count, k))
    while True:
        order = np.argsort(out, axis=1, kind="stable")
        ranked = np.take_along_axis(out, order, axis=1)
        dup = np.zeros_like(out, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        if not dup.any():
            return out
        out[dup] = rng.integers(low, high, size=int(dup.sum()))


def _mqar_split(rng: np.random.Generator, count: int, vocab_size: int, length: int, pairs: int,
                power_a: float, random_non_queries: bool) -> tuple[np.ndarray, ...]:
    half = vocab_size // 2
    keys = _distinct_ints(rng, count, 1, half, pairs)              # zoology: keys 1..V/2-1
    values = _distinct_ints(rng, count, half, vocab_size, pairs)   # values V/2..V-1
    space = (length - 2 * pairs) // 2
    weight = power_a * np.arange(1, space + 1) ** (power_a - 1)
    weight /= weight.sum()
    # Weighted sampling without replacement (Efraimidis-Spirakis), as np.random.choice(p=...).
    with np.errstate(divide="ignore"):
        score = np.log(rng.random((count, space))) / weight
    gaps = np.argsort(-score, axis=1, kind="stable")[:, :pairs]
    qpos = 2 * pairs + 2 * gaps
    inputs = (rng.integers(0, vocab_size, size=(count, length)) if random_non_queries  # any id
              else np.zeros((count, length), dtype=np.int64))
    inputs[:, 0:2 * pairs:2], inputs[:, 1:2 * pairs:2] = keys, values
    np.put_along_axis(inputs, qpos, keys, axis=1)
    targets = np.full((count, length), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(targets, qpos, values, axis=1)
    return inputs, targets, qpos


def mqar_dataset(vocab_size: int, input_seq_len: int, num_kv_pairs: int, num_examples: int,
                 num_test_examples: int, seed: int, power_a: float = 0.01,
                 random_non_queries: bool = True, *, remove_overlap: bool = False) -> ICLData:
    """Zoology's multi-query AR (`multiquery_ar`, num_passes 1), with token roles.

    Each sequence: N pairs `k v` with distinct keys from ids 1..vocab_size//2-1 and distinct
    values from vocab_size//2..vocab_size-1. Each key is then queried once, at position
    2N + 2*gap, where the N gaps are drawn without replacement from 0..(L-2N)//2-1 with
    p(gap) ∝ power_a * (gap+1)^(power_a-1). The target at a query is its value. Every other
    target is -100, in train and test alike. Other positions hold id 0, or, with
    `random_non_queries`, a uniform id from the whole vocabulary (as zoology). Differences from
    zoology: numpy `default_rng(seed)` draws train and then test (no global RNG, no torch RNG),
    and an odd input_seq_len is allowed. The sets are not deduplicated (zoology does not); the
    train/test overlap is counted, and `remove_overlap` drops it.
    """
    vocab_size = check_int("vocab_size", vocab_size, 4,
                            "MQAR needs keys 1..V/2-1 and values V/2..V-1")
    pairs = check_int("num_kv_pairs", num_kv_pairs, 1, "use at least one key-value pair")
    length = check_int("input_seq_len", input_seq_len, 4 * pairs,
                        f"{pairs} pairs and {pairs} queries need input_seq_len >= 4*num_kv_pairs")
    counts, seed = check_counts(num_examples, num_test_examples, seed)
    if pairs > vocab_size // 2 - 1:
        raise UserError(f"num_kv_pairs={pairs} needs {pairs} distinct keys but "
                        f"vocab_size={vocab_size} "
                        f"has {vocab_size // 2 - 1}; use vocab_size >= {2 * pairs + 2}")
    if not (isinstance(power_a, (int, float)) and 0 < power_a and math.isfinite(power_a)):
        raise UserError(f"power_a={power_a!r} must be a positive number; zoology uses 0.01")
    rng = np.random.default_rng(seed)
    splits = []
    for count in counts:
        inputs, targets, qpos = _mqar_split(rng, count, vocab_size, length, pairs, float(power_a),
                                            bool(random_non_queries))
        roles = _mqar_roles(qpos, length)
        splits.append((torch.from_numpy(inputs), torch.from_numpy(targets), roles))
    args = dict(task="mqar", vocab_size=vocab_size, input_seq_len=length, num_kv_pairs=pairs,
                num_examples=counts[0], num_test_examples=counts[1], seed=seed,
                power_a=float(power_a), random_non_queries=bool(random_non_queries),
                remove_overlap=bool(remove_overlap))
    return finish_dataset(mqar_vocab(vocab_size), args, splits[0], splits[1], remove_overlap)


