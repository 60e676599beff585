"""Hook overhead: a plain forward (hook points bypassed), a forward with every hook point idle
(the model as shipped), and `run_with_cache` on every hook; and the `notebook_cache` rows:
`run_with_cache` against a plain forward in a fresh process that only does `import hyenalens as
hl`, as a notebook does (issue 17)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformer_lens.hook_points import HookPoint

from benchmarks.report import Section
from benchmarks.timing import compare
from models.build import build_model

TARGET_IDLE, TARGET_CACHE = 1.02, 1.10
ROOT = Path(__file__).resolve().parents[1]

# A notebook-like process: it imports `models` and nothing of the CLI or the benchmarks' own
# set-up (no tune_malloc call: whatever the import does is what a researcher gets). Under
# inference_mode, each round runs `calls` calls of every variant interleaved (the order rotates);
# a round's ratio is its median cache time / its median plain time; the result is the minimum
# over the rounds. Prints one JSON line.
NOTEBOOK_CHILD = r"""
import json, resource, statistics, sys, time
import torch
import hyenalens as hl
import hyenalens.runtime as rt
tuned_on_import = rt.malloc_tuned()  # before anything else of HyenaLens is imported
from benchmarks.hooks_bench import bypassed
build_model = hl.build_model
d, L, b, rounds, calls, threads = map(int, sys.argv[1:7])
torch.set_num_threads(threads)
model = build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).eval()
plain_model = bypassed(model)
x = torch.randint(0, 10, (b, L), generator=torch.Generator().manual_seed(0))
names_all = list(model.hook_dict)


def retain():  # the least any cache of every hook does: keep a reference to each activation
    kept = {}

    def keep(t, hook):
        kept[hook.name] = t
    with model.hooks(fwd_hooks=[(n, keep) for n in names_all]):
        model(x)
    return kept


variants = {"plain": lambda: plain_model(x), "idle": lambda: model(x), "cache": lambda: model.run_with_cache(x),
            "retain": retain}
names = list(variants)
ratios, idle_ratios, retain_ratios, faults, n_cache = [], [], [], 0, 0
with torch.inference_mode():
    for f in variants.values():
        f()
    for r in range(rounds):
        t = {n: [] for n in names}
        for i in range(calls):
            k = (r * calls + i) % len(names)
            for n in names[k:] + names[:k]:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                variants[n]()
                t[n].append(time.perf_counter() - t0)
                if n == "cache":
                    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                    n_cache += 1
        med = {n: statistics.median(v) for n, v in t.items()}
        ratios.append(med["cache"] / med["plain"])
        idle_ratios.append(med["cache"] / med["idle"])
        retain_ratios.append(med["retain"] / med["plain"])
print(json.dumps({"cache_plain": min(ratios), "cache_idle": min(idle_ratios), "retain_plain": min(retain_ratios),
                  "rounds": ratios,
                  "tuned": tuned_on_import, "faults": faults / n_cache}))
"""


def notebook_cache(d: int, L: int, b: int, rounds: int = 3, calls: int = 7, threads: int = 1,
                   tuning: str | None = None) -> dict:
    """Run NOTEBOOK_CHILD in a fresh interpreter; `tuning` sets HYENALENS_MALLOC_TUNING there
    (None: as inherited). Returns its JSON: cache_plain / cache_idle (min over rounds of the
    median ratio), rounds, tuned (whether the import raised the malloc thresholds), faults
    (minor page faults per run_with_cache call)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if tuning is not None:
        env["HYENALENS_MALLOC_TUNING"] = tuning
    out = subprocess.run([sys.executable, "-c", NOTEBOOK_CHILD, *map(str, (d, L, b, rounds, calls, threads))],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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

    def verdict(r, bound):
        return "" if plan.quick else (" (met)" if r <= bound else " (**not met**)")

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
        rows.append([L, b, len(model.hook_dict), f"{t.median('plain') * 1e3:.1f}", f"{t.median('idle') * 1e3:.1f}",
                     f"**{idle:.3f}**" + verdict(idle, TARGET_IDLE), f"{t.median('cache') * 1e3:.1f}",
                     f"**{cache:.3f}**" + verdict(cache, TARGET_CACHE), t.spread("plain")])
    nb_rows = []
    if not dev.startswith("cuda"):  # glibc malloc: a CPU process's setting
        L, b, rounds, calls = (16, 4, 1, 3) if plan.quick else (1024, 8, 3, 7)
        threads = torch.get_num_threads()
        for label, tuning in (("`import hyenalens` (default)", None), ("HYENALENS_MALLOC_TUNING=0", "0")):
            if plan.quick and tuning is not None:
                continue
            bar.set_postfix_str(f"notebook_cache {label}")
            res = notebook_cache(d, L, b, rounds, calls, threads, tuning)
            if tuning is None and not plan.quick:
                checks.append((f"notebook_cache L={L} b={b} (fresh process, import hyenalens): cache / plain",
                               res["cache_plain"], TARGET_CACHE))
            bound = verdict(res["cache_plain"], TARGET_CACHE) if tuning is None else ""
            nb_rows.append([f"notebook_cache: {label}", L, b, threads, "yes" if res["tuned"] else "no",
                            f"{res['faults']:.0f}", f"**{res['cache_plain']:.3f}**" + bound,
                            f"{res['cache_idle']:.3f}", f"{res['retain_plain']:.3f}",
                            ", ".join(f"{r:.3f}" for r in res["rounds"])])
    return [Section(
        "hooks", "Hooks: plain forward, idle hook points, run_with_cache", provenance,
        text=["Eval forward without gradients of a 2-layer HyenaLM (d_model "
              f"{d}, order 2). *Plain*: a copy of the model with every HookPoint replaced by a bare "
              "`return x` (benchmarks/hooks_bench.py), i.e. the hook points compiled out. *Idle*: "
              "the model as shipped, no hook attached. *Cache*: `run_with_cache()` on every hook (hooks "
              f"added, activations kept, hooks removed). Targets: idle ≤ {TARGET_IDLE}x, cache ≤ "
              f"{TARGET_CACHE}x the plain forward. L = 66, batch 256 is the probe set's capture forward.",
              "*notebook_cache*: the same models (d_model 64, L 1024, batch 8) in a fresh Python process "
              "that only does `import hyenalens as hl`, as a notebook does, under `inference_mode`: each of 3 rounds "
              "runs 7 interleaved calls of plain, idle, cache and retain, and the row is the minimum over the rounds "
              "of the median cache / plain (benchmarks/hooks_bench.py `NOTEBOOK_CHILD`). *Retain* is the "
              "floor of any cache of every hook: a hook on each point that only keeps a reference to its "
              "activation (no copy, no TransformerLens machinery), so retain / plain is what keeping the "
              "activations alive costs by itself. Importing `hyenalens` "
              "raises glibc's malloc thresholds (hyenalens/runtime.py); the HYENALENS_MALLOC_TUNING=0 row "
              "is the same process with that opted out."],
        tables=[(["L", "batch", "hooks", "plain ms", "idle ms", "idle / plain", "cache ms", "cache / plain",
                  "spread"], rows)] + ([(
            ["notebook_cache", "L", "batch", "threads", "malloc tuned", "page faults / cache call",
             "cache / plain", "cache / idle", "retain / plain (floor)", "cache / plain per round"], nb_rows)] if nb_rows else []),
        checks=checks)]
