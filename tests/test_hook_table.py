"""models/hyena/hooks.py's HOOKS: the docs' hook table, the models' hooks and shapes, the capture
defaults, and the operator's channel layout are all this one table."""
import re
from pathlib import Path

import pytest
import torch

from interp.decompose import conv_window
from models import build_model
from models.errors import UserError
from models.hyena.hooks import HOOKS, default_capture_hooks
from tests.conftest import jitter_, tiny_hyena_config

ROOT = Path(__file__).resolve().parents[1]


def _docs_rows() -> list[tuple[str, ...]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("\n## Hook names")
    end = text.find("\n## ", start + 1)
    lines = [ln.strip() for ln in text[start:end if end >= 0 else None].splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["hook", "shape", "models", "when", "capture", "meaning"]
    assert set(lines[1].replace("|", "")) == {"-"}
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        cells[0], cells[1] = cells[0].strip("`"), cells[1].strip("`")
        rows.append(tuple(cells))
    return rows


def test_the_docs_hook_table_is_the_hook_table():
    want = [(r.name, r.shape, r.models, r.when, r.capture, r.meaning) for r in HOOKS]
    have = _docs_rows()
    expected = "\n".join(f"| `{n}` | `{s}` | {m} | {w} | {c} | {t} |" for n, s, m, w, c, t in want)
    assert [r[:2] for r in have] == [r[:2] for r in want], f"docs/architecture.md should list:\n{expected}"
    assert have == want, f"docs/architecture.md should list:\n{expected}"


def test_the_table_is_well_formed():
    names = [r.name for r in HOOKS]
    assert len(set(names)) == len(names)
    for r in HOOKS:
        assert r.models in ("hyena", "attention", "hyena, attention")
        assert r.when in ("always", "non-causal", "learned positions")
        assert r.capture in ("yes", "no", "block 0")
        assert re.fullmatch(r"\[[^\[\]]+\]", r.shape) and r.meaning


def _row_of(name: str):
    """The one HOOKS row whose pattern matches `name`."""
    hits = [r for r in HOOKS
            if re.fullmatch(re.escape(r.name).replace(r"\{l\}", r"\d+").replace(r"\{i\}", r"\d+")
                            .replace(r"\{o\}", r"\d+"), name)]
    assert len(hits) == 1, (name, hits)
    return hits[0]


def _shape(row, **sizes) -> tuple[int, ...]:
    dims = row.shape[1:-1].split(", ")
    return tuple(int(eval(d.replace("·", "*").replace("−", "-"), {}, sizes)) for d in dims)


@pytest.mark.parametrize("order, causal, learned", [(2, True, False), (3, False, False), (2, False, True)])
def test_every_hyena_hook_is_a_row_with_its_shape_in_forward_order(order, causal, learned):
    over = dict(order=order, causal=causal, d_inner=12, max_position_embeddings=16 if learned else 0)
    model = build_model(tiny_hyena_config(**over), seed=0).eval()
    names = model.hook_names()
    assert len(set(names)) == len(names) and set(names) == set(model.hook_dict)
    assert ("hook_pos_embed" in names) == learned
    assert any(n.endswith("mixer.hook_filter_rev") for n in names) == (not causal)
    for l, block in enumerate(model.blocks):
        pre = f"blocks.{l}.mixer."
        assert [pre + n for n in block.mixer.hook_names()] == [n for n in names if n.startswith(pre)]
    fired = []
    hooks = [(n, lambda t, hook: fired.append(hook.name)) for n in names]
    with torch.no_grad():
        model.run_with_hooks(torch.randint(0, 10, (3, 16)), fwd_hooks=hooks)
        _, cache = model.run_with_cache(torch.randint(0, 10, (3, 16)))
    assert fired == names  # hook_names() is the forward order
    sizes = dict(b=3, L=16, d=8, N=order, d_inner=12)
    assert {n: tuple(t.shape) for n, t in cache.items()} == {n: _shape(_row_of(n), **sizes) for n in names}


def test_the_attention_baseline_has_its_rows_with_their_shapes():
    model = build_model(dict(kind="attention", vocab_size=10, d_model=8, n_layers=2, l_max=16, n_heads=2), seed=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randint(0, 10, (3, 16)))
    sizes = dict(b=3, L=16, d=8, heads=2, d_inner=32)
    rows = [r for r in HOOKS if "attention" in r.models.split(", ")]
    assert any(r.name.endswith("attn.hook_pattern") for r in rows)
    for r in rows:
        for name in [r.name.replace("{l}", str(l)) for l in range(2)] if "{l}" in r.name else [r.name]:
            assert tuple(cache[name].shape) == _shape(r, **sizes), name


def test_capture_defaults_come_from_the_table_in_capture_order():
    hy = build_model(tiny_hyena_config(order=3, causal=False), seed=0)
    m = lambda l, *ns: [f"blocks.{l}.mixer.{n}" for n in ns]
    per_layer = lambda l: ([f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_resid_post"]
                           + m(l, "hook_gate_0", "hook_gate_1", "hook_gate_2", "hook_v", "hook_y",
                               "hook_filter", "hook_filter_rev"))
    assert default_capture_hooks(hy) == ["blocks.0.hook_resid_pre"] + per_layer(0) + per_layer(1)
    causal = build_model(tiny_hyena_config(), seed=0)
    assert "blocks.0.mixer.hook_filter_rev" not in default_capture_hooks(causal)
    assert "blocks.0.mixer.hook_gate_2" not in default_capture_hooks(causal)
    att = build_model(dict(kind="attention", vocab_size=10, d_model=8, n_layers=2, l_max=16), seed=0)
    assert default_capture_hooks(att) == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern",
        "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]


@pytest.mark.parametrize("causal, k", [(True, 3), (False, 3), (True, 4), (False, 5)])
def test_the_exposed_layout_is_what_the_forward_uses(causal, k):
    model = jitter_(build_model(tiny_hyena_config(order=3, causal=causal, short_filter_order=k), seed=0)).eval()
    op = model.blocks[1].mixer
    lay = op.layout()
    assert (lay.d, lay.order, lay.kernel) == (8, 3, k)
    assert lay.pad == (k - 1 if causal else (k - 1) // 2)
    assert conv_window(model, 1) == (lay.kernel, lay.pad)
    assert lay.blocks == ("gate_0", "gate_1", "gate_2", "v")
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randint(0, 10, (2, 16)))
    pre = "blocks.1.mixer."
    u, short = cache[pre + "hook_in_proj"].double(), cache[pre + "hook_short"].double()  # [b, L, 4d]
    L = u.shape[1]
    for name in lay.blocks:
        rows = lay.block(name)
        assert torch.equal(cache[pre + f"hook_{name}"], cache[pre + "hook_short"][..., rows])  # the gate order
        taps, bias = (t.detach().double() for t in op.short_taps(name))  # [d, k], [d]
        assert taps.shape == (8, k) and bias.shape == (8,)
        x = u[..., rows]  # [b, L, d]
        # stream position t reads inputs t − pad … t − pad + k − 1 (zero outside 0 … L−1)
        want = bias.expand_as(x).clone()
        for t in range(L):
            for m in range(k):
                s = t - lay.pad + m
                if 0 <= s < L:
                    want[:, t] += taps[:, m] * x[:, s]
        torch.testing.assert_close(short[..., rows], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="no channel block"):
        lay.block("x0")
