"""The GEMM floor of a HyenaLM training step: every `nn.Linear` of the model and the tied head,
forward and backward (input and weight gradients), with the step's own shapes, as `torch.mm`
into preallocated outputs. No step can be faster than its matrix products; the train table
reports the step over this floor, measured in the same run."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def gemm_shapes(model: nn.Module, batch: int, L: int) -> list[tuple[str, int, int, int]]:
    """(name, rows, in, out) of every matrix product of a step's forward: the block linears
    on batch·L rows, the implicit filters' linears on L rows (one row per lag), the head."""
    shapes = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            rows = L if "filter_fn" in name else batch * L
            shapes.append((name, rows, mod.in_features, mod.out_features))
    vocab, d = model.embed.weight.shape
    shapes.append(("head (tied)", batch * L, d, vocab))
    return shapes


def gemm_floor(model: nn.Module, batch: int, L: int, device: str = "cpu") -> Callable[[], None]:
    """A callable running the step's products once: per linear y = x Wᵀ (forward),
    gx = gy W (input gradient) and gW = gyᵀ x (weight gradient), on fixed random tensors."""
    g = torch.Generator().manual_seed(0)
    work = []
    for _, rows, fin, fout in gemm_shapes(model, batch, L):
        x, w, gy = (torch.randn(*s, generator=g).to(device) for s in ((rows, fin), (fout, fin), (rows, fout)))
        outs = (torch.empty(rows, fout, device=device), torch.empty(rows, fin, device=device),
                torch.empty(fout, fin, device=device))
        work.append((x, w, gy, outs))

    def run() -> None:
        for x, w, gy, (y, gx, gw) in work:
            torch.mm(x, w.t(), out=y)
            torch.mm(gy, w, out=gx)
            torch.mm(gy.t(), x, out=gw)
    return run


def gemm_flops(model: nn.Module, batch: int, L: int) -> float:
    """Floating-point operations of the floor: 3 products of 2·rows·in·out each per linear."""
    return sum(6.0 * rows * fin * fout for _, rows, fin, fout in gemm_shapes(model, batch, L))
