"""Filter summaries (interp.filters) and map-based scores (interp.scores) on known answers."""
from __future__ import annotations

import pytest
import torch

from models import build_model
from models.errors import UserError
from interp.filters import (LayerFilters, effective_length, filter_metrics, filters_from_cache,
                            lag1_mass, lag_profile, layer_filters, spectrum)
from interp.implicit_attention import hyena_operands, implicit_attention
from interp.scores import (induction_score, map_for_scores, map_scores, prev_token_score,
                           query_mass, recall_score_keys, recall_score_values)
from tests.conftest import jitter_, tiny_hyena_config


# ------------------------------------------------------------------------------------ filters
def test_lag1_mass_and_effective_length_known_answers():
    # one order, 2 channels, 5 lags: both channels [4, 3, 2, 1, 0]
    h = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]).expand(2, 5)[None]  # [1, 2, 5]
    torch.testing.assert_close(lag_profile(h), torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]))
    torch.testing.assert_close(lag1_mass(h), torch.tensor([0.3]))
    assert effective_length(h).tolist() == [2]  # cumsum 4, 7, 9 ≥ 0.9·10 at lag 2
    assert effective_length(h, frac=0.95).tolist() == [3]
    assert effective_length(-h).tolist() == [2]  # |h|: the sign does not matter

    # pure lag-1 filter: all mass at lag 1
    e1 = torch.zeros(2, 3, 8)
    e1[..., 1] = torch.randn(2, 3).abs() + 0.5
    torch.testing.assert_close(lag1_mass(e1), torch.ones(2))
    assert effective_length(e1).tolist() == [1, 1]

    # profile vs per-channel median: channels at lag 0, lag 4, lag 1
    h = torch.zeros(1, 3, 5)
    h[0, 0, 0], h[0, 1, 4], h[0, 2, 1] = 1.0, 1.0, 1.0
    assert effective_length(h).tolist() == [4]  # profile 1/3, 1/3, 0, 0, 1/3
    assert effective_length(h, reduce="none").tolist() == [[0, 4, 1]]
    assert effective_length(h, reduce="median").tolist() == [1.0]
    torch.testing.assert_close(lag1_mass(h), torch.tensor([1 / 3]))

    # all-zero filter: 0 and 0 (no NaN)
    z = torch.zeros(1, 2, 6)
    assert lag1_mass(z).tolist() == [0.0] and effective_length(z).tolist() == [0]
    with pytest.raises(UserError):
        effective_length(h, reduce="mean")


def test_spectrum_known_answers():
    delta = torch.zeros(1, 2, 8)
    delta[..., 0] = 1.0
    torch.testing.assert_close(spectrum(delta), torch.ones(1, 5))  # flat
    t = torch.arange(8.0)
    cos = torch.cos(2 * torch.pi * 2 * t / 8).expand(1, 3, 8)
    s = spectrum(cos)
    assert s.shape == (1, 5)
    torch.testing.assert_close(s, torch.tensor([[0.0, 0.0, 4.0, 0.0, 0.0]]), atol=1e-5, rtol=0)
    assert spectrum(delta, n=16).shape == (1, 9)


def test_backward_filter_lag_minus_one_on_noncausal_model():
    """hook_filter_rev index 1 is lag −1: it is H's first superdiagonal (order 2:
    H[c, i, i+1] = x^0_i · h_rev[c, 1] · x^1_{i+1}), and lag1_mass reads it."""
    model = jitter_(build_model(tiny_hyena_config(causal=False), seed=0), scale=0.2).eval()
    tokens = torch.randint(0, 10, (2, 16), generator=torch.Generator().manual_seed(3))
    lf = layer_filters(model, 0)
    assert lf.forward.shape == lf.backward.shape == (1, 8, 16) and lf.order == 2
    assert torch.equal(lf.backward[..., 0], torch.zeros(1, 8))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_filter" in n)
    cached = filters_from_cache(cache, 0)
    torch.testing.assert_close(cached.forward, lf.forward)
    torch.testing.assert_close(cached.backward, lf.backward)

    ops = hyena_operands(model, tokens, 0)
    H = implicit_attention(model, tokens, 0, dtype=torch.float64)
    i = torch.arange(15)
    sup = H[:, :, i, i + 1]  # [b, d, 15]
    recovered = sup / (ops.gates[0][:, :, i] * ops.gates[1][:, :, i + 1])
    torch.testing.assert_close(recovered, lf.backward[0, :, 1].double()[None, :, None].expand_as(recovered),
                               rtol=1e-4, atol=1e-6)

    hb = lf.backward.double()
    expected = hb[..., 1].abs().sum(-1) / hb.abs().sum((-1, -2))
    torch.testing.assert_close(lag1_mass(lf.backward).double(), expected)
    assert effective_length(lf.backward).min() >= 1  # |lag| ≥ 1 for the backward filter

    rows = filter_metrics(model)
    # 2 layers × 1 order step × 2 directions × 2 metrics
    assert len(rows) == 8
    back = [r for r in rows if r["direction"] == "backward" and r["layer"] == 0
            and r["metric"] == "filter_lag1_mass"]
    assert back[0]["value"] == pytest.approx(float(expected[0]), rel=1e-5)


def test_filter_metrics_from_tensors_causal_order3():
    h = torch.zeros(2, 4, 10)
    h[0, :, 1] = 1.0  # step 0: pure lag 1
    h[1, :, :] = 1.0  # step 1: flat over 10 lags → 90% reached at lag 8
    rows = filter_metrics([LayerFilters(h)])
    got = {(r["metric"], r["order"]): r["value"] for r in rows}
    assert got == {("filter_lag1_mass", 0): 1.0, ("filter_effective_length", 0): 1.0,
                   ("filter_lag1_mass", 1): pytest.approx(0.1), ("filter_effective_length", 1): 8.0}
    assert all(r["direction"] == "forward" and r["layer"] == 0 for r in rows)


# ------------------------------------------------------------------------------------- scores
def shift_map(b: int, L: int) -> torch.Tensor:
    m = torch.zeros(b, L, L)
    m[:, 0, 0] = 1.0
    i = torch.arange(1, L)
    m[:, i, i - 1] = 1.0
    return m


def test_prev_token_score_known_answers():
    b, L = 2, 6
    assert float(prev_token_score(shift_map(b, L))) == pytest.approx(1.0)
    assert float(prev_token_score(3.0 * shift_map(b, L))) == pytest.approx(1.0)  # rows re-normalized
    assert float(prev_token_score(torch.eye(L).expand(b, L, L))) == 0.0
    half = 0.5 * (shift_map(b, L) + torch.eye(L))
    assert float(prev_token_score(half)) == pytest.approx(0.5)
    # restricted to a role mask: shift on odd rows, identity on even rows
    mixed = torch.eye(L).repeat(b, 1, 1)
    odd = torch.zeros(b, L, dtype=torch.bool)
    odd[:, 1::2] = True
    for i in range(1, L, 2):
        mixed[:, i] = 0.0
        mixed[:, i, i - 1] = 1.0
    assert float(prev_token_score(mixed, rows=odd)) == pytest.approx(1.0)
    assert float(prev_token_score(mixed)) == pytest.approx(3 / 5)  # default: all rows i ≥ 1
    per_seq = prev_token_score(mixed, reduction="none")
    assert per_seq.shape == (b,) and per_seq.tolist() == pytest.approx([0.6, 0.6])
    # row 0 never counts, even if the mask selects it
    only0 = torch.zeros(b, L, dtype=torch.bool)
    only0[:, 0] = True
    assert torch.isnan(prev_token_score(mixed, rows=only0))


def test_recall_scores_known_answers():
    b, L = 2, 8
    query = torch.zeros(b, L, dtype=torch.bool)
    query[:, -1] = True
    match_key = torch.zeros(b, L, dtype=torch.bool)
    match_key[0, [0, 4]] = True
    match_key[1, 2] = True
    match_value = torch.roll(match_key, 1, dims=1)
    m = torch.rand(b, L, L, generator=torch.Generator().manual_seed(0))
    m[:, -1] = 0.0
    m[0, -1, [1, 5]] = 2.0  # sequence 0: all query mass on its two matching values
    m[1, -1, 3] = 1.0       # sequence 1: half on the matching value, half on the matching key
    m[1, -1, 2] = 1.0
    assert recall_score_values(m, query, match_value, reduction="none").tolist() == pytest.approx([1.0, 0.5])
    assert float(recall_score_values(m, query, match_value)) == pytest.approx(0.75)
    assert recall_score_keys(m, query, match_key, reduction="none").tolist() == pytest.approx([0.0, 0.5])
    # induction head: copy = match_value there
    assert float(induction_score(m, query, match_value)) == pytest.approx(0.75)
    assert float(query_mass(m, query, torch.ones(b, L, dtype=torch.bool))) == pytest.approx(1.0)
    scores = map_scores(m, query=query, match_value=match_value, match_key=match_key)
    assert set(scores) == {"prev_token_score", "recall_score_values", "recall_score_keys"}
    assert scores["recall_score_values"] == pytest.approx(0.75)
    with pytest.raises(UserError):
        recall_score_values(m, query)  # neither mask nor index
    with pytest.raises(UserError):
        recall_score_values(m, query, match_value[:, :-1])  # wrong shape


def test_recall_scores_with_match_index_mqar():
    b, L = 1, 10
    # pairs (k v) at 0..5, queries at 7 (for the pair at 2) and 9 (for the pair at 4)
    query = torch.zeros(b, L, dtype=torch.bool)
    query[0, [7, 9]] = True
    idx = torch.full((b, L), -1)
    idx[0, 7], idx[0, 9] = 2, 4
    m = torch.zeros(b, L, L)
    m[0, 7, 3] = 1.0           # query 7: all on its value (3)
    m[0, 9, 5] = m[0, 9, 4] = 1.0  # query 9: half on its value (5), half on its key (4)
    m[0, :7, 0] = 1.0
    m[0, 8, 0] = 1.0
    assert float(recall_score_values(m, query, match_index=idx)) == pytest.approx(0.75)
    assert float(recall_score_keys(m, query, match_index=idx)) == pytest.approx(0.25)
    bad = idx.clone()
    bad[0, 9] = -1
    with pytest.raises(UserError):
        recall_score_values(m, query, match_index=bad)


def test_map_for_scores_both_kinds():
    tokens = torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(1))
    hy = jitter_(build_model(tiny_hyena_config(order=3), seed=0), scale=0.2).eval()
    m = map_for_scores(hy, tokens, 1, row_block=4)
    ref = implicit_attention(hy, tokens, 1, level="token", aggregate="mean_abs")
    torch.testing.assert_close(m, ref / ref.sum(-1, keepdim=True))
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 12))
    assert 0.0 <= float(prev_token_score(m)) <= 1.0

    att = build_model({"kind": "attention", "vocab_size": 10, "d_model": 8, "n_layers": 2,
                       "l_max": 16, "n_heads": 2}, seed=0).eval()
    with torch.no_grad():
        _, cache = att.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(map_for_scores(att, tokens, 0), cache["blocks.0.attn.hook_pattern"].mean(1))
