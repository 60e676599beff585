"""Activation patching from clean into corrupted runs (science.md, "Patching recovery").

Pairs: the clean sequence, and the corrupted one where q (the token at the query position) is
replaced by another key present in the context whose value differs (`ProbeSet`); so the clean
answer a and the corrupted answer a' differ.

    LD(run) = logit_a − logit_a'  at the query position
    recovery(hook, group) = (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)

with each LD averaged over the pairs first (a ratio of means: per-pair ratios blow up where a
pair's denominator is small). Patching writes the clean activation of `hook` into the
corrupted run at the positions of one group (`POSITION_GROUPS`):

    query        the query position
    match_key    the positions of the clean query's key in the context
    match_value  the positions right after them
    other        every other key or value position of the context
    all          every position
    none         no position (recovery 0 by construction)

Variants are batched: one `run_with_hooks` forward runs many (hook, group) variants side by
side, each on its own copy of the corrupted batch.

Shortcuts (`skip_identical=True`, the default; False runs every variant as it is):
- Only positions where the clean and corrupted activations differ (beyond float32 round-off:
  max |difference| > 1e-5 · max |activation|) can change the run; in a causal model the
  positions before the query never see q. A variant whose group holds no such position is not
  run (LD_patched = LD_corrupt), and groups of one hook with the same differing positions
  (e.g. `query` and `all` in a causal model) share one run.
- A HyenaLM residual hook (`hook_resid_pre/mid/post`: everything after it reads only its
  output) patched at every differing position is the clean run: LD_patched = LD_clean without
  a run. (Not assumed for the attention bridge, whose residual names are aliases.)
So patching a residual hook at `all` positions recovers 1 (exactly with the shortcut, up to
float round-off without it), and `none` recovers 0.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from interp.capture import n_layers_of
from models.build import is_hyena

POSITION_GROUPS = ("query", "match_key", "match_value", "other", "all", "none")
# hooks that carry the whole state the rest of the forward depends on
RESIDUAL_SUFFIXES = (".hook_resid_pre", ".hook_resid_mid", ".hook_resid_post")


def position_groups(circuit: dict[str, Tensor]) -> dict[str, Tensor]:
    """[m, L] bool masks of every group, from the circuit roles."""
    inputs = circuit["inputs"]
    m, L = inputs.shape
    q = torch.zeros(m, L, dtype=torch.bool)
    q[torch.arange(m), circuit["qpos"]] = True
    mk, mv = circuit["match_key"], circuit["match_value"]
    kv = circuit["key"] | circuit["value"]
    return {
        "query": q, "match_key": mk.clone(), "match_value": mv.clone(),
        "other": kv & ~mk & ~mv & ~q, "all": torch.ones(m, L, dtype=torch.bool),
        "none": torch.zeros(m, L, dtype=torch.bool),
    }


def default_patch_hooks(model: nn.Module) -> list[str]:
    """Per block: hook_resid_pre, the mixer's output (Hyena `hook_mixer_out`, attention
    `hook_attn_out`), hook_resid_mid (Hyena only, see below), hook_mlp_out; Hyena also its
    gates and v; and the last block's hook_resid_post."""
    names = set(model.hook_dict)
    n = n_layers_of(model)
    out = []
    hyena = is_hyena(model)
    for l in range(n):
        b = f"blocks.{l}."
        out += [b + "hook_resid_pre", b + "hook_mixer_out", b + "hook_attn_out"]
        # the bridge's `hook_resid_mid` is an alias of `ln2.hook_in`: patching it changes only
        # the MLP's input, not the residual stream, so it is left out for attention
        out += [b + "hook_resid_mid"] if hyena else []
        out += [b + "hook_mlp_out"]
        if hyena:
            op = model.blocks[l].mixer
            out += [b + f"mixer.hook_gate_{i}" for i in range(op.order)] + [b + "mixer.hook_v"]
    out.append(f"blocks.{n - 1}.hook_resid_post")
    return [h for h in out if h in names]


def _logit_diff(logits: Tensor, qpos: Tensor, a: Tensor, b: Tensor) -> Tensor:
    r = torch.arange(logits.shape[0], device=logits.device)
    lq = logits[r, qpos]
    return (lq[r, a] - lq[r, b]).double()


def _expand(mask: Tensor, t: Tensor) -> Tensor:
    """[m, L] position mask → broadcastable against an activation [m, L, ...]."""
    return mask.reshape(mask.shape + (1,) * (t.dim() - 2))


def patch_recovery(
    model: nn.Module,
    circuit: dict[str, Tensor],
    hooks: Sequence[str] | None = None,
    groups: Sequence[str] = POSITION_GROUPS,
    skip_identical: bool = True,
    max_batch: int = 1024,
    n_boot: int = 200,
) -> list[dict[str, Any]]:
    """Recovery for every (hook, group) on the valid clean/corrupted pairs of `circuit`.

    Returns rows {metric: "patch_recovery", hook, role (the group), layer, value, ci,
    ld_patched, n}, plus one row each of `patch_ld_clean` and `patch_ld_corrupt` (layer −1).
    `ci` is the half-width of a 95% percentile bootstrap over the pairs (`n_boot` resamples,
    seeded): large where LD_clean − LD_corrupt is near zero and the ratio is unstable."""
    valid = circuit["corrupt_valid"]
    if not bool(valid.any()):
        return []
    c = {k: v[valid] for k, v in circuit.items()}
    hooks = list(default_patch_hooks(model) if hooks is None else hooks)
    for h in hooks:
        if h not in model.hook_dict:
            raise ValueError(f"the model has no hook {h!r}")

    hyena = is_hyena(model)
    masks = position_groups(c)
    device = next(model.parameters()).device
    clean, corrupt = c["inputs"].to(device), c["corrupt_inputs"].to(device)
    qpos, a, a2 = c["qpos"].to(device), c["answer"].to(device), c["corrupt_answer"].to(device)
    m = clean.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits_c, cache_c = model.run_with_cache(clean, names_filter=hooks)
            logits_x, cache_x = model.run_with_cache(corrupt, names_filter=hooks)
            ld_clean = _logit_diff(logits_c, qpos, a, a2).cpu()  # per pair [m]
            ld_corrupt = _logit_diff(logits_x, qpos, a, a2).cpu()
            clean_acts = {h: cache_c[h] for h in hooks}
            corrupt_acts = {h: cache_x[h] for h in hooks}
            del cache_c, cache_x

            variants, results, alias = [], {}, {}
            for h in hooks:
                ca, xa = clean_acts[h], corrupt_acts[h]
                if ca.dim() < 2 or tuple(ca.shape[:2]) != (m, clean.shape[1]):
                    raise ValueError(f"hook {h!r} has shape {tuple(ca.shape)}; patching needs [batch, pos, ...]")
                differs = _differs(ca, xa) if skip_identical else None
                seen: dict[bytes, tuple[str, str]] = {}
                for g in groups:
                    mask = masks[g].to(device)
                    if differs is not None:
                        eff = mask & differs
                        if not bool(eff.any()):
                            results[(h, g)] = ld_corrupt
                            continue
                        if hyena and h.endswith(RESIDUAL_SUFFIXES) and bool((differs <= mask).all()):
                            results[(h, g)] = ld_clean  # the whole clean state: the clean run
                            continue
                        sig = eff.cpu().numpy().tobytes()
                        if sig in seen:  # same effective patch as an earlier group
                            alias[(h, g)] = seen[sig]
                            continue
                        seen[sig] = (h, g)
                    variants.append((h, g))
            per = max(1, max_batch // m)
            for v0 in range(0, len(variants), per):
                chunk = variants[v0:v0 + per]
                V = len(chunk)
                by_hook: dict[str, list[tuple[int, Tensor]]] = {}
                for j, (h, g) in enumerate(chunk):
                    by_hook.setdefault(h, []).append((j, masks[g].to(device)))

                def make(h: str, items: list[tuple[int, Tensor]]) -> Callable:
                    def fn(t: Tensor, hook) -> Tensor:
                        t = t.clone()
                        for j, mask in items:
                            sl = slice(j * m, (j + 1) * m)
                            t[sl] = torch.where(_expand(mask, t[sl]), clean_acts[h], t[sl])
                        return t
                    return fn

                fwd = [(h, make(h, items)) for h, items in by_hook.items()]
                logits = model.run_with_hooks(corrupt.repeat(V, 1), fwd_hooks=fwd)
                ld = _logit_diff(logits, qpos.repeat(V), a.repeat(V), a2.repeat(V)).view(V, m).cpu()
                for j, key in enumerate(chunk):
                    results[key] = ld[j]
            for key, src in alias.items():
                results[key] = results[src]
    finally:
        model.train(was_training)
    # ratio of means, with a percentile-bootstrap 95% half-width over the pairs (no extra runs)
    gen = torch.Generator().manual_seed(0)
    boot = torch.randint(0, m, (n_boot, m), generator=gen)
    lc, lx = ld_clean, ld_corrupt
    denom = float(lc.mean() - lx.mean())
    denom_b = lc[boot].mean(1) - lx[boot].mean(1)
    rows = []
    for h in hooks:
        layer = _layer_of(h)
        for g in groups:
            lp = results[(h, g)]
            ldp = float(lp.mean())
            rec = (ldp - float(lx.mean())) / denom if abs(denom) > 1e-9 else float("nan")
            rec_b = (lp[boot].mean(1) - lx[boot].mean(1)) / denom_b
            lo, hi = torch.nanquantile(rec_b, torch.tensor([0.025, 0.975], dtype=rec_b.dtype)).tolist() if n_boot else (float("nan"),) * 2
            rows.append(dict(metric="patch_recovery", hook=h, role=g, layer=layer, value=rec,
                             ci=(hi - lo) / 2, ld_patched=ldp, n=m))
    rows.append(dict(metric="patch_ld_clean", layer=-1, value=float(lc.mean()), n=m))
    rows.append(dict(metric="patch_ld_corrupt", layer=-1, value=float(lx.mean()), n=m))
    return rows


def _differs(a: Tensor, b: Tensor, rtol: float = 1e-5) -> Tensor:
    """[m, L] bool: positions where a and b differ by more than float32 round-off (max abs
    difference > rtol · max |b|); a causal Hyena's FFT convolution leaves ~1e-7 relative noise
    at positions that do not depend on the query."""
    d = (a - b).abs().reshape(a.shape[0], a.shape[1], -1).amax(-1)
    return d > rtol * max(float(b.abs().max()), 1e-30)


def _layer_of(hook: str) -> int:
    mt = re.match(r"blocks\.(\d+)\.", hook)
    return int(mt.group(1)) if mt else -1
