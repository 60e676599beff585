"""The study's committed record (docs/study.md): one row per run of a sweep, compact tables per
task, and the four answers as `hyenalens analyze` wrote them for the sweep.

    hyenalens study SWEEP_DIR [--lr-sweep LR_SWEEP_DIR] --out docs/study

writes, atomically, into the folder:

    runs.csv                one row per finished run of SWEEP_DIR, columns `RUN_COLUMNS`
    group_summary.json      SWEEP_DIR/analysis/formation_group.json (groups, answers), as written
    tables.md               per task: a table of the regimes and the four answers with CI and n
    lr_runs.csv, lr_group_summary.json, and a learning-rate table in tables.md (with --lr-sweep)
    fig_*.png               figures (reports.figures_study)

Reads run directories and the sweep's files only; no torch. A run that has not finished is
in no row and no table; `missing` names it, and tables.md says so at its top. The group file
must cover exactly the finished runs (else: rerun `hyenalens analyze`). The output is the same,
byte for byte, on a rerun.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from analysis.groups import run_status
from models.config.sweep import read_record
from models.errors import UserError
from models.rundir.io import atomic_write_json, atomic_write_text, read_jsonl
from models.rundir.layout import RunDir
from reports.summary import REGIME_ORDER

RUN_COLUMNS = ("run", "task", "regime", "seed", "steps", "final_test_acc_last", "steps_to_99", "jump_midpoint",
               "recall_circuit_midpoint", "mechanism")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {what}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); {what}") from None


def sweep_runs(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(runs, missing): one record per finished run of the sweep, in sweep order, with its
    numbers from formation.json and metrics.jsonl, its test curve and config; `missing` names
    every run that has not finished (or not been analyzed) and why."""
    sweep_dir = Path(sweep_dir)
    record = read_record(sweep_dir)
    if record is None:
        raise UserError(f"{sweep_dir / 'sweep.json'} is missing; pass a folder written by hyenalens sweep")
    runs, missing = [], []
    for p in record["points"]:
        run = RunDir(sweep_dir / "runs" / p["name"])
        st = run_status(run.root) if run.evaluated() else {"finished": False, "reason": "not started"}
        if not st["finished"] or not run.formation.is_file():
            missing.append({"run": p["name"], "reason": st.get("reason") or "not analyzed"})
            continue
        f = _read_json(run.formation, "rerun hyenalens analyze on the sweep")
        recs = [r for r in read_jsonl(run.metrics) if isinstance(r.get("test_acc_last"), (int, float))]
        circ = f.get("recall_circuit") or {}
        runs.append({
            "run": p["name"], "group": p["group"], "task": f["run"]["task"], "regime": f["run"]["regime"],
            "seed": p["seed"], "lr": (p["config"].get("optimizer") or {}).get("lr"),
            "steps": recs[-1]["step"], "final_test_acc_last": recs[-1]["test_acc_last"],
            "steps_to_99": f.get("steps_to_99_test_acc"),
            "jump_midpoint": (f.get("recall_jump") or {}).get("midpoint"),
            "jump_status": f.get("recall_jump_status"),
            "recall_circuit_midpoint": circ.get("midpoint") if circ.get("status") == "measured" else None,
            "circuit_minus_jump_log_steps": circ.get("log_steps") if circ.get("status") == "measured" else None,
            "mechanism": (f.get("mechanism") or {}).get("verdict") or "",
            "baseline": (f.get("no_recall_baseline") or {}).get("value"),
            "curve": [(r["step"], r["test_acc_last"]) for r in recs],
        })
    return runs, missing


def _cell(v: Any) -> str:
    """A csv cell: empty for None, whole floats as integers (steps), midpoints to 0.1 step, other
    floats (a learning rate) in their shortest form."""
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.1f}" if abs(v) >= 1 else f"{v:g}"
    return str(v)


def runs_csv(runs: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> str:
    """`RUN_COLUMNS` (then `extra`) per run. final_test_acc_last is written with repr, so that a
    rerun's value compares exactly; an empty cell is a value not reached (steps_to_99: censored
    at `steps`), a run without a recall jump, or a circuit not measured."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow((*RUN_COLUMNS, *extra))
    for r in runs:
        w.writerow([repr(float(r[c])) if c == "final_test_acc_last" else _cell(r[c]) for c in (*RUN_COLUMNS, *extra)])
    return buf.getvalue()


# ---------------------------------------------------------------- tables
def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(e: dict[str, Any], spec: str = ",.0f") -> str:
    """An answers entry ({value, ci, n, censored}) as `value [lo, hi] (n=…, k censored)`."""
    if not e or e.get("value") is None:
        text = "none"
    else:
        ci = e.get("ci")
        text = _fmt(e["value"], spec) + (f" [{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]" if ci else "")
    return text + f" (n={e.get('n', 0)}" + (f", {e['censored']} censored" if e.get("censored") else "") + ")"


def _order(regime: str) -> tuple:
    return (REGIME_ORDER.index(regime) if regime in REGIME_ORDER else len(REGIME_ORDER), regime)


def _labels(runs: list[dict[str, Any]], task: str) -> dict[str, str]:
    """{answer label: regime} of one task's runs, in regime order (`label` is set from the group
    file's `answer_groups`, so no label format is guessed here)."""
    pairs = {r["label"]: r["regime"] for r in runs if r["task"] == task and r.get("label")}
    return dict(sorted(pairs.items(), key=lambda kv: (_order(kv[1]), kv[0])))


def task_table(runs: list[dict[str, Any]], answers: dict[str, Any], task: str) -> list[str]:
    """Markdown rows for one task: per answer group (a regime) n, final accuracy, recall jump,
    steps to 99%, circuit − jump, mechanism (the answers' CIs where they have one)."""
    labels = _labels(runs, task)
    sooner = (answers.get("sooner") or {}).get("by_regime") or {}
    cvj = (answers.get("circuit_vs_jump") or {}).get("by_regime") or {}
    mech = (answers.get("mechanism") or {}).get("by_regime") or {}
    lines = ["| regime | runs | final test acc, mean (min–max) | recall-jump midpoint, steps [95% CI] | "
             "steps to 99% [95% CI] | circuit − jump, ln steps [95% CI] | mechanism (share of runs) |",
             "|---|---|---|---|---|---|---|"]
    shared = {g for g in labels.values() if list(labels.values()).count(g) > 1}
    for lab, regime in labels.items():
        rs = [r for r in runs if r.get("label") == lab]
        s = sooner.get(lab) or {}
        acc = [r["final_test_acc_last"] for r in rs]
        m = mech.get(lab) or {}
        share = f"{m['verdict']} ({m['value']:.0%} of {m['n']})" if m.get("verdict") else "not measured"
        lines.append(f"| {lab if regime in shared else regime} | {len(rs)} | {_mean(acc):.3f} "
                     f"({min(acc):.3f}–{max(acc):.3f}) | {_ci(s)} | {_ci(s.get('steps_to_99') or {})} | "
                     f"{_ci(cvj.get(lab) or {}, '+.2f')} | {share} |")
    return lines


def answer_lines(answers: dict[str, Any], runs: list[dict[str, Any]], task: str) -> list[str]:
    """The four answers for one task, each with its numbers."""
    labels = _labels(runs, task)
    out = []
    for c in (c for c in (answers.get("sooner") or {}).get("comparisons", []) if c["group"] in labels):
        ci = c.get("ci")
        ci_text = (f" (difference of mean ln(1 + step) {c['log_steps']:+.2f}, 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]; "
                   "a run without a recall jump enters at its last step)") if ci else " (no CI: n < 2 on a side)"
        out.append(f"- **sooner** ({c['group']} against {c['versus']}): {c['verdict']} — {c['versus']}'s recall "
                   f"jump takes ×{c['factor']:.2f} the steps of {c['group']}'s{ci_text}.")
    for key, name in (("train_with_test", "train with test"), ("circuit_vs_jump", "circuit vs jump")):
        by = (answers.get(key) or {}).get("by_regime") or {}
        for lab in (lab for lab in labels if lab in by):
            out.append(f"- **{name}** ({lab}): {by[lab].get('verdict')} — {_ci(by[lab], '+.2f')} ln steps")
    by = (answers.get("mechanism") or {}).get("by_regime") or {}
    for lab in (lab for lab in labels if lab in by):
        e = by[lab]
        counts = ", ".join(f"{v} {k}" for k, v in (e.get("counts") or {}).items()) or "none"
        out.append(f"- **mechanism** ({lab}): {e.get('verdict') or 'not measured'} — verdicts: {counts}")
    return out


def lr_table(lr_runs: list[dict[str, Any]], main_runs: list[dict[str, Any]], lr_answers: dict[str, Any]) -> list[str]:
    """causal/all against causal/last per learning rate (the study's own lr from `main_runs`)."""
    rows = [r for r in [*main_runs, *lr_runs] if r["task"] == "ar" and r["regime"] in ("causal/all", "causal/last")]
    lines = ["| lr | regime | runs | final test acc per seed | recall-jump midpoint per seed (– none) |",
             "|---|---|---|---|---|"]
    for lr in sorted({r["lr"] for r in rows}):
        for regime in ("causal/all", "causal/last"):
            rs = [r for r in rows if r["lr"] == lr and r["regime"] == regime]
            accs = ", ".join(f"{r['final_test_acc_last']:.3f}" for r in rs)
            jumps = ", ".join(_fmt(r["jump_midpoint"]) for r in rs)
            lines.append(f"| {lr:g} | {regime} | {len(rs)} | {accs} | {jumps} |")
    comps = (lr_answers.get("sooner") or {}).get("comparisons") or []
    if comps:
        lines += ["", "Per learning rate, from the lr sweep's own answers (causal/last against causal/all):", ""]
        lines += [f"- {c['group']} vs {c['versus']}: {c['verdict']}, ×{c['factor']:.2f}" for c in comps]
    return lines


def _group_file(sweep_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """SWEEP_DIR/analysis/formation_group.json, refused unless it covers exactly the finished
    runs (a run that finished or was redone after `hyenalens analyze` makes it stale)."""
    path = sweep_dir / "analysis" / "formation_group.json"
    group = _read_json(path, f"run hyenalens analyze {sweep_dir}")
    covered = {r for g in (group.get("groups") or {}).values() for r in g.get("runs", [])}
    finished = {r["run"] for r in runs}
    if covered != finished:
        diff = sorted(covered ^ finished)
        raise UserError(f"{path} covers other runs than the finished ones ({len(diff)} differ, e.g. {diff[0]}); "
                        f"rerun hyenalens analyze {sweep_dir}")
    return group


def write_study(sweep_dir: str | Path, out_dir: str | Path, lr_sweep: str | Path | None = None) -> dict[str, Any]:
    """Write runs.csv, group_summary.json, tables.md and the figures (module doc) into out_dir."""
    from reports.figures_study import study_figures  # matplotlib only when figures are drawn

    sweep_dir, out = Path(sweep_dir), Path(out_dir)
    runs, missing = sweep_runs(sweep_dir)
    if not runs:
        raise UserError(f"no run of {sweep_dir} has finished; run hyenalens sweep first")
    group = _group_file(sweep_dir, runs)
    answers = group.get("answers") or {}
    label_of = {g: lab for lab, gs in (group.get("answer_groups") or {}).items() for g in gs}
    for r in runs:
        r["label"] = label_of.get(r["group"])
    lr_runs, lr_missing, lr_answers = [], [], {}
    if lr_sweep is not None:
        lr_runs, lr_missing = sweep_runs(lr_sweep)
        lr_group = _group_file(Path(lr_sweep), lr_runs)
        lr_answers = lr_group.get("answers") or {}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "runs.csv", runs_csv(runs))
    atomic_write_json(out / "group_summary.json", group)
    md = [f"# The study's tables ({group.get('sweep') or sweep_dir.name})", ""]
    if missing or lr_missing:
        md += [f"**Partial:** {len(missing) + len(lr_missing)} run(s) not finished, in no row: "
               + ", ".join(f"{m['run']} ({m['reason']})" for m in [*missing, *lr_missing]), ""]
    for task in sorted({r["task"] for r in runs}):
        md += [f"## {task.upper()}", "", *task_table(runs, answers, task), "", *answer_lines(answers, runs, task), ""]
    if lr_sweep is not None:
        atomic_write_text(out / "lr_runs.csv", runs_csv(lr_runs, ("lr",)))
        atomic_write_json(out / "lr_group_summary.json", lr_group)
        md += ["## Learning rate (AR)", "", *lr_table(lr_runs, runs, lr_answers), ""]
    atomic_write_text(out / "tables.md", "\n".join(md))
    figures = study_figures(runs, lr_runs, out)
    return {"runs": runs, "missing": missing, "lr_runs": lr_runs, "lr_missing": lr_missing,
            "answers": answers, "figures": [f.file for f in figures]}
