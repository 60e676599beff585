"""`hyenalens report RUN_DIR... --out DIR`: the self-contained HTML report and its summary.json.

    write_report(["runs/sweep"], "report/")  →  report/index.html, report/summary.json, report/*.png

The page opens with the regime summary table (means with 95% bootstrap CIs and their n) and the
seed claim's verdict in one sentence; then the figures (1: training curves per regime; 2–6 and
8, where the recall signal sits, for one representative run per group — the lowest seed among
the runs with the most inputs (captured, probed), and a figure whose inputs that run lacks is
drawn from the group's next run that has them — or for every run with `detail="all"`; 7: the
regime comparison), the training-time explorer (a checkpoint slider per group,
reports/explorer.py), the configs and the provenance.

Groups are `analysis.groups.plan_groups`'s (analyze_group's): runs pool only when their configs
are equal apart from the seed. An unfinished run is named under the run table with its reason
and stands in no CI and no figure; a run not yet probed is named there too and stands in the
accuracy CIs only.

Each figure is drawn on its own: a failure is written into the page ("figure X could not be
drawn: reason") and into summary.json, and the other figures still appear. Missing optional
inputs are listed per run.
"""
from __future__ import annotations

import datetime as _dt
import math
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

from models.errors import UserError
from models.rundir.io import atomic_write_json, atomic_write_text
from reports import html as H
from reports.answers_html import answers_section, report_answers, toc
from reports.explorer import explorer_section
from reports.rundata import RunData, discover_runs, load_run_data, slugify
from reports.groupfile import load_group
from reports.summary import (group_keys, key_curves, plan_of, regime_rank, regime_summary, run_numbers,
                             seed_claim, short_curve, steps_to)

DETAIL = ("first", "all")


class _Figures:
    """Runs figure functions one by one, keeping the page's HTML and the summary's records."""

    def __init__(self, out_dir: Path, progress: bool):
        self.out_dir, self.progress, self.records = out_dir, progress, []

    def draw(self, label: str, fn: Callable, *args) -> str:
        from reports.figures_common import FigureSkipped

        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # library deprecation chatter (seaborn → matplotlib)
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                res = fn(*args, out_dir=self.out_dir)  # drawn (pyplot-free, no backend) and written
            figs = res if isinstance(res, list) else [res]
            for f in figs:
                self.records.append({"figure": label, "status": "ok", "file": f.file, "caption": f.caption})
            out = "".join(H.figure(f.file, f.caption, f"{label}: {f.caption[:80]}") for f in figs)
        except FigureSkipped as e:
            self.records.append({"figure": label, "status": "skipped", "reason": str(e)})
            out = H.fig_problem(label, str(e), skipped=True)
        except Exception as e:  # noqa: BLE001 - one figure's failure never loses the others
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.records.append({"figure": label, "status": "error", "reason": reason,
                                 "traceback": traceback.format_exc(limit=4)})
            out = H.fig_problem(label, reason, skipped=False)
        if self.progress:  # a skipped or failed figure says why, as the page does
            rec = self.records[-1]
            why = f": {rec['reason']}" if rec["status"] != "ok" else ""
            print(f"report: {label}: {rec['status']}{why} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return out

    def draw_any(self, label: str, fn: Callable, runs: list[RunData]) -> str:
        """`fn` for the first of `runs` (in order) whose inputs it finds: a run that lacks them
        (FigureSkipped) gives way to the next, so a figure is skipped only when no run of the
        group has its inputs; the page says which run it was drawn from when not the first."""
        first, pages, starts = len(self.records), [], []
        for rd in runs:
            starts.append(len(self.records))
            pages.append(self.draw(f"{label} ({rd.name})", fn, rd))
            if self.records[-1]["status"] != "skipped":
                break
        if len(pages) <= 1 or self.records[-1]["status"] == "skipped":
            del self.records[first + 1:]  # no run has the inputs: the first one's reason stands
            return pages[0] if pages else ""
        skipped = self.records[first:starts[-1]]
        del self.records[first:starts[-1]]  # drawn after all: the skips of the runs before are moot
        for rec in self.records[first:]:
            rec["instead_of"] = [r["figure"] for r in skipped]
        return (f"<p class=\"note\">{H.esc(label)} is drawn from run {H.esc(runs[len(pages) - 1].name)}: "
                f"{H.esc(runs[0].name)} lacks its inputs.</p>" + pages[-1])


def _figure_order(runs: list[RunData], status: dict[str, dict[str, Any]]) -> list[RunData]:
    """A group's runs, the ones with the most figure inputs first (probed for the circuit
    estimates, captured with figure 4's maps, captured, metrics.csv, checkpoints), then by seed."""
    def rank(r: RunData) -> tuple:
        st = status.get(str(r.path)) or {}
        return (not st.get("circuit", r.circuit is not None), not r.mapped, not r.captured, r.circuit is None,
                not r.checkpoints, r.seed is None, r.seed or 0, r.name)

    return sorted(runs, key=rank)


def write_report(run_dirs: list[str | Path], out_dir: str | Path, detail: str = "first",
                 progress: bool = False, group: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Write DIR/index.html, DIR/summary.json and the figure PNGs; return the summary.

    `group`: analysis.formation.analyze_group's output (a dict, or its JSON file); by default a
    JSON with a top-level `groups` mapping in a folder argument (or its analysis/) is used."""
    if detail not in DETAIL:
        raise UserError(f"detail {detail!r} is unknown; use one of {', '.join(DETAIL)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another path")
    runs = [load_run_data(p, name) for p, name in discover_runs(list(run_dirs))]
    group, group_note = load_group(group, list(run_dirs))
    plan = plan_of(runs)  # the groups analyze_group makes: equal configs apart from the seed
    status = plan["status"]
    pairs = sorted(zip(group_keys(runs, group, plan), runs),
                   key=lambda kr: (kr[0] is None, regime_rank(kr[0] or ""), kr[1].seed is None, kr[1].seed or 0,
                                   kr[1].name))
    keys, runs = [k for k, _ in pairs], [r for _, r in pairs]
    out.mkdir(parents=True, exist_ok=True)
    numbers = [run_numbers(r, status.get(str(r.path))) for r in runs]
    regimes = regime_summary(numbers, keys, group, plan)
    claim = seed_claim(regimes)
    ans = report_answers(runs, plan)
    excluded = [{"run": r.name, "reason": status[str(r.path)]["reason"]} for r, k in zip(runs, keys) if k is None]

    from reports.figures_compare import fig_comparison
    from reports.figures_curves import fig_attribution, fig_circuit_timelines, fig_training_curves
    from reports.figures_maps import fig_filters, fig_implicit_attention, fig_patching
    from reports.figures_sources import fig_sources

    figs = _Figures(out, progress)
    by_regime = {k: [r for r, kk in zip(runs, keys) if kk == k] for k in regimes}
    parts = ["<h2 id=\"figures\">Figures</h2>", "<h3 id=\"figure-1\">Figure 1 — training curves</h3>"]
    contents = [("the-answers", "the four answers"), ("summary", "summary"), ("runs", "runs"),
                ("figure-1", "Figure 1: training curves")]
    for k, rs in by_regime.items():
        parts.append(figs.draw(f"figure 1 ({k})", fig_training_curves, rs, k, slugify(k)))
    per_run = (("figure 2", fig_circuit_timelines), ("figure 3", fig_filters),
               ("figure 4", fig_implicit_attention), ("figure 5", fig_attribution),
               ("figure 6", fig_patching), ("figure 8", fig_sources))
    for k, rs in by_regime.items():
        if detail == "all":
            for rd in sorted(rs, key=lambda r: (r.seed is None, r.seed or 0, r.name)):
                parts.append(f"<h3>{H.esc(k)} — run {H.esc(rd.name)} (seed {H.esc(rd.seed)})</h3>")
                parts += [figs.draw(f"{label} ({rd.name})", fn, rd) for label, fn in per_run]
            continue
        chosen = _figure_order(rs, status)  # the run with the data first, the others as fallbacks
        rd = chosen[0]
        anchor = f"figures-{slugify(k)}"
        contents.append((anchor, f"Figures 2–6, 8: {k}"))
        parts.append(f"<h3 id=\"{H.esc(anchor)}\">{H.esc(k)} — run {H.esc(rd.name)} (seed {H.esc(rd.seed)})</h3>")
        parts += [figs.draw_any(label, fn, chosen) for label, fn in per_run]
    parts.append("<h3 id=\"figure-7\">Figure 7 — regimes compared</h3>")
    contents += [("figure-7", "Figure 7: regimes compared"), ("explorer", "training-time explorer"),
                 ("configs", "configs"), ("provenance", "provenance")]
    parts.append(figs.draw("figure 7", fig_comparison, regimes))
    t0 = time.perf_counter()
    parts.append(explorer_section(by_regime))  # one slider per regime (reports/explorer.py)
    if progress:
        print(f"report: training-time explorer ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    summary = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": numbers, "regimes": regimes, "seed_claim": claim, "answers": ans, "figures": figs.records, "excluded": excluded,
        "notes": {r.name: r.notes for r in runs}, "statistics_source": group_note,
        "paths": {r.name: str(r.path) for r in runs},
    }
    atomic_write_json(out / "summary.json", _finite_json(summary))
    body = (_head(runs, regimes, claim, group_note, keys, numbers, answers_section(ans) + toc(contents))
            + "".join(parts)) + _configs(runs) + _provenance(runs)
    atomic_write_text(out / "index.html", H.page("HyenaLens report", body))
    return summary


def _finite_json(o: Any) -> Any:
    """NaN / inf → None, so that summary.json is strict JSON; tuples → lists."""
    if isinstance(o, dict):
        return {str(k): _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):  # numpy scalars
        return _finite_json(o.item())
    return o


# ------------------------------------------------------------------ sections
def _head(runs: list[RunData], regimes: dict[str, Any], claim: dict[str, Any], group_note: str | None,
          keys: list[str | None], numbers: list[dict[str, Any]], first_screen: str) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    n_out = sum(k is None for k in keys)
    left = f" ({n_out} left out: see under the run table)" if n_out else ""
    p = [f"<h1>HyenaLens report</h1><p class=\"note\">{len(runs)} run(s) in {len(regimes)} group(s){left}; "
         f"generated {H.esc(when)}.</p>", first_screen, "<h2 id=\"summary\">Summary</h2>"]
    rows = []
    for k, s in regimes.items():
        nr = s["steps_to_99"].get("not_reached", 0)
        rows.append([
            H.esc(k), H.esc(f"{s['n_runs']} (seeds {', '.join(str(x) for x in s['seeds'])})"),
            H.fmt_stat(s["midpoint_test_acc_last"]), H.fmt_stat(s["midpoint_train_acc_all"]),
            H.fmt_stat(s["midpoint_train_acc_recallable"]),
            H.fmt_stat(s["offset_train_acc_all_steps"], signed=True),
            H.fmt_stat(s["offset_train_acc_all_log_steps"], digits=2, signed=True),
            (H.esc(f"not reached (0 of {s['n_runs']} runs)") if s["steps_to_99"]["n"] == 0 else
             H.fmt_stat(s["steps_to_99"]) + (H.esc(f"; not reached: {nr}") if nr else "")),
            H.fmt_stat(s["final_test_acc_last"], digits=3),
            H.fmt_stat(s["final_train_acc_all"], digits=3) + " / " + H.fmt_stat(s["final_train_acc_all_ceiling"], digits=3),
        ] + ([H.esc(s.get("mechanism") or "–")] if any(x.get("mechanism") for x in regimes.values()) else []))
    mech = ["mechanism"] if any(x.get("mechanism") for x in regimes.values()) else []
    p.append(H.table(["regime", "runs", "recall jump midpoint (step)", "train_acc_all midpoint",
                      "train_acc_recallable midpoint", "offset train_all − test (steps)",
                      "offset (log-steps)", "steps to 99% test acc", "final test acc",
                      "final train acc (all) / ceiling", *mech], rows, num_cols=range(2, 10)))
    p.append("<p class=\"note\">Cells: mean [95% bootstrap CI over runs] (n = runs with a value; no CI for n = 1). "
             "Columns: <b>runs</b>: the group's runs and seeds; <b>recall jump midpoint</b>: the step at the middle "
             "of the transition of test_acc_last chosen as the recall jump (it must end above the no-recall "
             "baseline + 0.1; docs/metrics.md, \"The recall jump\"); <b>train_acc_all / train_acc_recallable "
             "midpoint</b>: the midpoint of each curve's largest transition; <b>offset</b>: train_acc_all's "
             "midpoint minus the recall jump's, in steps and in log-steps (ln(step+1)); <b>steps to 99%</b>: the "
             "first evaluated step with test_acc_last ≥ 0.99 (runs that never reach it are counted, not forced); "
             "<b>final</b>: the last evaluation; the final train accuracy (all positions) is read against its Bayes "
             "ceiling; <b>mechanism</b>: analysis.mechanism's verdict per run (docs/metrics.md)."
             + (" With fewer than 5 runs a bootstrap CI is too narrow: read it as a range of the runs."
                if any(0 < s["n_runs"] < 5 for s in regimes.values()) else "") + "</p>")
    p.append(f"<p class=\"verdict\" id=\"seed-claim\">{H.esc(claim['sentence'])}</p>")
    if group_note:
        p.append(f"<p class=\"note\">{H.esc(group_note)}</p>")
    curves = key_curves(regimes, limit=8)
    if curves:
        lrows = [[H.esc(k)] + [H.fmt_stat((s["lead_lag"].get(c) or {}).get("log_steps"), digits=2, signed=True)
                               for c in curves] for k, s in regimes.items()]
        p.append("<h3>Lead / lag vs the recall jump</h3>"
                 + H.table(["regime"] + [short_curve(c) for c in curves], lrows, num_cols=range(1, len(curves) + 1))
                 + "<p class=\"note\">Each curve's midpoint − the recall jump's midpoint, in log-steps "
                   "(negative: the curve moves first), mean [95% CI] (n).</p>")
    # per-run table
    rrows = []
    for r, k, n in zip(runs, keys, numbers):
        j = r.jump() or {}
        s99 = steps_to(r)
        why = ((n.get("status") or {}).get("reason") or "unfinished") if k is None else n.get("circuit_excluded")
        used = (f"none: {why}" if k is None else f"{k}, accuracy only: {why}" if why else k)
        rrows.append([H.esc(r.name), H.esc(used), H.esc(r.task), H.esc(r.seed),
                      H.num(j.get("onset")), H.num(j.get("midpoint")), H.num(j.get("end")),
                      H.esc("not reached" if s99 is None else f"{s99:,}"),
                      H.num(r.metrics["test_acc_last"].iloc[-1] if "test_acc_last" in r.metrics else None, 3),
                      H.num((r.no_recall_baseline or {}).get("value"), 3),
                      H.esc(len(r.transitions.get("test_acc_last") or [])),
                      H.esc(r.recall_jump_status if not r.jump() else "")])
    p.append("<h3 id=\"runs\">Runs</h3>" + H.table(["run", "group (estimates it stands in)", "task", "seed",
                                        "recall jump onset", "recall jump midpoint", "recall jump end",
                                        "steps to 99%", "final test acc", "no-recall baseline",
                                        "# test transitions", "no recall jump because"], rrows,
                                        num_cols=range(3, 11))
             + "<p class=\"note\">Per run: the recall jump's onset, midpoint and end (steps); the no-recall "
               "baseline is the best test accuracy reachable without binding a key to its value, computed exactly "
               "on the test split (AR: the most frequent value in the context), beside which the recall jump must "
               "end above baseline + 0.1; # test transitions counts every transition of test_acc_last, stage one "
               "included.</p>")
    p.append(_left_out(runs, keys, numbers))
    miss = [f"<li><b>{H.esc(r.name)}</b>: {'; '.join(H.esc(n) for n in r.notes)}</li>" for r in runs if r.notes]
    if miss:
        p.append("<h3>Missing inputs</h3><ul class=\"missing\">" + "".join(miss) + "</ul>")
    return "".join(p)


def _left_out(runs: list[RunData], keys: list[str | None], numbers: list[dict[str, Any]]) -> str:
    """The note under the run table: runs in no CI (unfinished), runs in the accuracy CIs only
    (not captured / not probed), each with its reason; and what a group is."""
    out = [f"<li><b>{H.esc(r.name)}</b>: {H.esc((n.get('status') or {}).get('reason') or 'unfinished')}</li>"
           for r, k, n in zip(runs, keys, numbers) if k is None]
    acc = [f"<li><b>{H.esc(r.name)}</b> ({H.esc(k)}): {H.esc(n['circuit_excluded'])}</li>"
           for r, k, n in zip(runs, keys, numbers) if k is not None and n.get("circuit_excluded")]
    p = ["<p class=\"note\">A group pools runs whose configs are equal apart from the seed "
         "(analysis.groups); groups of one regime that differ in other settings are labelled by those settings.</p>"]
    if out:
        p.append("<p class=\"missing\" id=\"excluded-runs\">Left out of every estimate and figure (unfinished):</p>"
                 "<ul class=\"missing\">" + "".join(out) + "</ul>")
    if acc:
        p.append("<p class=\"missing\" id=\"accuracy-only-runs\">In the accuracy estimates only, left out of the "
                 "circuit ones (recall circuit, mechanism, circuit lead/lag):</p><ul class=\"missing\">"
                 + "".join(acc) + "</ul>")
    return "".join(p)


def _configs(runs: list[RunData]) -> str:
    p = ["<h2 id=\"configs\">Configs</h2>"]
    for r in runs:
        p.append(H.details(f"{r.name} — {r.regime}, seed {r.seed}",
                           H.pre_yaml(r.config) if r.config else "<p class=\"missing\">config.yaml is missing</p>"))
    return "".join(p)


def _find(d: Any, names: tuple[str, ...]) -> Any:
    """The first value under any of `names`, searching nested dicts breadth-first."""
    todo = [d]
    while todo:
        cur = todo.pop(0)
        if isinstance(cur, dict):
            for n in names:
                if n in cur and not isinstance(cur[n], dict):
                    return cur[n]
            todo += [v for v in cur.values() if isinstance(v, dict)]
    return None


def _provenance(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        info = r.run_info or {}
        versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
        ver = ", ".join(f"{k} {v}" for k, v in versions.items()) or ", ".join(
            f"{k} {info[k]}" for k in ("hyenalens", "torch", "python") if k in info and not isinstance(info[k], dict))
        g = info.get("git")
        git = (f"{g.get('revision')}{' (dirty)' if g.get('dirty') else ''}" if isinstance(g, dict)
               else g if g is not None else _find(info, ("git_revision", "git_rev", "revision", "commit")))
        overlap = _find(info, ("overlap", "train_test_overlap", "overlap_count"))
        rows.append([H.esc(r.name), H.esc(info.get("seed", r.seed)), H.esc(git if git is not None else "unknown"),
                     H.esc(ver or "unknown"), H.esc("unknown" if overlap is None else overlap), H.esc(str(r.path))])
    p = ["<h2 id=\"provenance\">Provenance</h2>",
         H.table(["run", "seed", "git revision", "versions", "train/test overlap", "path"], rows)]
    for r in runs:
        if r.run_info:
            p.append(H.details(f"run.json — {r.name}", H.pre_json(r.run_info)))
    return "".join(p)
