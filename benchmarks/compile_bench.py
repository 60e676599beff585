"""`python -m benchmarks --compile`: torch.compile (inductor) of a block's LayerNorm + MLP, the
lever the training-speed issue names for the GELU. Each measurement is a fresh child process
with its own inductor cache folder: the first child compiles cold, the second finds the cache
warm, as a second study run would. Reported: the import of torch._dynamo, the first call
(compile) of each child, and the compiled forward + backward against eager, interleaved."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.report import Section

CHILD = r'''
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from benchmarks.timing import compare
from models.build import build_model
L, b, rounds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
import torch._dynamo  # noqa: F401
t_import = time.perf_counter() - t0
m = build_model(dict(kind="hyena", vocab_size=10, d_model=64, n_layers=2, l_max=L), seed=0).train()
blk = m.blocks[0]
f = lambda x: blk.mlp(blk.ln2(x))
fc = torch.compile(f, dynamic=False)
g = torch.Generator().manual_seed(0)
x = torch.randn(b, L, 64, generator=g, requires_grad=True); gy = torch.randn(b, L, 64, generator=g)
t0 = time.perf_counter(); fc(x).backward(gy); t_first = time.perf_counter() - t0
t = compare({"eager": lambda: f(x).backward(gy), "compiled": lambda: fc(x).backward(gy)}, rounds, warmup=2, clock="cpu")
print(json.dumps({"import": t_import, "first": t_first, "eager": t.median("eager"), "compiled": t.median("compiled"),
                  "ratio": t.ratio("compiled", "eager")}))
'''


def _child(repo: str, cache: str, L: int, b: int, rounds: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, repo, str(L), str(b), str(rounds)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the compile child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(plan, bar, provenance: str) -> list[Section]:
    from benchmarks.study_bench import REPO, STUDY_BATCH, STUDY_LEN, STUDY_STEPS

    L, b = (16, 2) if plan.quick else (STUDY_LEN, STUDY_BATCH)
    rounds = 3 if plan.quick else 25
    with tempfile.TemporaryDirectory() as cache:
        cold = _child(str(REPO), cache, L, b, rounds)
        bar.update()
        warm = _child(str(REPO), cache, L, b, rounds)
        bar.update()
    rows = [[label, f"{r['import']:.1f}", f"{r['first']:.1f}", f"{r['eager'] * 1e3:.2f}", f"{r['compiled'] * 1e3:.2f}",
             f"**{r['ratio']:.2f}**",
             f"{(r['import'] + r['first']) / max(1e-9, 2 * (r['eager'] - r['compiled'])):.0f}"
             if r["compiled"] < r["eager"] else "never"]
            for label, r in (("cold cache", cold), ("warm cache", warm))]
    return [Section("compile", "torch.compile of LayerNorm + MLP", provenance,
                    text=[f"Block 0's `ln2` → MLP (fc1 → GELU-tanh → fc2), L = {L}, batch {b} (the study's step), "
                          "forward + backward, eager vs `torch.compile(dynamic=False)` (benchmarks/compile_bench.py). "
                          "Seconds are wall seconds of the child; ms are CPU ms per call. *Break-even*: steps "
                          "before the import and the first call are paid back by the two MLPs of a step. "
                          f"Verdict: dropped (a study run is {STUDY_STEPS:,} steps)."],
                    tables=[(["inductor cache", "import torch._dynamo s", "first call s", "eager ms",
                              "compiled ms", "compiled / eager", "break-even steps"], rows)])]
