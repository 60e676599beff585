"""The exact signed source decomposition and its path patching (interp/decompose.py,
interp/sources.py)."""
from __future__ import annotations

import json

import pytest
import torch

from interp.decompose import (PARTITION_ROLES, SOURCE_ROLES, pair_footprint, patch_source_terms,
                              source_example, source_patch_rows, source_role_masks, source_rows,
                              source_terms)
from interp.probe_set import probe_set_from_data
from interp.sources import logit_diff_readout
from models import build_model
from models.errors import UserError
from models.data.mqar import mqar_dataset
from models.data.synthetics import icl_dataset
from tests.conftest import jitter_, tiny_hyena_config

VARIANTS = [(o, c) for o in (2, 3) for c in (True, False)]
IDS = [f"order{o}-{'causal' if c else 'noncausal'}" for o, c in VARIANTS]
L = 16
QPOS = torch.tensor([15, 3, 9, 15])  # a different query position per row


@pytest.fixture(scope="module")
def hyena_models():
    return {(o, c): jitter_(build_model(tiny_hyena_config(order=o, causal=c), seed=0), scale=0.2).eval()
            for o, c in VARIANTS}


@pytest.fixture(scope="module")
def attention_model():
    cfg = dict(kind="attention", vocab_size=10, d_model=16, n_layers=2, l_max=L)
    return jitter_(build_model(cfg, seed=0), scale=0.1).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 10, (4, L), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def ar_ps():
    return probe_set_from_data(icl_dataset("assoc_recall", 10, 8, 16, 16, seed=0), n_probe=8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def at_q(t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return t[torch.arange(len(q)), q]


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("order,causal", VARIANTS, ids=IDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_hyena_terms_are_exact(hyena_models, tokens, order, causal, layer):
    model = hyena_models[(order, causal)]
    pre = f"blocks.{layer}."
    _, cache = model.run_with_cache(tokens, names_filter=[pre + "mixer.hook_y", pre + "hook_mixer_out"])
    y, out = at_q(cache[pre + "mixer.hook_y"], QPOS), at_q(cache[pre + "hook_mixer_out"], QPOS)
    st = source_terms(model, tokens, QPOS, layer)
    assert st.stream.shape == (4, L, 8) and st.stream.dtype == torch.float64
    assert st.hook == pre + "hook_mixer_out"
    assert y.abs().max() > 1e-2  # a non-trivial output
    assert rel_err(st.stream.sum(1), y) <= 1e-5
    assert rel_err(st.projected.sum(1) + st.bias, out) <= 1e-5
    assert rel_err(st.output, out) <= 1e-6
    # no single source dominates: the split is really over many positions
    assert (st.stream.abs().sum(-1) > 1e-3 * st.stream.abs().max()).sum() > 2 * 4
    if causal:  # positions after q contribute exactly nothing
        after = torch.arange(L)[None, :] > QPOS[:, None]
        assert torch.equal(st.stream[after], torch.zeros_like(st.stream[after]))


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_terms_are_exact(attention_model, tokens, layer):
    name = f"blocks.{layer}.hook_attn_out"
    _, cache = attention_model.run_with_cache(tokens, names_filter=[name])
    st = source_terms(attention_model, tokens, QPOS, layer)
    assert st.hook == name and st.stream.shape == (4, L, 16)
    assert rel_err(st.projected.sum(1) + st.bias, at_q(cache[name], QPOS)) <= 1e-5


def test_hand_built_spike_filter_reads_only_lag_one():
    """D = 0, identity short conv, long filter = a spike at lag 1 (via a hook on hook_filter):
    the query's output reads exactly one stream position, q − 1."""
    model = jitter_(build_model(tiny_hyena_config(), seed=0), scale=0.2).eval()
    op = model.blocks[0].mixer
    with torch.no_grad():
        op.filter_fn.bias.zero_()  # D = 0
        op.short_filter.weight.zero_()
        op.short_filter.weight[..., -1] = 1.0  # causal identity taps (0, 0, 1)

    def spike(h, hook):
        out = torch.zeros_like(h)
        out[..., 1] = 1.0
        return out

    toks = torch.randint(1, 10, (4, L), generator=torch.Generator().manual_seed(3))
    free = source_terms(model, toks, QPOS, 0)  # without the spike many positions contribute
    assert (free.stream.abs().sum(-1) > 1e-6).sum() > 8
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_filter", spike)]):
        st = source_terms(model, toks, QPOS, 0)
        _, cache = model.run_with_cache(toks, names_filter=["blocks.0.mixer.hook_y"])
    nz = st.stream.abs().sum(-1) > 0  # [n, L]
    expect = torch.zeros_like(nz)
    expect[torch.arange(4), QPOS - 1] = True
    assert torch.equal(nz, expect)
    assert rel_err(st.stream.sum(1), at_q(cache["blocks.0.mixer.hook_y"], QPOS)) <= 1e-6


# ---------------------------------------------------------------------------- footprints
def test_pair_footprints(hyena_models, attention_model):
    key, value = torch.tensor([[2, 6], [4, -1]]), torch.tensor([[3, 7], [5, -1]])
    sets = lambda m: [set(torch.nonzero(r).flatten().tolist()) for r in m]
    causal = pair_footprint(hyena_models[(2, True)], 0, key, value, L)
    assert sets(causal) == [{3, 4, 7, 8}, {5, 6}]  # {value, value + 1}
    centered = pair_footprint(hyena_models[(2, False)], 1, key, value, L)
    assert sets(centered) == [{2, 3, 6, 7}, {4, 5}]  # {key, value}
    attn = pair_footprint(attention_model, 0, key, value, L)
    assert sets(attn) == [{2, 3, 6, 7}, {4, 5}]  # no window: the pair's own positions
    wide = build_model(tiny_hyena_config(short_filter_order=5), seed=0)
    assert sets(pair_footprint(wide, 0, key[1:], value[1:], L)) == [{5, 6, 7, 8}]
    with pytest.raises(UserError, match="pair positions"):
        pair_footprint(attention_model, 0, torch.tensor([[L]]), torch.tensor([[L + 1]]), L)


def test_role_masks_partition_and_pairs(hyena_models, ar_ps):
    model = hyena_models[(2, True)]
    masks = source_role_masks(model, 0, ar_ps.roles, ar_ps.qpos)
    parts = torch.stack([masks[r] for r in PARTITION_ROLES if r != "bias"]).sum(0)
    assert torch.equal(parts, torch.ones_like(parts))  # every position in exactly one part
    mk = torch.nonzero(ar_ps.roles["match_key"])
    fp = torch.zeros_like(masks["match_pair"])
    fp[mk[:, 0], mk[:, 1] + 1] = True  # causal k=3: (p, p+1) → {p+1, p+2}
    fp[mk[:, 0], mk[:, 1] + 2] = True
    fp[torch.arange(ar_ps.n), ar_ps.qpos] = False
    assert torch.equal(masks["match_pair"], fp)
    assert masks["other_pair"].any() and not (masks["other_pair"] & masks["match_pair"]).any()
    assert torch.equal(masks["match_after"][:, 1:], ar_ps.roles["match_value"][:, :-1])


# ---------------------------------------------------------------------------- readouts and rows
@pytest.mark.parametrize("kind", ["hyena", "attention"])
def test_readouts(hyena_models, attention_model, tokens, kind):
    """direct(LN input) + constants = LD; grad = ∂LD/∂output (finite differences)."""
    model = hyena_models[(3, False)] if kind == "hyena" else attention_model
    ans, cand = torch.tensor([5, 6, 7, 8]), torch.arange(5, 9).expand(4, -1)
    r = logit_diff_readout(model, tokens, QPOS, ans, cand)
    assert r.ld.abs().max() > 1e-2
    torch.testing.assert_close((r.ln_in * r.direct).sum(-1) + r.const, r.ld, rtol=1e-5, atol=1e-6)
    layer = 0
    hook = "blocks.0.hook_mixer_out" if kind == "hyena" else "blocks.0.hook_attn_out"
    dirn = torch.randn(4, r.grad[layer].shape[-1], generator=torch.Generator().manual_seed(0))
    eps = 1e-3

    def ld_bumped(e: float) -> torch.Tensor:
        def bump(t, hook):
            t = t.clone()
            t[torch.arange(4), QPOS] += e * dirn
            return t

        with torch.no_grad():
            lq = at_q(model.run_with_hooks(tokens, fwd_hooks=[(hook, bump)]), QPOS).double()
        return lq[torch.arange(4), ans] - lq[:, 5:9].mean(1)

    fd = (ld_bumped(eps) - ld_bumped(-eps)) / (2 * eps)  # central differences
    torch.testing.assert_close(fd, (r.grad[layer] * dirn).sum(-1), rtol=1e-2, atol=1e-3)


def test_source_rows_partition_sums_to_total(hyena_models, ar_ps):
    model = hyena_models[(2, True)]
    cand = torch.arange(5, 9)
    rows = source_rows(model, ar_ps, cand, rows=6)
    assert len(rows) == 2 * 2 * (len(SOURCE_ROLES) + 1)
    assert {r["hook"] for r in rows} == {"blocks.0.hook_mixer_out", "blocks.1.hook_mixer_out"}
    assert all(r["n"] == 6 and {"metric", "layer", "value", "target", "role", "hook", "ci"} <= set(r) for r in rows)
    tokens, q, ans = ar_ps.inputs[:6], ar_ps.qpos[:6], ar_ps.answer[:6]
    read = logit_diff_readout(model, tokens, q, ans, cand.expand(6, -1))
    for layer in (0, 1):
        st = source_terms(model, tokens, q, layer)
        for target, w in (("direct", read.direct), ("grad", read.grad[layer])):
            vals, vb = (st.projected * w[:, None]).sum(-1), (st.bias * w).sum(-1)
            total = vals.sum(-1) + vb
            # the terms' total is the target of the layer output itself
            torch.testing.assert_close(total, (st.output * w).sum(-1), rtol=1e-5, atol=1e-7)
            got = {r["role"]: r["value"] for r in rows
                   if r["layer"] == layer and r["target"] == target and r["metric"] == "source_share"}
            share_sum = sum(got[role] for role in PARTITION_ROLES)
            expect = float((total / (vals.abs().sum(-1) + vb.abs())).mean())
            assert share_sum == pytest.approx(expect, rel=1e-9, abs=1e-12)
            assert all(-1.0 <= v <= 1.0 for v in got.values())
            tot = [r for r in rows if r["layer"] == layer and r["target"] == target and r["metric"] == "source_total"]
            assert tot[0]["role"] == "" and tot[0]["value"] == pytest.approx(float(total.mean()), rel=1e-9)


def test_source_rows_per_row_query_and_ih():
    mqar = probe_set_from_data(mqar_dataset(10, 12, 2, 8, 16, seed=0), n_probe=8)
    assert len(set(mqar.qpos.tolist())) > 1  # MQAR: the query position differs per row
    model = jitter_(build_model(tiny_hyena_config(), seed=0), scale=0.2).eval()
    rows = source_rows(model, mqar, torch.arange(5, 10))
    assert all(r["n"] == 8 for r in rows) and all(r["value"] == r["value"] for r in rows)  # no NaN
    ih = probe_set_from_data(icl_dataset("induction_head", 10, 10, 16, 16, seed=0), n_probe=8)
    rows = source_rows(model, ih, torch.arange(1, 9), rows=4)
    other = [r["value"] for r in rows if r["role"] == "other_pair"]
    assert other and all(v == 0.0 for v in other)  # IH has one pair: trigger, copy


def test_source_example_is_json(hyena_models, ar_ps):
    ex = source_example(hyena_models[(2, False)], ar_ps, torch.arange(5, 9), row=2)
    json.dumps(ex)
    assert ex["row"] == 2 and ex["qpos"] == int(ar_ps.qpos[2]) and len(ex["tokens"]) == ar_ps.length
    assert [l["layer"] for l in ex["layers"]] == [0, 1]
    for lay in ex["layers"]:
        assert len(lay["terms"]) == ar_ps.length and lay["target"] == "direct"
        assert lay["total"] == pytest.approx(sum(lay["terms"]) + lay["bias"], rel=1e-9, abs=1e-12)
        assert lay["roles"]["query"] == [ex["qpos"]]
        mk = torch.nonzero(ar_ps.roles["match_key"][2]).flatten().tolist()
        assert lay["roles"]["match_key"] == mk and lay["roles"]["match_pair"] == sorted({p + d for p in mk for d in (0, 1)})


# ---------------------------------------------------------------------------- path patching
def _swap(tokens: torch.Tensor, pos: int, tok: int) -> torch.Tensor:
    out = tokens.clone()
    out[:, pos] = torch.where(out[:, pos] == tok, (tok % 9) + 1, tok)
    return out


@pytest.mark.parametrize("kind", ["hyena-causal", "hyena-noncausal-order3", "attention"])
def test_patch_everything_reproduces_swapped_output(hyena_models, attention_model, tokens, kind):
    model = {"hyena-causal": hyena_models[(2, True)], "hyena-noncausal-order3": hyena_models[(3, False)],
             "attention": attention_model}[kind]
    swapped = _swap(tokens, 2, 4)
    for layer in (0, 1):
        clean, sw = source_terms(model, tokens, QPOS, layer), source_terms(model, swapped, QPOS, layer)
        assert rel_err(sw.output, clean.output) > 1e-3  # the swap matters
        masks = torch.stack([torch.ones(4, L, dtype=torch.bool), torch.zeros(4, L, dtype=torch.bool)])
        res = patch_source_terms(model, tokens, QPOS, layer, clean, sw, masks)
        assert rel_err(res["output"][0], sw.output) <= 1e-5  # every term swapped: the swapped output
        assert rel_err(res["output"][1], clean.output) <= 1e-6  # nothing patched: the clean output
        with torch.no_grad():
            logits = at_q(model(tokens), QPOS)
        torch.testing.assert_close(res["logits"][1], logits, rtol=1e-5, atol=1e-5)


def test_patch_identical_terms_changes_nothing(hyena_models, tokens):
    """Causal layer 0: a token swapped at p = 6 leaves the terms of positions < 6 unchanged for
    queries ≥ 9 (their gates read q−2…q only); patching those positions is the clean run."""
    model = hyena_models[(2, True)]
    q = torch.tensor([15, 9, 12, 15])
    swapped = _swap(tokens, 6, 4)
    clean, sw = source_terms(model, tokens, q, 0), source_terms(model, swapped, q, 0)
    before = (torch.arange(L) < 6).expand(4, L)
    assert torch.equal(sw.stream[before], clean.stream[before])
    after = (torch.arange(L) >= 6).expand(4, L)
    res = patch_source_terms(model, tokens, q, 0, clean, sw, torch.stack([before, after]))
    with torch.no_grad():
        logits = at_q(model(tokens), q)
    torch.testing.assert_close(res["logits"][0], logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(res["logits"][0].argmax(-1), logits.argmax(-1))
    assert (res["logits"][1] - logits).abs().max() > 1e-3  # the differing terms do move it


def test_source_patch_rows(hyena_models, ar_ps):
    model = hyena_models[(2, True)]
    with torch.no_grad():
        pred = at_q(model(ar_ps.inputs), ar_ps.qpos).argmax(-1)
    cand = torch.arange(5, 9)
    # no swap at all: every role's terms are identical, so argmax stays the clean one; with s
    # the clean prediction itself that is not "following" (the model predicted s already)
    sub = pred.clone()
    sub[0] = -1  # a row without a substitute is left out
    rows = source_patch_rows(model, ar_ps, ar_ps.inputs, sub, cand)
    assert [(r["layer"], r["role"]) for r in rows] == [(l, role) for l in (0, 1)
                                                       for role in ("match_key", "match_value", "match_after", "match_pair")]
    assert all(r["value"] == 0.0 and r["n"] == ar_ps.n - 1 for r in rows)
    assert rows[0]["hook"] == "blocks.0.mixer.hook_y" and rows[0]["metric"] == "source_patch_follow"
    other = torch.where(pred == 5, 6, 5)
    assert all(r["value"] == 0.0 for r in source_patch_rows(model, ar_ps, ar_ps.inputs, other, cand, rows=4))
    # a real swap: values in [0, 1]
    s = torch.full((ar_ps.n,), 5)
    s = torch.where(ar_ps.answer == 5, 6, s)
    swapped = torch.where(ar_ps.roles["match_value"], s[:, None], ar_ps.inputs)
    rows = source_patch_rows(model, ar_ps, swapped, s, cand, rows=4)
    assert len(rows) == 8 and all(0.0 <= r["value"] <= 1.0 and r["n"] == 4 for r in rows)


# ---------------------------------------------------------------------------- bad input
def test_non_identity_activation(tokens, ar_ps):
    model = jitter_(build_model(tiny_hyena_config(activation="tanh"), seed=0), scale=0.2).eval()
    st = source_terms(model, tokens, QPOS, 0)
    assert st.projected is None and st.bias is None
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.mixer.hook_y"])
    assert rel_err(st.stream.sum(1), at_q(cache["blocks.0.mixer.hook_y"], QPOS)) <= 1e-5
    with pytest.raises(UserError, match="activation Tanh"):
        source_rows(model, ar_ps, torch.arange(5, 9), rows=2)
    rows = source_patch_rows(model, ar_ps, ar_ps.inputs, ar_ps.answer, torch.arange(5, 9), rows=2)
    assert len(rows) == 8  # stream-level patching works for any activation


def test_bad_input(hyena_models, tokens, ar_ps):
    model = hyena_models[(2, True)]
    with pytest.raises(UserError, match="qpos"):
        source_terms(model, tokens, torch.tensor([0, 1, L, 2]), 0)
    with pytest.raises(UserError, match="layer 5 is out of range"):
        source_terms(model, tokens, QPOS, 5)
    with pytest.raises(UserError, match="candidate ids"):
        source_rows(model, ar_ps, torch.tensor([5, 99]))
    with pytest.raises(UserError, match="swapped_inputs"):
        source_patch_rows(model, ar_ps, ar_ps.inputs[:, :3], ar_ps.answer, torch.arange(5, 9))


@pytest.mark.parametrize("kind", ["hyena", "attention"])
def test_source_metrics_equals_its_parts(hyena_models, attention_model, ar_ps, kind):
    """What `hyenalens probe` runs (clean terms computed once, the clean prediction passed in)
    gives the rows of source_rows + source_patch_rows."""
    from interp.decompose import source_metrics, source_patch_rows, source_rows

    model = hyena_models[(2, True)] if kind == "hyena" else attention_model
    cand = torch.arange(5, 9)
    s = torch.where(ar_ps.answer == 5, 6, 5)
    swapped = torch.where(ar_ps.roles["match_value"], s[:, None], ar_ps.inputs)
    with torch.no_grad():
        pred = at_q(model(ar_ps.inputs), ar_ps.qpos).argmax(-1)
    both = source_metrics(model, ar_ps, swapped, s, cand, rows=6, clean_pred=pred)
    parts = source_rows(model, ar_ps, cand, rows=6) + source_patch_rows(model, ar_ps, swapped, s, cand, rows=6)
    key = lambda r: (r["metric"], r["layer"], r["target"], r["role"])  # noqa: E731
    assert sorted(map(key, both)) == sorted(map(key, parts))
    got = {key(r): r["value"] for r in both}
    for r in parts:
        assert got[key(r)] == pytest.approx(r["value"], abs=1e-9), key(r)
    no_shares = source_metrics(model, ar_ps, swapped, s, cand, rows=6, shares=False)
    assert {r["metric"] for r in no_shares} == {"source_patch_follow"}
