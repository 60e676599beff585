"""Each speed lever of the performance issue, measured side by side against what it replaced,
so that BENCHMARKS.md says what every choice bought on this machine (and what it did not)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks import speed_levers
from benchmarks.reference import fftconv_ref
from benchmarks.report import Section
from benchmarks.timing import compare
from interp.implicit_attention import (_auto_row_block, _fold_short_conv, _h_rows, hyena_implicit_attention,
                                       hyena_operands, row_normalize)
from models.build import build_model
from models.hyena.fftconv import circular_kernel, fft_conv, fft_size, short_conv


def _autograd_channels_last(z, h, D):
    """The previous HyenaLens long_conv: FFT size 2L along dim −2 of [b, L, d], autograd."""
    L = z.shape[-2]
    k_f = torch.fft.rfft(h.t(), n=2 * L, dim=0)
    return torch.fft.irfft(torch.fft.rfft(z, n=2 * L, dim=-2) * k_f, n=2 * L, dim=-2)[..., :L, :] + z * D


def _toeplitz_bmm(z, h, D):
    """Direct convolution: y_c = T(h_c) z_c as one batched matmul over channels."""
    d, L = h.shape
    T = F.pad(h, (L - 1, 0)).flip(-1).unfold(-1, L, 1).flip(-2)  # [d, L, L], T[i, j] = h[i − j]
    return torch.matmul(z.permute(2, 0, 1), T.transpose(1, 2)).permute(1, 2, 0) + z * D


def _general_token_mean_abs(ops):
    """The general path (any order) that order 2 used before: gather a Toeplitz block, scale,
    fold the short conv, reduce over channels, in float64."""
    b, d, L = ops.shape
    r = _auto_row_block(b, d, L)
    out = torch.empty(b, L, L, dtype=torch.float32, device=ops.v.device)
    for i0 in range(0, L, r):
        rows = torch.arange(i0, min(L, i0 + r), device=ops.v.device)
        R = _fold_short_conv(_h_rows(ops, rows), ops.short_w, ops.short_pad)
        out[:, i0:i0 + len(rows)] = row_normalize(R.abs().mean(dim=1)).float()
    return out


def _fb(fn, *args):
    outs = [a for a in args if a.requires_grad]

    def run():
        y = fn(*args)
        y.backward(torch.ones_like(y))
        for a in outs:
            a.grad = None
    return run


def run(plan, bar, provenance: str) -> list[Section]:
    dev, d, rounds = plan.device, plan.d_model, plan.lever_rounds
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    clock = "cpu" if dev == "cpu" else "wall"
    rows = speed_levers.rows(plan, dev, rounds, bar.update)

    def add(lever, setting, base_name, new_name, variants, verdict="kept"):
        t = compare(variants, rounds, warmup=1, device=dev, clock=clock)
        rows.append([lever, setting, f"{t.median(base_name) * 1e3:.2f}", f"{t.median(new_name) * 1e3:.2f}",
                     f"**{t.ratio(new_name, base_name):.2f}**", verdict])
        bar.update()

    for L, b in plan.lever_sizes:
        bar.set_postfix_str(f"levers L={L}")
        n = fft_size(L)
        z = rnd(b, L, d).requires_grad_(True)
        zt = rnd(b, d, L).requires_grad_(True)
        h, D = rnd(d, L).requires_grad_(True), rnd(d).requires_grad_(True)
        ours = _fb(lambda z, h, D: fft_conv(z, D, k=circular_kernel(h, None, n)), z, h, D)
        add("long conv: hand-written adjoint (ours) vs autograd, safari's layout", f"fwd+bwd, L={L}, b={b}",
            "autograd", "ours", {"autograd": _fb(fftconv_ref, zt, h, D), "ours": ours})
        add("long conv: ours vs the previous HyenaLens long_conv (channels-last, autograd)", f"fwd+bwd, L={L}, b={b}",
            "previous", "ours", {"previous": _fb(_autograd_channels_last, z, h, D), "ours": ours})
        if L <= 256:
            add("long conv: direct Toeplitz matmul vs FFT (ours)", f"fwd+bwd, L={L}, b={b}", "ours", "direct",
                {"ours": ours, "direct": _fb(_toeplitz_bmm, z, h, D)}, "dropped")
        u = rnd(b, L, 3 * d).requires_grad_(True)
        conv = torch.nn.Conv1d(3 * d, 3 * d, 3, groups=3 * d, padding=2).to(dev)
        add("short conv: shifted multiply-adds (ours) vs nn.Conv1d on the [b, L, C] activation",
            f"fwd+bwd, L={L}, b={b}", "conv1d", "ours",
            {"conv1d": _fb(lambda u: conv(u.transpose(1, 2))[..., :L].transpose(1, 2), u),
             "ours": _fb(lambda u: short_conv(u, conv.weight, conv.bias, 2), u)})
        ln_w, ln_b = rnd(d).requires_grad_(True), rnd(d).requires_grad_(True)
        add("LayerNorm: one fused kernel (idle hook) vs normalize → hook → affine", f"fwd+bwd, L={L}, b={b}",
            "hooked", "fused",
            {"hooked": _fb(lambda z: F.layer_norm(z, (d,)) * ln_w + ln_b, z),
             "fused": _fb(lambda z: F.layer_norm(z, (d,), ln_w, ln_b), z)})
        model = build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).to(dev).eval()
        op, x = model.blocks[0].mixer, rnd(b, L, d)
        f, gh = op.filter_fn, rnd(d, L)
        add("filter: Linear→Sin as one Function, channels-first, window kept (ours) vs safari's module path",
            f"fwd+bwd, L={L}", "modules", "ours",
            {"modules": lambda: f.filter(L).t().backward(gh), "ours": lambda: f.filter_t(L).backward(gh)})

        def cold():
            op._filter_cache.clear()
            op(x)

        with torch.no_grad():
            add("eval forward: cached filters vs re-materialized every call", f"operator, L={L}, b={b}",
                "recompute", "cached", {"recompute": cold, "cached": lambda: op(x)})
    for L in plan.lever_fft_lengths:
        x = rnd(max(1, 2048 * 64 // L), L)
        sizes = {"2L": 2 * L, "ours": fft_size(L), "5-smooth": _smooth5(2 * L - 1)}
        variants = {k: (lambda n=n: torch.fft.irfft(torch.fft.rfft(x, n=n), n=n)) for k, n in sizes.items()}
        t = compare(variants, rounds, warmup=1, device=dev, clock=clock)
        for k in ("ours", "5-smooth"):
            rows.append([f"FFT length: {k} ({sizes[k]}) vs exactly 2L ({2 * L})", f"rfft+irfft, L={L}",
                         f"{t.median('2L') * 1e3:.2f}", f"{t.median(k) * 1e3:.2f}", f"**{t.ratio(k, '2L'):.2f}**",
                         "kept" if k == "ours" else "dropped (parity)"])
        bar.update()
    L = plan.lever_implicit_len
    bar.set_postfix_str(f"levers implicit L={L}")
    model = build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).to(dev).eval()
    ops = hyena_operands(model, torch.randint(0, 10, (1, L), generator=g).to(dev), 1)
    t = compare({"general": lambda: _general_token_mean_abs(ops),
                 "order2": lambda: hyena_implicit_attention(ops, level="token", aggregate="mean_abs", normalize=True)},
                max(2, rounds // 4), warmup=1, device=dev, clock=clock)
    rows.append(["implicit attention, token-level channel-mean abs(H): order-2 blocks (float32) vs the "
                 "general row-block path (float64)", f"L={L}, d={d}", f"{t.median('general') * 1e3:.1f}",
                 f"{t.median('order2') * 1e3:.1f}", f"**{t.ratio('order2', 'general'):.2f}**", "kept"])
    bar.update()
    return [Section(
        "levers", "Levers, one at a time", provenance,
        text=["Each row times one change against what it replaced, interleaved in one process (median ms; "
              "new / old = median of the per-round ratios, below 1 is faster). The first rows are the "
              "training-speed issue's levers, the rest the earlier performance issue's; all are timed by the CPU "
              "seconds of the measuring thread on CPU, as the train table. *5-smooth* is the "
              "smallest even 2^a·3^b·5^c ≥ 2L−1 "
              "(`scipy.fft.next_fast_len(2L−1, real=True)` can be odd: 135 for L = 66); *ours* is "
              "`models.hyena.fftconv.fft_size`, the smallest even length ≥ 2L−1 without prime factors above 13."],
        tables=[(["lever", "setting", "old ms", "new ms", "new / old", "verdict"], rows)])]


def _smooth5(need: int) -> int:
    n = need + need % 2
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2
