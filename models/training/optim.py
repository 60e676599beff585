"""AdamW with safari's weight-decay groups, the learning-rate schedule, and optimizer state
as safetensors (never pickle).

Weight decay is 0 on the implicit-filter parameters (names containing `filter_fn`), biases,
norms (every parameter with fewer than 2 dims), and positional embeddings (`pos_emb`,
`pos_embed`). Names are the module's `state_dict` names, which are the clean TransformerLens
names for the attention baseline too (its `named_parameters` carry `_original_component`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from models.config.schema import OptimizerConfig, ScheduleConfig
from models.errors import UserError

NO_DECAY_NAME_PARTS = ("filter_fn", "pos_emb")  # pos_emb also matches pos_embed


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(state_dict name, parameter) for every trainable parameter, in module order."""
    names = {id(v): k for k, v in model.state_dict(keep_vars=True).items()}
    out = []
    for raw_name, p in model.named_parameters():
        if p.requires_grad:
            out.append((names.get(id(p), raw_name), p))
    return out


def decays(name: str, p: Tensor) -> bool:
    return p.ndim >= 2 and not any(part in name for part in NO_DECAY_NAME_PARTS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = named_params(model)
    decay = [p for n, p in params if decays(n, p)]
    no_decay = [p for n, p in params if not decays(n, p)]
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def no_decay_names(model: nn.Module) -> list[str]:
    return [n for n, p in named_params(model) if not decays(n, p)]


class AdamW:
    """AdamW (Loshchilov & Hutter), the same arithmetic as `torch.optim.AdamW(foreach=False)`
    (on CPU a test checks bit equality). Hand-written because constructing a torch optimizer
    imports torch._dynamo, which costs seconds per process on a small CPU.

    State: one step count and, per parameter, `exp_avg` and `exp_avg_sq` (plain tensors, so
    they save to safetensors as they are).

    Speed: when every parameter of a group has a gradient (every step of a training run), the
    group's moments live in one flat buffer each (`exp_avg[i]` are views of it) and the update
    runs as one op per step of the arithmetic over the concatenated gradients and parameters,
    then one copy back per parameter: about 60 small ops per step instead of about 500 (one
    per parameter and op). Elementwise kernels give every element the same bits whether it is
    processed alone or inside a longer tensor (tested against torch.optim.AdamW), so this is
    the per-parameter arithmetic to the bit. `flat = False` keeps the per-list path (the
    benchmark's baseline for this lever)."""

    flat = True

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.param_groups = [dict(g, lr=lr) for g in groups]
        self.betas, self.eps = (float(betas[0]), float(betas[1])), eps
        self.step_count = 0
        self.exp_avg: dict[int, Tensor] = {}
        self.exp_avg_sq: dict[int, Tensor] = {}
        self._flat: dict[int, _FlatGroup] = {}  # group index -> its flat buffers (built on first use)

    def params(self) -> list[nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        for p in self.params():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1 ** float(self.step_count)
        bias_correction2_sqrt = (1 - beta2 ** float(self.step_count)) ** 0.5
        i = 0
        for gi, g in enumerate(self.param_groups):
            lr, wd, params = g["lr"], g["weight_decay"], g["params"]
            step_size = lr / bias_correction1
            flat = self._flat_group(gi, i, params)
            if flat is not None:
                flat.step(1 - lr * wd, beta1, beta2, bias_correction2_sqrt, self.eps, step_size)
                i += len(params)
                continue
            ps, grads, ms, vs = [], [], [], []
            for p in params:
                if p.grad is not None:
                    if i not in self.exp_avg:
                        self.exp_avg[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        self.exp_avg_sq[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    ps.append(p)
                    grads.append(p.grad)
                    ms.append(self.exp_avg[i])
                    vs.append(self.exp_avg_sq[i])
                i += 1
            if not ps:
                continue
            # The per-parameter arithmetic of torch's foreach=False loop, one op per list: on
            # CPU each _foreach op runs the same kernel per tensor (bit-identical, tested), with
            # one Python call per list instead of per parameter.
            torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(ps, ms, denom, value=-step_size)

    def _flat_group(self, gi: int, i0: int, params: list[nn.Parameter]) -> "_FlatGroup | None":
        """Group gi's flat buffers if this step can use them: every parameter has a dense
        gradient, all share one dtype and device. Built on first use from the moments so far
        (zeros where a parameter has none yet, as the per-parameter path would create them);
        `exp_avg[i]` and `exp_avg_sq[i]` then become views of the flat moments."""
        if not self.flat or not params or any(p.grad is None or p.grad.is_sparse for p in params):
            return None
        flat = self._flat.get(gi)
        if flat is not None and len(flat.params) == len(params) and all(a is b for a, b in zip(flat.params, params)) \
                and (flat.m.dtype, flat.m.device) == (params[0].dtype, params[0].device):
            return flat
        if len({(p.dtype, p.device) for p in params}) != 1:
            return None
        flat = _FlatGroup(params, [self.exp_avg.get(i0 + j) for j in range(len(params))],
                          [self.exp_avg_sq.get(i0 + j) for j in range(len(params))])
        for j, (m, v) in enumerate(zip(flat.m_views, flat.v_views)):
            self.exp_avg[i0 + j], self.exp_avg_sq[i0 + j] = m, v
        self._flat[gi] = flat
        return flat


class _FlatGroup:
    """One parameter group's moments as flat buffers, and scratch space for its update."""

    def __init__(self, params: list[nn.Parameter], ms: list[Tensor | None], vs: list[Tensor | None]):
        self.params = list(params)
        p0 = params[0]
        sizes = [p.numel() for p in params]
        total = sum(sizes)

        def flat_of(parts: list[Tensor | None]) -> Tensor:
            return torch.cat([torch.zeros(n, dtype=p0.dtype, device=p0.device) if t is None else t.reshape(-1)
                              for t, n in zip(parts, sizes)])

        self.m, self.v = flat_of(ms), flat_of(vs)  # [total]
        self.m_views = [t.view_as(p) for t, p in zip(self.m.split(sizes), params)]
        self.v_views = [t.view_as(p) for t, p in zip(self.v.split(sizes), params)]
        self.grad, self.flat_p, self.denom = (torch.empty(total, dtype=p0.dtype, device=p0.device) for _ in range(3))
        self.p_views = [t.view_as(p) for t, p in zip(self.flat_p.split(sizes), params)]

    def step(self, decay: float, beta1: float, beta2: float, bc2_sqrt: float, eps: float, step_size: float) -> None:
        """torch's single-tensor AdamW step on the concatenation: the same ops in the same order."""
        torch.cat([p.grad.reshape(-1) for p in self.params], out=self.grad)
        torch.cat([p.reshape(-1) for p in self.params], out=self.flat_p)
        if decay != 1.0:  # p · 1.0 is p, bit for bit: skipped
            self.flat_p.mul_(decay)
        self.m.lerp_(self.grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        torch.sqrt(self.v, out=self.denom)
        self.denom.div_(bc2_sqrt).add_(eps)
        self.flat_p.addcdiv_(self.m, self.denom, value=-step_size)
        torch._foreach_copy_(self.params, self.p_views)


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> AdamW:
    return AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr for the update at `step` (0-based), as transformers'
    get_{linear,cosine}_schedule_with_warmup: linear warmup over round(warmup · total) steps,
    then linear (or half-cosine) decay to 0 at `total`, or constant."""
    warm = round(cfg.warmup * total)
    if step < warm:
        return step / max(1, warm)
    if cfg.decay == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if cfg.decay == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def set_lr(opt: AdamW, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def optimizer_tensors(opt: AdamW) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flat tensors `opt.{param index}.exp_avg[_sq]` and JSON-able facts to check on load."""
    tensors: dict[str, Tensor] = {}
    for i in sorted(opt.exp_avg):
        # clones: the moments may be views of one flat buffer, which safetensors refuses
        tensors[f"opt.{i}.exp_avg"] = opt.exp_avg[i].clone()
        tensors[f"opt.{i}.exp_avg_sq"] = opt.exp_avg_sq[i].clone()
    meta = {"type": "AdamW", "step_count": opt.step_count,
            "group_sizes": [len(g["params"]) for g in opt.param_groups]}
    return tensors, meta


def load_optimizer_tensors(opt: AdamW, tensors: dict[str, Tensor], meta: dict[str, Any], source: str) -> None:
    sizes = [len(g["params"]) for g in opt.param_groups]
    if meta.get("group_sizes") != sizes or meta.get("type") != "AdamW":
        raise UserError(f"{source} holds optimizer state for another model ({meta.get('group_sizes')} "
                        f"parameters per group, this model has {sizes}); it belongs to a different run")
    params = opt.params()
    exp_avg: dict[int, Tensor] = {}
    exp_avg_sq: dict[int, Tensor] = {}
    for key, v in tensors.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "opt" or parts[2] not in ("exp_avg", "exp_avg_sq") or not parts[1].isdigit():
            raise UserError(f"{source} has an unexpected entry {key!r}; it is not a HyenaLens resume state")
        i = int(parts[1])
        if i >= len(params) or v.shape != params[i].shape:
            raise UserError(f"{source}: optimizer state {i} does not fit this model's parameters; "
                            "it belongs to a different run")
        (exp_avg if parts[2] == "exp_avg" else exp_avg_sq)[i] = v.to(device=params[i].device, dtype=params[i].dtype)
    if set(exp_avg) != set(exp_avg_sq):
        raise UserError(f"{source} is incomplete (moments missing); delete the run directory and retrain")
    opt.exp_avg, opt.exp_avg_sq = exp_avg, exp_avg_sq
    opt._flat = {}  # rebuilt from the loaded moments at the next step
    opt.step_count = int(meta.get("step_count", 0))
