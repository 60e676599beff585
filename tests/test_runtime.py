"""hyenalens/runtime.py: the malloc tuning that the CLI applies, and that importing `models`
applies in any other process (a notebook), keeps run_with_cache from faulting in fresh pages for
every cached activation (counted as minor page faults, not timed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the measurement both children make: page faults per run_with_cache once memory is warm
MEASURE = """
torch.set_num_threads(1)
m = build_model(dict(kind="hyena", vocab_size=10, d_model=32, n_layers=2, l_max=66), seed=0).eval()
x = torch.randint(0, 10, (64, 66), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    for _ in range(3):
        m.run_with_cache(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        m.run_with_cache(x)
    print(int(malloc_tuned()), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3)
"""
# the CLI's way: tune_malloc called explicitly
CHILD = """
import resource, torch
from hyenalens.runtime import malloc_tuned, tune_malloc
from models.build import build_model
tuned = tune_malloc()
assert tuned == malloc_tuned() and tune_malloc() == tuned  # idempotent
""" + MEASURE
# a notebook: `import hyenalens as hl` and nothing else of HyenaLens' set-up
NOTEBOOK = """
import resource, sys, torch
import hyenalens as hl
from hyenalens.runtime import malloc_tuned
build_model = hl.build_model
""" + MEASURE


def _faults(setting: str, child: str = CHILD) -> tuple[bool, float]:
    env = dict(os.environ, HYENALENS_MALLOC_TUNING=setting, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", child], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "1", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_malloc_reuses_cached_activation_memory():
    tuned, faults_tuned = _faults("1")
    assert tuned
    # measured: 0-90 faults per call tuned, 1,300-2,900 with glibc's defaults. glibc's own
    # (dynamic) thresholds depend on the allocation history, and one untuned child in a full
    # test run once measured 132, another 473-518: the untuned side gets up to three children,
    # and the property is the gap (tuned: a few faults; untuned: hundreds to thousands)
    offs = []
    for _ in range(3):
        off, faults_off = _faults("0")
        assert not off
        offs.append(faults_off)
        if faults_off > 600:
            break
    assert faults_tuned < 250, faults_tuned
    assert max(offs) > max(300.0, 3 * faults_tuned), (faults_tuned, offs)


def test_opt_out_changes_nothing(monkeypatch):
    import hyenalens.runtime as rt

    monkeypatch.setattr(rt, "_applied", None)
    monkeypatch.setenv("HYENALENS_MALLOC_TUNING", "0")
    assert rt.tune_malloc() is False and rt.malloc_tuned() is False


@pytest.mark.parametrize("setting", ["1", "0"])
def test_importing_hyenalens_applies_the_tuning_without_torch(setting):
    """`import hyenalens` alone sets the thresholds (a notebook never runs the CLI), through
    ctypes: no torch is imported for it; HYENALENS_MALLOC_TUNING=0 opts out."""
    env = dict(os.environ, HYENALENS_MALLOC_TUNING=setting, PYTHONPATH=str(ROOT))
    child = "import sys, hyenalens, hyenalens.runtime as rt; print(rt.malloc_tuned(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", child], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    on = setting == "1" and sys.platform.startswith("linux")
    assert out == [str(on), "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_a_notebook_run_with_cache_reuses_memory():
    """The notebook-like process (`import hyenalens as hl`, no tune_malloc call) gets the
    CLI's few page faults per run_with_cache; its untuned counterpart is the test above."""
    tuned, faults = _faults("1", NOTEBOOK)
    assert tuned
    assert faults < 250, faults
