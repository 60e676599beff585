"""Implicit attention (science.md, "Implicit attention H(u)"): time and peak memory of the map
the scores use (token level, channel mean |H|, rows normalized) at long L."""
from __future__ import annotations

import torch

from benchmarks.memory import LiveStorageBytes, rss_peak_growth, torch_peak_bytes
from benchmarks.report import Section
from benchmarks.timing import compare
from interp.implicit_attention import implicit_attention
from models.build import build_model

TARGET_PEAK = 3.0  # peak memory ≤ 3x the output map (the target at L = 16384)


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}" if n >= 2**20 else f"{n / 2**20:.2f}"


def run(plan, bar, provenance: str) -> list[Section]:
    dev, d = plan.device, plan.d_model
    rows, checks = [], []
    for L, rounds in plan.implicit:
        model = build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).to(dev).eval()
        tokens = torch.randint(0, 10, (1, L), generator=torch.Generator().manual_seed(0))

        def fn():
            return implicit_attention(model, tokens, 1, level="token", aggregate="mean_abs", normalize_rows=True)

        bar.set_postfix_str(f"implicit L={L}")
        rss = None
        if dev == "cpu":
            holder = {}

            def timed():
                holder["t"] = compare({"map": fn}, 1, warmup=0, device=dev)

            _, rss = rss_peak_growth(timed)  # the first call, with everything it allocates
            t = holder["t"]
            if rounds > 1:
                more = compare({"map": fn}, rounds - 1, warmup=0, device=dev)
                t.samples["map"] += more.samples["map"]
        else:
            t = compare({"map": fn}, rounds, warmup=1, device=dev)
        bar.update()
        out_bytes = L * L * 4
        if dev == "cpu":
            mode = LiveStorageBytes()
            with mode:
                A = fn()
            peak, largest = mode.peak, mode.largest
        else:
            A, peak = torch_peak_bytes(fn, dev)
            largest = None
        bar.update()
        assert A.shape == (1, L, L)
        del A
        ratio = peak / out_bytes
        if not plan.quick and L == max(x[0] for x in plan.implicit):
            checks.append((f"implicit attention L={L}: torch peak / output map", ratio, TARGET_PEAK))
        verdict = "" if plan.quick else (" (met)" if ratio <= TARGET_PEAK else " (**not met**)")
        rows.append([L, f"{t.median('map'):.2f}", _mib(out_bytes), _mib(peak), f"**{ratio:.2f}**" + verdict,
                     _mib(largest), _mib(rss)])
    return [Section(
        "implicit", "Implicit attention: time and peak memory", provenance,
        text=["`implicit_attention(model, tokens, layer=1, level=\"token\", aggregate=\"mean_abs\", "
              f"normalize_rows=True)` (the map the scores read) on a 2-layer HyenaLM, d_model {d}, order 2, "
              "batch 1; the model's forward that collects the operands is included. The aggregate is built in "
              "blocks of rows and columns (interp/implicit_order2.py), so no [batch, d_model, L, L] tensor "
              "exists at any time; the largest single tensor is the output map itself. Peak memory "
              "(benchmarks/memory.py): *torch peak* counts every tensor storage an op creates until it is "
              "freed (a TorchDispatchMode; storage objects are finalized exactly when their memory is "
              "released); *RSS growth* is the rise of the process's resident high-water mark during the "
              "first call (Linux VmHWM, reset before it): it sees every allocation but only pages not "
              "resident before, so it reads about 0 where earlier sections left memory to reuse, and "
              f"cross-checks the torch count at the longest L. Target: torch peak ≤ "
              f"{TARGET_PEAK:g}x the output map."],
        tables=[(["L", "seconds", "output map MiB", "torch peak MiB", "peak / map", "largest tensor MiB",
                  "RSS growth MiB"], rows)], checks=checks)]
