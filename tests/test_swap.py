"""The position-swap recall test (interp/swap.py): exact swaps, known answers, determinism."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from interp.probe_set import probe_set_from_data
from interp.swap import probe_task, swap_metrics, swap_plan, value_candidates, value_swap
from models import build_model
from models.errors import UserError
from models.data.mqar import mqar_dataset
from models.data.synthetics import icl_dataset
from tests.conftest import jitter_, tiny_hyena_config

BIG = 100.0
BASE = ("recall_swap_follow", "recall_swap_control", "recall_swap_selectivity", "recall_swap_drop",
        "recall_swap_positions")
KEYS = ("recall_swap_key_drop", "recall_swap_key_control_drop")
MQAR_V, MQAR_PAIRS = 16, 3


@pytest.fixture(scope="module")
def sets():
    data = {
        "ar": icl_dataset("assoc_recall", 10, 16, 200, 60, 0),        # inputs [60, 18]
        "ih": icl_dataset("induction_head", 10, 16, 200, 60, 0),      # inputs [60, 17]
        "mqar": mqar_dataset(MQAR_V, 24, MQAR_PAIRS, 200, 60, 0),     # inputs [60, 24]
    }
    return {k: probe_set_from_data(d, n_probe=48, n_circuit=16, seed=0) for k, d in data.items()}


# ---------------------------------------------------------------- hand-built models
class Lookup(nn.Module):
    """At each position p: BIG · one-hot of the token after the last earlier position j that
    holds tokens[p] and is one of the hard-coded key positions (zero logits where none)."""

    def __init__(self, vocab: int, key_positions):
        super().__init__()
        self.vocab, self.key_positions = vocab, key_positions
        self.saw_training: list[bool] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.saw_training.append(self.training)
        b, L = tokens.shape
        ar = torch.arange(L)
        kp = self.key_positions(L)  # [L] bool
        same = (tokens[:, :, None] == tokens[:, None, :]) & kp & (ar[None, :] < ar[:, None])  # [b, p, j]
        j = torch.where(same, ar, -1).max(-1).values  # [b, L]
        val = tokens.gather(1, (j + 1).clamp(max=L - 1))
        logits = torch.zeros(b, L, self.vocab)
        logits.scatter_(2, val[..., None], BIG)
        return logits * (j >= 0)[..., None]


def ar_oracle():  # context keys: the even positions before `=>`, q
    return Lookup(10, lambda n: (torch.arange(n) % 2 == 0) & (torch.arange(n) < n - 2))


def ih_oracle():  # the query `=>` finds the earlier trigger `=>`: the token after it
    return Lookup(10, lambda n: torch.ones(n, dtype=torch.bool))


def mqar_oracle():  # keys: the even positions of the leading pairs
    return Lookup(MQAR_V, lambda n: (torch.arange(n) % 2 == 0) & (torch.arange(n) < 2 * MQAR_PAIRS))


class MostFrequentValue(nn.Module):
    """BIG · one-hot of the most frequent AR value token (ids 5..8 at vocab 10) of the sequence."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, L = tokens.shape
        counts = torch.zeros(b, 10).scatter_add_(1, tokens, torch.ones(b, L))
        counts[:, :5] = -1
        counts[:, 9] = -1
        logits = torch.zeros(b, L, 10)
        logits.scatter_(2, counts.argmax(1)[:, None, None].expand(b, L, 1), BIG)
        return logits


def _nan_none(rows):
    """Rows with NaN as None, so that equal rows compare equal."""
    return [{k: None if isinstance(x, float) and math.isnan(x) else x for k, x in r.items()} for r in rows]


def _v(rows):
    return {r["metric"]: r for r in rows}


# ---------------------------------------------------------------- the swaps themselves
def _check_control(ps, plan, pool):
    """Control positions: in the pool (non-matching, before the query, neither answer nor s),
    as many as the matching ones when the pool has enough, else all of it."""
    tokens = ps.inputs[plan.row]
    assert not bool((plan.control & plan.written).any())
    assert not bool((plan.control & ~pool).any())
    assert not bool((plan.control & (tokens == plan.answer[:, None])).any())
    assert not bool((plan.control & (tokens == plan.substitute[:, None])).any())
    want = torch.minimum(plan.written.sum(1), pool.sum(1))
    assert torch.equal(plan.control.sum(1), want)
    assert bool((plan.control.sum(1) == plan.written.sum(1)).any())  # some rows get the full count
    swapped = plan.apply(ps.inputs, "control")
    assert torch.equal(swapped[plan.control], plan.substitute[:, None].expand_as(swapped)[plan.control])
    assert torch.equal(swapped[~plan.control], tokens[~plan.control])


@pytest.mark.parametrize("task", ["ar", "ih", "mqar"])
def test_value_swap_writes_exactly_the_matching_positions(sets, task):
    ps = sets[task]
    assert probe_task(ps) == task
    vs = value_swap(ps, seed=3)
    plan = swap_plan(ps, seed=3)
    before = torch.arange(ps.length) < ps.qpos[:, None]
    want = ps.roles["copy" if task == "ih" else "match_value"] & before
    assert torch.equal(vs.written, want) and bool(want.any(1).all())
    assert torch.equal(vs.inputs[vs.written], vs.substitute[:, None].expand_as(vs.inputs)[vs.written])
    assert torch.equal(vs.inputs[~vs.written], ps.inputs[~vs.written])
    assert bool((vs.substitute != ps.answer).all())
    assert bool(torch.isin(vs.substitute, value_candidates(ps)).all())
    assert bool((ps.inputs[vs.written] == ps.answer[:, None].expand_as(ps.inputs)[vs.written]).all())
    # the same s as the metrics' plan, instance by instance
    last = plan.pos == ps.qpos[plan.row]
    assert torch.equal(plan.row[last], torch.arange(ps.n))
    assert torch.equal(plan.substitute[last], vs.substitute)
    assert bool((plan.substitute != plan.answer).all())
    tokens = ps.inputs[plan.row]
    ar = torch.arange(ps.length)
    pool = (ar < plan.pos[:, None]) & ~plan.written & (tokens != plan.answer[:, None]) \
        & (tokens != plan.substitute[:, None])
    if task == "ih":
        special = ps.roles["trigger"] | ps.roles["copy"] | ps.roles["query"]
        pool &= (tokens != 0) & (tokens != 9) & ~special
    else:
        pool &= ps.roles["value"][plan.row]
    _check_control(ps, plan, pool)


def test_mqar_instances_come_from_the_tokens(sets):
    ps = sets["mqar"]
    plan = swap_plan(ps, seed=0)
    assert len(plan.row) == ps.n * MQAR_PAIRS  # one instance per query
    assert torch.equal(plan.written.sum(1), torch.ones(len(plan.row), dtype=torch.int64))
    vpos = plan.written.to(torch.int64).argmax(1)
    r = plan.row
    assert bool((ps.inputs[r, vpos - 1] == ps.inputs[r, plan.pos]).all())  # the queried key
    assert bool(ps.roles["key"][r, vpos - 1].all())
    assert torch.equal(plan.answer, ps.inputs[r, vpos])
    last = plan.pos == ps.qpos[r]
    assert torch.equal(plan.answer[last], ps.answer)  # the dataset's own target
    # one query at a time: an instance's swap leaves the other queries' pairs untouched
    swapped = plan.apply(ps.inputs, "value")
    assert torch.equal((swapped != ps.inputs[r]).sum(1), torch.ones(len(r), dtype=torch.int64))


def test_ar_key_swap(sets):
    ps = sets["ar"]
    plan = swap_plan(ps, seed=0)
    has = plan.key_token >= 0
    assert 0 < int(has.sum()) < ps.n
    keys = torch.arange(1, 5)
    present = (ps.inputs[:, :, None] == keys).any(1)  # [n, K]
    assert torch.equal(has, ~present.all(1))  # skipped exactly where every key is present
    assert not bool((ps.inputs[has] == plan.key_token[has, None]).any())
    assert bool(torch.isin(plan.key_token[has], keys).all())
    before = torch.arange(ps.length) < ps.qpos[:, None]
    assert torch.equal(plan.key_written, ps.roles["match_key"] & before & has[:, None])
    kpool = ps.roles["key"] & before & ~ps.roles["match_key"] & has[:, None]
    assert not bool((plan.key_control & ~kpool).any())
    assert torch.equal(plan.key_control.sum(1), torch.minimum(plan.key_written.sum(1), kpool.sum(1)))
    swapped = plan.apply(ps.inputs, "key")
    assert torch.equal(swapped[:, -1], ps.inputs[:, -1])  # the query token is never changed
    assert torch.equal(swapped != ps.inputs, plan.key_written)


# ---------------------------------------------------------------- known answers
@pytest.mark.parametrize("task", ["ar", "ih", "mqar"])
def test_oracle_follows_the_swap(sets, task):
    ps = sets[task]
    model = {"ar": ar_oracle, "ih": ih_oracle, "mqar": mqar_oracle}[task]()
    model.train()
    rows = swap_metrics(model, ps, seed=0, batch_size=7)
    assert model.training and model.saw_training and not any(model.saw_training)  # eval, restored
    v = _v(rows)
    assert set(v) == set(BASE + (KEYS if task == "ar" else ()))
    m = ps.n * (MQAR_PAIRS if task == "mqar" else 1)
    plan = swap_plan(ps, seed=0)
    assert v["recall_swap_follow"]["value"] == 1.0 and v["recall_swap_follow"]["n"] == m
    assert v["recall_swap_control"]["value"] == 0.0
    assert v["recall_swap_control"]["n"] == int(plan.control.sum())
    assert v["recall_swap_selectivity"]["value"] == 1.0
    assert v["recall_swap_drop"]["value"] == pytest.approx(BIG)
    pos_row = dict(metric="recall_swap_positions", layer=-1, value=float(plan.written.sum()), n=m, ci=None)
    assert _nan_none([v["recall_swap_positions"]]) == [pos_row]
    assert all(r["layer"] == -1 for r in rows)
    if task == "ar":
        k = int((plan.key_token >= 0).sum())
        assert v["recall_swap_key_drop"]["value"] == pytest.approx(BIG) and v["recall_swap_key_drop"]["n"] == k
        assert v["recall_swap_key_control_drop"]["value"] == 0.0
        assert v["recall_swap_key_control_drop"]["n"] == k


def test_most_frequent_value_does_not_follow(sets):
    ps = sets["ar"]
    v = _v(swap_metrics(MostFrequentValue(), ps, seed=0))
    oracle = _v(swap_metrics(ar_oracle(), ps, seed=0))
    # s becomes the most frequent value in under half of the rows (0.44 here), against 1 for
    # the oracle; the control writes s too, though at vocab 10 often at fewer positions (the
    # pool of other values holding neither answer nor s runs short: 79 vs 113 positions), so
    # the selectivity stays above 0 (0.25 ± 0.15 here) but far below the oracle's 1
    assert v["recall_swap_follow"]["value"] <= 0.5 < oracle["recall_swap_follow"]["value"] == 1.0
    assert v["recall_swap_control"]["value"] > 0.0
    sel = v["recall_swap_selectivity"]
    assert sel["value"] <= 0.5 and 0 < sel["ci"] < 0.5
    # the rows score exactly the value swap: recompute follow and drop by hand
    vs, r = value_swap(ps, seed=0), torch.arange(ps.n)
    model = MostFrequentValue()
    clean, swapped = model(ps.inputs)[r, ps.qpos], model(vs.inputs)[r, ps.qpos]
    follow = ((swapped.argmax(-1) == vs.substitute) & (clean.argmax(-1) != vs.substitute)).double()
    assert v["recall_swap_follow"]["value"] == pytest.approx(float(follow.mean()))
    assert v["recall_swap_follow"]["ci"] == pytest.approx(1.96 * float(follow.std()) / ps.n ** 0.5)
    drop = clean[r, ps.answer] - swapped[r, ps.answer]
    assert v["recall_swap_drop"]["value"] == pytest.approx(float(drop.mean()))


class Constant(nn.Module):
    """The same prediction everywhere: BIG on token `c`."""

    def __init__(self, c: int, vocab: int = 10):
        super().__init__()
        self.c, self.vocab = c, vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.vocab)
        logits[..., self.c] = BIG
        return logits


@pytest.mark.parametrize("c", [5, 6])
def test_a_constant_model_never_follows(sets, c):
    """Follow counts only predictions that became s: s = c where the model already said c."""
    ps = sets["ar"]
    assert bool((swap_plan(ps, 0).substitute == c).any())
    v = _v(swap_metrics(Constant(c), ps, seed=0))
    for m in ("recall_swap_follow", "recall_swap_control", "recall_swap_selectivity", "recall_swap_drop") + KEYS:
        assert v[m]["value"] == 0.0


# ---------------------------------------------------------------- determinism
def test_deterministic_by_seed(sets):
    ps = sets["ar"]
    model = jitter_(build_model(tiny_hyena_config(l_max=24), seed=0), scale=0.2)
    a, b = swap_metrics(model, ps, seed=5), swap_metrics(model, ps, seed=5)
    assert _nan_none(a) == _nan_none(b)
    assert _nan_none(a) != _nan_none(swap_metrics(model, ps, seed=6))
    for task in ("ar", "ih", "mqar"):
        s0, s0b, s1 = (value_swap(sets[task], seed).substitute for seed in (0, 0, 1))
        assert torch.equal(s0, s0b) and not torch.equal(s0, s1)
        p0, p1 = swap_plan(sets[task], 0), swap_plan(sets[task], 1)
        assert torch.equal(p0.control, swap_plan(sets[task], 0).control)
        assert not torch.equal(p0.substitute, p1.substitute)


# ---------------------------------------------------------------- real tiny models
def _tiny(name: str, vocab: int = 10) -> nn.Module:
    if name == "attention":
        return build_model(dict(kind="attention", vocab_size=vocab, d_model=16, n_layers=2, l_max=24), seed=0)
    cfg = tiny_hyena_config(vocab_size=vocab, l_max=24, causal=name == "hyena-causal")
    return jitter_(build_model(cfg, seed=0), scale=0.2)


@pytest.mark.parametrize("name", ["hyena-causal", "hyena-noncausal", "attention"])
def test_real_models_run(sets, name):
    ps = sets["ar"]
    model = _tiny(name).train()
    rows = swap_metrics(model, ps, seed=0, batch_size=16)
    assert model.training
    v = _v(rows)
    plan = swap_plan(ps, seed=0)
    k = int((plan.key_token >= 0).sum())
    assert set(v) == set(BASE + KEYS)
    assert [v[m]["n"] for m in BASE + KEYS] == [ps.n, int(plan.control.sum()), ps.n, ps.n, ps.n, k, k]
    for r in rows:
        assert set(r) == {"metric", "layer", "value", "n", "ci"}
        assert math.isfinite(r["value"]) and (r["metric"] == "recall_swap_positions" or math.isfinite(r["ci"]))
    for m in ("recall_swap_follow", "recall_swap_control"):
        assert 0.0 <= v[m]["value"] <= 1.0
    assert v["recall_swap_selectivity"]["value"] == pytest.approx(
        v["recall_swap_follow"]["value"] - v["recall_swap_control"]["value"])
    # chunking does not change anything
    again = _v(swap_metrics(model, ps, seed=0, batch_size=5))
    for m in BASE + KEYS:
        assert again[m]["value"] == pytest.approx(v[m]["value"], abs=1e-5)


def test_real_model_mqar(sets):
    ps = sets["mqar"]
    v = _v(swap_metrics(_tiny("hyena-causal", vocab=MQAR_V), ps, seed=0, batch_size=32))
    assert set(v) == set(BASE)
    assert v["recall_swap_follow"]["n"] == ps.n * MQAR_PAIRS
    assert all(math.isfinite(v[m]["value"]) for m in BASE)


# ---------------------------------------------------------------- bad input and run metadata
@pytest.mark.parametrize("meta", [{}, {"task": "copying", "vocab_size": 10}, {"data": {"task": "lm"}}])
def test_unknown_task_is_a_user_error(sets, meta):
    ps = dataclasses.replace(sets["ar"], meta=meta)
    with pytest.raises(UserError, match="task") as e:
        swap_metrics(ar_oracle(), ps)
    assert "\n" not in str(e.value)


def test_run_probe_set_meta(sets):
    """A run's probe set keeps the data config under meta["data"] (interp.capture)."""
    ps = dataclasses.replace(sets["ar"], meta={"split": "test", "data": {"task": "ar", "vocab_size": 10}})
    assert probe_task(ps) == "ar"
    assert torch.equal(value_candidates(ps), torch.arange(5, 9))
    assert torch.equal(value_swap(ps, 2).substitute, value_swap(sets["ar"], 2).substitute)
    bad = dataclasses.replace(sets["ar"], meta={"task": "assoc_recall"})
    with pytest.raises(UserError, match="vocab_size"):
        value_candidates(bad)


@pytest.mark.parametrize("name", ["hyena-causal", "attention"])
def test_clean_logits_from_capture_give_the_same_rows(sets, name):
    """`hyenalens probe` passes the capture's clean logits at the query instead of a forward."""
    from interp.capture import capture_model

    ps = sets["ar"]
    model = _tiny(name).eval()
    clean = capture_model(model, ps)["logits"][:, 0]  # slot 0 is the query
    given, own = _v(swap_metrics(model, ps, seed=0, clean_logits=clean)), _v(swap_metrics(model, ps, seed=0))
    for m in BASE + KEYS:
        assert given[m]["value"] == pytest.approx(own[m]["value"], abs=1e-5) and given[m]["n"] == own[m]["n"]
    # and they are used: logits that make s the clean argmax everywhere leave nothing to follow
    plan = swap_plan(ps, seed=0)
    rigged = torch.zeros(ps.n, clean.shape[-1])
    rigged[plan.row, plan.substitute] = 100.0
    assert _v(swap_metrics(model, ps, seed=0, clean_logits=rigged))["recall_swap_follow"]["value"] == 0.0
    with pytest.raises(UserError, match="clean_logits"):
        swap_metrics(model, ps, seed=0, clean_logits=clean[:3])
