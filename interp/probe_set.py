"""The probe set: a fixed, seeded sample of a run's test distribution, with token roles.

Drawn once per run and stored in RUN_DIR/capture/probe_set.safetensors (see `ProbeSet`), so
every checkpoint is measured on the same sequences. Slots (`SLOTS`) are the positions whose
activations capture keeps: see interp/capture.py.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.errors import UserError
from models.rundir.io import atomic_save_tensors
from models.rundir.io import load_tensors

SLOTS: tuple[str, ...] = ("query", "match_key", "match_value", "key", "key", "value", "value")
ROLE_NAMES: tuple[str, ...] = ("key", "value", "query", "match_key", "match_value", "trigger", "copy", "recallable")
CAPTURE_VERSION = 1
DEFAULT_N_PROBE = 256
DEFAULT_N_CIRCUIT = 32
DEFAULT_PROBE_SEED = 0



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
        meta = dict(self.meta, slots=list(SLOTS), digest=self.digest(), version=CAPTURE_VERSION)
        atomic_save_tensors(path, self.to_tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> "ProbeSet":
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
    """Sample a probe set from one split (`inputs`, `targets`, `roles` as models.data.synthetics
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
    """`make_probe_set` on a split of an `ICLData` (models.data.synthetics)."""
    inputs, targets, roles = data.split(split)
    src = dict(getattr(data, "args", {}) or {}, split=split)
    return make_probe_set(inputs, targets, roles, source=kw.pop("source", src), **kw)


# ====================================================================== hooks
