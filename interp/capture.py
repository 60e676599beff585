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

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from models.errors import UserError

SLOTS: tuple[str, ...] = ("query", "match_key", "match_value", "key", "key", "value", "value")
ROLE_NAMES: tuple[str, ...] = ("key", "value", "query", "match_key", "match_value", "trigger", "copy", "recallable")
CAPTURE_VERSION = 1
DEFAULT_N_PROBE = 256
DEFAULT_N_CIRCUIT = 32
DEFAULT_PROBE_SEED = 0
PATTERN_SUFFIXES = (".hook_pattern", ".hook_attn_scores")
PARAM_SUFFIXES = (".hook_filter", ".hook_filter_rev")


# ====================================================================== the probe set
@dataclass(eq=False)
class ProbeSet:
    """A fixed set of n sequences with roles, slots, a probe split and clean/corrupted pairs.

    inputs [n, L] int64; answer [n] (the target at the query); qpos [n] (the query position:
    the last `query` position of the row); roles[name] [n, L] bool for ROLE_NAMES, where
    match_key/match_value are those of the row's (last) query (AR: every pair with key q;
    MQAR: the pair of the queried key; IH: trigger / copy), and `recallable` is target-indexed;
    slot_pos / slot_valid [n, P] (see SLOTS); probe_train [n] bool (True: the probes' training
    half, False: their test half; disjoint by sequence); corrupt_inputs [n, L] (q replaced by
    another key present in the context with a different value), corrupt_answer [n] (that key's
    value), corrupt_valid [n]; circuit_idx [m]: the rows used for attribution, patching and map
    scores (the first m rows with a valid corruption, else the first m rows).
    """

    inputs: Tensor
    answer: Tensor
    qpos: Tensor
    roles: dict[str, Tensor]
    slot_pos: Tensor
    slot_valid: Tensor
    probe_train: Tensor
    corrupt_inputs: Tensor
    corrupt_answer: Tensor
    corrupt_valid: Tensor
    circuit_idx: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def length(self) -> int:
        return int(self.inputs.shape[1])

    def digest(self) -> str:
        """A short content hash; capture files record it so that a changed probe set is seen."""
        h = hashlib.sha256()
        for k, v in sorted(self.to_tensors().items()):
            h.update(k.encode())
            h.update(v.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def to_tensors(self) -> dict[str, Tensor]:
        out = {
            "inputs": self.inputs, "answer": self.answer, "qpos": self.qpos,
            "slot_pos": self.slot_pos, "slot_valid": self.slot_valid, "probe_train": self.probe_train,
            "corrupt_inputs": self.corrupt_inputs, "corrupt_answer": self.corrupt_answer,
            "corrupt_valid": self.corrupt_valid, "circuit_idx": self.circuit_idx,
        }
        out.update({f"role_{k}": v for k, v in self.roles.items()})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], meta: dict[str, Any] | None = None) -> "ProbeSet":
        try:
            roles = {k[5:]: v.to(torch.bool) for k, v in t.items() if k.startswith("role_")}
            return cls(
                inputs=t["inputs"], answer=t["answer"], qpos=t["qpos"], roles=roles,
                slot_pos=t["slot_pos"], slot_valid=t["slot_valid"].to(torch.bool),
                probe_train=t["probe_train"].to(torch.bool), corrupt_inputs=t["corrupt_inputs"],
                corrupt_answer=t["corrupt_answer"], corrupt_valid=t["corrupt_valid"].to(torch.bool),
                circuit_idx=t["circuit_idx"], meta=dict(meta or {}),
            )
        except KeyError as e:
            raise UserError(f"probe set lacks tensor {e}; delete RUN_DIR/capture and rerun `hyenalens capture`") from None

    def save(self, path: str | Path) -> None:
        from models.io import atomic_save_tensors

        meta = dict(self.meta, slots=list(SLOTS), digest=self.digest(), version=CAPTURE_VERSION)
        atomic_save_tensors(path, self.to_tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> "ProbeSet":
        from models.io import load_tensors

        t, meta = load_tensors(path)
        return cls.from_tensors(t, meta)

    # ---- derived views --------------------------------------------------------------
    def circuit(self) -> dict[str, Tensor]:
        """The circuit subset: tokens, corrupted tokens, answers, query positions, masks."""
        i = self.circuit_idx
        return {
            "inputs": self.inputs[i], "corrupt_inputs": self.corrupt_inputs[i],
            "answer": self.answer[i], "corrupt_answer": self.corrupt_answer[i],
            "corrupt_valid": self.corrupt_valid[i], "qpos": self.qpos[i],
            **{k: v[i] for k, v in self.roles.items()},
        }

    def slot_role(self, role: str) -> Tensor:
        """[n, P] bool: slots that are valid and whose position holds `role`."""
        r = self.roles[role].gather(1, self.slot_pos)
        return r & self.slot_valid


def _last_true(mask: Tensor) -> Tensor:
    """Index of the last True per row (−1 where none)."""
    L = mask.shape[1]
    idx = torch.arange(L).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values


def make_probe_set(
    inputs: Tensor,
    targets: Tensor,
    roles: Any,
    n_probe: int = DEFAULT_N_PROBE,
    n_circuit: int = DEFAULT_N_CIRCUIT,
    seed: int = DEFAULT_PROBE_SEED,
    source: dict[str, Any] | None = None,
) -> ProbeSet:
    """Sample a probe set from one split (`inputs`, `targets`, `roles` as models.synthetics
    returns them; `roles` a `Roles` or a mapping of its fields). Deterministic in `seed`."""
    get = (lambda k: roles[k]) if isinstance(roles, dict) else (lambda k: getattr(roles, k))
    total = int(inputs.shape[0])
    if total == 0:
        raise UserError("the split has no sequences to probe")
    n = min(int(n_probe), total)
    if n < 4:
        raise UserError(f"n_probe={n_probe} is too small; use at least 4 sequences")
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(np.sort(rng.choice(total, size=n, replace=False)))
    rows = rows[torch.from_numpy(rng.permutation(n))]  # a random order: circuit rows = first ones
    inputs = inputs[rows].to(torch.int64)
    targets = targets[rows].to(torch.int64)
    L = inputs.shape[1]
    raw = {k: get(k)[rows].to(torch.bool) for k in ROLE_NAMES}
    match_index = get("match_index")[rows].to(torch.int64)
    ar = torch.arange(n)

    qpos = _last_true(raw["query"])
    if bool((qpos < 0).any()):
        raise UserError("some probe sequences have no query position; the data roles are incomplete")
    answer = targets[ar, qpos]
    if bool((answer < 0).any()):
        raise UserError("some probe sequences have a masked target at the query; use the test split")
    qtok = inputs[ar, qpos]
    pos = torch.arange(L).expand(n, L)

    # the row's own matching key/value positions (for its last query)
    if bool(raw["key"].any()):
        mk = raw["key"] & (inputs == qtok[:, None]) & (pos < qpos[:, None])
    else:  # induction head: the trigger
        mk = raw["match_key"].clone()
    mv = torch.zeros_like(mk)
    mv[:, 1:] = mk[:, :-1]
    roles_out = dict(raw, match_key=mk, match_value=mv)

    # slots
    P = len(SLOTS)
    slot_pos = torch.zeros(n, P, dtype=torch.int64)
    slot_valid = torch.zeros(n, P, dtype=torch.bool)
    slot_pos[:, 0], slot_valid[:, 0] = qpos, True
    mi = match_index[ar, qpos]
    has = (mi >= 0) & (mi + 1 < L)
    slot_pos[:, 1] = torch.where(has, mi, 0)
    slot_pos[:, 2] = torch.where(has, mi + 1, 0)
    slot_valid[:, 1] = has
    slot_valid[:, 2] = has
    for role, first, other in (("key", 3, mk), ("value", 5, mv)):
        pool = raw[role] & ~other & (pos < qpos[:, None])
        score = torch.from_numpy(rng.random((n, L)))
        score = torch.where(pool, score, torch.full_like(score, -1.0))
        top = score.topk(2, dim=1)
        ok = top.values >= 0
        slot_pos[:, first:first + 2] = torch.where(ok, top.indices, 0)
        slot_valid[:, first:first + 2] = ok

    probe_train = torch.zeros(n, dtype=torch.bool)
    probe_train[torch.from_numpy(rng.permutation(n)[: n // 2])] = True

    # clean/corrupted pairs: q → another key of the context with a different value
    corrupt_inputs = inputs.clone()
    corrupt_answer = torch.full((n,), -1, dtype=torch.int64)
    corrupt_valid = torch.zeros(n, dtype=torch.bool)
    key_np, inp_np = raw["key"].numpy(), inputs.numpy()
    for b in range(n):
        q = int(qpos[b])
        kp = np.nonzero(key_np[b, :q])[0]
        kp = kp[kp + 1 < q]
        kv: dict[int, int] = {}
        for p in kp:  # the most recent occurrence wins (AR keys always keep their value)
            kv[int(inp_np[b, p])] = int(inp_np[b, p + 1])
        cands = sorted(k for k, v in kv.items() if k != int(qtok[b]) and v != int(answer[b]))
        if cands:
            k = cands[int(rng.integers(len(cands)))]
            corrupt_inputs[b, q] = k
            corrupt_answer[b] = kv[k]
            corrupt_valid[b] = True
    m = min(int(n_circuit), n)
    valid_rows = torch.nonzero(corrupt_valid).flatten()
    circuit_idx = valid_rows[:m] if len(valid_rows) > 0 else torch.arange(m)

    meta = dict(source or {}, n_probe=n, n_circuit=int(len(circuit_idx)), probe_seed=int(seed),
                n_split=total)
    return ProbeSet(inputs, answer, qpos, roles_out, slot_pos, slot_valid, probe_train,
                    corrupt_inputs, corrupt_answer, corrupt_valid, circuit_idx.to(torch.int64), meta)


def probe_set_from_data(data: Any, split: str = "test", **kw) -> ProbeSet:
    """`make_probe_set` on a split of an `ICLData` (models.synthetics)."""
    inputs, targets, roles = data.split(split)
    src = dict(getattr(data, "args", {}) or {}, split=split)
    return make_probe_set(inputs, targets, roles, source=kw.pop("source", src), **kw)


# ====================================================================== hooks
def n_layers_of(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    n = getattr(cfg, "n_layers", None)
    return int(n) if n is not None else len(model.blocks)


def is_hyena(model: nn.Module) -> bool:
    from models.lm import HyenaLM

    return isinstance(model, HyenaLM)


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
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


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
    from models.io import atomic_save_tensors

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
    from models.io import load_tensors

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
