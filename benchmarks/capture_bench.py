"""Capture + probe per checkpoint: what `hyenalens capture` and `hyenalens probe` do for one
checkpoint (capture the probe set's activations, write and read them back, then every metric
of interp.run_metrics.evaluate_model), on the default probe set."""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Section
from models.build import build_model
from models.rundir.io import atomic_save_tensors, load_tensors

TARGET = 1.0  # seconds per checkpoint
SAFARI = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "safari_ar_v10_l64_o2"


def _models(plan, L: int, vocab: int) -> list[tuple[str, torch.nn.Module]]:
    d = plan.d_model
    out = []
    if not plan.quick and SAFARI.is_dir():
        import yaml

        from models.hyena.lm import HyenaLM
        from models.safari.conversion import load_state_dict

        cfg = yaml.safe_load((SAFARI / "config.yaml").read_text())
        sd = load_state_dict(SAFARI / "step_001884.safetensors")
        out.append(("Hyena, trained (safari fixture, step 1884)", HyenaLM.from_safari(sd, cfg["model"])))
    for kind in ("hyena", "attention"):
        cfg = dict(kind=kind, vocab_size=vocab, d_model=d, n_layers=2, l_max=L)
        out.append((f"{'Hyena' if kind == 'hyena' else 'attention'}, random init", build_model(cfg, seed=0)))
    return out


def run(plan, bar, provenance: str) -> list[Section]:
    from interp.capture import capture_model, default_hooks
    from interp.probe_set import probe_set_from_data
    from interp.run_metrics import MetricOptions, evaluate_model
    from models.data.synthetics import icl_dataset

    c = plan.capture
    data = icl_dataset("assoc_recall", 10, c["seq_len"], c["n_train"], c["n_test"], seed=0)
    ps = probe_set_from_data(data, "test", n_probe=c["n_probe"], n_circuit=c["n_circuit"], seed=0)
    opt = MetricOptions(**c.get("options", {}))
    rows, checks = [], []
    parts = ("capture", "probes", "filters", "scores", "attribution", "patching", "swap", "sources")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.safetensors"
        for name, model in _models(plan, ps.length, len(data.vocab)):
            with contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model to device"
                model = model.to(plan.device).eval()

            def once() -> tuple[float, dict[str, float]]:
                secs: dict[str, float] = {}
                t0 = time.perf_counter()
                acts = capture_model(model, ps, default_hooks(model))
                atomic_save_tensors(path, acts, {"step": 0})
                acts, _ = load_tensors(path)
                secs["capture"] = time.perf_counter() - t0
                evaluate_model(model, ps, acts=acts, options=opt, timings=secs)
                return time.perf_counter() - t0, secs

            bar.set_postfix_str(f"capture {name.split(',')[0]}")
            once()  # first call: imports sklearn and captum, fills caches
            runs = []
            for _ in range(c["rounds"]):
                runs.append(once())
                bar.update()
            total = statistics.median(r[0] for r in runs)
            each = {p: statistics.median(r[1].get(p, 0.0) for r in runs) for p in parts}
            if not plan.quick:
                checks.append((f"capture + probe, {name}: s / checkpoint", total, TARGET))
            verdict = "" if plan.quick else (" (met)" if total <= TARGET else " (**not met**)")
            rows.append([name, f"**{total:.2f}**" + verdict] + [f"{each[p]:.3f}" for p in parts])
    n_train = int(ps.probe_train.sum())
    return [Section(
        "capture", "Capture + probe per checkpoint", provenance,
        text=[f"Default probe set: {ps.n} test sequences of AR (vocab 10, length {ps.length}), split "
              f"{n_train}/{ps.n - n_train} for the probes, {len(ps.circuit_idx)} circuit rows. Per checkpoint: "
              "capture (one forward over the probe set keeping the default hooks at 7 slots, written to "
              "safetensors and read back) and every metric of `evaluate_model`: answer accuracy, the 3 "
              "probes with permutation controls per layer (12 logistic regressions for 2 layers), filter "
              f"lag-1 mass and effective length, map scores on {opt.n_scores} circuit rows, integrated gradients "
              f"on {opt.n_attr} circuit rows with {opt.ig_steps} steps, patching on {opt.n_patch} "
              "clean/corrupted pairs over the default patch hooks and 6 position groups, the position-swap "
              f"test on all {ps.n} sequences, and the signed source decomposition (both readouts) and its "
              f"path patching by role on {opt.n_sources} rows (the documented subsets of MetricOptions). Median seconds over rounds after one warm-up call (which pays "
              f"the sklearn/captum imports). Target ≤ {TARGET:g} s."],
        tables=[(["model", "seconds / checkpoint"] + [f"{p} s" for p in parts], rows)], checks=checks)]
