"""Attribution of the answer logit to the input tokens (science.md, "Attribution share").

captum's `LayerIntegratedGradients` on the token-embedding module (`model.embed` for HyenaLM
and for the TransformerLens bridge; the bridge's positional embedding is a separate module and
is held fixed), for F(x) = logit of the correct answer at the query position.

Baseline (documented choice): every token replaced by the noop token `.` (id 0,
`BASELINE_TOKEN`), i.e. the path runs from the embedding of an all-noop sequence to the real
embeddings. `.` never occurs in safari's AR/IH data, so it carries no key/value identity; the
positional embedding (attention) and the model's own position handling are unchanged.

Per position i the attribution is a_i = Σ_d attr[i, d] (signed), and the shares are of |a_i|:

    share_keys   = Σ_{i ∈ matching keys} |a_i|   / Σ_i |a_i|
    share_values = Σ_{i ∈ matching values} |a_i| / Σ_i |a_i|
    share_rest   = 1 − share_keys − share_values   (every other position, the query included)
    share_query  = |a_q| / Σ_i |a_i|                (a part of `rest`, reported on its own)

each averaged over sequences. Completeness: captum's convergence delta
δ = Σ_i a_i − (F(x) − F(baseline)) per sequence; reported as mean |δ| (`attr_delta`) and
relative to mean |F(x) − F(baseline)| (`attr_delta_rel`). Gauss-Legendre quadrature with
`n_steps` nodes (captum's default method).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

BASELINE_TOKEN = 0
DEFAULT_IG_STEPS = 16


def embedding_module(model: nn.Module) -> nn.Module:
    """The token-embedding module of either model kind."""
    emb = getattr(model, "embed", None)
    if isinstance(emb, nn.Module):
        return emb
    raise ValueError(f"cannot find the token embedding of {type(model).__name__} (no `embed` module)")


def integrated_gradients(
    model: nn.Module,
    tokens: Tensor,
    qpos: Tensor,
    answer: Tensor,
    n_steps: int = DEFAULT_IG_STEPS,
    baseline_token: int = BASELINE_TOKEN,
    internal_batch_size: int | None = None,
    method: str = "gausslegendre",
) -> dict[str, Tensor]:
    """Per-position signed attributions a [b, L], the convergence delta δ [b], F(x) and
    F(baseline) [b] for the answer logit at the query."""
    from captum.attr import LayerIntegratedGradients

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    qpos = qpos.to(device)
    answer = answer.to(device)
    baseline = torch.full_like(tokens, int(baseline_token))

    def f(t: Tensor, qp: Tensor, ans: Tensor) -> Tensor:
        logits = model(t)
        return logits[torch.arange(t.shape[0], device=t.device), qp, ans]

    try:
        with torch.inference_mode(False), torch.enable_grad():
            lig = LayerIntegratedGradients(f, embedding_module(model))
            attr, delta = lig.attribute(
                tokens, baselines=baseline, additional_forward_args=(qpos, answer),
                n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            with torch.no_grad():
                fx, fb = f(tokens, qpos, answer), f(baseline, qpos, answer)
    finally:
        model.train(was_training)
    return {"attr": attr.detach().sum(-1).float(), "delta": delta.detach().float(),
            "f_input": fx.detach().float(), "f_baseline": fb.detach().float()}


def attribution_shares(attr: Tensor, match_key: Tensor, match_value: Tensor, qpos: Tensor) -> dict[str, Tensor]:
    """Per-sequence shares of |a| on matching keys / values / rest / query (see module doc)."""
    a = attr.abs().double()
    tot = a.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
    keys = (a * match_key.to(a)).sum(-1) / tot
    values = (a * match_value.to(a)).sum(-1) / tot
    query = a[torch.arange(a.shape[0]), qpos] / tot
    return {"keys": keys, "values": values, "rest": 1.0 - keys - values, "query": query}


def attribution_metrics(
    model: nn.Module, circuit: dict[str, Tensor], n_steps: int = DEFAULT_IG_STEPS,
    baseline_token: int = BASELINE_TOKEN, internal_batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows `attr_share_{keys,values,rest,query}`, `attr_delta`, `attr_delta_rel` (layer
    −1: the embeddings) on a circuit subset (`ProbeSet.circuit()`)."""
    ig = integrated_gradients(model, circuit["inputs"], circuit["qpos"], circuit["answer"],
                              n_steps=n_steps, baseline_token=baseline_token,
                              internal_batch_size=internal_batch_size)
    sh = attribution_shares(ig["attr"], circuit["match_key"], circuit["match_value"], circuit["qpos"])
    n = int(ig["attr"].shape[0])
    rows = []
    for k in ("keys", "values", "rest", "query"):
        v = sh[k]
        ci = float(1.96 * v.std() / n ** 0.5) if n > 1 else float("nan")
        rows.append(dict(metric=f"attr_share_{k}", layer=-1, hook="embed", value=float(v.mean()), ci=ci, n=n))
    d = ig["delta"].abs()
    scale = (ig["f_input"] - ig["f_baseline"]).abs().mean().clamp_min(1e-12)
    rows.append(dict(metric="attr_delta", layer=-1, hook="embed", value=float(d.mean()), n=n))
    rows.append(dict(metric="attr_delta_rel", layer=-1, hook="embed", value=float(d.mean() / scale), n=n))
    return rows
