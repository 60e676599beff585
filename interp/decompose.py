"""The exact signed source decomposition of each layer's output at the query: roles, pair
footprints, metric rows, and path patching by role. The per-source terms and the logit-difference
readouts (direct, grad) are interp/sources.py's; its module doc has the math.

Footprint of a pair. A Hyena layer's stream position t (after the short depthwise conv) reads
the input positions t − pad … t − pad + k − 1 (kernel size k; causal pad = k − 1, non-causal
centered pad = (k − 1)//2, read from the operator's own conv). The footprint of a pair (key a,
value b) is the set of stream positions whose window covers both tokens:
max(a, b) + pad − k + 1 ≤ t ≤ min(a, b) + pad, clipped to [0, L). Causal kernel 3: the pair
(p, p+1) has footprint {p+1, p+2}; centered kernel 3: {p, p+1}. Where no window covers both (the
attention baseline, whose "window" is the position itself: k = 1, pad = 0; or a short conv too
narrow for the pair), the footprint is the pair's own positions {key, value} (documented
choice: the positions that carry the pair's tokens).

Pairs. AR / MQAR: the matching pairs are (p, p+1), p a `match_key` position of the probe set
(the row's last query's key; p+1 is a `match_value`); every other key position p whose p+1 is a
value position is an "other" pair. IH: the one pair (trigger, copy), which the probe set stores
as match_key / match_value; IH has no key/value roles, so no other pairs.

Roles (`source_role_masks`, [n, L] bool, plus `bias`, the output bias as its own term):
    match_key, match_value   the probe set's roles (diagnostic)
    match_after              the position right after a matching value (diagnostic)
    query                    q itself                                ┐ a partition: with the
    match_pair               ∪ matching pairs' footprints, minus q   │ bias, their values sum
    other_pair               ∪ other pairs' footprints, minus q and  │ to the total
                             minus match_pair                        │
    rest                     every other position                    ┘

Rows (`source_rows`), per layer l and target ∈ {direct, grad}, over the probe set's first
`rows` rows, each value the mean over rows with `ci` the 95% normal half-width and `n` rows:
  source_share  role ∈ SOURCE_ROLES: (Σ of the role's signed values) / (Σ_j |value_j| + |bias|),
                bounded in [−1, 1] even near init; the partition roles (query, match_pair,
                other_pair, bias, rest) sum to total / Σ|values| per row.
  source_total  (role empty) the signed total, in logits.

Path patching (`source_patch_rows`): the swapped inputs have every matching value overwritten by
a substitute value s. For one role, the swapped run's terms at the role's positions replace the
clean run's there: the layer output at q becomes clean − Σ_role clean terms + Σ_role swapped
terms (Hyena at `mixer.hook_y`, i.e. stream level, valid for any activation; attention at
hook_attn_out), only at q; the rest of the network runs on the clean input.
`source_patch_follow` (role ∈ PATCH_ROLES) is the fraction of rows whose argmax at q becomes s
and was not s in the clean run (as `recall_swap_follow`); rows with s < 0, which have no swap,
are left out.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from jaxtyping import Bool, Int
from torch import Tensor

from models.build import is_hyena
from models.errors import UserError

from interp.sources import (SourceTerms, check_candidates, check_inputs, check_layer, device_of, eval_mode,
                            logit_diff_readout, n_layers, output_hook, patch_hook, projected_terms,
                            source_terms)

DIAGNOSTIC_ROLES = ("match_key", "match_value", "match_after")
PARTITION_ROLES = ("query", "match_pair", "other_pair", "bias", "rest")
SOURCE_ROLES = DIAGNOSTIC_ROLES + PARTITION_ROLES
PATCH_ROLES = ("match_key", "match_value", "match_after", "match_pair")

__all__ = ["DIAGNOSTIC_ROLES", "PARTITION_ROLES", "PATCH_ROLES", "SOURCE_ROLES", "SourceTerms",
           "conv_window", "mask_positions", "pair_footprint", "patch_source_terms", "source_example", "source_metrics",
           "source_patch_rows", "source_role_masks", "source_rows", "source_terms"]


# ====================================================================== roles
def conv_window(model: nn.Module, layer: int) -> tuple[int, int]:
    """(k, pad) of layer `layer`'s short conv: stream position t reads inputs t − pad … t − pad
    + k − 1. The attention baseline has none: (1, 0), each position reads itself."""
    layer = check_layer(model, layer)
    if not is_hyena(model):
        return 1, 0
    layout = model.blocks[layer].mixer.layout()  # refuses a strided or dilated short conv
    return layout.kernel, layout.pad


def pair_footprint(
    model: nn.Module,
    layer: int,
    key_pos: Int[Tensor, "n P"],
    value_pos: Int[Tensor, "n P"],
    L: int,
) -> Bool[Tensor, "n L"]:
    """Union over each row's pairs of the stream positions whose short-conv window covers both
    the key and the value (module doc); pairs with a −1 entry are absent. A pair no window
    covers contributes its own two positions."""
    if key_pos.shape != value_pos.shape or key_pos.dim() != 2:
        raise UserError(f"key_pos and value_pos must both be [n, P]; got {tuple(key_pos.shape)} "
                        f"and {tuple(value_pos.shape)}")
    k, pad = conv_window(model, layer)
    valid = (key_pos >= 0) & (value_pos >= 0)  # [n, P]
    if bool(((key_pos >= L) | (value_pos >= L))[valid].any()):
        raise UserError(f"pair positions must be < L = {L}")
    lo = torch.minimum(key_pos, value_pos)[..., None]  # [n, P, 1]
    hi = torch.maximum(key_pos, value_pos)[..., None]
    t = torch.arange(L, device=key_pos.device)  # [L]
    covers = (t >= hi + pad - k + 1) & (t <= lo + pad)  # [n, P, L]
    own = (t == lo) | (t == hi)
    none = ~covers.any(-1, keepdim=True)  # [n, P, 1]: no window covers both
    fp = torch.where(none, own, covers) & valid[..., None]
    return fp.any(1)


def mask_positions(mask: Bool[Tensor, "n L"]) -> Int[Tensor, "n P"]:
    """The True positions of each row, ascending, padded with −1 (P = the largest count)."""
    n, L = mask.shape
    idx = torch.arange(L, device=mask.device).expand(n, L)
    keyed = torch.where(mask, idx, torch.full_like(idx, L))
    P = max(1, int(mask.sum(1).max())) if n else 1
    top = keyed.sort(dim=1).values[:, :P]  # [n, P]
    return torch.where(top < L, top, torch.full_like(top, -1))


def _shift(mask: Bool[Tensor, "n L"]) -> Bool[Tensor, "n L"]:
    """Position i → i + 1 (dropped past the end)."""
    out = torch.zeros_like(mask)
    out[:, 1:] = mask[:, :-1]
    return out


def source_role_masks(
    model: nn.Module,
    layer: int,
    roles: dict[str, Tensor],
    qpos: Int[Tensor, " n"],
) -> dict[str, Bool[Tensor, "n L"]]:
    """Every position role of the module doc (all but `bias`) for layer `layer`, from probe-set
    roles (`match_key`, `match_value`, and `key`/`value` where the task has them)."""
    for name in ("match_key", "match_value"):
        if name not in roles:
            raise UserError(f"the probe set has no role {name!r}; rebuild it with make_probe_set")
    mk, mv = roles["match_key"].to(torch.bool), roles["match_value"].to(torch.bool)
    n, L = mk.shape
    dev = mk.device
    key = roles.get("key", torch.zeros_like(mk)).to(torch.bool)
    value = roles.get("value", torch.zeros_like(mk)).to(torch.bool)
    # a pair is (p, p+1): a key p whose p+1 is its value
    match_k = mk & torch.roll(mv, -1, dims=1)
    match_k[:, -1] = False
    other_k = key & ~mk & torch.roll(value, -1, dims=1)
    other_k[:, -1] = False
    kp_m, kp_o = mask_positions(match_k), mask_positions(other_k)  # [n, P]
    vp = lambda kp: torch.where(kp >= 0, kp + 1, kp)
    query = torch.zeros(n, L, dtype=torch.bool, device=dev)
    query[torch.arange(n, device=dev), qpos.to(dev)] = True  # [n, L]
    match_pair = pair_footprint(model, layer, kp_m, vp(kp_m), L) & ~query
    other_pair = pair_footprint(model, layer, kp_o, vp(kp_o), L) & ~query & ~match_pair
    return {
        "match_key": mk, "match_value": mv, "match_after": _shift(mv),
        "query": query, "match_pair": match_pair, "other_pair": other_pair,
        "rest": ~(query | match_pair | other_pair),
    }


# ====================================================================== rows
def _decompose(model: nn.Module, tokens: Tensor, qpos: Tensor, answer: Tensor, cand: Tensor,
               roles: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Per layer: hook, role masks [n, L], and per target (values [n, L], bias value [n])."""
    read = logit_diff_readout(model, tokens, qpos, answer, cand)
    out = []
    for l in range(n_layers(model)):
        st = source_terms(model, tokens, qpos, l)
        proj = projected_terms(st, model, l)
        masks = {k: v.to(proj.device) for k, v in source_role_masks(model, l, roles, qpos).items()}
        vals = {}
        for target, w in (("direct", read.direct), ("grad", read.grad[l])):
            vals[target] = (torch.einsum("bjm,bm->bj", proj, w), (st.bias * w).sum(-1))  # [n, L], [n]
        out.append(dict(layer=l, hook=st.hook, masks=masks, values=vals, terms=st))
    return out


def _mean_ci(v: Tensor) -> tuple[float, float]:
    n = v.numel()
    ci = 1.96 * float(v.std()) / math.sqrt(n) if n > 1 else float("nan")
    return float(v.mean()), ci


def _prepare(model: nn.Module, ps: Any, candidates: Any, rows: int | None) -> tuple[int, Tensor]:
    """(k, [k, C] candidates) for the probe set's first k = min(rows, n) rows."""
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise UserError(f"rows must be a positive int or None, got {rows!r}")
    k = ps.n if rows is None else min(int(rows), ps.n)
    cfg = model.cfg
    vocab = int(cfg.vocab_size if is_hyena(model) else cfg.d_vocab)
    return k, check_candidates(candidates, k, ps.n, vocab)


def _share_rows(res: list[dict[str, Any]], k: int) -> list[dict]:
    out = []
    for r in res:
        base = dict(layer=r["layer"], hook=r["hook"], n=k)
        for target, (v, vb) in r["values"].items():
            denom = (v.abs().sum(-1) + vb.abs()).clamp_min(torch.finfo(torch.float64).tiny)  # [n]
            for role in SOURCE_ROLES:
                num = vb if role == "bias" else (v * r["masks"][role]).sum(-1)
                m, ci = _mean_ci(num / denom)
                out.append(dict(base, metric="source_share", target=target, role=role, value=m, ci=ci))
            m, ci = _mean_ci(v.sum(-1) + vb)
            out.append(dict(base, metric="source_total", target=target, role="", value=m, ci=ci))
    return out


def source_rows(model: nn.Module, ps: Any, candidates: Tensor, rows: int | None = None) -> list[dict]:
    """`source_share` and `source_total` rows (module doc) of every layer on the probe set's
    first `rows` rows (None: all)."""
    k, cand = _prepare(model, ps, candidates, rows)
    roles = {name: m[:k] for name, m in ps.roles.items()}
    return _share_rows(_decompose(model, ps.inputs[:k], ps.qpos[:k], ps.answer[:k], cand, roles), k)


def source_metrics(model: nn.Module, ps: Any, swapped_inputs: Tensor, substitute: Tensor,
                   candidates: Tensor, rows: int | None = None, clean_pred: Tensor | None = None,
                   shares: bool = True) -> list[dict]:
    """`source_rows` (when `shares`) and `source_patch_rows` together, as `hyenalens probe`
    runs them: each layer's clean terms are computed once, and `clean_pred` [≥ rows] (the clean
    argmax at q, e.g. from the capture's logits) saves the clean patching pass."""
    k, cand = _prepare(model, ps, candidates, rows)
    clean = None
    out: list[dict] = []
    if shares:
        roles = {name: m[:k] for name, m in ps.roles.items()}
        res = _decompose(model, ps.inputs[:k], ps.qpos[:k], ps.answer[:k], cand, roles)
        out += _share_rows(res, k)
        clean = {r["layer"]: r["terms"] for r in res}
    return out + source_patch_rows(model, ps, swapped_inputs, substitute, cand, rows=k,
                                   clean_terms=clean, clean_pred=clean_pred)


def source_example(model: nn.Module, ps: Any, candidates: Tensor, row: int = 0) -> dict:
    """The direct per-source values of one probe row, every layer, JSON-able (a figure's data)."""
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < ps.n:
        raise UserError(f"row must be an int in 0 … {ps.n - 1}, got {row!r}")
    c = torch.as_tensor(candidates)
    c = c[row:row + 1] if c.dim() == 2 and c.shape[0] == ps.n else c
    _, cand = _prepare(model, ps, c, 1)
    sl = slice(row, row + 1)
    roles = {name: m[sl] for name, m in ps.roles.items()}
    res = _decompose(model, ps.inputs[sl], ps.qpos[sl], ps.answer[sl], cand, roles)
    pos = lambda m: torch.nonzero(m[0]).flatten().tolist()
    layers = []
    for r in res:
        v, vb = r["values"]["direct"]
        names = ("match_key", "match_value", "match_after", "match_pair", "other_pair", "query")
        layers.append(dict(layer=r["layer"], hook=r["hook"], target="direct",
                           terms=[float(x) for x in v[0]], bias=float(vb[0]),
                           total=float(v[0].sum() + vb[0]),
                           roles={nm: pos(r["masks"][nm]) for nm in names}))
    return {"row": row, "qpos": int(ps.qpos[row]), "tokens": [int(t) for t in ps.inputs[row]],
            "answer": int(ps.answer[row]), "layers": layers}


# ====================================================================== path patching
def patch_source_terms(
    model: nn.Module,
    tokens: Int[Tensor, "n L"],
    qpos: Int[Tensor, " n"],
    layer: int,
    clean: SourceTerms,
    swapped: SourceTerms,
    masks: Bool[Tensor, "V n L"],
) -> dict[str, Tensor]:
    """Run `tokens` (the clean input) V times, each with layer `layer`'s output at q replaced by
    clean − Σ_{j ∈ mask} clean.stream[j] + Σ_{j ∈ mask} swapped.stream[j] (at `patch_hook`).
    Returns {"logits": [V, n, vocab] at q, "output": [V, n, d_model] the patched layer output
    at q (`output_hook`)}."""
    tokens, qpos = check_inputs(tokens, qpos)
    layer = check_layer(model, layer)
    masks = masks[None] if masks.dim() == 2 else masks
    V, n = masks.shape[0], tokens.shape[0]
    if tuple(masks.shape[1:]) != tuple(tokens.shape):
        raise UserError(f"masks must be [V, n, L] with [n, L] = {tuple(tokens.shape)}")
    dev = device_of(model)
    diff = swapped.stream - clean.stream  # [n, L, d_stream]
    delta = torch.einsum("vbj,bjc->vbc", masks.to(diff), diff).reshape(V * n, -1)  # [V·n, d_stream]
    rows, q = torch.arange(V * n, device=dev), qpos.to(dev).repeat(V)

    def patch(t: Tensor, hook) -> Tensor:
        t = t.clone()
        t[rows, q] = t[rows, q] + delta.to(t)
        return t

    out_name = output_hook(model, layer)
    got: dict[str, Tensor] = {}
    fwd = [(patch_hook(model, layer), patch), (out_name, lambda t, hook: got.__setitem__("out", t.detach()))]
    with eval_mode(model), torch.no_grad():
        logits = model.run_with_hooks(tokens.to(dev).repeat(V, 1), fwd_hooks=fwd)
    return {"logits": logits[rows, q].reshape(V, n, -1),  # [V·n, vocab] → [V, n, vocab]
            "output": got["out"][rows, q].reshape(V, n, -1)}


def _select(st: SourceTerms, ok: Tensor) -> SourceTerms:
    pick = lambda t: None if t is None else t[ok.to(t.device)]  # noqa: E731
    return replace(st, stream=pick(st.stream), projected=pick(st.projected), bias=pick(st.bias),
                   output=pick(st.output))


def source_patch_rows(model: nn.Module, ps: Any, swapped_inputs: Tensor, substitute: Tensor,
                      candidates: Tensor, rows: int | None = None,
                      clean_terms: dict[int, SourceTerms] | None = None,
                      clean_pred: Tensor | None = None) -> list[dict]:
    """`source_patch_follow` rows (module doc) per layer and role ∈ PATCH_ROLES, on the probe
    set's first `rows` rows that have a substitute (s ≥ 0). `swapped_inputs` [ps.n or rows, L]
    and `substitute` [ps.n or rows] are the caller's value swap; `candidates` are only checked.
    `clean_terms` ({layer: source_terms of the first `rows` rows}) and `clean_pred` (the clean
    argmax at q of at least those rows) may be passed in to avoid recomputing them."""
    k, _ = _prepare(model, ps, candidates, rows)
    sw, sub = torch.as_tensor(swapped_inputs), torch.as_tensor(substitute).to(torch.int64)
    if sw.dim() != 2 or sw.shape[0] not in (k, ps.n) or sw.shape[1] != ps.length:
        raise UserError(f"swapped_inputs must be [{ps.n}, {ps.length}] like the probe set's inputs")
    if sub.shape != sw.shape[:1]:
        raise UserError(f"substitute must be [{sw.shape[0]}], one token per swapped row")
    if clean_pred is not None and len(clean_pred) < k:
        raise UserError(f"clean_pred must give at least {k} rows, got {len(clean_pred)}")
    sw, sub = sw[:k].to(torch.int64), sub[:k]
    ok = sub >= 0
    tokens, qpos, sub = ps.inputs[:k][ok], ps.qpos[:k][ok], sub[ok]
    sw = sw[ok]
    roles = {name: m[:k][ok] for name, m in ps.roles.items()}
    m = int(ok.sum())
    out = []
    for l in range(n_layers(model)):
        base = dict(metric="source_patch_follow", layer=l, hook=patch_hook(model, l), target="", n=m)
        if m == 0:
            out += [dict(base, role=role, value=float("nan"), ci=float("nan")) for role in PATCH_ROLES]
            continue
        clean = source_terms(model, tokens, qpos, l) if clean_terms is None else _select(clean_terms[l], ok)
        swapped = source_terms(model, sw, qpos, l)
        rm = source_role_masks(model, l, roles, qpos)
        masks = torch.stack([rm[r] for r in PATCH_ROLES])  # [V, m, L]
        if clean_pred is None:
            # an extra entry that patches nothing gives the clean prediction
            masks = torch.cat([torch.zeros_like(masks[:1]), masks])  # [1+V, m, L]
        pred = patch_source_terms(model, tokens, qpos, l, clean, swapped, masks)["logits"].argmax(-1).cpu()
        before, pred = (pred[0], pred[1:]) if clean_pred is None else (clean_pred[:k][ok].cpu(), pred)
        # a row that already predicted s does not count as following (as in interp/swap.py)
        follow = ((pred == sub[None]) & (before != sub)[None]).to(torch.float64)  # [V, m]
        for i, role in enumerate(PATCH_ROLES):
            p = float(follow[i].mean())
            out.append(dict(base, role=role, value=p, ci=1.96 * math.sqrt(p * (1 - p) / m)))
    return out
