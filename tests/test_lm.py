"""HyenaLM: safari parity, causality by perturbation, hooks as an API."""
import pytest
import torch
import yaml
from safetensors.torch import load_file

from models import HyenaLM, build_model
from models.hyena.operator import long_conv
from models.safari.conversion import load_state_dict
from tests.conftest import jitter_, tiny_hyena_config

TRAJ = "safari_ar_v10_l64_o2"


def test_from_safari_reproduces_expected_logits(fixtures):
    cfg = yaml.safe_load((fixtures / TRAJ / "config.yaml").read_text())
    sd = load_state_dict(fixtures / TRAJ / "step_001884.safetensors")
    model = HyenaLM.from_safari(sd, cfg["model"]).eval()
    expected = load_file(str(fixtures / TRAJ / "expected.safetensors"))
    with torch.no_grad():
        logits = model(expected["input_ids"])
    assert (logits - expected["logits"]).abs().max().item() <= 1e-5


def _input_grads(model, tokens, i):
    """|∂ logits_i / ∂ embedding_j| summed over channels, for every position j."""
    store = {}

    def keep(t, hook):
        t.retain_grad()
        store["e"] = t
        return t

    logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)])
    logits[0, i].sum().backward()
    return store["e"].grad[0].abs().sum(-1)


def _models(kind, causal, order=2):
    if kind == "hyena":
        return jitter_(build_model(tiny_hyena_config(order=order, causal=causal), seed=0)).eval()
    return build_model(dict(kind="attention", vocab_size=10, d_model=8, n_layers=2, l_max=16, causal=causal), seed=0).eval()


@pytest.mark.parametrize("kind, order", [("hyena", 2), ("hyena", 3), ("attention", None)])
def test_causal_model_has_no_gradient_from_the_future(kind, order):
    model = _models(kind, causal=True, order=order)
    tokens = torch.randint(0, 10, (1, 16), generator=torch.Generator().manual_seed(0))
    for i in (0, 5, 14):
        g = _input_grads(model, tokens, i)
        assert g[: i + 1].max() > 0
        assert g[i + 1:].max().item() <= 1e-6 * g[: i + 1].max().item()


@pytest.mark.parametrize("kind, order", [("hyena", 2), ("hyena", 3), ("attention", None)])
def test_noncausal_model_sees_the_future(kind, order):
    model = _models(kind, causal=False, order=order)
    tokens = torch.randint(0, 10, (1, 16), generator=torch.Generator().manual_seed(0))
    g = _input_grads(model, tokens, 5)
    assert g[6:].max().item() > 1e-3 * g[:6].max().item()


def _documented_shapes(b, L, d, d_inner, order, causal, n_layers):
    shapes = {"hook_embed": (b, L, d), "ln_final.hook_normalized": (b, L, d), "ln_final.hook_scale": (b, L, 1)}
    for l in range(n_layers):
        p = f"blocks.{l}."
        for n in ("hook_resid_pre", "hook_mixer_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
                  "ln1.hook_normalized", "ln2.hook_normalized"):
            shapes[p + n] = (b, L, d)
        shapes[p + "ln1.hook_scale"] = shapes[p + "ln2.hook_scale"] = (b, L, 1)
        shapes[p + "mlp.hook_pre"] = shapes[p + "mlp.hook_post"] = (b, L, d_inner)
        m = p + "mixer."
        shapes[m + "hook_in_proj"] = shapes[m + "hook_short"] = (b, L, (order + 1) * d)
        for i in range(order):
            shapes[m + f"hook_gate_{i}"] = (b, L, d)
        for o in range(order - 1):
            shapes[m + f"hook_conv_{o}"] = (b, L, d)
        shapes[m + "hook_v"] = shapes[m + "hook_y"] = (b, L, d)
        shapes[m + "hook_filter"] = (order - 1, d, L)
        if not causal:
            shapes[m + "hook_filter_rev"] = (order - 1, d, L)
    return shapes


@pytest.mark.parametrize("order, causal", [(2, True), (3, True), (2, False), (3, False)])
def test_every_documented_hook_is_cached_with_its_shape(order, causal):
    model = build_model(tiny_hyena_config(order=order, causal=causal, d_inner=12), seed=0).eval()
    tokens = torch.randint(0, 10, (3, 16))
    _, cache = model.run_with_cache(tokens)
    expected = _documented_shapes(3, 16, 8, 12, order, causal, 2)
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected


@pytest.mark.parametrize("causal", [True, False])
def test_hook_filter_is_the_filter_the_convolution_used(causal):
    model = jitter_(build_model(tiny_hyena_config(order=3, causal=causal), seed=0)).eval()
    _, cache = model.run_with_cache(torch.randint(0, 10, (2, 16)))
    mixer = model.blocks[1].mixer
    p = "blocks.1.mixer."
    h, D = cache[p + "hook_filter"], mixer.skip_bias()
    h_rev = cache.get(p + "hook_filter_rev")
    z = cache[p + "hook_v"]
    for o in range(2):
        z = z * cache[p + f"hook_gate_{2 - o}"]
        z = long_conv(z, h[o], D[o], None if h_rev is None else h_rev[o])
        torch.testing.assert_close(z, cache[p + f"hook_conv_{o}"], rtol=1e-6, atol=1e-6)
    if h_rev is not None:
        assert h_rev[:, :, 0].abs().max() == 0 and h_rev[:, :, 1:].abs().max() > 0


def test_editing_hook_filter_changes_the_convolution():
    model = jitter_(build_model(tiny_hyena_config(), seed=0)).eval()
    tokens = torch.randint(0, 10, (2, 16))
    clean = model(tokens)

    def zero_filter(h, hook):
        return torch.zeros_like(h)

    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_filter", zero_filter)])
    assert not torch.allclose(clean, ablated)
    assert all(not hp.has_hooks() for hp in model.hook_dict.values())
    torch.testing.assert_close(model(tokens), clean, rtol=0, atol=0)


def test_filter_hooks_ignore_batch_removal_and_pos_slice():
    model = build_model(tiny_hyena_config(causal=False), seed=0).eval()
    _, cache = model.run_with_cache(torch.randint(0, 10, (1, 16)), remove_batch_dim=True, pos_slice=-1)
    assert cache["blocks.0.mixer.hook_filter"].shape == (1, 8, 16)
    assert cache["blocks.0.mixer.hook_filter_rev"].shape == (1, 8, 16)
    assert cache["blocks.0.mixer.hook_v"].shape == (1, 8)  # last position, batch dropped
    assert cache["blocks.0.hook_resid_pre"].shape == (1, 8)


def test_build_is_deterministic_by_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(tiny_hyena_config(), seed=4)
    after = torch.rand(1)
    b = build_model(tiny_hyena_config(), seed=4)
    c = build_model(tiny_hyena_config(), seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_attention_baseline_pattern_hooks_and_directions():
    for causal in (True, False):
        m = build_model(dict(kind="attention", vocab_size=10, d_model=8, n_layers=2, l_max=16, causal=causal))
        _, cache = m.run_with_cache(torch.randint(0, 10, (2, 16)))
        pat = cache["blocks.1.attn.hook_pattern"]
        assert pat.shape == (2, 1, 16, 16)
        torch.testing.assert_close(pat.sum(-1), torch.ones(2, 1, 16))
        upper = torch.triu(torch.ones(16, 16, dtype=torch.bool), 1)
        assert (pat[..., upper].abs().max().item() == 0) == causal
        assert m.cfg.attention_dir == ("causal" if causal else "bidirectional")
