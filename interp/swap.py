"""The position-swap recall test: a causal test of recall for every model kind.

A model that recalls reads the answer from the matching value position. Write a substitute
value token `s` (never the answer) there and its prediction at the query should become `s`;
write the same `s` at as many NON-matching positions (the control) and it should not move.
Only the model's own forward is used (eval mode, no grad), so it works alike on causal and
non-causal `HyenaLM` and on the TransformerLens attention baseline.

Instances: AR and IH have one per sequence (its query `ProbeSet.qpos`). MQAR has one per query
position, each swapped on its own (the other queries' pairs untouched) and scored at its own
position; its matching key is the key position before it holding the same token, the value
the next position, the answer that value token.

Per instance, with `clean`/`swapped`/`control` the logits at the query position:
    follow_i    = [argmax swapped = s] · [argmax clean ≠ s]
    control_i   = [argmax control = s] · [argmax clean ≠ s]
    drop_i      = clean[answer] − swapped[answer]
Rows (layer −1), `value` the mean over instances, `n` the instances, `ci` the 95% normal
half-width over sequences (for MQAR of the per-sequence means of its queries):
    recall_swap_follow, recall_swap_control, recall_swap_selectivity (follow − control),
    recall_swap_drop, recall_swap_positions (value: matching positions written, in total).
    recall_swap_control's `n` is the total number of control positions written instead (an
    instance whose control pool is empty keeps its sequence unchanged and scores 0 there).
AR only, on the sequences where some key token 1..K is absent (`n` of them; NaN if none, which
is the rule at long AR sequences with few keys): recall_swap_key_drop (the matching keys
overwritten by one absent key; the query token is kept) and recall_swap_key_control_drop (that
key written at as many non-matching key positions), each the mean answer-logit drop.

Where the swaps go (all positions before the query):
    AR    s at every matching value position (`roles["match_value"]`); control: value positions
          that are not matching and hold neither the answer nor s.
    IH    s at the copy position (`roles["copy"]`); control: one position whose token is not
          special (`.`, `=>`), not the trigger or the copy, holding neither the answer nor s.
    MQAR  s at the query's matching value; control: one other value position holding neither
          its answer nor its s.
If the control pool is smaller than the number of matching positions, all of it is used.
Substitutes come from `value_candidates`. Every choice is drawn by one
`numpy.random.default_rng(seed)` in a fixed order (s, control, absent key, key control), so
`value_swap(ps, seed)` returns exactly the swap `swap_metrics(model, ps, seed)` scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from jaxtyping import Bool, Int
from torch import Tensor

from models.errors import UserError

TASK_NAMES = {"ar": "ar", "assoc_recall": "ar", "ih": "ih", "induction_head": "ih", "mqar": "mqar"}
DEFAULT_BATCH = 256


# ====================================================================== task and vocabulary
def _meta_value(ps: Any, key: str) -> Any:
    """ps.meta[key]; a run's probe set keeps the data config under meta["data"] instead."""
    meta = getattr(ps, "meta", None) or {}
    if key in meta:
        return meta[key]
    data = meta.get("data")
    return data.get(key) if isinstance(data, dict) else None


def probe_task(ps: Any) -> str:
    """"ar" | "ih" | "mqar" from the probe set's meta (`task`, or `data.task` in a run)."""
    task = _meta_value(ps, "task")
    if task not in TASK_NAMES:
        raise UserError(f"probe set meta has task {task!r}, which the swap test does not know; "
                        f"build it with probe_set_from_data or a run config (tasks: ar, ih, mqar)")
    return TASK_NAMES[task]


def probe_vocab_size(ps: Any) -> int:
    v = _meta_value(ps, "vocab_size")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 3:
        raise UserError(f"probe set meta has vocab_size {v!r}; rebuild it with "
                        "probe_set_from_data or from a run config (it records the data vocab_size)")
    return int(v)


def value_candidates(ps: Any) -> Int[Tensor, " c"]:
    """Token ids that can be answers: AR the values K+1..V−2 (K = (V−2)//2 keys), MQAR the
    values V//2..V−1, IH every non-special token 1..V−2."""
    task, v = probe_task(ps), probe_vocab_size(ps)
    if task == "ar":
        return torch.arange((v - 2) // 2 + 1, v - 1, dtype=torch.int64)
    if task == "mqar":
        return torch.arange(v // 2, v, dtype=torch.int64)
    return torch.arange(1, v - 1, dtype=torch.int64)


# ====================================================================== the swap plan
@dataclass
class ValueSwap:
    """The main swap of each sequence, for its own (last) query `ps.qpos`."""

    inputs: Int[Tensor, "n L"]      # the swapped sequences
    substitute: Int[Tensor, " n"]   # s per row (never the row's answer; −1: no swap, MQAR only)
    written: Bool[Tensor, "n L"]    # positions overwritten with s


@dataclass
class SwapPlan:
    """Every swap of `swap_metrics`, one instance per row (AR/IH) or per query (MQAR).

    key_token is −1 where no key is absent (and always for IH/MQAR, which have no key swap)."""

    row: Int[Tensor, " m"]          # the sequence of each instance
    pos: Int[Tensor, " m"]          # the query position it is scored at
    answer: Int[Tensor, " m"]
    substitute: Int[Tensor, " m"]
    written: Bool[Tensor, "m L"]    # matching value positions (get s)
    control: Bool[Tensor, "m L"]    # control positions (get s)
    key_token: Int[Tensor, " m"]
    key_written: Bool[Tensor, "m L"]
    key_control: Bool[Tensor, "m L"]

    def apply(self, inputs: Int[Tensor, "n L"], which: str) -> Int[Tensor, "m L"]:
        """The instances' sequences with one swap applied: "value", "control", "key" or
        "key_control" (the key swaps give the original tokens where key_token < 0)."""
        base = inputs[self.row]
        if which in ("value", "control"):
            mask = self.written if which == "value" else self.control
            return torch.where(mask, self.substitute[:, None], base)
        mask = self.key_written if which == "key" else self.key_control
        return torch.where(mask & (self.key_token[:, None] >= 0), self.key_token[:, None], base)


def _choose(rng: np.random.Generator, pool: Bool[Tensor, "m L"], k: Int[Tensor, " m"]) -> Bool[Tensor, "m L"]:
    """Per row, k random positions of `pool` (all of it where it has fewer): random scores,
    pool first, then the k best ranks."""
    m, L = pool.shape
    score = torch.from_numpy(rng.random((m, L)))
    score = torch.where(pool, score, torch.full_like(score, -1.0))
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(L).expand(m, L))
    return pool & (rank < k[:, None])


def _pick(rng: np.random.Generator, allowed: Bool[Tensor, "m c"]) -> Int[Tensor, " m"]:
    """Per row, the index of one random allowed column (−1 where none is allowed)."""
    score = torch.from_numpy(rng.random(allowed.shape))
    none = torch.full((allowed.shape[0],), -1, dtype=torch.int64)
    if allowed.shape[1] == 0:
        return none
    score = torch.where(allowed, score, torch.full_like(score, -1.0))
    return torch.where(allowed.any(1), score.argmax(1), none)


def _draw_substitute(rng: np.random.Generator, cands: Tensor, answer: Tensor) -> Tensor:
    allowed = cands[None, :] != answer[:, None]  # [m, c]
    idx = _pick(rng, allowed)
    if bool((idx < 0).any()):
        raise UserError(f"no substitute value: the task has only {len(cands)} value token(s); "
                        "the swap test needs a vocabulary with at least two values")
    return cands[idx]


def _mqar_instances(ps: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(row, query pos, matching key pos) of every MQAR query with a matching earlier key."""
    row, pos = torch.nonzero(ps.roles["query"], as_tuple=True)
    inputs = ps.inputs[row]  # [m, L]
    ar = torch.arange(ps.length)
    same = ps.roles["key"][row] & (inputs == inputs[torch.arange(len(row)), pos][:, None]) & (ar < pos[:, None])
    mk = torch.where(same, ar.expand_as(same), torch.full_like(same, -1, dtype=torch.int64)).max(1).values
    ok = (mk >= 0) & (mk + 1 < pos)
    return row[ok], pos[ok], mk[ok]


def swap_plan(ps: Any, seed: int = 0) -> SwapPlan:
    """Every swap `swap_metrics(…, seed)` scores (see the module docstring)."""
    task = probe_task(ps)
    cands = value_candidates(ps)
    rng = np.random.default_rng(seed)
    n, L = ps.inputs.shape
    ar = torch.arange(L)
    if task == "mqar":
        row, pos, mk = _mqar_instances(ps)
        m = len(row)
        answer = ps.inputs[row, mk + 1]
        written = torch.zeros(m, L, dtype=torch.bool)
        written[torch.arange(m), mk + 1] = True
    else:
        row, pos, answer = torch.arange(n), ps.qpos.clone(), ps.answer.clone()
        written = ps.roles["match_value" if task == "ar" else "copy"] & (ar < pos[:, None])
    tokens = ps.inputs[row]  # [m, L]
    before = ar < pos[:, None]
    s = _draw_substitute(rng, cands, answer)
    free = before & ~written & (tokens != answer[:, None]) & (tokens != s[:, None])
    if task == "ih":
        v = probe_vocab_size(ps)
        special = ps.roles["trigger"] | ps.roles["copy"] | ps.roles["query"]
        pool = free & (tokens != 0) & (tokens != v - 1) & ~special[row]
    else:
        pool = free & ps.roles["value"][row]
    control = _choose(rng, pool, written.sum(1))
    key_token = torch.full((len(row),), -1, dtype=torch.int64)
    key_written = torch.zeros_like(written)
    key_control = torch.zeros_like(written)
    if task == "ar":
        n_keys = (probe_vocab_size(ps) - 2) // 2
        keys = torch.arange(1, n_keys + 1)
        absent = (tokens[:, :, None] != keys).all(1)  # [m, K]: key token nowhere in the sequence
        idx = _pick(rng, absent)
        key_token = torch.where(idx >= 0, keys[idx.clamp(min=0)], key_token)
        has = (key_token >= 0)[:, None]
        key_written = ps.roles["match_key"] & before & has
        kpool = ps.roles["key"] & before & ~ps.roles["match_key"] & has
        key_control = _choose(rng, kpool, key_written.sum(1))
    return SwapPlan(row, pos, answer, s, written, control, key_token, key_written, key_control)


def value_swap(ps: Any, seed: int = 0) -> ValueSwap:
    """The main swap for each row's own (last) query `ps.qpos`, with the s `swap_metrics`
    uses at this seed. MQAR: the swap of that last query (rows without one stay unchanged,
    substitute −1)."""
    plan = swap_plan(ps, seed)
    last = plan.pos == ps.qpos[plan.row]
    row = plan.row[last]
    inputs = ps.inputs.clone()
    substitute = torch.full((ps.n,), -1, dtype=torch.int64)
    written = torch.zeros_like(ps.inputs, dtype=torch.bool)
    inputs[row] = plan.apply(ps.inputs, "value")[last]
    substitute[row] = plan.substitute[last]
    written[row] = plan.written[last]
    return ValueSwap(inputs, substitute, written)


# ====================================================================== scoring
def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _logits_at(model: nn.Module, tokens: Tensor, row: Tensor, pos: Tensor, batch_size: int) -> Tensor:
    """[m, vocab] float64 logits of `model(tokens)` at (row[i], pos[i]), in chunks of rows."""
    dev = _device(model)
    out: Tensor | None = None
    for start in range(0, tokens.shape[0], batch_size):
        logits = model(tokens[start:start + batch_size].to(dev))  # [c, L, vocab]
        sel = (row >= start) & (row < start + batch_size)
        if out is None:
            out = torch.zeros(len(row), logits.shape[-1], dtype=torch.float64)
        out[sel] = logits[(row[sel] - start).to(dev), pos[sel].to(dev)].double().cpu()
    return out if out is not None else torch.zeros(0, 0, dtype=torch.float64)


def _row(metric: str, vals: Tensor, seq: Tensor, n: int | None = None) -> dict[str, Any]:
    """Mean over instances; ci: 95% normal half-width over the per-sequence means."""
    vals = vals.double()
    if len(vals) == 0:
        return dict(metric=metric, layer=-1, value=float("nan"), n=0 if n is None else n, ci=float("nan"))
    uniq, inv = torch.unique(seq, return_inverse=True)
    per_seq = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, vals)
    per_seq = per_seq / torch.bincount(inv, minlength=len(uniq)).double()
    ci = 1.96 * float(per_seq.std()) / math.sqrt(len(uniq)) if len(uniq) > 1 else float("nan")
    return dict(metric=metric, layer=-1, value=float(vals.mean()), n=len(vals) if n is None else n, ci=ci)


def swap_metrics(model: nn.Module, ps: Any, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                 clean_logits: Tensor | None = None) -> list[dict[str, Any]]:
    """The recall_swap_* rows of one model on a probe set (see the module docstring).

    `clean_logits` [ps.n, vocab]: the clean run's logits at `ps.qpos` when the caller has them
    (capture keeps them, slot 0 of "logits"), saving one forward; AR and IH only (MQAR scores
    every query position, so it runs its own)."""
    task = probe_task(ps)
    plan = swap_plan(ps, seed)
    if clean_logits is not None and (task == "mqar" or tuple(clean_logits.shape[:1]) != (ps.n,)):
        raise UserError(f"clean_logits must be [{ps.n}, vocab] at the probe set's query, for AR or IH")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    m = len(plan.row)
    if m == 0:
        raise UserError("the probe set has no query with a matching earlier key; the swap test needs one")
    inst, k_inst = torch.arange(m), torch.nonzero(plan.key_token >= 0).flatten()  # k: AR key swaps
    was_training = model.training
    model.eval()
    try:
        clean = (_logits_at(model, ps.inputs, plan.row, plan.pos, batch_size) if clean_logits is None
                 else clean_logits[plan.row].double().cpu())
        out = {w: _logits_at(model, plan.apply(ps.inputs, w), inst, plan.pos, batch_size)
               for w in ("value", "control")}
        for w in ("key", "key_control") if task == "ar" else ():
            out[w] = _logits_at(model, plan.apply(ps.inputs, w)[k_inst], torch.arange(len(k_inst)),
                                plan.pos[k_inst], batch_size)
    finally:
        model.train(was_training)
    s, a = plan.substitute, plan.answer
    fresh = clean.argmax(-1) != s
    follow = ((out["value"].argmax(-1) == s) & fresh).double()
    control = ((out["control"].argmax(-1) == s) & fresh).double()

    def drop(logits: Tensor, idx: Tensor = inst) -> Tensor:
        return clean[idx, a[idx]] - logits[torch.arange(len(idx)), a[idx]]

    seq = plan.row
    rows = [
        _row("recall_swap_follow", follow, seq),
        _row("recall_swap_control", control, seq, n=int(plan.control.sum())),
        _row("recall_swap_selectivity", follow - control, seq),
        _row("recall_swap_drop", drop(out["value"]), seq),
        dict(metric="recall_swap_positions", layer=-1, value=float(plan.written.sum()), n=m,
             ci=float("nan")),
    ]
    if task == "ar":
        rows += [_row("recall_swap_key_drop", drop(out["key"], k_inst), seq[k_inst]),
                 _row("recall_swap_key_control_drop", drop(out["key_control"], k_inst), seq[k_inst])]
    return rows
