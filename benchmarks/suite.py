"""The benchmark plan (sizes and repeats per device) and the run of its sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import machine, report
from benchmarks.report import Section
from benchmarks.study_bench import STUDY_BATCH, STUDY_LEN

SECTIONS = ("train", "levers", "hooks", "implicit", "capture", "demo", "study", "compile")
# run by default; `study` (minutes of training runs) and `compile` (a cold inductor compile) only
# when asked for: `--study`, `--compile`, or `--only study` / `--only compile`
DEFAULT_SECTIONS = ("train", "levers", "hooks", "implicit", "capture", "demo")


@dataclass
class Plan:
    device: str
    quick: bool
    d_model: int
    train: list[tuple[int, int, int]]  # (L, batch, rounds)
    hooks: list[tuple[int, int, int]]
    implicit: list[tuple[int, int]]  # (L, rounds)
    capture: dict = field(default_factory=dict)
    attention_max_len: int = 8192
    lever_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(64, 32), (1024, 4), (8192, 1)])
    lever_fft_lengths: list[int] = field(default_factory=lambda: [66, 67, 97, 1021])
    lever_rounds: int = 11
    lever_implicit_len: int = 512
    step_lever_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(64, 32), (STUDY_LEN, STUDY_BATCH),
                                                                             (1024, 4)])
    seeds_lever: tuple[int, int] = (STUDY_LEN, STUDY_BATCH)  # the study's step
    seeds_E: int = 4
    study_repeats: int = 3

    def work(self, sections: list[str]) -> int:
        """Progress-bar ticks the chosen sections will make."""
        n = 0
        n += sum(r for _, _, r in self.train) if "train" in sections else 0
        n += sum(r for _, _, r in self.hooks) if "hooks" in sections else 0
        n += 6 * len(self.lever_sizes) + len(self.lever_fft_lengths) + 2 if "levers" in sections else 0
        n += 8 * len(self.step_lever_sizes) + 1 if "levers" in sections else 0
        n += 3 * self.study_repeats if "study" in sections else 0  # this tree, with cpp kernels, a baseline
        n += 2 if "compile" in sections else 0
        n += 2 * len(self.implicit) if "implicit" in sections else 0
        n += 3 * self.capture.get("rounds", 0) if "capture" in sections else 0
        return n


def make_plan(device: str, quick: bool) -> Plan:
    if quick:  # seconds: proves the machinery (tests/test_benchmarks.py), not the numbers
        return Plan(device, True, 16, train=[(16, 2, 2)], hooks=[(16, 4, 2)], implicit=[(32, 1), (48, 1)],
                    capture=dict(seq_len=8, n_train=64, n_test=48, n_probe=32, n_circuit=8, rounds=1,
                                 options=dict(ig_steps=4, n_attr=2, n_scores=2, n_patch=4)),
                    lever_sizes=[(16, 2)], lever_fft_lengths=[11], lever_rounds=2,
                    lever_implicit_len=24, step_lever_sizes=[(16, 2)], seeds_lever=(16, 2), seeds_E=2,
                    study_repeats=1)
    capture = dict(seq_len=64, n_train=500, n_test=500, n_probe=256, n_circuit=32, rounds=3)
    if device.startswith("cuda"):
        return Plan(device, False, 64,
                    train=[(64, 256, 20), (1024, 32, 20), (8192, 4, 10), (65536, 1, 5)],
                    hooks=[(66, 256, 20), (1024, 32, 20), (8192, 4, 10)],
                    implicit=[(1024, 5), (4096, 5), (16384, 3), (65536, 1)],
                    capture=capture, attention_max_len=16384)
    # CPU: the train sizes are the (reference targets at 64/1024/8192, safari's at
    # 66/1026/8194); fewer rounds at the long lengths (CPU time is steady: few rounds suffice)
    return Plan(device, False, 64,
                train=[(64, 32, 15), (66, 32, 15), (1024, 4, 11), (1026, 8, 9), (8192, 1, 5), (8194, 1, 5)],
                attention_max_len=1026,
                hooks=[(66, 256, 21), (1024, 8, 21)],
                implicit=[(1024, 5), (4096, 3), (16384, 1)],
                capture=capture)


def intro(device: str) -> str:
    if device.startswith("cuda"):
        return ("The same suite with `--device cuda`, at L up to 65,536. Timings synchronize the GPU; "
                "peak memory is `torch.cuda.max_memory_allocated`.")
    return ("`make bench` (= `python -m benchmarks`) measures and rewrites the sections between the "
            "markers; targets are ratios from one run on one machine, absolute times on a shared box are "
            "noise. Tests make no timing assertions: the numbers live here.")


def targets_section(sections: list[Section], old_block: str | None) -> Section:
    """Every section's checks; rows of sections not rerun now are kept from the old block."""
    rerun = {s.key for s in sections}
    kept = []
    for line in (old_block or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in report.SECTION_ORDER and cells[0] not in rerun:
            kept.append(cells)
    rows = kept + [[sec.key, label, f"{measured:.3f}", f"≤ {bound:g}", "met" if measured <= bound else "**not met**",
                    machine.today()] for sec in sections for label, measured, bound in sec.checks]
    rows.sort(key=lambda r: report.SECTION_ORDER.index(r[0]))
    return Section("targets", "Targets of the performance issues",
                   text=["One row per target, from the latest run of its section (the date column); "
                         "the sections below hold the measurements and their machine. Why the misses: "
                         "\"Training speed: what was built, what bounds it\" and \"Notes: what was tried\", "
                         "after the GPU block."],
                   tables=[(["section", "target", "measured", "bound", "", "date"], rows)])


def run(device: str, quick: bool, only: list[str] | None, out: Path, demo: bool, progress: bool = True, *,
        safari_src: str | None = None, baseline_src: str | None = None, study: bool = False,
        compile_lever: bool = False) -> str:
    from tqdm.auto import tqdm

    plan = make_plan(device, quick)
    chosen = list(only or DEFAULT_SECTIONS) + (["study"] if study and only is None else []) \
        + (["compile"] if compile_lever and only is None else [])
    prov = f"Measured {machine.today()}: {machine.describe(device)}. Command: `{machine.command_line()}`."
    old = out.read_text(encoding="utf-8") if out.is_file() else ""
    sections: list[Section] = []
    bar = tqdm(total=plan.work(chosen), desc="benchmarks", unit="round", disable=not progress, dynamic_ncols=True)
    try:
        if "train" in chosen:
            from benchmarks import train_step
            sections += train_step.run(plan, bar, prov, safari_src)
        if "levers" in chosen:
            from benchmarks import levers
            sections += levers.run(plan, bar, prov)
        if "hooks" in chosen:
            from benchmarks import hooks_bench
            sections += hooks_bench.run(plan, bar, prov)
        if "implicit" in chosen:
            from benchmarks import implicit_bench
            sections += implicit_bench.run(plan, bar, prov)
        if "capture" in chosen:
            from benchmarks import capture_bench
            sections += capture_bench.run(plan, bar, prov)
        if "study" in chosen:
            from benchmarks import study_bench
            sections += study_bench.run(plan, bar, prov, baseline_src)
        if "compile" in chosen:
            from benchmarks import compile_bench
            sections += compile_bench.run(plan, bar, prov)
    finally:
        bar.close()
    if "demo" in chosen:
        from benchmarks import demo_bench
        if demo:
            sections.append(demo_bench.measure(prov))
        elif report.read_block(old, device, "demo") is None:
            sections.append(demo_bench.carried_forward(old))
    if not quick and any(s.checks for s in sections):
        sections.insert(0, targets_section(sections, report.read_block(old, device, "targets")))
    if device.startswith("cuda"):
        sections.append(Section("notes", "About this run", prov, text=[
            "Measured with `--device cuda` (sizes in benchmarks/suite.py, `make_plan`). The CPU targets "
            "do not apply here; the ratios are reported as measured."]))
    return report.write(out, device, sections, intro(device))
