"""`run_with_cache` gives TransformerLens' ActivationCache on both model kinds, and TL's cache
tools compute the same quantities on Hyena as on attention (issue 17, "What to build" 2)."""
import pytest
import torch
import torch.nn.functional as F
from transformer_lens import ActivationCache

from models import HyenaLM, build_model
from models.data.vocab import encode, icl_vocab, mqar_vocab
from models.errors import UserError
from models.hyena.hooks import has_batch_axis
from tests.conftest import jitter_, tiny_hyena_config

KINDS = ["hyena-causal", "hyena-noncausal", "hyena-learned-pos", "attention-causal", "attention-noncausal"]
TOKENS = torch.randint(0, 10, (3, 16), generator=torch.Generator().manual_seed(0))


def _model(kind: str, order: int = 2):
    causal = not kind.endswith(("noncausal", "learned-pos"))
    if kind.startswith("hyena"):
        pos = 16 if kind == "hyena-learned-pos" else 0
        cfg = tiny_hyena_config(causal=causal, order=order, d_inner=12, max_position_embeddings=pos)
        return jitter_(build_model(cfg, seed=0)).eval()
    cfg = dict(kind="attention", vocab_size=10, d_model=8, n_layers=2, l_max=16, n_heads=2, causal=causal)
    return jitter_(build_model(cfg, seed=0)).eval()


def _cache(model, tokens=TOKENS, **kw):
    with torch.no_grad():
        return model.run_with_cache(tokens, **kw)


def _head(model):
    """(ln_final weight, ln_final bias, W_U [d, vocab], b_U [vocab]) of either kind."""
    if isinstance(model, HyenaLM):  # the tied head, no b_U
        return model.ln_final.weight, model.ln_final.bias, model.embed.weight.T, torch.zeros(model.cfg.vocab_size)
    return model.ln_final.w, model.ln_final.b, model.W_U, model.b_U


@pytest.mark.parametrize("kind", ["hyena-causal", "hyena-noncausal"])
def test_hyena_gives_an_activation_cache_that_still_reads_like_the_dict(kind):
    model = _model(kind)
    logits, cache = _cache(model)
    logits_d, plain = _cache(model, return_cache_object=False)
    assert isinstance(cache, ActivationCache) and type(plain) is dict
    torch.testing.assert_close(logits, logits_d, rtol=0, atol=0)
    assert list(cache.keys()) == list(plain) == model.hook_names()
    assert all(torch.equal(cache[k], plain[k]) for k in plain) and len(cache) == len(plain)
    assert dict(cache.items()).keys() == plain.keys()
    assert "blocks.0.hook_resid_post" in cache and "blocks.0.hook_attn_out" not in cache  # exact names
    assert torch.equal(cache.get("blocks.0.mixer.hook_filter"), plain["blocks.0.mixer.hook_filter"])
    assert (cache.get("blocks.0.mixer.hook_filter_rev") is None) == (kind == "hyena-causal")
    assert cache.get(("attn_out", -1)) is cache["blocks.1.hook_mixer_out"]
    assert cache.get("blocks.7.hook_resid_post", "absent") == "absent"
    # TL's model-config fields, and HyenaLM.cfg still equals the HyenaConfig it was built from
    assert (model.cfg.normalization_type, model.cfg.attn_only, model.cfg.d_mlp) == ("LN", False, 12)
    assert model.cfg == build_model(model.cfg.to_dict()).cfg and model.cfg.to_dict()["d_inner"] == 12


@pytest.mark.parametrize("kind", KINDS)
def test_key_lookup_by_name_and_layer(kind):
    model = _model(kind)
    _, cache = _cache(model)
    assert cache["resid_post", 0] is cache["blocks.0.hook_resid_post"]
    assert cache["resid_pre", -1] is cache["blocks.1.hook_resid_pre"]
    assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["normalized"] is cache["ln_final.hook_normalized"]
    mixer = "blocks.1.hook_mixer_out" if kind.startswith("hyena") else "blocks.1.hook_attn_out"
    assert cache["attn_out", 1] is cache[mixer] and cache["attn_out", -1] is cache[mixer]
    with pytest.raises(KeyError):
        cache["resid_post", 5]


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_resid_stacks_the_residual_hooks(kind):
    model = _model(kind)
    _, cache = _cache(model)
    stack, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre",
             "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    assert torch.equal(stack, torch.stack([cache[n] for n in names]))
    assert torch.equal(cache.accumulated_resid(layer=1, mlp_input=True),
                       torch.stack([cache[n] for n in names[:1] + names[2:4]]))
    # apply_ln: the logit lens' last entry is the final LayerNorm's output, affine map included
    w, b, _, _ = _head(model)
    with torch.no_grad():
        lensed = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(lensed[-1], cache["ln_final.hook_normalized"] * w + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_decompose_resid_components_sum_to_the_residual_stream(kind):
    model = _model(kind)
    _, cache = _cache(model)
    parts, labels = cache.decompose_resid(return_labels=True)
    pos = ["pos_embed"] if kind.startswith("attention") or kind == "hyena-learned-pos" else []
    assert labels == ["embed", *pos, "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    assert parts.shape == (len(labels), 3, 16, 8)
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], rtol=1e-5, atol=1e-5)
    attn_out = "blocks.0.hook_mixer_out" if kind.startswith("hyena") else "blocks.0.hook_attn_out"
    assert torch.equal(parts[labels.index("0_attn_out")], cache[attn_out])
    # the input to block 1's MLP: everything up to and including block 1's mixer / attention
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], rtol=1e-5, atol=1e-5)
    last = cache.decompose_resid(pos_slice=-1)  # [components, b, d]
    torch.testing.assert_close(last.sum(0), cache["resid_post", -1][:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_ln_to_stack_is_each_layernorm_before_its_affine_map(kind):
    model = _model(kind)
    logits, cache = _cache(model)
    final = cache.apply_ln_to_stack(cache["resid_post", -1][None], layer=-1)[0]
    torch.testing.assert_close(final, cache["ln_final.hook_normalized"], rtol=1e-5, atol=1e-5)
    w, b, W_U, b_U = _head(model)
    torch.testing.assert_close((final * w + b) @ W_U + b_U, logits, rtol=1e-4, atol=1e-4)
    for l in range(2):
        ln1 = cache.apply_ln_to_stack(cache["resid_pre", l][None], layer=l)[0]
        ln2 = cache.apply_ln_to_stack(cache["resid_mid", l][None], layer=l, mlp_input=True)[0]
        torch.testing.assert_close(ln1, cache[f"blocks.{l}.ln1.hook_normalized"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ln2, cache[f"blocks.{l}.ln2.hook_normalized"], rtol=1e-5, atol=1e-5)
        x = cache["resid_pre", l]
        want = (x.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(cache["scale", l, "ln1"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_logit_attrs_sum_to_the_logit_difference(kind):
    model = _model(kind)
    w, b, W_U, b_U = _head(model)
    if kind.startswith("attention"):
        # the bridge's residual directions are W_U's columns, without ln_final's weight (TL's
        # warning: exact only with LayerNorm folded), so keep that weight at 1 here
        with torch.no_grad():
            w.fill_(1.0)
    else:
        assert (w - 1).abs().max() > 0.05  # jittered: HyenaLM folds the weight into its directions
    logits, cache = _cache(model)
    good, bad = TOKENS[:, -1], (TOKENS[:, -1] + 3) % 10
    with torch.no_grad():
        parts = cache.decompose_resid(pos_slice=-1)  # [components, b, d]
        attrs = cache.logit_attrs(parts, tokens=good, incorrect_tokens=bad, pos_slice=-1)  # [components, b]
    diff = logits[:, -1].gather(1, good[:, None])[:, 0] - logits[:, -1].gather(1, bad[:, None])[:, 0]
    direction = W_U[:, good] - W_U[:, bad]  # [d, b]
    constant = b @ direction + b_U[good] - b_U[bad]  # the LN bias and unembed bias terms
    assert attrs.shape == (parts.shape[0], 3) and diff.abs().min() > 1e-3
    torch.testing.assert_close(attrs.sum(0) + constant, diff, rtol=1e-4, atol=1e-4)


def test_logit_attrs_take_token_strings_on_hyena():
    model = _model("hyena-causal")
    logits, cache = _cache(model)
    parts = cache.decompose_resid(pos_slice=-1)
    by_str = cache.logit_attrs(parts, tokens="3", incorrect_tokens="=>", pos_slice=-1)
    ids = encode("3 =>", icl_vocab(10))
    by_id = cache.logit_attrs(parts, tokens=ids[0], incorrect_tokens=ids[1], pos_slice=-1)
    torch.testing.assert_close(by_str, by_id, rtol=0, atol=0)
    constant = model.ln_final.bias @ (model.embed.weight[ids[0]] - model.embed.weight[ids[1]])
    torch.testing.assert_close(by_str.sum(0) + constant, logits[:, -1, ids[0]] - logits[:, -1, ids[1]],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_remove_batch_dim_on_batch_one(kind):
    model = _model(kind)
    _, cache = _cache(model, TOKENS[:1])
    before = {k: v.clone() for k, v in cache.items()}
    assert cache.remove_batch_dim() is cache and not cache.has_batch_dim
    _, at_run = _cache(model, TOKENS[:1], remove_batch_dim=True)
    assert list(at_run.keys()) == list(cache.keys())
    for k, v in cache.items():
        batched = before[k].dim() > 0 and before[k].shape[0] == 1 and (kind.startswith("attention") or has_batch_axis(k))
        assert torch.equal(v, before[k][0] if batched else before[k]), k
        assert torch.equal(at_run[k], v), k
    assert cache["resid_post", -1].shape == (16, 8)
    torch.testing.assert_close(cache.decompose_resid().sum(0), cache["resid_post", -1], rtol=1e-5, atol=1e-5)
    _, big = _cache(model)
    with pytest.raises(AssertionError, match="batch size 3"):
        big.remove_batch_dim()


def test_the_filter_hooks_keep_their_documented_exceptions():
    """Order 2: hook_filter is [1, d, L], whose leading 1 TL's generic rule would drop; order 3
    with batch 2: [2, d, L], which TL's batch slice would cut."""
    model = _model("hyena-learned-pos")
    _, cache = _cache(model, TOKENS[:1])
    filt, rev, pos = (cache[n].clone() for n in ("blocks.0.mixer.hook_filter", "blocks.0.mixer.hook_filter_rev",
                                                  "hook_pos_embed"))
    assert filt.shape == rev.shape == (1, 8, 16) and pos.shape == (16, 8)
    cache.remove_batch_dim()
    assert torch.equal(cache["blocks.0.mixer.hook_filter"], filt)
    assert torch.equal(cache["blocks.0.mixer.hook_filter_rev"], rev)
    assert torch.equal(cache["hook_pos_embed"], pos)
    o3 = _model("hyena-noncausal", order=3)
    _, cache = _cache(o3, TOKENS[:2])
    assert cache["blocks.1.mixer.hook_filter"].shape == (2, 8, 16)
    row = cache.apply_slice_to_batch_dim(1)
    assert isinstance(row, type(cache)) and not row.has_batch_dim
    assert torch.equal(row["blocks.1.mixer.hook_filter"], cache["blocks.1.mixer.hook_filter"])
    assert torch.equal(row["blocks.1.mixer.hook_v"], cache["blocks.1.mixer.hook_v"][1])
    assert row["attn_out", 0].shape == (16, 8)


def test_to_tokens_and_to_str_tokens_on_the_synthetic_vocabulary():
    model = _model("hyena-causal")
    assert model.vocab == icl_vocab(10)
    s = "3 1 => 7 . 0"
    tokens = model.to_tokens(s)
    assert tokens.dtype == torch.int64 and tokens.tolist() == [encode(s, icl_vocab(10))]
    assert model.to_str_tokens(tokens) == s.split() and model.to_str_tokens(s) == s.split()
    assert model.to_string(tokens[0]) == s and model.to_string(tokens) == [s]
    assert model.to_str_tokens([s, "=> 2"]) == [s.split(), ["=>", "2"]]
    assert model.to_tokens([s, s]).shape == (2, 6)
    assert model.to_single_token("=>") == 9 and model.to_single_token(".") == 0
    torch.testing.assert_close(model.tokens_to_residual_directions("=>"),
                               model.embed.weight[9] * model.ln_final.weight, rtol=0, atol=0)
    assert model.tokens_to_residual_directions(tokens).shape == (1, 6, 8)
    model.set_vocab(mqar_vocab(10))
    assert model.to_tokens(". 9 1").tolist() == [[0, 9, 1]] and model.to_str_tokens(torch.tensor([0, 9])) == [".", "9"]
    for bad in (lambda: model.to_tokens("1 x"), lambda: model.to_tokens("1", prepend_bos=True),
                lambda: model.to_tokens(["1", "1 2"]), lambda: model.to_single_token("1 2"),
                lambda: model.set_vocab(["a"] * 10), lambda: model.set_vocab(["a b"] + list("123456789")),
                lambda: model.set_vocab(icl_vocab(11))):
        with pytest.raises(UserError):
            bad()


def test_layer_norm_fast_path_is_untouched_and_hook_scale_is_its_divisor():
    model = _model("hyena-causal")
    ln, x = model.blocks[0].ln1, torch.randn(2, 16, 8)
    with torch.no_grad():
        fused = ln(x)
    assert torch.equal(fused, F.layer_norm(x, (8,), ln.weight, ln.bias, eps=ln.eps))  # bit-identical
    for grad in (False, True):  # the cheap no-gradient path and the differentiable one
        seen = {}
        ln.hook_scale.add_hook(lambda t, hook: seen.setdefault("scale", t))
        with torch.set_grad_enabled(grad):
            hooked = ln(x.clone().requires_grad_(grad))
        model.reset_hooks()
        assert seen["scale"].shape == (2, 16, 1) and seen["scale"].requires_grad == grad
        torch.testing.assert_close(hooked, fused, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(seen["scale"], (x.var(-1, keepdim=True, unbiased=False) + ln.eps).sqrt())


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("how", ["returned", "in place"])
def test_a_hook_that_edits_hook_scale_changes_the_normalization(grad, how):
    model = _model("hyena-causal")
    ln, x = model.ln_final, torch.randn(2, 16, 8)
    edit = (lambda t, hook: torch.full_like(t, 2.0)) if how == "returned" else (lambda t, hook: t.fill_(2.0))
    ln.hook_scale.add_hook(edit)
    with torch.set_grad_enabled(grad):
        out = ln(x.clone().requires_grad_(grad))
    model.reset_hooks()
    want = (x - x.mean(-1, keepdim=True)) / 2.0 * ln.weight + ln.bias
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_attention_baseline_speaks_the_task_vocabulary():
    """The bridge gets the same word-level vocabulary as HyenaLM: to_tokens / to_str_tokens /
    to_string round-trip the synthetic tokens, with no BOS, and ids match HyenaLM's."""
    from models import build_model
    from models.attention import set_vocab
    from models.data.vocab import mqar_vocab

    attn = build_model({"kind": "attention", "vocab_size": 10, "d_model": 16, "n_layers": 1, "l_max": 20}, seed=0)
    hyena = build_model({"kind": "hyena", "vocab_size": 10, "d_model": 8, "n_layers": 1, "l_max": 20}, seed=0)
    s = "1 5 2 6 => 1"
    ids = attn.to_tokens(s)
    assert ids.tolist() == [[2, 6, 3, 7, 9, 2]] and torch.equal(ids, hyena.to_tokens(s))
    assert attn.to_str_tokens(ids[0]) == s.split() and attn.to_string(ids[0]) == s
    set_vocab(attn, mqar_vocab(10))
    assert attn.to_str_tokens(torch.tensor([0, 3, 7])) == [".", "3", "7"]
    with pytest.raises(ValueError, match="one name per token id"):
        set_vocab(attn, ["a", "b"])
    assert attn.to_tokens("3 nope").tolist() == [[3, 10]]  # past the vocabulary: the model refuses it
    with pytest.raises(IndexError):
        attn(attn.to_tokens("3 nope"))
