"""Capture: a fixed probe set per run, and the selected activations of every checkpoint on it.

`hyenalens capture RUN_DIR [--hooks ...]` (`capture_run`) writes

    RUN_DIR/capture/probe_set.safetensors          once; see `ProbeSet` for its tensors
    RUN_DIR/capture/step_{step:08d}.safetensors    one per checkpoint; see `capture_model`

The probe set is drawn from the run's TEST split: the run's data config regenerates the
data exactly (the generators are deterministic), and `n_probe` test sequences are sampled
without replacement by a numpy `default_rng(probe_seed)` that is independent of the train/test
seeds. So the probe set is the run's own test distribution, and it is identical at every
checkpoint. Its rows are split into two disjoint halves (`probe_train`) for the probes.

Positions. Storing [n, L, d] for every hook and checkpoint is large, so activations are
gathered at a fixed set of P = 7 "slots" per sequence (`SLOTS`):

    0 query        the (last) query position, where the answer is predicted
    1 match_key    the most recent key position holding the query's key (roles.match_index)
    2 match_value  the position after it
    3,4 key        two other (non-matching) key positions, drawn once with the probe set
    5,6 value      two other (non-matching) value positions, drawn once with the probe set

A slot that a task does not have (e.g. key/value slots in induction-head data, which has no
key/value roles) is marked invalid in `slot_valid` (its position is 0). Parameter-like hooks
(`*.mixer.hook_filter`, `hook_filter_rev`: [N−1, d, L], no batch axis) are stored whole, and
attention patterns (`*.attn.hook_pattern`, `hook_attn_scores`: [b, heads, L, L]) as their query
row [n, heads, L] (every source position of the query).

The report's figures read what capture stores, never a checkpoint: besides the filters, each
capture file holds the maps figure 4 draws for one annotated example (`example_maps`: probe-set
row `example_row`, per layer). A capture file written before the maps were stored gets them
added on the next `capture_run`, without recapturing the rest.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from models.build import model_kind
from models.errors import UserError
from models.hyena.hooks import default_capture_hooks
from models.rundir.io import atomic_save_tensors, load_tensors, read_jsonl
from models.rundir.layout import RunDir, capture_map_key
from models.rundir.run import load_checkpoint_model, run_test_split
from interp.checkpoint_select import select_steps
from interp.implicit_attention import implicit_attention
from interp.probe_set import (CAPTURE_VERSION, DEFAULT_N_CIRCUIT, DEFAULT_N_PROBE, DEFAULT_PROBE_SEED,
                              SLOTS, ProbeSet, make_probe_set)

PATTERN_SUFFIXES = (".hook_pattern", ".hook_attn_scores")
PARAM_SUFFIXES = (".hook_filter", ".hook_filter_rev")


def n_layers_of(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    n = getattr(cfg, "n_layers", None)
    return int(n) if n is not None else len(model.blocks)


def default_hooks(model: nn.Module) -> list[str]:
    """Residual streams (blocks.0.hook_resid_pre, every block's hook_resid_mid and
    hook_resid_post); Hyena: every mixer's gates, v, y and filters; attention: hook_pattern
    (stored as its query row). The hook table (models/hyena/hooks.py `HOOKS`, its `capture`
    column) decides."""
    return default_capture_hooks(model)


def resolve_hooks(model: nn.Module, extra: Iterable[str] | None = None) -> list[str]:
    """The defaults plus `extra` (exact hook names), with unknown names refused by name."""
    hooks = default_hooks(model)
    known = set(model.hook_dict)
    for name in extra or ():
        if name not in known:
            # a misspelling first (difflib), then the same hook in other blocks (a wrong index)
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.8)
            close += [k for k in sorted(known) if k.endswith(name.split(".")[-1]) and k not in close]
            hint = (f"; did you mean {', '.join(close[:4])}?" if close else
                    "; `model.hook_dict` lists them (docs/architecture.md, \"Hook names\")")
            raise UserError(f"the model has no hook {name!r}{hint}")
        if name not in hooks:
            hooks.append(name)
    return hooks


def layout_of(name: str) -> str:
    if name.endswith(PARAM_SUFFIXES):
        return "param"
    if name.endswith(PATTERN_SUFFIXES):
        return "query_row"
    return "slots"


# ====================================================================== one model
def capture_model(
    model: nn.Module,
    ps: ProbeSet,
    hooks: Sequence[str] | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float16,
) -> dict[str, Tensor]:
    """One forward pass of `model` over the probe set, keeping only what capture stores.

    Returns {hook name: tensor} with the layout of `layout_of(name)`: "slots" → [n, P, ...]
    (cast to `dtype`), "param" → the hook's tensor as is (float32), "query_row" → [n, heads, L]
    (float32); plus "logits" [n, P, vocab] (float32) at the slots.
    """
    hooks = list(default_hooks(model) if hooks is None else hooks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    logits_parts: list[Tensor] = []
    try:
        with torch.inference_mode():
            for b0 in range(0, ps.n, batch_size):
                sl = slice(b0, min(ps.n, b0 + batch_size))
                tokens = ps.inputs[sl].to(device)
                sp = ps.slot_pos[sl].to(device)
                qp = ps.qpos[sl].to(device)
                rows = torch.arange(tokens.shape[0], device=device)

                def make(name: str, kind: str) -> Callable:
                    def fn(t: Tensor, hook) -> None:
                        if kind == "param":
                            if not parts[name]:
                                parts[name].append(t.detach().float().cpu().clone())
                        elif kind == "query_row":
                            parts[name].append(t[rows, :, qp, :].detach().float().cpu())
                        else:
                            parts[name].append(t[rows[:, None], sp].detach().to(dtype).cpu())
                    return fn

                fwd = [(h, make(h, layout_of(h))) for h in hooks]
                logits = model.run_with_hooks(tokens, fwd_hooks=fwd)
                logits_parts.append(logits[rows[:, None], sp].float().cpu())
    finally:
        model.train(was_training)
    out = {h: (v[0] if layout_of(h) == "param" else torch.cat(v)) for h, v in parts.items() if v}
    missing = [h for h in hooks if h not in out]
    if missing:
        raise UserError(f"hooks {', '.join(missing)} did not fire in a forward pass; check the names")
    out["logits"] = torch.cat(logits_parts)
    return out


# ====================================================================== the report's example
def example_row(ps: ProbeSet) -> int:
    """The probe-set row whose maps the report draws: the first circuit row."""
    return int(ps.circuit_idx[0]) if len(ps.circuit_idx) else 0


def example_maps(model: nn.Module, ps: ProbeSet) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Figure 4's maps of probe-set row `example_row(ps)`: per layer l, under
    `capture_map_key(l)`, the token-level implicit attention, channel mean |H|, rows normalized
    (attention: the head-mean pattern), [L, L] float32. Metadata: {"row", "roles": {role:
    [positions]} (query: the row's query position), "layers"}."""
    row = example_row(ps)
    tokens = ps.inputs[row:row + 1].to(next(model.parameters()).device)  # [1, L]
    maps = {}
    with torch.no_grad():
        for l in range(n_layers_of(model)):
            m = implicit_attention(model, tokens, l, level="token", aggregate="mean_abs", normalize_rows=True)
            maps[capture_map_key(l)] = m[0].abs().float().cpu()  # [1, L, L] → [L, L]
    roles = {k: torch.nonzero(v[row]).flatten().tolist() for k, v in ps.roles.items()}
    roles["query"] = [int(ps.qpos[row])]
    return maps, {"row": row, "roles": roles, "layers": n_layers_of(model)}


# ====================================================================== a run
def load_or_make_probe_set(
    run_dir: str | Path,
    cfg: Any | None = None,
    n_probe: int | None = None,
    n_circuit: int | None = None,
    seed: int | None = None,
) -> ProbeSet:
    """RUN_DIR/capture/probe_set.safetensors, drawn from the run's test split on first use.

    Once stored it is the run's probe set for good: asking for a different size or seed is
    refused (delete RUN_DIR/capture to start over)."""
    run = RunDir(run_dir)
    path = run.probe_set
    if path.is_file():
        ps = ProbeSet.load(path)
        for key, want in (("n_probe", n_probe), ("probe_seed", seed)):
            have = ps.meta.get(key)
            if want is not None and have is not None and int(want) != int(have) and not (
                key == "n_probe" and int(want) > int(have) == int(ps.meta.get("n_split", -1))
            ):
                raise UserError(f"{path} was drawn with {key}={have}, not {want}; delete {run.capture} to draw a new probe set")
        return ps
    cfg = run.run_config() if cfg is None else cfg
    inputs, targets, roles = run_test_split(cfg)
    ps = make_probe_set(
        inputs, targets, roles,
        n_probe=DEFAULT_N_PROBE if n_probe is None else n_probe,
        n_circuit=DEFAULT_N_CIRCUIT if n_circuit is None else n_circuit,
        seed=DEFAULT_PROBE_SEED if seed is None else seed,
        source={"split": "test", "data": cfg.to_dict()["data"]},
    )
    ps.save(path)
    return ProbeSet.load(path)  # the stored form (and its digest) is the reference


def capture_run(
    run_dir: str | Path,
    hooks: Sequence[str] | None = None,
    n_probe: int | None = None,
    n_circuit: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    steps: Iterable[int] | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float16,
    limit: int | None = None,
) -> dict[str, Any]:
    """Capture every checkpoint of a run (see the module doc); already captured ones are
    skipped, and one captured before the report's maps were stored only gets them added.
    `hooks` are added to the defaults. `limit` keeps at most that many of the checkpoints
    (`steps`, else all saved ones), dense around the transitions (interp.checkpoint_select). Returns {"captured": [steps] (maps added included),
    "skipped": [steps], "maps_added": [steps], "probe_set": path}."""
    from tqdm.auto import tqdm

    run = RunDir(run_dir)
    cfg = run.run_config()
    ps = load_or_make_probe_set(run.root, cfg, n_probe, n_circuit, seed)
    digest = ps.digest()
    ckpts = run.list_checkpoints()
    if steps is not None:
        wanted = {int(s) for s in steps}
        ckpts = [(s, p) for s, p in ckpts if s in wanted]
    if limit is not None:
        kept = set(select_steps(read_jsonl(run.metrics), [s for s, _ in ckpts], limit))
        ckpts = [(s, p) for s, p in ckpts if s in kept]
    if not ckpts:
        raise UserError(f"{run.root} has no checkpoints to capture yet")
    extra = set(hooks or ())
    todo, fill, skipped = [], [], []
    for step, _ in ckpts:
        meta = run.capture_meta(step)
        if not (meta and meta.get("probe_set") == digest and meta.get("version") == CAPTURE_VERSION
                and extra <= set(meta.get("hooks", []))):
            todo.append(step)
        elif "maps" not in meta:
            fill.append(step)  # captured before the report's maps were stored
        else:
            skipped.append(step)
    done = []
    work = sorted(todo + fill)
    bar = tqdm(work, desc=f"capture {run.root.name}", unit="ckpt", disable=not progress or not work)
    for step in bar:
        bar.set_postfix(step=step)
        model = load_checkpoint_model(run.root, step, cfg)
        maps, maps_meta = example_maps(model, ps)
        if step in fill:
            tensors, meta = load_tensors(run.capture_file(step))
        else:
            names = resolve_hooks(model, hooks)
            tensors = capture_model(model, ps, names, batch_size=batch_size, dtype=dtype)
            meta = {
                "step": int(step), "probe_set": digest, "hooks": names, "kind": model_kind(model),
                "layout": {h: layout_of(h) for h in names}, "slots": list(SLOTS),
                "version": CAPTURE_VERSION, "dtype": str(dtype).replace("torch.", ""),
            }
        atomic_save_tensors(run.capture_file(step), {**tensors, **maps}, {**meta, "maps": maps_meta})
        done.append(step)
        del model, tensors
    return {"captured": done, "skipped": skipped, "maps_added": fill, "probe_set": str(run.probe_set)}


def load_step(run_dir: str | Path, step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A capture file's tensors and metadata."""
    return load_tensors(RunDir(run_dir).capture_file(step))
