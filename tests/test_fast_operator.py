"""The fast operator (models/fftconv.py, models/filter_cache.py; the performance issue) computes
exactly what the straightforward one does: linear (never circular) convolutions at any FFT
size it picks, hand-written adjoints equal to autograd's, and a filter cache that can never
serve a stale filter."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import build_model
from models.hyena.fftconv import circular_kernel, fft_conv, fft_size, short_conv
from models.hyena.operator import HyenaOperator, long_conv
from tests.conftest import jitter_, tiny_hyena_config

LENGTHS = [1, 2, 3, 7, 16, 33, 65, 66, 67, 97, 130]


def _direct(z, h, D, h_rev=None):
    """y_i = Σ_{j≤i} h[i−j] z_j + Σ_{j>i} h_rev[j−i] z_j + D z_i, as an O(L²) loop-free sum."""
    L = z.shape[-2]
    i = torch.arange(L)
    lag = i[:, None] - i[None, :]
    T = torch.where(lag >= 0, h[:, lag.clamp(min=0)], torch.zeros((), dtype=h.dtype))
    if h_rev is not None:
        T = T + torch.where(lag < 0, h_rev[:, (-lag).clamp(min=0)], torch.zeros((), dtype=h.dtype))
    return torch.einsum("cij,bjc->bic", T, z) + z * D


@pytest.mark.parametrize("L", LENGTHS)
def test_fft_size_is_long_enough_and_even(L):
    n = fft_size(L)
    assert n >= 2 * L - 1 and n % 2 == 0
    if L in (64, 66, 1024):
        assert n == 2 * L  # 2L already has only small prime factors: safari's size is kept


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("two_sided", [False, True])
def test_long_conv_is_a_linear_convolution(L, two_sided):
    g = torch.Generator().manual_seed(L)
    z = torch.randn(3, L, 5, generator=g, dtype=torch.float64)
    h, D = torch.randn(5, L, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    h_rev = None
    if two_sided:
        h_rev = torch.randn(5, L, generator=g, dtype=torch.float64)
        h_rev[:, 0] = 0  # lag 0 belongs to the forward filter
    torch.testing.assert_close(long_conv(z, h, D, h_rev), _direct(z, h, D, h_rev), rtol=1e-12, atol=1e-12)


def test_fft_conv_and_short_conv_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    L, d = 9, 3
    n = fft_size(L)
    z = torch.randn(2, L, d, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(d, L, generator=g, dtype=torch.float64, requires_grad=True)
    h_rev = torch.randn(d, L, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, h, r, D: fft_conv(z, D, k=circular_kernel(h, r, n)), (z, h, h_rev, D))
    z1 = z[:1].detach().requires_grad_(True)  # one sequence: the filter gradient skips the batch sum
    assert torch.autograd.gradcheck(lambda z, h, D: fft_conv(z, D, k=circular_kernel(h, None, n)), (z1, h, D))
    w = torch.randn(d, 1, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    for pad in (0, 1, 2):
        assert torch.autograd.gradcheck(lambda z, w, b: short_conv(z, w, b, pad), (z, w, b))


def test_long_conv_outputs_and_gradients_keep_the_row_layout():
    # the FFT runs on a transposed view; a transposed result would slow every op after it
    g = torch.Generator().manual_seed(0)
    L, d = 12, 4
    z = torch.randn(3, L, d, generator=g, requires_grad=True)
    h = torch.randn(d, L, generator=g, requires_grad=True)
    D = torch.randn(d, generator=g, requires_grad=True)
    out = fft_conv(z, D, k=circular_kernel(h, None, fft_size(L)))
    assert out.is_contiguous()
    grads = []
    z.register_hook(lambda gz: grads.append(gz.is_contiguous()))
    out.backward(torch.randn(3, L, d, generator=g))
    assert grads == [True]
    with torch.no_grad():
        spec = torch.fft.rfft(circular_kernel(h, None, fft_size(L)))
        assert fft_conv(z, D, spectrum=spec).is_contiguous()


@pytest.mark.parametrize("k, causal", [(1, True), (3, True), (3, False), (5, True), (5, False)])
@pytest.mark.parametrize("L", [1, 2, 4, 17])
def test_short_conv_equals_conv1d(k, causal, L):
    C = 6
    conv = nn.Conv1d(C, C, k, groups=C, padding=k - 1 if causal else (k - 1) // 2).double()
    z = torch.randn(2, L, C, dtype=torch.float64)
    ref = conv(z.transpose(1, 2))[..., :L].transpose(1, 2)
    torch.testing.assert_close(short_conv(z, conv.weight, conv.bias, conv.padding[0]), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- the filter cache
def _op(causal=True, order=2):
    torch.manual_seed(0)
    return jitter_(HyenaOperator(d_model=8, l_max=16, filter_order=8, order=order, causal=causal)).eval()


def _uncached(op, x):
    with torch.enable_grad():  # gradients on: the cache is not used, filters are re-materialized
        return op(x).detach()


@pytest.mark.parametrize("causal, order", [(True, 2), (False, 2), (True, 3)])
def test_cached_eval_forward_equals_uncached(causal, order):
    op, x = _op(causal, order), torch.randn(2, 16, 8)
    with torch.no_grad():
        first, second = op(x), op(x)  # the second one uses the cache
    with torch.inference_mode():
        third = op(x)
    assert op._filter_cache._value is not None
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(third, first, rtol=0, atol=0)
    torch.testing.assert_close(second, _uncached(op, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("change", ["in_place", "data", "new_parameter", "load_state_dict", "buffer"])
def test_a_changed_filter_is_never_served_from_the_cache(change):
    op, x = _op(causal=False), torch.randn(2, 16, 8)
    with torch.no_grad():
        before = op(x)
        p = op.filter_fn_rev.implicit_filter[2].weight
        if change == "in_place":
            p.add_(0.5)
        elif change == "data":
            p.data.add_(0.5)  # does not bump the version counter: the content check catches it
        elif change == "new_parameter":
            op.filter_fn_rev.implicit_filter[2].weight = nn.Parameter(p + 0.5)
        elif change == "load_state_dict":
            sd = {k: v.clone() for k, v in op.state_dict().items()}
            sd["filter_fn_rev.implicit_filter.2.weight"] += 0.5
            op.load_state_dict(sd)
        else:
            op.filter_fn.modulation.deltas.mul_(2.0)  # a buffer, not a parameter
        after = op(x)
    assert not torch.allclose(after, before, atol=1e-6)
    torch.testing.assert_close(after, _uncached(op, x), rtol=1e-6, atol=1e-7)


def test_hooks_cannot_corrupt_the_cache_and_their_edits_are_used():
    model = jitter_(build_model(tiny_hyena_config(causal=False), seed=0)).eval()
    tokens = torch.randint(0, 10, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(tokens)

        def zero_in_place(h, hook):
            h.zero_()  # edits the tensor it was handed, returns nothing

        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_filter", zero_in_place),
                                                         ("blocks.0.mixer.hook_filter_rev", zero_in_place)])
        again = model(tokens)
        _, cache = model.run_with_cache(tokens)
        cache["blocks.1.mixer.hook_filter"].zero_()  # a user editing a cached activation
        later = model(tokens)
    assert not torch.allclose(edited, clean, atol=1e-5)
    torch.testing.assert_close(again, clean, rtol=0, atol=0)
    torch.testing.assert_close(later, clean, rtol=0, atol=0)


def test_train_mode_and_device_moves_drop_the_cache():
    op, x = _op(), torch.randn(2, 16, 8)
    with torch.no_grad():
        op(x)
    assert op._filter_cache._value is not None
    op.train()
    assert op._filter_cache._value is None
    op.eval()
    with torch.no_grad():
        op(x)
    op.double()
    assert op._filter_cache._value is None


def test_fused_layer_norm_matches_the_hooked_path():
    model = jitter_(build_model(tiny_hyena_config(), seed=0)).eval()
    tokens = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        fused = model(tokens)
        watch = [(lambda n: n.endswith("hook_normalized"), lambda t, hook: None)]  # attached: the unfused path
        hooked = model.run_with_hooks(tokens, fwd_hooks=watch)
    torch.testing.assert_close(fused, hooked, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- the filter's fast path
@pytest.mark.parametrize("normalized, shift", [(False, 0.0), (True, 0.1)])
def test_fast_filter_equals_safaris_module_path_with_gradients(normalized, shift):
    from models.hyena.filters import HyenaFilter

    torch.manual_seed(0)
    f = HyenaFilter(12, 40, emb_dim=5, order=16, w=10.0, normalized=normalized, shift=shift,
                    modulation_lr=1e-3).double()  # δ a parameter: the window is not cached
    L = 33
    fast, ref = f.filter_t(L), f.filter(L).t()
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(fast)
    params = [p for n, p in f.named_parameters() if n != "bias"]  # D: not part of the filter
    assert any(p is f.pos_emb.z for p in params)  # lr_pos_emb > 0: z is trained too
    grads_fast = torch.autograd.grad((fast * g).sum(), params)
    grads_ref = torch.autograd.grad((ref * g).sum(), params)
    for p, a, b in zip(params, grads_fast, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_linear_sin_gradients_match_autograd():
    from models.hyena.filters import linear_sin

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((7, 3), (4, 3), (4,), (4,))]
    assert torch.autograd.gradcheck(linear_sin, args)
    assert torch.autograd.gradcheck(lambda x, A, w: linear_sin(x, A, None, w), (args[0], args[1], args[3]))


@pytest.mark.parametrize("change", ["data", "in_place", "load_state_dict", "length"])
def test_the_cached_window_follows_its_inputs(change):
    from models.hyena.filters import ExponentialModulation, PositionalEmbedding

    mod, pe = ExponentialModulation(6), PositionalEmbedding(3, 20)
    assert not mod.deltas.requires_grad  # modulation_lr = 0: δ is a buffer, the window is cached
    L = 20
    first = mod.window_t(pe(L)[1])
    assert mod.window_t(pe(L)[1]) is first  # served from the cache
    if change == "data":
        mod.deltas.data = mod.deltas.data * 2
    elif change == "in_place":
        mod.deltas.mul_(2)
    elif change == "load_state_dict":
        mod.load_state_dict({"deltas": mod.deltas * 2})
    else:
        L = 11
    t = pe(L)[1]
    expect = torch.exp(-t * mod.deltas.abs())[0].t()  # safari's expression, [d, L]
    torch.testing.assert_close(mod.window_t(t), expect, rtol=0, atol=0)
    assert not torch.equal(mod.window_t(t)[:, :L], first[:, :L]) or change == "length"


def test_a_window_made_under_inference_mode_can_be_trained_through():
    model = build_model(tiny_hyena_config(), seed=0)
    x = torch.randint(0, model.cfg.vocab_size, (2, 8))
    with torch.inference_mode():
        for block in model.blocks:
            block.mixer.filters(8)  # fills each window cache inside inference mode
    model.train()
    model(x).sum().backward()  # saving an inference tensor for backward would raise here
    assert all(p.grad is not None for p in model.blocks[0].mixer.filter_fn.implicit_filter.parameters())
