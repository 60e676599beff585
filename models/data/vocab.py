"""Token vocabularies of the synthetic tasks, and encode/decode between strings and ids.

Safari's ICL vocabulary (see /work/shared/docs/science.md, "Tasks"): `vocab_size` counts the two
specials `.` (noop) and `=>` (copy prefix); the tokens are "0".."vocab_size-3" plus the specials,
sorted as strings, and a token's id is its index. Since "." < "0".."9" < "=>" as strings, `.` is
always id 0, `=>` is always id vocab_size-1 and the non-special tokens are ids 1..vocab_size-2
(in string order, so for vocab 20 id 2 is "1" and id 3 is "10").

MQAR (zoology) uses raw ids: 0 is the filler, keys are 1..vocab_size//2-1, values
vocab_size//2..vocab_size-1. Its string names are "." for 0 and str(i) otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from models.errors import UserError

NOOP = "."
COPY_PREFIX = "=>"
IGNORE_INDEX = -100  # masked target (PyTorch's cross-entropy ignore_index)


def icl_vocab(vocab_size: int) -> list[str]:
    """Safari's sorted token list for `vocab_size` (specials included)."""
    if vocab_size < 3:
        raise UserError(f"vocab_size={vocab_size} leaves no non-special token "
                        "(2 are `.` and `=>`); "
                        "use vocab_size >= 3")
    return sorted([str(i) for i in range(vocab_size - 2)] + [NOOP, COPY_PREFIX])


def mqar_vocab(vocab_size: int) -> list[str]:
    """Names of zoology's MQAR ids: "." for the filler id 0, str(i) for id i >= 1."""
    return [NOOP] + [str(i) for i in range(1, vocab_size)]


def encode(tokens: str | Iterable[str], vocab: Sequence[str]) -> list[int]:
    """Token strings (a list, or one whitespace-separated string) -> ids in `vocab`."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    index = {t: i for i, t in enumerate(vocab)}
    out = []
    for t in tokens:
        if t not in index:
            raise UserError(f"token {t!r} is not in the vocabulary ({len(vocab)} tokens); "
                            "use tokens from data.vocab")
        out.append(index[t])
    return out


def decode(ids: Iterable[int], vocab: Sequence[str], *, ignore: str = "_") -> str:
    """Ids -> one space-separated string; the masked target id -100 reads as `ignore`."""
    words = []
    for i in (int(x) for x in ids):
        if i == IGNORE_INDEX:
            words.append(ignore)
        elif 0 <= i < len(vocab):
            words.append(vocab[i])
        else:
            raise UserError(f"token id {i} is outside the vocabulary (0..{len(vocab) - 1}); "
                            "decode with the vocabulary the data was generated with")
    return " ".join(words)


def count_ar_sequences(num_pairs: int, num_keys: int, num_values: int) -> int:
    """Exact number of distinct safari AR sequences (one key per pair, allow_dot False).

    A sequence is a key string over `num_keys` keys with D distinct keys, a value per distinct key,
    and a query among the D present keys: sum_D S(P, D) * K!/(K-D)! * V^D * D, with S the Stirling
    numbers of the second kind. Used to refuse unique-set sizes that cannot exist.
    """
    max_d = min(num_pairs, num_keys)
    stirling = [1] + [0] * max_d  # S(0, d)
    for _ in range(num_pairs):
        stirling = [0] + [d * stirling[d] + stirling[d - 1] for d in range(1, max_d + 1)]
    total, falling = 0, 1
    for d in range(1, max_d + 1):
        falling *= num_keys - d + 1
        total += stirling[d] * falling * num_values ** d * d
    return total


def count_ih_sequences(input_seq_len: int, num_tokens: int) -> int:
    """Distinct safari IH sequences: trigger position (L-2 choices) times the other L-1 tokens."""
    return (input_seq_len - 2) * num_tokens ** (input_seq_len - 1)
