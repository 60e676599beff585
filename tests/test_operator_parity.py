"""HyenaOperator.from_safari reproduces safari's own outputs and input gradients."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models import HyenaOperator, UserError
from models.rundir.io import decode_metadata

OPERATOR_FIXTURES = ["hyena_o2_d32_defaults", "hyena_o2_d24_w10_emb5_L50", "hyena_o3_d16_L40"]


def _load(fixtures, name):
    path = fixtures / "operators" / f"{name}.safetensors"
    sd = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        kwargs = decode_metadata(f.metadata())
    return sd, kwargs


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", OPERATOR_FIXTURES)
def test_operator_matches_safari_output_and_grad(fixtures, name):
    sd, kwargs = _load(fixtures, name)
    x, out, grad = sd.pop("__input__"), sd.pop("__output__"), sd.pop("__input_grad__")
    op = HyenaOperator.from_safari(sd, **kwargs).eval()
    x = x.clone().requires_grad_(True)
    y = op(x)
    y.sum().backward()
    assert _rel(y.detach(), out) <= 1e-5
    assert _rel(x.grad, grad) <= 1e-5


def test_short_sequence_uses_truncated_filter(fixtures):
    # hyena_o2_d24_w10_emb5_L50 runs L = 50 < l_max = 64: the filter is cut to L
    sd, kwargs = _load(fixtures, "hyena_o2_d24_w10_emb5_L50")
    x = sd.pop("__input__")
    [sd.pop(k) for k in ("__output__", "__input_grad__")]
    op = HyenaOperator.from_safari(sd, **kwargs).eval()
    _, cache = _run_cached(op, x)
    assert cache["hook_filter"].shape == (1, 24, 50)
    assert op.l_max == 64 and not isinstance(op.filter_fn.pos_emb.z, torch.nn.Parameter)


def _run_cached(op, x):
    cache = {}
    hooks = []
    for name in op.hook_names():
        hp = getattr(op, name)
        hooks.append(hp.register_forward_hook(lambda m, i, o, n=name: cache.__setitem__(n, o)))
    try:
        y = op(x)
    finally:
        for h in hooks:
            h.remove()
    return y, cache


@pytest.mark.parametrize(
    "option, value",
    [("num_heads", 2), ("inner_factor", 2), ("num_blocks", 2), ("outer_mixing", True),
     ("post_order_ffn", True), ("fused_fft_conv", True), ("fused_bias_fc", True), ("jit_filter", True)],
)
def test_from_safari_refuses_unsupported_option_by_name(fixtures, option, value):
    sd, kwargs = _load(fixtures, "hyena_o2_d32_defaults")
    [sd.pop(k) for k in ("__input__", "__output__", "__input_grad__")]
    with pytest.raises(UserError) as e:
        HyenaOperator.from_safari(sd, **kwargs, **{option: value})
    assert option in str(e.value) and "\n" not in str(e.value)


def test_from_safari_refuses_unknown_option_and_wrong_shapes(fixtures):
    sd, kwargs = _load(fixtures, "hyena_o2_d32_defaults")
    [sd.pop(k) for k in ("__input__", "__output__", "__input_grad__")]
    with pytest.raises(UserError, match="filter_ordr"):
        HyenaOperator.from_safari(sd, **kwargs, filter_ordr=8)
    with pytest.raises(UserError, match=r"filter_fn.implicit_filter.0.bias has shape \(64,\), the model expects \(32,\)"):
        HyenaOperator.from_safari(sd, **{**kwargs, "filter_order": 32})


@pytest.mark.parametrize("option, value", [("emb_dim", 5), ("w", 3.0), ("num_inner_mlps", 1),
                                           ("modulate", False), ("normalized", True), ("bias", False),
                                           ("shift", 0.5), ("activation", "gelu"), ("target", 0.1)])
def test_every_math_kwarg_changes_the_output(option, value):
    """A kwarg that is honored changes the function (guards against silently ignoring it)."""
    torch.manual_seed(0)
    base = HyenaOperator(d_model=8, l_max=16, filter_order=8).eval()
    torch.manual_seed(0)
    other = HyenaOperator(d_model=8, l_max=16, filter_order=8, **{option: value}).eval()
    # copy the random weights only: freq (w), deltas (target) and pos_emb are set by the kwargs
    shared = {k: v for k, v in base.state_dict().items()
              if k in other.state_dict() and other.state_dict()[k].shape == v.shape
              and not any(s in k for s in ("freq", "deltas", "pos_emb"))}
    other.load_state_dict(shared, strict=False)
    x = torch.randn(2, 16, 8)
    assert not torch.allclose(base(x), other(x), atol=1e-7)


def test_dropout_is_applied_in_train_mode_only():
    torch.manual_seed(0)
    op = HyenaOperator(d_model=8, l_max=16, filter_order=8, dropout=0.5)
    x = torch.randn(2, 16, 8)
    assert not torch.equal(op.train()(x), op.train()(x))
    assert torch.equal(op.eval()(x), op.eval()(x))


def test_lr_pos_emb_selects_buffer_or_parameter():
    assert "filter_fn.pos_emb.z" in dict(HyenaOperator(8, 16, lr_pos_emb=1e-5).named_parameters())
    assert "filter_fn.pos_emb.z" not in dict(HyenaOperator(8, 16, lr_pos_emb=0.0).named_parameters())


def test_sequence_longer_than_l_max_is_refused():
    with pytest.raises(ValueError, match="l_max"):
        HyenaOperator(8, 16)(torch.randn(1, 17, 8))
