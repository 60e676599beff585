"""`model.kernels=cpp`: the compiled CPU kernels (models/kernels) compute what the torch ops do,
to float32 accuracy, are used where they should be and nowhere else, give bit-identical runs by
seed and across resume, and refuse bad input in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models.kernels as kernels
from models.build import build_model
from models.config import config_hash, load_config
from models.errors import UserError
from models.hyena.fftconv import _short_fwd, circular_kernel, fft_size, short_conv_backward
from models.hyena.fused import gated_conv
from models.training.loop import train
from tests.conftest import jitter_, tiny_hyena_config
from tests.test_train import weights

REPO = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_loading_the_kernels_keeps_denormals():
    # -ffast-math at link time would pull in crtfastmath.o, which sets flush-to-zero for the process
    kernels.load()
    assert (torch.tensor(1e-40) * 1.0).item() > 0


def test_bias_gelu_is_as_accurate_as_torch_against_float64():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g) for s in ((5, 7, 16), (24, 16), (24,)))
    gy = torch.randn(5, 7, 24, generator=g)

    def grads(f, *args):
        args = [a.detach().clone().requires_grad_() for a in args]
        y = f(*args)
        y.backward(gy.to(y.dtype))
        return [y.detach(), *(a.grad for a in args)]

    def torch_path(x, w, b):
        return F.gelu(F.linear(x, w, b), approximate="tanh")

    exact = grads(torch_path, x.double(), w.double(), b.double())
    ours = grads(kernels.bias_gelu, x, w, b)
    theirs = grads(torch_path, x, w, b)
    for name, e, o, t in zip(("y", "x", "w", "b"), exact, ours, theirs):
        err_ours, err_torch = (o.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert err_ours <= 4 * err_torch + 1e-6, (name, err_ours, err_torch)


@pytest.mark.parametrize("k,pad,bias", [(3, 2, True), (3, 1, True), (5, 2, False), (3, 0, True)])
def test_short_conv_kernel_matches_the_torch_ops(k, pad, bias):
    g = torch.Generator().manual_seed(k + pad)
    z, gy = torch.randn(3, 11, 24, generator=g), torch.randn(3, 11, 24, generator=g)
    wt, sb = torch.randn(k, 24, generator=g), torch.randn(24, generator=g) if bias else None
    assert _rel(kernels.short_conv_forward(z, wt, sb, pad), _short_fwd(z, wt, sb, pad)) < 1e-6
    want = short_conv_backward(gy, z, wt, pad, True, True, bias)
    got = kernels.short_conv_backward(gy, z, wt, pad, True, True, bias)
    for a, b in zip(got[:2], want[:2]):
        assert _rel(a, b) < 1e-5
    assert (got[2] is None) == (not bias) and (not bias or _rel(got[2], want[2]) < 1e-5)


@pytest.mark.parametrize("order,causal,batch", [(2, True, 3), (3, True, 2), (2, False, 1), (3, False, 2)])
def test_the_fused_core_matches_the_torch_core(order, causal, batch):
    g = torch.Generator().manual_seed(order * 10 + batch)
    d, L = 8, 13
    n = fft_size(L)
    h = torch.randn(order - 1, d, L, generator=g)
    k = circular_kernel(h, None if causal else torch.randn(order - 1, d, L, generator=g), n)
    pad = 2 if causal else 1
    leaves = [torch.randn(batch, L, (order + 1) * d, generator=g), torch.randn(3, (order + 1) * d, generator=g),
              torch.randn((order + 1) * d, generator=g), k, torch.randn(order - 1, d, generator=g)]
    gy = torch.randn(batch, L, d, generator=g)
    out = {}
    for cpp in (False, True):
        args = [a.detach().clone().requires_grad_() for a in leaves]
        y = gated_conv(*args[:5], pad, cpp=cpp)
        y.backward(gy)
        out[cpp] = [y.detach(), *(a.grad for a in args)]
    for name, a, b in zip(("y", "u", "wt", "bias", "k", "D"), out[True], out[False]):
        assert _rel(a, b) < 2e-6, name


def _step_grads(model, x, y):
    model.zero_grad()
    torch.manual_seed(5)  # the same embedding-dropout mask on both sides
    logits = model(x)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("causal", [True, False])
def test_a_cpp_model_trains_the_same_function_and_evaluates_with_the_torch_ops(causal, monkeypatch):
    cfg = tiny_hyena_config(causal=causal, order=3, embed_dropout=0.1)
    ref = jitter_(build_model(cfg, seed=0)).train()
    cpp = jitter_(build_model({**cfg, "kernels": "cpp"}, seed=0)).train()
    x, y = torch.randint(0, 10, (4, 16)), torch.randint(0, 10, (4, 16))
    (la, ga), (lb, gb) = _step_grads(ref, x, y), _step_grads(cpp, x, y)
    assert _rel(lb, la) < 1e-5
    assert all(_rel(gb[n], ga[n]) < 1e-4 for n in ga)
    # evaluation and every hooked forward run torch's ops: the same bits as the torch model
    with torch.no_grad():
        assert torch.equal(cpp.eval()(x), ref.eval()(x))
    logits, cache = cpp.run_with_cache(x)
    assert torch.equal(logits, ref.run_with_cache(x)[0]) and "blocks.0.mlp.hook_pre" in cache
    # and the training forward does go through the kernels (take them away: it fails; torch does not)
    def gone():
        raise RuntimeError("kernels taken away")

    cpp.train(), ref.train()
    with monkeypatch.context() as m:  # the operator core's kernels
        m.setattr("models.kernels.gated.load", gone)
        with pytest.raises(RuntimeError, match="kernels taken away"):
            cpp(x)
    monkeypatch.setattr(kernels, "load", gone)  # and the MLP's (the core's are gone as well)
    for block in cpp.blocks:
        block.mixer.kernels = "torch"
    with pytest.raises(RuntimeError, match="kernels taken away"):
        cpp(x)
    ref(x)


def _tiny_run(**model) -> dict:
    return {"seed": 0, "loss": "all",
            "model": {"kind": "hyena", "d_model": 16, "n_layers": 2, "filter_order": 16, **model},
            "data": {"task": "ar", "vocab_size": 10, "input_seq_len": 16, "num_examples": 512, "num_test_examples": 64},
            "optimizer": {"lr": 3e-3}, "schedule": {"steps": 40, "batch_size": 16, "decay": "constant"},
            "checkpoints": {"log_count": 2, "every": 10, "dense_every": 5}, "eval": {"train_subset": 64}}


def test_cpp_runs_are_bit_identical_by_seed_and_across_resume(tmp_path):
    cfg = _tiny_run(kernels="cpp")
    train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "again", quiet=True)
    first = train(cfg, tmp_path / "part", quiet=True, max_steps=15)
    assert not first.finished
    train(cfg, tmp_path / "part", quiet=True)
    full = weights(tmp_path / "full")
    for other in ("again", "part"):
        w = weights(tmp_path / other)
        assert w.keys() == full.keys() and all(torch.equal(w[k], full[k]) for k in full), other
    # its own config: other bits than the torch run, and the key in config.yaml
    train(_tiny_run(), tmp_path / "torch", quiet=True)
    plain = weights(tmp_path / "torch")
    assert any(not torch.equal(plain[k], full[k]) for k in full)
    assert "kernels: cpp" in (tmp_path / "full" / "config.yaml").read_text()
    assert "kernels" not in (tmp_path / "torch" / "config.yaml").read_text()


def test_the_default_keeps_configs_and_hashes_of_runs_before_the_key():
    plain, explicit = load_config("quick_ar_causal_all"), load_config("quick_ar_causal_all", ["model.kernels=torch"])
    assert "kernels" not in plain.to_dict()["model"]
    assert config_hash(plain) == config_hash(explicit)
    assert config_hash(load_config("quick_ar_causal_all", ["model.kernels=cpp"])) != config_hash(plain)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"model.kernels.*one of torch, cpp"):
        load_config("quick_ar_causal_all", ["model.kernels=fast"])
    with pytest.raises(UserError, match="CPU only.*model.kernels=torch"):
        kernels.bias_gelu(torch.zeros(2, 4, device="meta"), torch.zeros(3, 4), torch.zeros(3))
    res = subprocess.run([sys.executable, "-m", "hyenalens", "train", "quick_ar_causal_all", "model.kernels=fast",
                          "--out", str(tmp_path / "run"), "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "model.kernels" in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_failed_build_names_what_it_needs_before_the_run_is_written(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", fail)
    kernels.load.cache_clear()
    try:
        with pytest.raises(UserError, match=r"could not build.*Ninja is required.*g\+\+ and ninja.*model.kernels=torch"):
            kernels.load()
        with pytest.raises(UserError, match="could not build"):
            train(_tiny_run(kernels="cpp"), tmp_path / "run", quiet=True)
        assert not (tmp_path / "run").exists()
    finally:
        kernels.load.cache_clear()
