"""Study throughput: runs per CPU-hour at the study's recipe (benchmarks/study_child.py), for
training alone and for train + capture + probe + analyze; with `--baseline-src PATH`, the same
runs of another checkout (the HEAD a change started from) interleaved with this tree's, so that
their ratio is measured under the same load. Each run is a fresh child process with one torch
thread; its CPU seconds (`time.process_time`) are the cost, as a CPU-hour counts them."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import Section
from benchmarks.study_child import PRESET
from hyenalens.pipeline import DEMO
from models.config import load_config

REPO = Path(__file__).resolve().parents[1]
_STUDY = load_config(PRESET, list(DEMO.recipe))  # the study's run config (the recipe's one owner: DEMO)
STUDY_BATCH = _STUDY.schedule.batch_size  # the study's training step: batch …
STUDY_LEN = 66  # … of ar_causal_all's sequences (input length 64, plus the key and query tokens)
STUDY_STEPS = _STUDY.schedule.steps
CHILD = Path(__file__).resolve().with_name("study_child.py")
TARGET = 1 / 1.5  # training alone: CPU per run ≤ 2/3 of the baseline's, i.e. ≥ 1.5x the runs per CPU-hour
QUICK_RECIPE = ("schedule.steps=6", "schedule.batch_size=4", "data.num_examples=64", "data.num_test_examples=16",
                "data.input_seq_len=8", "model.d_model=16", "eval.train_subset=16", "checkpoints.every=3",
                "checkpoints.log_count=2")


def child_run(tree: Path, out: Path, seed: int, stages: str, extra: tuple[str, ...] = (),
              limit: int | None = DEMO.capture_limit) -> dict:
    """One study run of the source tree `tree` in a fresh process (the recipe's overrides `extra`,
    at most `limit` checkpoints captured); its JSON line as a dict."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as cwd:  # no ./models or ./src of the caller's folder on sys.path
        proc = subprocess.run([sys.executable, str(CHILD), str(out), str(seed), stages, str(limit).lower(), *extra], cwd=cwd, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"study run of {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if not str(Path(res["models"]).resolve()).startswith(str(tree.resolve())):
        raise RuntimeError(f"the study run meant for {tree} imported models from {res['models']}")
    return res


CPP = "this tree, model.kernels=cpp"  # the opt-in compiled kernels (models/kernels), same recipe otherwise


def run(plan, bar, provenance: str, baseline_src: str | None = None) -> list[Section]:
    trees = {"this tree": REPO, CPP: REPO}
    if baseline_src:
        trees["baseline"] = Path(baseline_src).expanduser().resolve()
    extra = (*DEMO.recipe, *QUICK_RECIPE) if plan.quick else DEMO.recipe
    own = {CPP: ("model.kernels=cpp",)}
    repeats = plan.study_repeats
    train: dict[str, list[dict]] = {k: [] for k in trees}
    full: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # interleaved, alternating which tree goes first
            names = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for name in names:
                bar.set_postfix_str(f"study {name} {r + 1}/{repeats}")
                stages = "all" if r == 0 else "train"
                res = child_run(trees[name], Path(tmp) / f"run{list(trees).index(name)}_{r}", r, stages,
                                (*extra, *own.get(name, ())))
                train[name].append(res)
                if stages == "all":
                    full[name] = res
                bar.update()
    rows = []
    for name in trees:
        cpu = [x["cpu"]["train"] for x in train[name]]
        ck = [x["inside_train"]["checkpoint"] / x["cpu"]["train"] for x in train[name]]
        ev = [x["inside_train"]["evaluate"] / x["cpu"]["train"] for x in train[name]]
        f = full[name]["cpu"]
        all_cpu = sum(f.values())
        rows.append([name, len(cpu), f"{statistics.median(cpu):.1f}", ", ".join(f"{c:.1f}" for c in cpu),
                     f"**{3600 / statistics.median(cpu):.0f}**", f"{statistics.median(ck):.0%}",
                     f"{statistics.median(ev):.0%}", f"{f['capture']:.1f} / {f['probe']:.1f} / {f['analyze']:.1f}",
                     f"{all_cpu:.1f}", f"**{3600 / all_cpu:.0f}**",
                     f"{statistics.median(x['checkpoints'] for x in train[name]):.0f}"])
    checks, text = [], []
    if "baseline" in trees:
        for name, label in (("this tree", "this tree"), (CPP, "this tree with model.kernels=cpp")):
            pairs = [a["cpu"]["train"] / b["cpu"]["train"] for a, b in zip(train[name], train["baseline"])]
            ratio = statistics.median(pairs)
            all_ratio = sum(full[name]["cpu"].values()) / sum(full["baseline"]["cpu"].values())
            text.append(f"{label.capitalize()} / baseline, CPU per run: training alone **{ratio:.3f}** "
                        f"(per pair: {', '.join(f'{p:.3f}' for p in pairs)}), i.e. **{1 / ratio:.2f}x** the runs per "
                        f"CPU-hour (target ≥ 1.5x); train + capture + probe + analyze {all_ratio:.3f} "
                        f"({1 / all_ratio:.2f}x).")
            if not plan.quick:
                checks.append((f"study run, training alone: CPU per run, {label} / starting HEAD (≤ 0.667 is ≥ 1.5x "
                               "runs per CPU-hour)", ratio, round(TARGET, 3)))
    else:
        text.append("No baseline: `--baseline-src PATH` (a checkout of the tree to compare with) adds its "
                    "runs, interleaved, and the ratio.")
    recipe = "the quick machinery check's tiny recipe" if plan.quick else \
        "`ar_causal_all` with the demo's and the study sweep's overrides, " + " ".join(f"`{o}`" for o in DEMO.recipe)
    return [Section(
        "study", "Study throughput: runs per CPU-hour", provenance,
        text=[f"One run of the study recipe ({recipe}, seed = round) per tree and round, each in a fresh "
              "process with one torch thread (benchmarks/study_child.py), trees interleaved. CPU s = "
              "`time.process_time` of the child: training alone is `models.training.loop.train` (data, "
              "steps, evaluations, checkpoints); the first round also runs capture (at most "
              f"{DEMO.capture_limit} checkpoints, as the study, where the tree's `capture_run` takes a limit), "
              "probe and analyze. The row with `model.kernels=cpp` is this tree with the opt-in compiled kernels "
              "(models/kernels: other training bits, so not the committed study's runs). *Checkpoints* is the share of "
              "the training CPU spent in `Trainer._checkpoint` (evaluation and saving), *eval* the share in "
              "`evaluate` alone."] + text,
        tables=[(["tree", "runs", "train CPU s (median)", "train CPU s per run", "runs / CPU-hour, training",
                  "checkpoints", "eval", "capture / probe / analyze CPU s", "all stages CPU s",
                  "runs / CPU-hour, all stages", "checkpoints per run"], rows)],
        checks=checks)]
