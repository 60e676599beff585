"""Hook overhead: a plain forward (hook points bypassed), a forward with every hook point idle
(the model as shipped), and `run_with_cache` on every hook."""
from __future__ import annotations

import copy

import torch
from transformer_lens.hook_points import HookPoint

from benchmarks.report import Section
from benchmarks.timing import compare
from models.build import build_model

TARGET_IDLE, TARGET_CACHE = 1.02, 1.10


class _Bypassed(HookPoint):
    """A hook point that is a bare `return x`: no nn.Module call at all."""

    def __call__(self, x, *args, **kwargs):
        return x


def bypassed(model):
    """A copy of `model` whose HookPoints are all `_Bypassed` (the same weights and math)."""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m) is HookPoint:
            m.__class__ = _Bypassed
    return plain


def run(plan, bar, provenance: str) -> list[Section]:
    dev, d = plan.device, plan.d_model
    rows, checks = [], []
    for L, b, rounds in plan.hooks:
        model = build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).to(dev).eval()
        x = torch.randint(0, 10, (b, L), generator=torch.Generator().manual_seed(0)).to(dev)

        plain_model = bypassed(model)

        def plain():
            plain_model(x)

        bar.set_postfix_str(f"hooks L={L}")
        with torch.no_grad():
            t = compare({"plain": plain, "idle": lambda: model(x), "cache": lambda: model.run_with_cache(x)},
                        rounds, warmup=1, device=dev, tick=bar.update)
        idle, cache = t.ratio("idle", "plain"), t.ratio("cache", "plain")
        if not plan.quick:
            checks += [(f"idle hooks L={L} b={b}: idle / plain", idle, TARGET_IDLE),
                       (f"run_with_cache L={L} b={b}: cache / plain", cache, TARGET_CACHE)]
        def verdict(r, bound):
            return "" if plan.quick else (" (met)" if r <= bound else " (**not met**)")

        rows.append([L, b, len(model.hook_dict), f"{t.median('plain') * 1e3:.1f}", f"{t.median('idle') * 1e3:.1f}",
                     f"**{idle:.3f}**" + verdict(idle, TARGET_IDLE), f"{t.median('cache') * 1e3:.1f}",
                     f"**{cache:.3f}**" + verdict(cache, TARGET_CACHE), t.spread("plain")])
    return [Section(
        "hooks", "Hooks: plain forward, idle hook points, run_with_cache", provenance,
        text=["Eval forward without gradients of a 2-layer HyenaLM (d_model "
              f"{d}, order 2). *Plain*: a copy of the model with every HookPoint replaced by a bare "
              "`return x` (benchmarks/hooks_bench.py), i.e. the hook points compiled out. *Idle*: "
              "the model as shipped, no hook attached. *Cache*: `run_with_cache()` on every hook (hooks "
              f"added, activations kept, hooks removed). Targets: idle ≤ {TARGET_IDLE}x, cache ≤ "
              f"{TARGET_CACHE}x the plain forward. L = 66, batch 256 is the probe set's capture forward."],
        tables=[(["L", "batch", "hooks", "plain ms", "idle ms", "idle / plain", "cache ms", "cache / plain",
                  "spread"], rows)], checks=checks)]
