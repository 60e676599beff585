"""The exact per-source terms of a layer's output at the query, and the logit-difference
readouts they are projected onto (used by interp/decompose.py: roles, rows, path patching).

Hyena (any order N, causal or not). Per channel c, hook_y[b, i, c] = Σ_j H[b, c, i, j] ·
hook_v[b, j, c] with H the exact implicit attention (interp/implicit_attention.py; the D skip
terms sit on H's diagonal). At the query q of row b the layer's stream output therefore splits
exactly into one term per stream position j (positions after the short conv):

    stream[b, j, c] = H[b, c, q_b, j] · hook_v[b, j, c],        Σ_j stream[b, j] = hook_y[b, q_b]

Only the query rows of H are built (`_h_rows` once per distinct query position). With the
identity activation the output is linear in hook_y, so each term goes through out_proj's W
(projected[b, j] = W · stream[b, j]), and out_proj's bias is a term of its own:
Σ_j projected[b, j] + bias = hook_mixer_out[b, q_b]. With any other activation (tanh, gelu, …)
the output is not a sum of per-source terms: the stream terms (and path patching, which works
at hook_y) still hold, the projections raise a UserError naming the activation.

Attention baseline (TransformerLens): the same split, pattern × OV per source position,
    term[b, j] = Σ_h pattern[b, h, q_b, j] · (hook_v[b, j, h] @ W_O[h]),   bias = b_O,
summing to hook_attn_out[b, q_b]; stream = projected (d_model). Everything after producing the
per-source terms in d_model space (projections, roles, patching) is one code path for both.

Targets: each term t ∈ R^{d_model} (and the bias) is projected onto the logit difference
LD = logit[answer] − mean_{c ∈ candidates} logit[c] at q, two ways:
  direct  through the frozen final LayerNorm and the unembedding: with the clean run's LN scale
          s_b at q (s = sqrt(mean((x − x̄)²) + eps) of the LN input x), centering included,
          direct(t) = ((t − t̄) / s_b) · (w_LN ⊙ Δ_b), Δ_b = W_U[:, answer] − mean_c W_U[:, c]
          (the model's own head: HyenaLM's is its tied embedding). The LN bias and the
          unembedding bias are constants (`Readout.const`) and are not attributed, so
          direct(LN input at q) + const = LD exactly.
  grad    t · ∂LD/∂(layer output at q): the gradient of LD w.r.t. hook_mixer_out /
          hook_attn_out at q in the clean run (one forward and one backward for all layers,
          batched over rows); a first-order estimate of each term's total effect.
Both are linear, so the terms' and the bias' values sum to the target of the layer output.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from models.build import is_hyena
from models.errors import UserError

from interp.implicit_attention import _h_rows, hyena_operands

TARGETS = ("direct", "grad")

__all__ = ["Readout", "SourceTerms", "TARGETS", "check_candidates", "check_inputs", "check_layer",
           "device_of", "eval_mode", "logit_diff_readout", "n_layers", "output_hook", "patch_hook",
           "projected_terms", "source_terms"]


@dataclass
class SourceTerms:
    """One layer, one query per row (module doc), float64."""

    stream: Float[Tensor, "n L ds"]  # per-source terms in the layer's own space
    projected: Float[Tensor, "n L dm"] | None  # after out_proj's W (Hyena, identity act.)
    bias: Float[Tensor, "n dm"] | None  # the output bias as its own term
    output: Float[Tensor, "n dm"]  # the layer output at q
    hook: str  # that output's hook


@dataclass
class Readout:
    """The logit difference LD at q and its two linear readouts (module doc), float64.
    direct [n, d_model]: direct(t) = t · direct; grad[l] [n, d_model] = ∂LD/∂(output of l at
    q); ld [n] the clean LD; const [n] the LN-bias and unembedding-bias part of LD; ln_in
    [n, d_model] the final LN's input at q, so that ln_in · direct + const = ld."""

    direct: Tensor
    grad: list[Tensor]
    ld: Tensor
    const: Tensor
    ln_in: Tensor


# ====================================================================== hooks and checks
def n_layers(model: nn.Module) -> int:
    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    return int(n) if n is not None else len(model.blocks)


def check_layer(model: nn.Module, layer: int) -> int:
    nl = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise UserError(f"layer must be an int, got {layer!r}")
    if not -nl <= layer < nl:
        raise UserError(f"layer {layer} is out of range; the model has {nl} layers")
    return layer % nl


def output_hook(model: nn.Module, layer: int) -> str:
    """The layer output the terms sum to: Hyena hook_mixer_out, attention hook_attn_out."""
    return f"blocks.{layer}.hook_mixer_out" if is_hyena(model) else f"blocks.{layer}.hook_attn_out"


def patch_hook(model: nn.Module, layer: int) -> str:
    """Where path patching writes: Hyena mixer.hook_y (stream level), attention hook_attn_out."""
    return f"blocks.{layer}.mixer.hook_y" if is_hyena(model) else f"blocks.{layer}.hook_attn_out"


@contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextmanager
def _grab(model: nn.Module, names: list[str]):
    """Detached outputs of hook points `names` during the forwards inside the block (plain
    torch hooks, so they sit beside any TransformerLens hook context)."""
    got: dict[str, Tensor] = {}
    handles = [model.hook_dict[n].register_forward_hook(
        lambda mod, inp, out, n=n: got.__setitem__(n, out.detach())) for n in names]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_inputs(tokens: Tensor, qpos: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise UserError("tokens must be an int64 tensor [n, L]")
    qpos = torch.as_tensor(qpos, dtype=torch.int64)
    if qpos.shape != tokens.shape[:1]:
        raise UserError(f"qpos must be [n] = [{tokens.shape[0]}], got {tuple(qpos.shape)}")
    L = tokens.shape[1]
    if bool(((qpos < 0) | (qpos >= L)).any()):
        raise UserError(f"qpos must lie in 0 … {L - 1}")
    return tokens, qpos


def _activation_name(op: nn.Module) -> str:
    act = op.activation
    return getattr(getattr(act, "fn", None), "__name__", None) or type(act).__name__


def projectable(model: nn.Module) -> bool:
    """Whether every layer's output is a sum of per-source terms in d_model (attention always;
    Hyena when every operator's activation is the identity), so that `source_rows` applies."""
    return not is_hyena(model) or all(isinstance(b.mixer.activation, nn.Identity) for b in model.blocks)


def projected_terms(terms: SourceTerms, model: nn.Module, layer: int) -> Tensor:
    if terms.projected is None:
        name = _activation_name(model.blocks[layer].mixer)
        raise UserError(f"layer {layer}'s Hyena operator applies activation {name} after the gate, so "
                        "its output is no sum of per-source terms; the direct/grad source split needs "
                        "activation 'id' (SourceTerms.stream and source_patch_rows still work)")
    return terms.projected


# ====================================================================== per-source terms
def _query_rows(ops, qpos: Tensor) -> Float[Tensor, "n d L"]:
    """H[b, :, q_b, :] for every row b: `_h_rows` once per distinct query position, on the rows
    that share it (AR / IH: one call; MQAR: one per distinct last-query position, ≤ L)."""
    n, d, L = ops.shape
    uniq, inv = torch.unique(qpos, return_inverse=True)
    if len(uniq) == 1:
        return _h_rows(ops, uniq)[:, :, 0]  # [n, d, 1, L] → [n, d, L]
    out = torch.empty(n, d, L, dtype=torch.float64, device=ops.v.device)
    for i in range(len(uniq)):
        b = torch.nonzero(inv == i).squeeze(1)  # the rows whose query is uniq[i]
        sub = replace(ops, gates=[g[b] for g in ops.gates], v=ops.v[b], y=ops.y[b], v_in=ops.v_in[b])
        out[b] = _h_rows(sub, uniq[i:i + 1])[:, :, 0]  # [m, d, 1, L] → [m, d, L]
    return out


def _hyena_terms(model: nn.Module, tokens: Tensor, qpos: Tensor, layer: int) -> SourceTerms:
    hook = output_hook(model, layer)
    with _grab(model, [hook]) as got:
        ops = hyena_operands(model, tokens, layer)
    q = qpos.to(ops.v.device)
    ar = torch.arange(len(q), device=q.device)
    stream = (_query_rows(ops, q) * ops.v).transpose(1, 2)  # [n, d, L] → [n, L, d]
    op = model.blocks[layer].mixer
    output = got[hook][ar, q].to(torch.float64)  # [n, d_model]
    if not isinstance(op.activation, nn.Identity):
        return SourceTerms(stream, None, None, output, hook)
    W = op.out_proj.weight.detach().to(torch.float64)  # [d_model, d]
    b = op.out_proj.bias
    b = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if b is None else b.detach().to(torch.float64)
    return SourceTerms(stream, stream @ W.t(), b.expand(len(q), -1), output, hook)


def _attention_terms(model: nn.Module, tokens: Tensor, qpos: Tensor, layer: int) -> SourceTerms:
    pre, hook = f"blocks.{layer}.attn.", output_hook(model, layer)
    names = [pre + "hook_pattern", pre + "hook_v", hook]
    for nm in names:
        if nm not in model.hook_dict:
            raise UserError(f"model has no hook {nm!r}; source terms need a HyenaLM or a "
                            "TransformerLens attention model")
    with eval_mode(model), torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(device_of(model)), names_filter=names)
    q = qpos.to(device_of(model))
    ar = torch.arange(len(q), device=q.device)
    f64 = torch.float64
    pat = cache[pre + "hook_pattern"][ar, :, q, :].to(f64)  # [n, heads, L]: the query's row
    attn = model.blocks[layer].attn
    W_O, b_O = attn.W_O.detach().to(f64), attn.b_O.detach().to(f64)  # [heads, d_head, d_model], [d_model]
    terms = torch.einsum("bhj,bjhe,hem->bjm", pat, cache[pre + "hook_v"].to(f64), W_O)  # [n, L, d_model]
    return SourceTerms(terms, terms, b_O.expand(len(q), -1), cache[hook][ar, q].to(f64), hook)


def source_terms(model: nn.Module, tokens: Int[Tensor, "n L"], qpos: Int[Tensor, " n"], layer: int) -> SourceTerms:
    """The exact per-source terms of layer `layer`'s output at each row's query position (module
    doc). The model runs in eval mode without gradients (its training flag is restored)."""
    tokens, qpos = check_inputs(tokens, qpos)
    layer = check_layer(model, layer)
    if is_hyena(model):
        return _hyena_terms(model, tokens, qpos, layer)
    return _attention_terms(model, tokens, qpos, layer)


# ====================================================================== readouts
def check_candidates(candidates: Any, n: int, full: int, vocab: int) -> Tensor:
    """[n, C] int64 candidates: a shared [C], or per row [full, C] / [n, C] (first n taken)."""
    c = torch.as_tensor(candidates)
    if c.is_floating_point() or c.dim() not in (1, 2) or c.shape[-1] == 0:
        raise UserError("candidates must be token ids, [C] or [rows, C] with C ≥ 1")
    if c.dim() == 2:
        if c.shape[0] not in (n, full):
            raise UserError(f"per-row candidates need {full} (or {n}) rows, got {c.shape[0]}")
        c = c[:n]
    if bool(((c < 0) | (c >= vocab)).any()):
        raise UserError(f"candidate ids must lie in 0 … {vocab - 1}")
    return c.to(torch.int64).expand(n, -1) if c.dim() == 1 else c.to(torch.int64)


def _head(model: nn.Module):
    """(LN weight, LN bias, LN eps, W_U [d_model, vocab], b_U [vocab]) of the model's final
    LayerNorm and unembedding, and the hook of that LN's input."""
    f64 = torch.float64
    if is_hyena(model):
        ln = model.ln_final
        W_U = model.embed.weight.detach().to(f64).t()  # the tied head
        return (ln.weight.detach().to(f64), ln.bias.detach().to(f64), float(ln.eps), W_U,
                torch.zeros(W_U.shape[1], dtype=f64, device=W_U.device),
                f"blocks.{n_layers(model) - 1}.hook_resid_post")
    if getattr(model.cfg, "normalization_type", None) != "LN":
        raise UserError("the direct readout needs a final LayerNorm (normalization_type 'LN')")
    ln, un = model.ln_final, model.unembed
    return (ln.w.detach().to(f64), ln.b.detach().to(f64), float(model.cfg.eps),
            un.W_U.detach().to(f64), un.b_U.detach().to(f64), "ln_final.hook_in")


def logit_diff_readout(
    model: nn.Module,
    tokens: Int[Tensor, "n L"],
    qpos: Int[Tensor, " n"],
    answer: Int[Tensor, " n"],
    candidates: Int[Tensor, "n C"],
) -> Readout:
    """LD = logit[answer] − mean_c logit[c] at q, its direct readout vector and its gradient
    w.r.t. every layer's output at q: one forward and one backward, in eval mode."""
    dev = device_of(model)
    tokens, qpos, answer, cand = tokens.to(dev), qpos.to(dev), answer.to(dev), candidates.to(dev)
    ln_w, ln_b, eps, W_U, b_U, ln_hook = _head(model)
    outs = [output_hook(model, l) for l in range(n_layers(model))]
    stored: dict[str, Tensor] = {}
    keep = lambda name: (name, lambda t, hook: stored.__setitem__(name, t))
    ar = torch.arange(tokens.shape[0], device=dev)
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[keep(h) for h in outs + [ln_hook]])
        lq = logits[ar, qpos].to(torch.float64)  # [n, vocab]
        ld = lq[ar, answer] - lq.gather(1, cand).mean(1)
        grads = torch.autograd.grad(ld.sum(), [stored[h] for h in outs], allow_unused=True)
    if any(g is None for g in grads):
        raise UserError("a layer output does not reach the logits; cannot take the grad readout")
    delta = W_U.t()[answer] - W_U.t()[cand].mean(1)  # [n, d_model]
    u = ln_w * delta
    x = stored[ln_hook].detach()[ar, qpos].to(torch.float64)  # [n, d_model]
    xc = x - x.mean(-1, keepdim=True)
    s = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # the clean LN scale at q, [n, 1]
    const = delta @ ln_b + b_U[answer] - b_U[cand].mean(1)
    return Readout(direct=(u - u.mean(-1, keepdim=True)) / s,
                   grad=[g[ar, qpos].to(torch.float64) for g in grads],
                   ld=ld.detach(), const=const, ln_in=x)


