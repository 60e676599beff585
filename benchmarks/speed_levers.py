"""The training-speed issue's levers, each timed against what it replaces (or would replace):
rows for the "Levers" section (benchmarks/levers.py). Kept levers are timed through the model
itself with the lever switched off on one copy; dropped ones are timed with the code that
implemented them, which lives here and not in the model."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from benchmarks.reference import ReferenceAdamW
from benchmarks.timing import compare
from benchmarks.train_step import _cpp_twin, _step
from models.build import build_model
from models.training.optim import AdamW, param_groups


def _data(b: int, L: int, dev: str):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 10, (b, L), generator=g).to(dev), torch.randint(0, 10, (b, L), generator=g).to(dev)


def _model(d: int, L: int, dev: str):
    return build_model(dict(kind="hyena", vocab_size=10, d_model=d, n_layers=2, l_max=L), seed=0).to(dev).train()


class _MLPOneDNN(torch.autograd.Function):
    """Dropped lever: fc2(GELU_tanh(fc1(x))) with fc1 and the GELU as one oneDNN primitive
    (`mkldnn._linear_pointwise(..., "gelu", "tanh")`; torch's CPU GELU-tanh kernel costs more
    than fc1's matmul). `recompute`: the backward recomputes fc1's output instead of storing it;
    else the forward also runs fc1 alone to keep it."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, recompute: bool):
        x2 = x.reshape(-1, x.shape[-1])  # [b·L, d]
        act = torch.ops.mkldnn._linear_pointwise(x2, w1, b1, "gelu", [], "tanh")  # [b·L, d_inner]
        pre = None if recompute else torch.addmm(b1, x2, w1.t())
        ctx.save_for_backward(x2, w1, b1, w2, act, pre)
        ctx.shape = x.shape
        return torch.addmm(b2, act, w2.t()).view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x2, w1, b1, w2, act, pre = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # [b·L, d]
        if pre is None:
            pre = torch.addmm(b1, x2, w1.t())
        g_pre = torch.ops.aten.gelu_backward(g2 @ w2, pre, approximate="tanh")
        return (g_pre @ w1).view(ctx.shape), g_pre.t() @ x2, g_pre.sum(0), g2.t() @ act, g2.sum(0), None


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _cpp_rows(model, x, y, L: int, b: int, rounds: int, clock: str, add) -> None:
    """`model.kernels=cpp` (models/kernels) against the torch ops, on copies of `model`: the MLP,
    one operator, and the whole train step."""
    cpp = _cpp_twin(model)
    g = torch.Generator().manual_seed(3)
    d = model.cfg.d_model
    h = torch.randn(b, L, d, generator=g, requires_grad=True)
    gy = torch.randn(b, L, d, generator=g)

    def fb(m):
        return lambda: m(h).backward(gy)

    opt = "kept, opt-in (`model.kernels=cpp`: other bits)"
    t = compare({"torch": fb(model.blocks[0].mlp), "cpp": fb(cpp.blocks[0].mlp)}, rounds, warmup=1, clock=clock)
    add("MLP, model.kernels=cpp: fc1 bias-free, then bias + GELU-tanh in one compiled pass each way (bias "
        "gradient in the same pass) vs nn.Linear → GELU → nn.Linear", f"MLP fwd+bwd, {b * L} tokens", t, "torch",
        "cpp", opt)
    t = compare({"torch": fb(model.blocks[0].mixer), "cpp": fb(cpp.blocks[0].mixer)}, rounds, warmup=1, clock=clock)
    add("operator, model.kernels=cpp: the core's short conv one pass each way, gate products, skip term and "
        "zero padding folded into the FFTs' passes (models/kernels/gated.py) vs the one Function on torch ops",
        f"operator fwd+bwd, L={L}, b={b}", t, "torch", "cpp", opt)
    t = compare({"torch": _step(model, AdamW(param_groups(model, 0.1), lr=1e-3), x, y),
                 "cpp": _step(cpp, AdamW(param_groups(cpp, 0.1), lr=1e-3), x, y)}, rounds, warmup=1, clock=clock)
    add("train step, model.kernels=cpp (both of the above) vs torch", f"train step, L={L}, b={b}", t, "torch", "cpp",
        opt)


def rows(plan, dev: str, rounds: int, tick: Callable[[], None]) -> list[list[str]]:
    """One row per lever and size: [lever, setting, old ms, new ms, new / old, verdict]."""
    d, out = plan.d_model, []
    clock = "cpu" if dev == "cpu" else "wall"

    def add(lever, setting, t, old, new, verdict):
        out.append([lever, setting, f"{t.median(old) * 1e3:.2f}", f"{t.median(new) * 1e3:.2f}",
                    f"**{t.ratio(new, old):.2f}**", verdict])
        tick()

    for L, b in plan.step_lever_sizes:
        x, y = _data(b, L, dev)
        new = _model(d, L, dev)
        old = copy.deepcopy(new)
        for block in old.blocks:
            block.mixer._fused_ok = lambda: False  # the op-by-op hooked path
        t = compare({"old": _step(old, AdamW(param_groups(old, 0.1), lr=1e-3), x, y),
                     "new": _step(new, AdamW(param_groups(new, 0.1), lr=1e-3), x, y)},
                    rounds, warmup=1, device=dev, clock=clock)
        add("operator core as one Function (models/hyena/fused.py) vs op by op: fewer autograd nodes, "
            "no split/cat, gate products inside the FFT conv's passes", f"train step, L={L}, b={b}", t, "old", "new",
            "kept (bit-identical)")
        # AdamW: flat buffers vs one _foreach op per list vs a loop over parameters
        model = _model(d, L, dev)
        model(x).logsumexp(-1).mean().backward()
        groups = param_groups(model, 0.1)
        per_list = AdamW(groups, lr=1e-3)
        per_list.flat = False
        t = compare({"loop": ReferenceAdamW(groups, lr=1e-3).step, "lists": per_list.step,
                     "flat": AdamW(groups, lr=1e-3).step}, rounds * 2, warmup=1, device=dev, clock=clock)
        n = sum(len(g["params"]) for g in groups)
        add(f"AdamW: flat moments, one op per arithmetic step (ours) vs one _foreach op per list ({n} tensors)",
            "optimizer step", t, "lists", "flat", "kept (bit-identical to torch.optim.AdamW)")
        add("AdamW: one _foreach op per list vs a loop over parameters (torch's foreach=False)",
            "optimizer step", t, "loop", "lists", "kept earlier")
        # the MLP: oneDNN's fused fc1 + GELU-tanh (dropped)
        if dev == "cpu" and onednn_available():
            mlp = new.blocks[0].mlp
            h = torch.randn(b, L, d, generator=torch.Generator().manual_seed(1), requires_grad=True)
            gy = torch.randn(b, L, d, generator=torch.Generator().manual_seed(2))
            args = (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
            t = compare({"eager": lambda: mlp(h).backward(gy),
                         "recompute": lambda: _MLPOneDNN.apply(h, *args, True).backward(gy),
                         "store": lambda: _MLPOneDNN.apply(h, *args, False).backward(gy)},
                        rounds, warmup=1, device=dev, clock=clock)
            add("MLP: fc1 + GELU-tanh as one oneDNN primitive, backward recomputes fc1 (vs nn.Linear → "
                "GELU → nn.Linear)", f"MLP fwd+bwd, {b * L} tokens", t, "eager", "recompute",
                "dropped: no gain, and GELU bits differ")
            add("MLP: the same, fc1's output kept from the forward (a second fc1 matmul there)",
                f"MLP fwd+bwd, {b * L} tokens", t, "eager", "store", "dropped: GELU bits differ for this gain")
        if dev == "cpu":
            _cpp_rows(new, x, y, L, b, rounds, clock, add)
    # batched seeds: the bound of E seeds in one model, taken as one batch of E·b sequences
    L, b = plan.seeds_lever
    E = plan.seeds_E
    one, many = _model(d, L, dev), _model(d, L, dev)
    x1, y1 = _data(b, L, dev)
    xe, ye = _data(E * b, L, dev)
    step_one = _step(one, AdamW(param_groups(one, 0.1), lr=1e-3), x1, y1)

    def e_steps():
        for _ in range(E):
            step_one()

    t = compare({"separate": e_steps, "batched": _step(many, AdamW(param_groups(many, 0.1), lr=1e-3), xe, ye)},
                max(3, rounds // 2), warmup=1, device=dev, clock=clock)
    add(f"batched seeds, bound: one step on {E}·{b} sequences vs {E} steps on {b} (a stacked {E}-seed model "
        "does at least this work)", f"L={L}, E={E}, b={b}", t, "separate", "batched",
        "not built: see the note")
    return out
