"""The recall jump: the transition of ``test_acc_last`` in which recall forms, told apart from
stage one (docs/metrics.md, "The recall jump").

Quick runs stall at the "answer = the most frequent value of the context" heuristic, about 0.5 on
AR. The rise to that plateau is a transition too. Often it is the largest one, and it is no
recall. A transition that ends at or below what a model reaches *without* binding a key to its
value is no evidence of recall. That level is the task's no-recall baseline b
(``models.data.baseline``: exact on the run's test split, logged in metrics.jsonl as
``test_acc_last_baseline``).

The rule, over the transitions of ``test_acc_last`` *floored at the baseline*, max(acc, b)
(``recall_transitions``: ``analysis.transitions`` on that curve), with margin m =
``RECALL_MARGIN`` (0.1):

- a transition qualifies when it rises and ends above the baseline: ``high`` > b + m;
- the recall jump is the qualifying transition with the largest rise above the baseline,
  ``high − max(low, b)``; on a tie, the earlier one wins;
- none qualifies: no recall jump, and the status says why.

Why the floor: what a model reaches without recall is not evidence of recall, so below b the
curve carries no information about the recall jump. The raw curve often has four phases (0 →
0.25 → b as the format and the value set are learned, then one or two recall phases), more than
the detector fits (three), and its stage-one phases are a few evaluations apart; the fit then
fails its rules and the raw curve gets no transition at all although the run learns recall (the
demo's noncausal/last seeds 0 and 1 end at 0.99 with no transition of the raw curve). Floored,
stage one is one flat stretch, and the recall phases are found the same way whatever the
evaluation density (checked on the same runs evaluated 34 to 62 times). Every transition
of the raw curve is still reported (formation.json ``transitions``).

Why this rise: it is the accuracy that the transition adds beyond what no-recall models reach,
so it is the transition that does the most recall. A stage-one rise from 0 to 0.5 adds nothing
above a 0.5 baseline. A late polish phase from 0.95 to 0.99 adds 0.04, and it does not beat the
0.5 → 0.9 rise (0.4), although both qualify. The margin keeps noise at the plateau (a
transition to 0.55 over a 0.52 baseline) from counting as recall.

Where the baseline comes from (``run_baseline``): metrics.jsonl's ``test_acc_last_baseline`` when
logged (training and import log it). Otherwise it is computed from config.yaml: the run's test
split, regenerated exactly (``models.rundir.run.run_test_split``), cut to ``eval.test_subset``.
That covers runs trained before the baseline was logged. Only that fallback imports torch. With
neither, the baseline is unknown: the rule uses b = 0, and ``source`` says so.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.errors import UserError
from models.rundir.io import read_jsonl
from models.rundir.layout import RunDir

from .transitions import detect_transitions

__all__ = ["RECALL_MARGIN", "BASELINE_KEY", "choose_recall_jump", "recall_transitions", "find_recall_jump",
           "run_baseline", "logged_baseline"]

RECALL_MARGIN = 0.1  # the one owner of the margin over the no-recall baseline
BASELINE_KEY = "test_acc_last_baseline"  # its metrics.jsonl field (models/training/evaluate.py)
CURVE = "test_acc_last"


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def choose_recall_jump(transitions: list[dict], baseline: float | None,
                       margin: float = RECALL_MARGIN) -> tuple[dict | None, str]:
    """(the recall jump, status) by the module's rule, from the transitions of
    ``test_acc_last`` in step order (``Transition.to_dict()`` dicts). The recall jump is that
    transition's fields plus ``phase`` (its index), ``n_phases`` and ``rise_above_baseline``;
    None when no transition qualifies. ``baseline`` None means unknown: the rule then uses 0.
    The status is "measured" when there is a recall jump, else a sentence that says why not."""
    b = 0.0 if baseline is None else float(baseline)
    trs = [t for t in transitions if isinstance(t, dict)]
    if not trs:
        return None, f"no transition of {CURVE}"
    best, best_gain = None, -math.inf
    for i, t in enumerate(trs):
        low, high = _num(t.get("low")), _num(t.get("high"))
        if low is None or high is None or high <= low or high <= b + margin:
            continue
        gain = high - max(low, b)
        if gain > best_gain:  # strictly larger: on a tie the earlier phase stays
            best, best_gain = i, gain
    if best is None:
        tops = [h for t in trs if (h := _num(t.get("high"))) is not None]
        top = f" (the highest ends at {max(tops):.2f})" if tops else ""
        what = "the no-recall baseline" if baseline is not None else "the margin (the baseline is unknown, taken as 0)"
        return None, (f"no transition of {CURVE} ends above {what} {b:.2f} + {margin:.2f}{top}: "
                      "no recall jump")
    return {"phase": best, "n_phases": len(trs), **trs[best], "rise_above_baseline": best_gain}, "measured"


def recall_transitions(steps, values, baseline: float | None) -> list[dict]:
    """Transitions of the curve floored at the baseline, max(value, b) (the module doc's why);
    the raw curve's when the baseline is unknown."""
    v = np.asarray(values, dtype=float)
    if baseline is not None:
        v = np.where(np.isfinite(v), np.maximum(v, float(baseline)), v)
    return [t.to_dict() for t in detect_transitions(steps, v)]


def find_recall_jump(steps, values, baseline: float | None,
                     margin: float = RECALL_MARGIN) -> tuple[dict | None, str]:
    """(the recall jump, status) of a test_acc_last curve: ``choose_recall_jump`` over
    ``recall_transitions``."""
    trs = recall_transitions(steps, values, baseline)
    if not trs and baseline is not None:
        v = np.asarray(values, dtype=float)
        top = f" (the highest evaluation is {np.nanmax(v):.2f})" if np.isfinite(v).any() else ""
        return None, (f"no transition of {CURVE} above the no-recall baseline {float(baseline):.2f}{top}: "
                      "no recall jump")
    return choose_recall_jump(trs, baseline, margin)


def logged_baseline(records: list[dict]) -> float | None:
    """The last finite ``test_acc_last_baseline`` of metrics.jsonl records, or None."""
    for rec in reversed(records):
        if isinstance(rec, dict) and (v := _num(rec.get(BASELINE_KEY))) is not None:
            return v
    return None


def run_baseline(run_dir, records: list[dict] | None = None) -> dict:
    """The run's no-recall baseline as {"value", "margin", "source"} (module doc): from
    metrics.jsonl (``records`` if given, else read), else computed from config.yaml; value
    None when neither can give it (``source`` says why)."""
    run = RunDir(run_dir)
    if records is None:
        records = read_jsonl(run.metrics) if run.metrics.is_file() else []
    out = {"value": None, "margin": RECALL_MARGIN, "source": None}
    value = logged_baseline(records)
    if value is not None:
        return dict(out, value=value, source=f"metrics.jsonl ({BASELINE_KEY})")
    if not run.is_run():
        return dict(out, source=f"unknown: metrics.jsonl has no {BASELINE_KEY} and there is no config.yaml "
                                "to compute it from; the rule used 0")
    try:
        cfg = run.run_config()
        # Only here does analysis need torch: regenerating the test split. Imported on use, so
        # reading a run that logged its baseline stays torch-free.
        from models.data.baseline import no_recall_baseline
        from models.rundir.run import run_test_split

        value = no_recall_baseline(run_test_split(cfg), cfg.data.task, rows=cfg.eval.test_subset)
    except UserError as e:
        return dict(out, source=f"unknown: config.yaml could not give the test split "
                                f"({str(e).splitlines()[0]}); the rule used 0")
    return dict(out, value=value, source="config.yaml (test split regenerated; metrics.jsonl predates "
                                         f"{BASELINE_KEY})")
