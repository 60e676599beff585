"""Synthetic data: safari parity, token roles, the Bayes ceiling, overlap, seeds, refusals."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import UserError
from models.data.mqar import mqar_dataset
from models.data.synthetics import (ICLData, Roles, _unique_split, icl_dataset,
                               train_acc_all_ceiling)
from models.data.vocab import decode, encode, icl_vocab

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "data"
FIXTURE_FILES = sorted(FIXTURES.glob("*.safetensors")) if FIXTURES.is_dir() else []
needs_fixtures = pytest.mark.skipif(not FIXTURE_FILES, reason=f"safari fixtures absent: {FIXTURES}")


def _fixture(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@functools.lru_cache(maxsize=None)
def _icl(task: str, vocab: int, length: int, n: int, n_test: int, seed: int,
         remove: bool = False) -> ICLData:
    return icl_dataset(task, vocab, length, n, n_test, seed, remove_overlap=remove)


def _from_meta(md: dict) -> ICLData:
    return _icl(md["task"], int(md["vocab_size"]), int(md["input_seq_len"]),
                int(md["num_examples"]), int(md["num_test_examples"]), int(md["seed"]))


AR_FIXTURE = ("assoc_recall", 10, 64, 5000, 500, 0)
SMALL = {  # cheap configs with every task, for role checks on both splits
    "ar": lambda: _icl("assoc_recall", 20, 40, 300, 100, 1),
    "ih": lambda: _icl("induction_head", 16, 32, 300, 100, 1),
    "mqar": lambda: mqar_dataset(64, 64, 8, 300, 100, 1),
}


# ------------------------------------------------------------------ parity

@needs_fixtures
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_matches_safari_fixture_element_for_element(path):
    md, tensors = _fixture(path)
    data = _from_meta(md)
    for name, expected in tensors.items():
        got = getattr(data, name)
        assert got.dtype == torch.int64 and got.shape == expected.shape, name
        assert torch.equal(got, expected), name
    assert (data.train_targets != -100).all()
    assert (data.test_targets[:, :-1] == -100).all() and (data.test_targets[:, -1] >= 0).all()
    assert data.overlap == 0 and data.removed_overlap == 0


def test_vocab_layout_and_codec():
    assert icl_vocab(10) == [".", "0", "1", "2", "3", "4", "5", "6", "7", "=>"]
    v20 = icl_vocab(20)
    assert v20[0] == "." and v20[-1] == "=>" and v20[2] == "1" and v20[3] == "10"
    ids = encode("3 10 => 3", v20)
    assert decode(ids, v20) == "3 10 => 3"
    assert decode([-100, 19], v20) == "_ =>"
    with pytest.raises(UserError):
        encode("nope", v20)


# ------------------------------------------------------------------ roles

def _rows(mask: torch.Tensor, row: int) -> list[int]:
    return mask[row].nonzero().flatten().tolist()


@pytest.mark.parametrize("split", ["train", "test"])
def test_ar_roles(split):
    data = SMALL["ar"]()
    inputs, targets, roles = data.split(split)
    answer = data.train_targets[:, -1] if split == "train" else targets[:, -1]
    n, length = inputs.shape
    pairs, keys = (length - 2) // 2, (20 - 2) // 2
    q = inputs[:, -1]
    ctx = torch.arange(length) < 2 * pairs
    even = torch.arange(length) % 2 == 0
    assert torch.equal(roles.key, (ctx & even).expand(n, length))
    assert torch.equal(roles.value, (ctx & ~even).expand(n, length))
    assert ((inputs[roles.key] >= 1) & (inputs[roles.key] <= keys)).all()
    assert (inputs[roles.value] > keys).all()
    assert roles.query[:, -1].all() and roles.query.sum() == n
    assert roles.answer[:, -1].all() and roles.answer.sum() == n
    assert not roles.trigger.any() and not roles.copy.any()
    for i in range(n):
        mk, mv = _rows(roles.match_key, i), _rows(roles.match_value, i)
        assert mk and mv == [p + 1 for p in mk]
        assert (inputs[i, mk] == q[i]).all() and (inputs[i, mv] == answer[i]).all()
        other_keys = set(_rows(roles.key, i)) - set(mk)
        assert (inputs[i, sorted(other_keys)] != q[i]).all()
        assert roles.match_index[i, -1] == mk[-1] and (roles.match_index[i, :-1] == -1).all()


def _lookup(inputs_row, key_row, i):
    """The value after the latest earlier key position holding inputs[i], or None."""
    for j in range(i - 1, -1, -1):
        if key_row[j] and inputs_row[j] == inputs_row[i]:
            return int(inputs_row[j + 1])
    return None


def test_ar_recallable_means_predictable_by_lookup():
    data = SMALL["ar"]()
    inputs, targets, roles = data.train_inputs, data.train_targets, data.train_roles
    for i in range(50):
        x, key = inputs[i].tolist(), roles.key[i].tolist()
        for pos in range(len(x)):
            hit = _lookup(x, key, pos) if (key[pos] or pos == len(x) - 1) else None
            assert bool(roles.recallable[i, pos]) == (hit is not None), (i, pos)
            if hit is not None:
                assert hit == targets[i, pos]
    assert roles.recallable[:, -1].all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_ih_roles(split):
    data = SMALL["ih"]()
    inputs, targets, roles = data.split(split)
    answer = (data.train_targets if split == "train" else targets)[:, -1]
    copy_id = len(data.vocab) - 1
    n = inputs.shape[0]
    assert roles.trigger.sum(1).eq(1).all() and roles.copy.sum(1).eq(1).all()
    assert (inputs[roles.trigger] == copy_id).all()
    assert (inputs[:, :-1] == copy_id).sum() == n  # the trigger is the only earlier `=>`
    assert torch.equal(inputs[roles.copy], answer)
    assert torch.equal(roles.copy[:, 1:], roles.trigger[:, :-1])
    assert torch.equal(roles.match_key, roles.trigger)
    assert torch.equal(roles.match_value, roles.copy)
    assert (inputs[:, -1] == copy_id).all() and roles.query[:, -1].all() and roles.query.sum() == n
    only_last = torch.zeros_like(roles.recallable)
    only_last[:, -1] = True
    assert torch.equal(roles.recallable, only_last) and torch.equal(roles.answer, only_last)
    trig = roles.trigger.to(torch.int8).argmax(1)
    assert torch.equal(roles.match_index[:, -1], trig)
    assert torch.equal(inputs[torch.arange(n), trig + 1], answer)  # lookup predicts the answer
    assert not roles.key.any() and not roles.value.any()


@pytest.mark.parametrize("split", ["train", "test"])
def test_mqar_roles_and_labels(split):
    data = SMALL["mqar"]()
    inputs, targets, roles = data.split(split)
    n, pairs = inputs.shape[0], 8
    assert torch.equal(targets != -100, roles.query)
    assert torch.equal(roles.answer, roles.query) and torch.equal(roles.recallable, roles.query)
    assert (roles.query.sum(1) == pairs).all() and not roles.query[:, :2 * pairs].any()
    assert (roles.key.sum(1) == pairs).all() and torch.equal(roles.match_key, roles.key)
    assert torch.equal(roles.value[:, 1:], roles.key[:, :-1])
    keys, values = inputs[roles.key].view(n, pairs), inputs[roles.value].view(n, pairs)
    assert all(len(set(r)) == pairs for r in keys.tolist())
    assert ((keys >= 1) & (keys < 32)).all() and ((values >= 32) & (values < 64)).all()
    rows, pos = roles.query.nonzero(as_tuple=True)
    mi = roles.match_index[rows, pos]
    assert (mi >= 0).all() and (mi < 2 * pairs).all()
    assert torch.equal(inputs[rows, mi], inputs[rows, pos])       # the matching key
    assert torch.equal(inputs[rows, mi + 1], targets[rows, pos])  # the value after it answers
    assert (roles.match_index[~roles.query] == -1).all()
    assert train_acc_all_ceiling(data, split) == 1.0


def test_mqar_query_gaps_follow_a_decreasing_power_law():
    data = mqar_dataset(64, 64, 8, 4000, 1, 0)
    gaps = (data.train_roles.query[:, 16::2]).sum(0).double()
    assert gaps[0] > gaps[4] > gaps[12] > gaps[-1] > 0
    assert not data.train_roles.query[:, 17::2].any()  # queries only at even offsets


# ------------------------------------------------------------------ ceiling

def _ar_bayes(x: list[int], keys: int, values: int, copy_id: int) -> list[float]:
    """Per-target max probability, from the prefix alone (a slow independent reference)."""
    out, seen = [], {}
    pairs = (len(x) - 2) // 2
    for i in range(len(x)):
        if i < 2 * pairs and i % 2 == 0:
            out.append(1.0 if x[i] in seen else 1 / values)
            seen[x[i]] = x[i + 1]
        elif i < 2 * pairs - 1:
            out.append(1 / keys)
        elif i == 2 * pairs - 1:
            out.append(1.0)
        elif x[i] == copy_id:
            out.append(1 / len(seen))
        else:
            out.append(1.0)
    return out


@needs_fixtures
def test_ar_ceiling_on_safari_fixture():
    data = _icl(*AR_FIXTURE)
    ceiling = train_acc_all_ceiling(data)
    assert 0.57 <= ceiling <= 0.61
    ref = [np.mean(_ar_bayes(r, 4, 4, 9)) for r in data.train_inputs[:300].tolist()]
    small = dataclasses.replace(data, train_inputs=data.train_inputs[:300],
                                train_targets=data.train_targets[:300],
                                train_roles=data.train_roles.select(slice(0, 300)))
    assert train_acc_all_ceiling(small) == pytest.approx(float(np.mean(ref)), abs=1e-12)
    assert train_acc_all_ceiling(data, "test") == 1.0


def test_ih_ceiling_between_guessing_and_exact():
    data = SMALL["ih"]()
    tokens, length = 14, data.train_inputs.shape[1]
    ceiling = train_acc_all_ceiling(data)
    assert 1 / tokens < ceiling < 1 / tokens + 3 / length


# ------------------------------------------------------------------ overlap, seeds

def test_overlap_counted_and_removed_exactly():
    base = _icl("assoc_recall", 6, 4, 15, 10, 0)  # 20 possible sequences: overlap is certain
    train_rows = torch.cat([base.train_inputs, base.train_targets[:, -1:]], 1)
    train = {tuple(r) for r in train_rows.tolist()}
    test_rows = torch.cat([base.test_inputs, base.test_targets[:, -1:]], 1).tolist()
    in_train = torch.tensor([tuple(r) in train for r in test_rows])
    assert base.overlap == int(in_train.sum()) > 0 and base.removed_overlap == 0
    cut = _icl("assoc_recall", 6, 4, 15, 10, 0, remove=True)
    assert cut.removed_overlap == base.overlap and cut.overlap == 0
    assert torch.equal(cut.train_inputs, base.train_inputs)
    assert torch.equal(cut.test_inputs, base.test_inputs[~in_train])
    assert torch.equal(cut.test_targets, base.test_targets[~in_train])
    assert torch.equal(cut.test_roles.match_key, base.test_roles.match_key[~in_train])
    assert len(cut.test_inputs) == 10 - base.overlap


@pytest.mark.parametrize("make", [
    lambda s: icl_dataset("assoc_recall", 10, 16, 200, 20, s),
    lambda s: icl_dataset("induction_head", 10, 16, 200, 20, s),
    lambda s: mqar_dataset(32, 32, 4, 200, 20, s),
], ids=["ar", "ih", "mqar"])
def test_seed_determinism(make):
    a, b, c = make(3), make(3), make(4)
    for name in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.train_roles.match_index, b.train_roles.match_index)
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert a.args == b.args and a.args["seed"] == 3


def test_shapes_and_single_example_sets():
    odd = icl_dataset("assoc_recall", 10, 7, 3, 1, 0)  # 3 pairs, then `=> q`
    assert odd.train_inputs.shape == (3, 8) and odd.train_roles.key.sum() == 9
    one = icl_dataset("induction_head", 10, 8, 1, 1, 0)
    assert (one.test_inputs >= 0).all()  # masking the targets leaves the inputs alone
    assert one.test_inputs.shape == one.test_targets.shape == (1, 9)
    assert torch.equal(one.train_inputs[:, 1:], one.train_targets[:, :-1])


def test_train_set_is_deduplicated():
    data = _icl("induction_head", 4, 6, 40, 10, 0)  # 4 * 2^5 = 128 possible: dedup + top-up
    assert len({tuple(r) for r in data.train_inputs.tolist()}) == 40


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("call", [
    lambda: icl_dataset("copying", 10, 64, 10, 10, 0),
    lambda: icl_dataset("assoc_recall", 3, 64, 10, 10, 0),       # no room for a key and a value
    lambda: icl_dataset("induction_head", 2, 64, 10, 10, 0),     # no non-special token
    lambda: icl_dataset("assoc_recall", 10, 1, 10, 10, 0),       # no pair fits
    lambda: icl_dataset("induction_head", 10, 2, 10, 10, 0),     # no trigger position
    lambda: icl_dataset("assoc_recall", 10, 64, 0, 10, 0),
    lambda: icl_dataset("assoc_recall", 10, 64, 10, 0, 0),
    lambda: icl_dataset("assoc_recall", 10, 64, 10, 10, -1),
    lambda: icl_dataset("assoc_recall", 10, 64.0, 10, 10, 0),
    lambda: icl_dataset("assoc_recall", 4, 8, 2, 1, 0),          # only 1 distinct sequence
    lambda: icl_dataset("induction_head", 3, 10, 100, 1, 0),     # only 8 distinct sequences
    lambda: icl_dataset("assoc_recall", 4, 8, 1, 1, 0, remove_overlap=True),  # nothing left
    lambda: mqar_dataset(16, 64, 8, 10, 10, 0),                  # 8 pairs, 7 keys
    lambda: mqar_dataset(64, 30, 8, 10, 10, 0),                  # 8 pairs + 8 queries > 30
    lambda: mqar_dataset(64, 64, 0, 10, 10, 0),
    lambda: mqar_dataset(64, 64, 8, 10, 10, 0, power_a=0.0),
], ids=lambda _: "")
def test_impossible_configs_raise_one_line(call):
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert message and "\n" not in message and ";" in message  # the problem; the fix


def test_top_up_is_bounded():
    def same(rng):
        rng.random()
        return np.zeros(3, dtype=np.int64), None
    with pytest.raises(UserError, match="unique"):
        _unique_split(np.random.default_rng(0), 2, same, "train")


def test_roles_is_a_frozen_dataclass_of_aligned_tensors():
    data = SMALL["ar"]()
    roles = data.train_roles
    assert isinstance(roles, Roles)
    with pytest.raises(AttributeError):
        roles.key = roles.value  # type: ignore[misc]
    sub = roles.select(torch.tensor([2, 0]))
    assert torch.equal(sub.match_key[1], roles.match_key[0])
    assert roles.match_index.dtype == torch.int64 and roles.key.dtype == torch.bool
    assert roles.key.shape == data.train_inputs.shape
