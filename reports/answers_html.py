"""The report's first screen: the four answers (analysis.answers) and a table of contents.

The answers are computed here from the runs the page shows, grouped as the page groups them
(analysis.groups, via reports.summary), so that summary.json, the page and the run table agree;
`hyenalens analyze` writes the same answers into formation_group.json. Each answer is one
sentence with its numbers, CI and n, its decision rule in small print, and a link to its
definition in docs/metrics.md.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analysis.answers import answers
from analysis.groups import accuracy_only
from reports import html as H
from reports.rundata import RunData

QUESTIONS = {
    "sooner": "Does all-token training make recall form sooner?",
    "train_with_test": "Does train accuracy jump with test accuracy (the seed's claim)?",
    "circuit_vs_jump": "Does the recall circuit form before, with, or after the recall jump?",
    "mechanism": "Which mechanism does each regime use, causal against non-causal?",
}
ANCHOR = "the-four-answers"


def report_answers(runs: list[RunData], plan: dict[str, Any]) -> dict:
    """analysis.answers over the plan's groups (analysis.groups.plan_groups, as `hyenalens
    analyze` groups them; a sweep's group is one experiment, so it is one plan group, but its
    sweep label does not name the regime the answers pair by): each run's formation.json, its
    circuit numbers masked when it is not probed (accuracy only), and its last step (for censoring)."""
    groups: dict[str, list[dict]] = {}
    for rd in runs:
        key = plan["labels"].get(str(rd.path))
        if key is None:
            continue  # unfinished: in no estimate
        st = plan["status"].get(str(rd.path)) or {}
        res = dict(rd.formation) if isinstance(rd.formation, dict) else {}
        if st and not st.get("circuit", True):
            res = accuracy_only(res, st.get("reason") or "not probed")
        res["last_step"] = st.get("last_step")
        groups.setdefault(key, []).append(res)
    info = plan.get("info") or {}
    return answers(groups, families={k: (info.get(k) or {}).get("family", k) for k in groups})


def _doc_link() -> str:
    """docs/metrics.md of this checkout, as a file URL (the page is read from disk), else a name."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    return f"{doc.as_uri()}#{ANCHOR}" if doc.is_file() else ""


def _n(e: dict[str, Any]) -> str:
    return f"n={e['n']}" + (f", {e['censored']} censored" if e.get("censored") else "")


def _steps(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return f"none ({_n(e)})" if e else "none"
    ci = e.get("ci")
    return f"{e['value']:,.0f}" + (f" [{ci[0]:,.0f}, {ci[1]:,.0f}]" if ci else "") + f" ({_n(e)})"


def _log(e: dict[str, Any]) -> str:
    if e.get("value") is None:
        return f"none ({_n(e)})"
    ci = e.get("ci")
    return (f"{e['value']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            + f" log-steps (×{math.exp(e['value']):.2f}; {_n(e)})")


def _sentence(key: str, a: dict[str, Any]) -> str:
    by = a["by_regime"]
    if not by:
        return "No finished runs."
    if key == "sooner":
        parts = [f"{g}: recall jump at {_steps(e)}, 0.99 at {_steps(e.get('steps_to_99'))}, "
                 f"circuit at {_steps(e.get('recall_circuit_midpoint'))}" for g, e in by.items()]
        tail = "".join(f" {c['versus']}'s recall jump comes at ×{c['factor']:.2f}"
                       + (f" [{math.exp(c['ci'][0]):.2f}, {math.exp(c['ci'][1]):.2f}]" if c["ci"] else " (no CI)")
                       + f" the steps of {c['group']}'s." for c in a.get("comparisons", []))
        return "; ".join(parts) + "." + tail
    if key in ("train_with_test", "circuit_vs_jump"):
        what = "train minus test midpoint" if key == "train_with_test" else "circuit minus recall-jump midpoint"
        return f"{what}: " + "; ".join(f"{g} {_log(e)}: {e['verdict']}" for g, e in by.items()) + "."
    return "; ".join(f"{g}: {e['verdict'] or 'not measured'}"
                     + (f" ({e['value']:.0%} of {e['n']} runs" + (f", {e['censored']} not probed)" if e['censored'] else ")")
                        if e.get("value") is not None else f" ({e['censored']} not probed)")
                     for g, e in by.items()) + "."


def answers_section(a: dict[str, Any]) -> str:
    """The four answers, compact enough for the first screen at 1280 × 800."""
    link = _doc_link()
    items = []
    for key, q in QUESTIONS.items():
        ans = a[key]
        ref = (f" <a href=\"{H.esc(link)}\">definition</a>" if link else
               " (docs/metrics.md, \"The four answers\")")
        items.append(f"<li id=\"answer-{key}\"><b>{H.esc(q)}</b> <span class=\"ans\">{H.esc(ans['verdict'])}</span>. "
                     f"{H.esc(_sentence(key, ans))}<br><span class=\"rule\">Rule: {H.esc(ans['rule'])}.{ref}</span></li>")
    return ("<section id=\"answers\"><h2 id=\"the-answers\">The four answers</h2><ol class=\"answers\">"
            + "".join(items) + "</ol><p class=\"note\">Numbers: mean [95% bootstrap CI over runs] (n = runs with a "
            "value; censored = runs without one: no recall jump within the budget, 0.99 not reached, or not "
            "probed). Every column below is explained under its table.</p></section>")


def toc(entries: list[tuple[str, str]]) -> str:
    """A one-line table of contents: [(anchor, title)]."""
    return ("<nav id=\"toc\" class=\"note\">Contents: "
            + " · ".join(f"<a href=\"#{H.esc(a)}\">{H.esc(t)}</a>" for a, t in entries) + "</nav>")
