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
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from models.build import is_hyena
from models.errors import UserError
from models.rundir.io import decode_metadata
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
    (stored as its query row)."""
    names = set(model.hook_dict)
    out = ["blocks.0.hook_resid_pre"]
    for l in range(n_layers_of(model)):
        b = f"blocks.{l}."
        out += [b + "hook_resid_mid", b + "hook_resid_post"]
        if is_hyena(model):
            op = model.blocks[l].mixer
            out += [b + f"mixer.hook_gate_{i}" for i in range(op.order)]
            out += [b + "mixer.hook_v", b + "mixer.hook_y", b + "mixer.hook_filter"]
            if not op.causal:
                out.append(b + "mixer.hook_filter_rev")
        else:
            out.append(b + "attn.hook_pattern")
    return [n for n in out if n in names]


def resolve_hooks(model: nn.Module, extra: Iterable[str] | None = None) -> list[str]:
    """The defaults plus `extra` (exact hook names), with unknown names refused by name."""
    hooks = default_hooks(model)
    known = set(model.hook_dict)
    for name in extra or ():
        if name not in known:
            close = sorted(k for k in known if k.endswith(name.split(".")[-1]))[:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
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


# ====================================================================== a run
def capture_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "capture"


def step_file(run_dir: str | Path, step: int) -> Path:
    return capture_dir(run_dir) / f"step_{int(step):08d}.safetensors"


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
    from interp.run_io import read_run_config, run_test_split

    path = capture_dir(run_dir) / "probe_set.safetensors"
    if path.is_file():
        ps = ProbeSet.load(path)
        for key, want in (("n_probe", n_probe), ("probe_seed", seed)):
            have = ps.meta.get(key)
            if want is not None and have is not None and int(want) != int(have) and not (
                key == "n_probe" and int(want) > int(have) == int(ps.meta.get("n_split", -1))
            ):
                raise UserError(f"{path} was drawn with {key}={have}, not {want}; delete {capture_dir(run_dir)} to draw a new probe set")
        return ps
    cfg = read_run_config(run_dir) if cfg is None else cfg
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


def read_step_meta(path: Path) -> dict[str, Any] | None:
    """Metadata of a capture file, or None when it is missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception:
        return None
    return decode_metadata(raw)


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
) -> dict[str, Any]:
    """Capture every checkpoint of a run (see the module doc); already captured ones are
    skipped. `hooks` are added to the defaults. Returns {"captured": [steps], "skipped":
    [steps], "probe_set": path}."""
    from tqdm.auto import tqdm

    from interp.run_io import list_checkpoints, load_checkpoint_model, read_run_config
    from models.build import model_kind
    from models.rundir.io import atomic_save_tensors

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ps = load_or_make_probe_set(run_dir, cfg, n_probe, n_circuit, seed)
    digest = ps.digest()
    ckpts = list_checkpoints(run_dir)
    if steps is not None:
        wanted = {int(s) for s in steps}
        ckpts = [(s, p) for s, p in ckpts if s in wanted]
    if not ckpts:
        raise UserError(f"{run_dir} has no checkpoints to capture yet")
    extra = set(hooks or ())
    todo, skipped = [], []
    for step, path in ckpts:
        meta = read_step_meta(step_file(run_dir, step))
        if (meta and meta.get("probe_set") == digest and meta.get("version") == CAPTURE_VERSION
                and extra <= set(meta.get("hooks", []))):
            skipped.append(step)
        else:
            todo.append((step, path))
    done = []
    bar = tqdm(todo, desc=f"capture {run_dir.name}", unit="ckpt", disable=not progress or not todo)
    for step, _ in bar:
        bar.set_postfix(step=step)
        model = load_checkpoint_model(run_dir, step, cfg)
        names = resolve_hooks(model, hooks)
        tensors = capture_model(model, ps, names, batch_size=batch_size, dtype=dtype)
        meta = {
            "step": int(step), "probe_set": digest, "hooks": names, "kind": model_kind(model),
            "layout": {h: layout_of(h) for h in names}, "slots": list(SLOTS),
            "version": CAPTURE_VERSION, "dtype": str(dtype).replace("torch.", ""),
        }
        atomic_save_tensors(step_file(run_dir, step), tensors, meta)
        done.append(step)
        del model, tensors
    return {"captured": done, "skipped": skipped, "probe_set": str(capture_dir(run_dir) / "probe_set.safetensors")}


def load_step(run_dir: str | Path, step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A capture file's tensors and metadata."""
    from models.rundir.io import load_tensors

    return load_tensors(step_file(run_dir, step))


def captured_steps(run_dir: str | Path) -> list[int]:
    d = capture_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("step_*.safetensors"):
        try:
            out.append(int(p.name[5:-12]))
        except ValueError:
            continue
    return sorted(out)
