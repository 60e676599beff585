"""Compiled CPU kernels for the training step: `model.kernels=cpp` (opt-in; default `torch`).

Why hand-written: a HyenaLens training step on CPU spends most of its non-matmul time in
elementwise passes that eager PyTorch runs one op at a time over the same tensor (BENCHMARKS.md,
"What bounds the targets"), and `torch.compile` gave no gain on them (inductor generates no code
through the operator's complex FFT ops, and on LayerNorm + MLP alone it measured 1.00-1.03x).
So the passes the step's profile names get C++ loops (models/kernels/cpu.cpp):

- the MLP's fc1 bias + GELU-tanh, forward and backward, the bias gradient summed in the same
  pass (`bias_gelu`), after a bias-free matmul: no bias broadcast copy, no separate GELU pass;
- the operator core (models/kernels/gated.py, called by models/hyena/fused.py): the short
  depthwise conv in one pass each way (its weight and bias gradients in the backward's pass),
  and each gate product, skip term and zero padding folded into the pass before or after an FFT.

What changes and what does not:
- The kernels run only in a training step: train mode, gradients on, and no hook attached to the
  MLP or the operator core. Evaluation, capture, attribution (eval mode) and every hooked forward
  run torch's ops, so interp reads the same function of the weights in both modes.
- Their results differ from torch's kernels in the last bits (tanh through expf, other sum
  orders), so a run trained with `cpp` has other weights than one with `torch`; it is its own
  config (the key goes into config.yaml and its hash), deterministic by seed on one machine.
- The module is compiled on first use for the CPU it runs on (`-march=native`; about 30 s;
  cached by torch under `TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), which needs
  g++ and ninja. It is a CPU path: a CUDA tensor gets a one-line error.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.errors import UserError

SOURCE = Path(__file__).with_name("cpu.cpp")
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd")  # compile only: the link has no
# -ffast-math, whose crtfastmath.o would switch the whole process to flush denormals to zero


def _cpu_tag() -> str:
    """What `-march=native` compiles for: the CPU's feature flags (Linux), else its name."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return flags or platform.processor() or platform.machine()


def module_name() -> str:
    """The extension's name: one build per CPU feature set and flag set."""
    key = " ".join((_cpu_tag(), *CFLAGS, torch.__version__))
    return "hyenalens_cpu_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def load():
    """The compiled module, built on first use (a line on stderr says so) and cached by torch."""
    from torch.utils import cpp_extension  # optional heavy dependency: only model.kernels=cpp needs it

    # pip's ninja sits beside the interpreter, which need not be on PATH (`.venv/bin/python -m ...`)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    name = module_name()
    try:
        built = Path(cpp_extension._get_build_directory(name, verbose=False), f"{name}.so").exists()
    except Exception:  # a private helper: only decides whether to print the line below
        built = False
    if not built:
        print("model.kernels=cpp: compiling HyenaLens' C++ kernels for this CPU (once, about 30 s)",
              file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(name, [str(SOURCE)], extra_cflags=list(CFLAGS), verbose=False)
    except Exception as e:  # compiler or ninja missing, or a failed build: say which, once
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.kernels=cpp could not build its C++ kernels ({first}); they need g++ and "
                        "ninja (pip install ninja); or train with model.kernels=torch") from None


def check_cpu(x: Tensor) -> None:
    if x.device.type != "cpu":
        raise UserError(f"model.kernels=cpp runs on the CPU only, and this tensor is on {x.device}; "
                        "use model.kernels=torch on a GPU")


class _BiasGelu(torch.autograd.Function):
    """GELU-tanh(x·W1ᵀ + b1): a bias-free matmul, then one pass for bias + GELU; the backward
    is one pass for GELU' and the bias gradient, then the two matmuls."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # [M, d_model]
        pre = x2 @ w.t()  # [M, d_inner]; becomes x2·W1ᵀ + b1 in place
        y = load().bias_gelu_forward(pre, b)
        ctx.save_for_backward(x2, w, pre)
        return y.view(*x.shape[:-1], w.shape[0])  # [..., d_inner]

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x2, w, pre = ctx.saved_tensors
        gpre, gb = load().bias_gelu_backward(g.reshape(pre.shape).contiguous(), pre)  # [M, d_inner], [d_inner]
        gx = (gpre @ w).view(*g.shape[:-1], w.shape[1]) if ctx.needs_input_grad[0] else None
        gw = gpre.t() @ x2 if ctx.needs_input_grad[1] else None
        return gx, gw, gb if ctx.needs_input_grad[2] else None


def bias_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """`F.gelu(F.linear(x, weight, bias), approximate="tanh")` for x [..., d_model], by the kernels."""
    check_cpu(x)
    return _BiasGelu.apply(x, weight, bias)


def short_conv_forward(z: Tensor, wt: Tensor, bias: Tensor | None, pad: int) -> Tensor:
    """models.hyena.fftconv `_short_fwd`'s result by one kernel pass (z [b, L, C], wt [k, C])."""
    check_cpu(z)
    return load().short_conv_forward(z.contiguous(), wt.contiguous(), bias, pad)


def short_conv_backward(g: Tensor, z: Tensor, wt: Tensor, pad: int, need_z: bool, need_w: bool,
                        need_b: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """models.hyena.fftconv `short_conv_backward`'s (∂z, ∂wt, ∂bias) by one kernel pass."""
    gz, gw, gb = load().short_conv_backward(g.contiguous(), z.contiguous(), wt.contiguous(), pad)
    return gz if need_z else None, gw if need_w else None, gb if need_b else None
