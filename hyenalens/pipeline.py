"""The main job: train → capture → probe → analyze per run, then one report.

This module sits in the `hyenalens` package because it is the one place that uses every
layer (models → interp → analysis → reports). Runs go through one process pool, not a
subprocess per step: each worker imports torch and transformer-lens once and trains with one
torch thread (so a rerun is bit-identical). Every stage is incremental, so interrupting and
rerunning resumes: finished runs and captured checkpoints are not redone.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from analysis import analyze_group, analyze_run
from hyenalens.runtime import tune_malloc
from interp.capture import capture_run
from interp.run_metrics import probe_run
from models.errors import UserError
from models.training.loop import train
from reports import write_report


@dataclass(frozen=True)
class DemoPlan:
    """What `hyenalens demo` trains and how much of it is captured.

    hyena:          Hyena presets, one per regime (causal/all, causal/last, noncausal/last)
    attention:      attention-baseline presets
    recipe:         overrides applied to every run, so that every regime gets the same recipe
                    and the same step budget (a user's own overrides come after them)
    capture_limit:  at most this many checkpoints captured and probed per run, dense around the
                    transitions (interp.checkpoint_select); None: all
    """
    hyena: tuple[str, ...]
    attention: tuple[str, ...]
    recipe: tuple[str, ...] = ()
    capture_limit: int | None = None


# The full demo: safari's AR setup (vocab 10, length 64, d_model 64, 2 layers; the ar_* presets)
# with a recipe under which the recall jump completes in every regime within the demo's
# 600 s budget on 2 cores (measurements: BENCHMARKS.md, "`hyenalens demo` (after install)"). The
# last-token regimes get one target per sequence, so they need more steps than causal/all. Batch
# 32 learns more per example than batch 16 here (causal/last seed 1: 0.97 by step 1350 at batch
# 32, 0.62 after 2500 steps at batch 16) and costs 1.65x a batch-16 step.
DEMO = DemoPlan(
    hyena=("ar_causal_all", "ar_causal_last", "ar_noncausal_last"),
    attention=("ar_attention_causal_all",),
    recipe=("optimizer.lr=1e-3", "schedule.steps=1750", "schedule.batch_size=32", "eval.train_subset=256",
            "checkpoints.log_count=8", "checkpoints.every=250", "checkpoints.dense_every=50"),
    capture_limit=12,
)
# `hyenalens demo --quick`: the ~2-minute smoke version (length 16, d_model 32, 300 steps). Its
# Hyena runs stop at stage one (the most-frequent-value heuristic), so it shows the pipeline,
# not the answer.
QUICK = DemoPlan(
    hyena=("quick_ar_causal_all", "quick_ar_causal_last", "quick_ar_noncausal_last"),
    attention=("quick_ar_attention_causal_all",),
)


@dataclass(frozen=True)
class Job:
    config: str | dict  # a preset name, a YAML path or a raw config mapping (models.training.loop.train)
    seed: int
    out: str
    overrides: tuple[str, ...] = ()
    capture_limit: int | None = None


def worker_init(threads: int = 1) -> None:
    """Each worker process trains with a fixed torch thread count (1: bit-identical reruns)."""
    import torch


    torch.set_num_threads(threads)
    tune_malloc()


def run_job(job: Job) -> dict[str, Any]:
    """Train (or resume) one run, then capture, probe and analyze it. Returns timings."""
    times = {}
    t = time.perf_counter()
    result = train(job.config, job.out, [f"seed={job.seed}", *job.overrides], quiet=True)
    times["train"] = time.perf_counter() - t
    t = time.perf_counter()
    capture_run(job.out, progress=False, limit=job.capture_limit)
    times["capture"] = time.perf_counter() - t
    t = time.perf_counter()
    probe_run(job.out, progress=False)
    times["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    formation = analyze_run(job.out)
    times["analyze"] = time.perf_counter() - t
    return {"run": job.out, "finished": result.finished, "times": times, "step": result.step,
            "steps_trained": result.step - (result.resumed_from or 0), "resumed_from": result.resumed_from,
            "test_acc_last": (result.last_metrics or {}).get("test_acc_last"),
            "transitions": formation["transitions"].get("test_acc_last", []),
            "recall_jump": formation["recall_jump"]}


def run_jobs(jobs: list[Job], workers: int | None = None, quiet: bool = False, *, threads: int = 1,
             run: Callable[[Job], dict[str, Any]] = run_job,
             on_result: Callable[[dict[str, Any]], None] | None = None, desc: str = "runs") -> list[dict[str, Any]]:
    """Run jobs in one spawn pool of `workers` processes (default: the cores, at most len(jobs)),
    each with `threads` torch threads. `run` (a module-level function, so it pickles) is called
    per job in a worker; `on_result` is called in this process as each result arrives. With one
    worker the jobs run here, and this process's thread count is restored afterwards."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[dict[str, Any]] = []

    def done(res: dict[str, Any]) -> None:
        results.append(res)
        if on_result is not None:
            on_result(res)

    if workers == 1:
        import torch

        before = torch.get_num_threads()
        worker_init(threads)
        try:
            for job in tqdm(jobs, desc=desc, disable=quiet, unit="run"):
                done(run(job))
        finally:
            torch.set_num_threads(before)
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=worker_init,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(run, job) for job in jobs]
            for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=quiet, unit="run"):
                done(fut.result())
    return sorted(results, key=lambda r: r["run"])


def demo_jobs(out: Path, seeds: int = 3, attention_seeds: int = 1, plan: DemoPlan = DEMO,
              overrides: tuple[str, ...] = ()) -> list[Job]:
    over = (*plan.recipe, *overrides)
    return [Job(p, s, str(out / "runs" / f"{p}_s{s}"), over, plan.capture_limit)
            for presets, n in ((plan.hyena, seeds), (plan.attention, attention_seeds))
            for p in presets for s in range(n)]


def demo(out: str | Path = "hyenalens-demo", seeds: int = 3, attention_seeds: int = 1, workers: int | None = None,
         quiet: bool = False, overrides: tuple[str, ...] = (), plan: DemoPlan = DEMO) -> dict[str, Any]:
    """`hyenalens demo`: train, capture, probe, analyze, report; print a five-line summary."""
    if seeds < 1 or attention_seeds < 0:
        raise UserError("--seeds must be >= 1 and --attention-seeds >= 0")
    out = Path(out)
    t0 = time.perf_counter()
    jobs = demo_jobs(out, seeds, attention_seeds, plan, overrides)
    results = run_jobs(jobs, workers, quiet)
    runs = [r["run"] for r in results]
    group = analyze_group(runs, out_path=out / "analysis" / "formation_group.json", write_runs=False)
    summary = write_report(runs, out / "report", group=group, progress=not quiet)
    elapsed = time.perf_counter() - t0
    lines = summary_lines(summary, results, elapsed)
    print("\n".join(lines))
    print((out / "report" / "index.html").resolve())
    return {"summary": summary, "results": results, "elapsed": elapsed, "lines": lines}


def summary_lines(summary: dict[str, Any], results: list[dict[str, Any]], elapsed: float) -> list[str]:
    """Five lines: what ran, the recall jump per group, the four answers, timing, the report."""
    ans = summary.get("answers") or {}
    sooner = (ans.get("sooner") or {}).get("by_regime") or {}
    jump_bits = []
    for name, e in sooner.items():
        where = "no recall jump" if e.get("value") is None else f"recall jump at step {e['value']:.0f}"
        jump_bits.append(f"{name}: {where} ({e['n']}/{e['n'] + e['censored']} runs)")
    accs = [r["test_acc_last"] for r in results if r.get("test_acc_last") is not None]
    per_stage = {k: sum(r["times"][k] for r in results) for k in ("train", "capture", "probe", "analyze")}
    verdicts = "; ".join(f"{k}: {(ans.get(k) or {}).get('verdict', 'not measured')}"
                         for k in ("sooner", "train_with_test", "circuit_vs_jump", "mechanism"))
    return [
        f"demo: {len(results)} runs in {len(sooner)} groups, final test accuracy "
        f"{min(accs):.2f}–{max(accs):.2f}" if accs else f"demo: {len(results)} runs",
        "recall jumps: " + ("; ".join(jump_bits) if jump_bits else "none"),
        "answers: " + verdicts,
        f"time: {elapsed:.0f} s wall; worker seconds " + ", ".join(f"{k} {v:.0f}" for k, v in per_stage.items()),
        f"report: {len(summary.get('figures', []))} figures",
    ]
