"""Synthetic recall tasks with token roles: safari's AR and induction head (MQAR: `models.data.mqar`).

Definitions follow /work/shared/docs/science.md ("Tasks", "Token roles", "Data",
`train_acc_all_ceiling`). `icl_dataset` reproduces safari's `ICLDataModule.setup()` element for
element: the same numpy `default_rng(seed)` call sequence, `torch.unique(dim=0)` dedup, top-up
loop and `rng.shuffle`, with safari's defaults num_keys 1, induction_len 1, allow_dot False. It
works on integer ids, but it draws exactly what safari draws.

The generator records the roles from its own draws (pair keys, query, trigger position, query
positions). They are never inferred from the tokens afterwards, and they follow the dedup and
the shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.errors import UserError
from models.data.vocab import IGNORE_INDEX, count_ar_sequences, count_ih_sequences, icl_vocab

COPY_METHODS = ("assoc_recall", "induction_head")


@dataclass(frozen=True, eq=False)
class Roles:
    """Token roles of one split (science.md, "Token roles"). Each field is [n, L], like `inputs`.

    Masks indexed by input position (position i holds the role):
      key, value   context pair positions (AR: the L//2 pairs; MQAR: the N pairs; IH: none).
      query        AR/IH: the last input position (q, or the final `=>`); MQAR: every query.
      match_key    context key positions holding the query's key. AR: every pair with key q.
                   MQAR: the union over the queries, i.e. all N keys. IH: the trigger.
      match_value  the position right after each match_key position.
      trigger      IH only: the earlier `=>`, at position p.
      copy         IH only: position p+1, whose token is the answer.
    Masks indexed by target (position i describes targets[:, i], the token after inputs[:, i]):
      answer       targets that answer a query (AR/IH: the last position; MQAR: each query).
      recallable   the target is a value whose key appeared earlier in the input, in a pair with
                   that value. AR: a value target (the input is a key) whose key occurred in an
                   earlier pair, and the final answer, always. IH: only the final answer. MQAR:
                   every query target.
    match_index    int64. At each query position, the position of its matching key (AR: the most
                   recent matching pair; IH: the trigger). It is -1 elsewhere.
    """

    key: Bool[Tensor, "n L"]
    value: Bool[Tensor, "n L"]
    query: Bool[Tensor, "n L"]
    answer: Bool[Tensor, "n L"]
    match_key: Bool[Tensor, "n L"]
    match_value: Bool[Tensor, "n L"]
    trigger: Bool[Tensor, "n L"]
    copy: Bool[Tensor, "n L"]
    recallable: Bool[Tensor, "n L"]
    match_index: Int[Tensor, "n L"]

    def select(self, index: Any) -> "Roles":
        """The roles of rows `index` (anything that indexes dim 0 of a tensor)."""
        return Roles(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True, eq=False)
class ICLData:
    """The train and test sets of one generator call.

    `overlap` counts the test sequences that also appear in the train set, as returned (so 0
    after `remove_overlap`); `removed_overlap` is how many test sequences that dropped. `args`
    holds the generator arguments, `task` included, for provenance (run.json).
    """

    train_inputs: Int[Tensor, "n L"]
    train_targets: Int[Tensor, "n L"]
    test_inputs: Int[Tensor, "m L"]
    test_targets: Int[Tensor, "m L"]
    train_roles: Roles
    test_roles: Roles
    vocab: list[str]
    args: dict[str, Any]
    overlap: int
    removed_overlap: int

    def split(self, name: str) -> tuple[Tensor, Tensor, Roles]:
        """(inputs, targets, roles) of split "train" or "test"."""
        if name not in ("train", "test"):
            raise UserError(f"unknown split {name!r}; use 'train' or 'test'")
        return (getattr(self, f"{name}_inputs"), getattr(self, f"{name}_targets"),
                getattr(self, f"{name}_roles"))


def check_int(name: str, value: Any, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {value!r}; {fix}")
    if value < minimum:
        raise UserError(f"{name}={value} is too small (needs >= {minimum}); {fix}")
    return int(value)


def check_counts(num_examples: Any, num_test_examples: Any, seed: Any) -> tuple[list[int], int]:
    counts = [check_int(name, value, 1, "ask for at least one example") for name, value
              in (("num_examples", num_examples), ("num_test_examples", num_test_examples))]
    return counts, check_int("seed", seed, 0, "use a non-negative integer seed")


# ------------------------------------------------------------------ safari's ICL draws
# Each draw returns (the full token sequence, the generator's facts for the roles) and
# consumes the rng exactly like safari's generate_assoc_recall / generate_induction_head.
# Vectorized rng.integers(size=k) yields the same stream as k scalar rng.choice calls.

def _ar_draw(rng: np.random.Generator, num_pairs: int, num_keys: int, num_values: int,
             copy_id: int) -> tuple[np.ndarray, tuple[np.ndarray, int]]:
    kv = rng.integers(0, num_values, size=num_keys)        # kv_map: choice(values), per key
    pair_keys = rng.integers(0, num_keys, size=num_pairs)  # choice(keys), per pair
    q = int(rng.integers(0, num_keys))                     # the query's first draw
    present = dict.fromkeys(pair_keys.tolist())            # key_present, insertion order
    if q not in present:
        order = list(present)
        while q not in present:
            q = order[int(rng.integers(0, len(order)))]
    seq = np.empty(2 * num_pairs + 3, dtype=np.int64)
    seq[0:-3:2] = 1 + pair_keys                            # key ids 1..K
    seq[1:-3:2] = 1 + num_keys + kv[pair_keys]             # value ids K+1..K+V
    seq[-3:] = (copy_id, 1 + q, 1 + num_keys + kv[q])
    return seq, (pair_keys, q)


def _ih_draw(rng: np.random.Generator, seq_len: int, probs: np.ndarray,
             copy_id: int) -> tuple[np.ndarray, int]:
    seq = rng.choice(len(probs), size=seq_len, replace=True, p=probs)  # generate_start_seq
    rng.uniform()  # safari's num_triggers coin: a no-op with one trigger, but it draws
    p = int(rng.integers(seq_len - 2, size=1)[0])
    seq = np.concatenate([seq, [copy_id, seq[p + 1]]]).astype(np.int64)
    seq[p] = copy_id
    return seq, p


def _unique_split(rng: np.random.Generator, count: int, draw: Callable, label: str):
    """Safari's split: `count` draws, torch.unique(dim=0) dedup, top-up until `count`, shuffle."""
    seqs, facts = map(list, zip(*(draw(rng) for _ in range(count))))
    uniq, inverse = torch.unique(torch.from_numpy(np.stack(seqs)), dim=0, sorted=False,
                                 return_inverse=True)
    first = np.full(len(uniq), count)
    np.minimum.at(first, inverse.numpy(), np.arange(count))  # a draw for each unique row
    order = first.tolist()
    seen = set(map(tuple, uniq.tolist()))
    budget = 20 * count + 10_000  # a bound on the top-up; safari would loop forever
    while len(order) < count:
        budget -= 1
        if budget < 0:
            raise UserError(f"could not find {count} unique {label} sequences "
                            f"({len(order)} found); "
                            "ask for fewer examples or raise vocab_size / input_seq_len")
        seq, fact = draw(rng)
        key = tuple(seq.tolist())
        if key not in seen:
            seen.add(key)
            order.append(len(seqs))
            seqs.append(seq)
            facts.append(fact)
    perm = np.arange(count)
    rng.shuffle(perm)  # same permutation as safari's rng.shuffle of its list of lists
    chosen = [order[i] for i in perm]
    return np.stack([seqs[i] for i in chosen]), [facts[i] for i in chosen]


# ------------------------------------------------------------------ roles from the draws

def blank_roles(n: int, length: int) -> dict[str, Tensor]:
    out = {f.name: torch.zeros(n, length, dtype=torch.bool) for f in fields(Roles)}
    out["match_index"] = torch.full((n, length), -1, dtype=torch.int64)
    return out


def _ar_roles(facts: list) -> Roles:
    pair_keys = np.stack([f[0] for f in facts])
    q = np.array([f[1] for f in facts])
    n, pairs = pair_keys.shape
    r = blank_roles(n, 2 * pairs + 2)
    ctx_k, ctx_v = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
    r["key"][:, ctx_k] = True
    r["value"][:, ctx_v] = True
    for name in ("query", "answer", "recallable"):
        r[name][:, -1] = True
    match = torch.from_numpy(pair_keys == q[:, None])
    r["match_key"][:, ctx_k] = match
    r["match_value"][:, ctx_v] = match
    last = pairs - 1 - match.flip(1).to(torch.int8).argmax(1)  # q is always present
    r["match_index"][:, -1] = 2 * last
    # A pair's value is recallable when its key occurred in an earlier pair (not a first one).
    order = np.argsort(pair_keys, axis=1, kind="stable")
    ranked = np.take_along_axis(pair_keys, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    r["recallable"][:, ctx_k] = torch.from_numpy(~first)
    return Roles(**r)


def _ih_roles(facts: list, length: int) -> Roles:
    p = torch.tensor(facts, dtype=torch.int64)
    rows = torch.arange(len(facts))
    r = blank_roles(len(facts), length)
    for name, at in (("trigger", p), ("match_key", p), ("copy", p + 1), ("match_value", p + 1)):
        r[name][rows, at] = True
    for name in ("query", "answer", "recallable"):
        r[name][:, -1] = True
    r["match_index"][:, -1] = p
    return Roles(**r)


def finish_dataset(vocab: list[str], args: dict, train: tuple, test: tuple, remove: bool) -> ICLData:
    """Counts (and, on request, drops) test sequences that also appear in the train set."""
    def rows(inputs: Tensor, targets: Tensor) -> list[tuple]:
        # The input plus the last target identifies a sequence (test targets are masked).
        return list(map(tuple, torch.cat([inputs, targets[:, -1:]], 1).tolist()))

    train_rows = set(rows(train[0], train[1]))
    in_train = torch.tensor([r in train_rows for r in rows(test[0], test[1])], dtype=torch.bool)
    overlap, removed = int(in_train.sum()), 0
    if remove and overlap:
        if overlap == len(in_train):
            raise UserError(f"all {overlap} test sequences also appear in the train set; "
                            "raise vocab_size / input_seq_len, or keep the overlap")
        keep = ~in_train
        test = (test[0][keep], test[1][keep], test[2].select(keep))
        overlap, removed = 0, overlap
    return ICLData(train[0], train[1], test[0], test[1], train[2], test[2], vocab,
                   args, overlap, removed)


def icl_dataset(copy_method: str, vocab_size: int, input_seq_len: int, num_examples: int,
                num_test_examples: int, seed: int, *, remove_overlap: bool = False) -> ICLData:
    """Safari's AR or induction-head data, element for element, with token roles.

    Equal to `ICLDataModule(num_examples, num_test_examples, vocab_size, input_seq_len,
    copy_method, seed=seed).setup()`. Inputs are [n, 2*(input_seq_len//2) + 2] for AR and
    [n, input_seq_len + 1] for IH. Train targets are never masked. Test targets are -100
    except at the last position. One rng draws the train set, then the test set. Each set is
    deduplicated within itself; the test set may overlap the train set (science.md, "Data").
    `remove_overlap=True` drops those test sequences; safari keeps them, and so does the default.
    """
    if copy_method not in COPY_METHODS:
        raise UserError(f"unknown copy_method {copy_method!r}; "
                        f"use one of {', '.join(COPY_METHODS)}")
    ar = copy_method == "assoc_recall"
    vocab_size = check_int("vocab_size", vocab_size, 4 if ar else 3, "it counts `.` and `=>`, "
                            + ("and AR needs a key and a value" if ar else "and IH needs a token"))
    length = check_int("input_seq_len", input_seq_len, 2 if ar else 3,
                        "AR needs one key-value pair" if ar else "IH needs a trigger position")
    counts, seed = check_counts(num_examples, num_test_examples, seed)
    vocab, num_tokens, copy_id = icl_vocab(vocab_size), vocab_size - 2, vocab_size - 1
    pairs, num_keys = length // 2, num_tokens // 2
    probs = np.array([0.0] + [1 / num_tokens] * num_tokens + [0.0])  # safari's p: specials 0
    if ar:
        def draw(rng):
            return _ar_draw(rng, pairs, num_keys, num_tokens - num_keys, copy_id)
        plenty = num_keys >= 2 and pairs >= max(counts).bit_length()  # K^P > count
    else:
        def draw(rng):
            return _ih_draw(rng, length, probs, copy_id)
        plenty = num_tokens >= 2 and length - 1 >= max(counts).bit_length()
    if not plenty:  # exact count only when the space may be small (big ints otherwise)
        cap = (count_ar_sequences(pairs, num_keys, num_tokens - num_keys) if ar
               else count_ih_sequences(length, num_tokens))
        for label, count in zip(("train", "test"), counts):
            if count > cap:
                raise UserError(f"{label} set asks for {count} unique {copy_method} sequences but "
                                f"vocab_size={vocab_size}, input_seq_len={length} allow only "
                                f"{cap}; ask for fewer or raise vocab_size / input_seq_len")
    rng = np.random.default_rng(seed)
    splits = []
    for label, count in zip(("train", "test"), counts):
        seqs, facts = _unique_split(rng, count, draw, label)
        # Own copies: inputs and targets overlap in `seqs`, and the test targets get masked.
        inputs, targets = torch.tensor(seqs[:, :-1]), torch.tensor(seqs[:, 1:])
        roles = _ar_roles(facts) if ar else _ih_roles(facts, length + 1)
        splits.append((inputs, targets, roles))
    splits[1][1][:, :-1] = IGNORE_INDEX  # safari scores the test set on the last position only
    args = dict(task=copy_method, copy_method=copy_method, vocab_size=vocab_size,
                input_seq_len=length, num_examples=counts[0], num_test_examples=counts[1],
                seed=seed, num_keys=1, induction_len=1, allow_dot=False,
                remove_overlap=bool(remove_overlap))
    return finish_dataset(vocab, args, splits[0], splits[1], remove_overlap)


# ------------------------------------------------------------------ the Bayes ceiling

def _ceiling_weights(data: ICLData, inputs: Tensor, roles: Roles) -> Float[Tensor, "n L"]:
    n, length = inputs.shape
    task, num_tokens = data.args["task"], data.args["vocab_size"] - 2
    w = roles.recallable.to(torch.float64)  # recallable targets are exact
    if task == "assoc_recall":
        pairs, num_keys = (length - 2) // 2, num_tokens // 2
        ctx_k = slice(0, 2 * pairs, 2)
        w[:, ctx_k] = torch.where(roles.recallable[:, ctx_k], 1.0, 1 / (num_tokens - num_keys))
        w[:, 1:2 * pairs - 1:2] = 1 / num_keys  # after a value comes a fresh uniform key
        w[:, 2 * pairs - 1] = 1.0               # `=>` follows the last pair: fixed position
        present = torch.zeros(n, data.args["vocab_size"], dtype=torch.bool)
        present.scatter_(1, inputs[:, ctx_k], True)
        w[:, 2 * pairs] = 1 / present.sum(1)    # q: uniform over the distinct keys present
    elif task == "induction_head":
        seq_len = length - 1
        p = roles.trigger.to(torch.int8).argmax(1, keepdim=True)
        i = torch.arange(length).expand(n, length)
        # Before the trigger is seen, it lies uniformly in i+1..L-3 (m places): "=>" has
        # probability 1/m, each token (1-1/m)/#tokens; the argmax gets the larger.
        m = (seq_len - 3 - i).clamp(min=1).to(torch.float64)
        w = torch.where(i < p, torch.maximum(1 / m, (1 - 1 / m) / num_tokens), 1 / num_tokens)
        w[:, seq_len - 1:] = 1.0                # the final `=>` (fixed position) and the answer
    return w


def train_acc_all_ceiling(data: ICLData, split: str = "train") -> float:
    """Bayes-optimal accuracy over the scored targets (those != -100) of `split` (science.md).

    Each target counts the probability that the argmax of its true conditional distribution
    given the prefix is right, averaged over all scored targets:
      AR: a recallable target 1; `=>` (fixed position after the last pair) 1; a key 1/#keys;
          a value of a key not seen before 1/#values; the query 1/#distinct keys in the context
          (safari redraws it among the present keys, so it is uniform over them); the answer 1.
      IH: the answer and the final `=>` 1. Before the trigger, with m places left for it,
          max(1/m, (1-1/m)/#tokens). From the trigger on (the copied token included) 1/#tokens.
      MQAR: only query targets are scored, and all are recallable: 1.
    On the safari AR fixture (vocab 10, length 64, seed 0, train) this is about 0.59.
    """
    inputs, targets, roles = data.split(split)
    scored = targets != IGNORE_INDEX
    if not bool(scored.any()):
        return float("nan")
    w = _ceiling_weights(data, inputs, roles)
    return float(w[scored].sum() / scored.sum())
