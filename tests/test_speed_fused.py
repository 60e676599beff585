"""The training-speed levers change the speed, not the numbers: the operator's one-Function core
(models/hyena/fused.py) gives the op-by-op hooked path's outputs and gradients to the bit, and is
only taken when nothing can observe the difference; the flat AdamW (models/training/optim.py) is
torch.optim.AdamW's arithmetic to the bit, also across a save and reload of its state."""
from __future__ import annotations

import pytest
import torch

import models.hyena.operator as operator_mod
from models import build_model
from models.training.optim import AdamW, load_optimizer_tensors, optimizer_tensors, param_groups
from tests.conftest import jitter_, tiny_hyena_config

torch.set_num_threads(1)


def _count_fused(monkeypatch) -> list[int]:
    calls = [0]
    real = operator_mod.gated_conv

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(operator_mod, "gated_conv", counting)
    return calls


def _grads(model, tokens, hooked: bool):
    """Logits and every gradient (the parameters', and the residual stream's entering each
    mixer) of one backward; with `hooked`, a do-nothing hook on each layer's hook_y makes the
    operator run op by op."""
    model.zero_grad()
    grads = {}

    def keep_grad(t, hook):
        t.register_hook(lambda g: grads.__setitem__(hook.name, g.clone()))

    fwd = [(f"blocks.{i}.ln1.hook_normalized", keep_grad) for i in range(len(model.blocks))]
    if hooked:
        fwd += [(f"blocks.{i}.mixer.hook_y", lambda t, hook: None) for i in range(len(model.blocks))]
    out = model.run_with_hooks(tokens, fwd_hooks=fwd)
    out.square().sum().backward()
    grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out.detach(), grads


@pytest.mark.parametrize("causal, order, batch", [(True, 2, 3), (True, 3, 2), (False, 2, 3), (False, 3, 2),
                                                  (True, 2, 1)])
def test_fused_core_is_bit_identical_to_the_hooked_path(monkeypatch, causal, order, batch):
    calls = _count_fused(monkeypatch)
    model = jitter_(build_model(tiny_hyena_config(causal=causal, order=order), seed=0)).train()
    tokens = torch.randint(0, 10, (batch, 16), generator=torch.Generator().manual_seed(0))
    fused, g_fused = _grads(model, tokens, hooked=False)
    assert calls[0] == len(model.blocks)  # the fused core ran in every layer
    plain, g_plain = _grads(model, tokens, hooked=True)
    assert calls[0] == len(model.blocks)  # ... and not when a hook is attached
    assert torch.equal(fused, plain)
    assert g_fused.keys() == g_plain.keys() and len(g_fused) == len(list(model.parameters())) + len(model.blocks)
    for name in g_fused:
        assert torch.equal(g_fused[name], g_plain[name]), name


def test_fused_core_runs_only_when_nothing_can_see_the_difference(monkeypatch):
    calls = _count_fused(monkeypatch)
    model = build_model(tiny_hyena_config(), seed=0).train()
    x = torch.randn(2, 16, 8)
    op = model.blocks[0].mixer
    op(x)
    assert calls[0] == 1  # training, gradients on, hooks idle
    with torch.no_grad():
        op(x)  # no gradients: the eval path with cached filters
    handle = op.hook_gate_1.register_forward_hook(lambda m, i, o: None)
    op(x)
    handle.remove()
    op.dropout.p = 0.5
    op(x)  # dropout on the gated stream: safari's op-by-op order of draws
    op.eval()
    op(x)  # dropout does nothing in eval mode
    assert calls[0] == 2


def test_training_steps_are_bit_identical_with_and_without_the_fused_core():
    torch.manual_seed(0)
    a = jitter_(build_model(tiny_hyena_config(embed_dropout=0.1), seed=0)).train()
    b = jitter_(build_model(tiny_hyena_config(embed_dropout=0.1), seed=0)).train()
    for block in b.blocks:
        block.mixer._fused_ok = lambda: False
    opts = [AdamW(param_groups(m, 0.1), lr=1e-2) for m in (a, b)]
    tokens = torch.randint(0, 10, (4, 16), generator=torch.Generator().manual_seed(2))
    for step in range(3):
        for m, o in zip((a, b), opts):
            torch.manual_seed(step)  # the same dropout draws on both sides
            o.zero_grad()
            m(tokens).logsumexp(-1).mean().backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _torch_adamw(model, lr):
    groups = param_groups(model, 0.1)
    for g in groups:
        g.pop("name")
    return torch.optim.AdamW(groups, lr=lr, foreach=False)


def _run(pairs, x, steps, drop_at=None):
    for i in range(steps):
        for m, o in pairs:
            for g in o.param_groups:
                g["lr"] = 1e-2 * (i + 1) / steps
            o.zero_grad()
            m(x).logsumexp(-1).mean().backward()
            if i == drop_at:  # one parameter gets no gradient this step
                m.blocks[0].mlp.fc1.weight.grad = None
            o.step()


def test_flat_adamw_matches_torch_bit_for_bit():
    m1, m2 = (jitter_(build_model(tiny_hyena_config(), seed=0)) for _ in range(2))
    o1 = AdamW(param_groups(m1, 0.1), lr=1e-2)
    _run([(m1, o1), (m2, _torch_adamw(m2, 1e-2))], torch.randint(0, 10, (3, 12)), 4)
    assert o1._flat  # the flat buffers were used
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_flat_adamw_falls_back_to_the_per_list_path_for_a_missing_gradient():
    # torch.optim counts steps per parameter, HyenaLens per optimizer: the per-list path is the
    # reference here; the flat buffers must hand the moments over to it and take them back
    m1, m2 = (jitter_(build_model(tiny_hyena_config(), seed=0)) for _ in range(2))
    o1, o2 = AdamW(param_groups(m1, 0.1), lr=1e-2), AdamW(param_groups(m2, 0.1), lr=1e-2)
    o2.flat = False
    _run([(m1, o1), (m2, o2)], torch.randint(0, 10, (3, 12)), 5, drop_at=2)
    assert o1._flat and not o2._flat
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert all(torch.equal(o1.exp_avg_sq[i], o2.exp_avg_sq[i]) for i in o2.exp_avg_sq)


def test_flat_adamw_state_saves_as_separate_tensors_and_resumes_bit_identically():
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    x = torch.randint(0, 10, (3, 12), generator=torch.Generator().manual_seed(4))
    m1, m2 = (jitter_(build_model(tiny_hyena_config(), seed=0)) for _ in range(2))
    o1 = AdamW(param_groups(m1, 0.1), lr=1e-2)

    def step(m, o):
        o.zero_grad()
        m(x).logsumexp(-1).mean().backward()
        o.step()

    for _ in range(2):
        step(m1, o1)
    tensors, meta = optimizer_tensors(o1)
    blob = st_save(tensors)  # safetensors refuses tensors that share memory: these must not
    m2.load_state_dict(m1.state_dict())
    o2 = AdamW(param_groups(m2, 0.1), lr=1e-2)
    load_optimizer_tensors(o2, st_load(blob), meta, "test")
    for _ in range(2):
        step(m1, o1)
        step(m2, o2)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
