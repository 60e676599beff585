"""Run configs: presets, overrides, validation messages, resolution, optimizer and schedules."""
from __future__ import annotations

import math

import pytest
import torch

from models.training.schedule import CheckpointSchedule
from models.config.schema import (CheckpointConfig, ScheduleConfig, apply_overrides, config_diff, load_config, parse_yaml,
                           preset_names, read_config_source, resolve_config, validate_config)
from models.errors import UserError
from models.training.optim import AdamW, lr_factor, named_params, no_decay_names, param_groups

REQUIRED_PRESETS = [f"{t}_{r}" for t in ("ar", "ih") for r in (
    "causal_all", "causal_last", "noncausal_last", "attention_causal_all", "attention_bidirectional_last")] + [
    "mqar_causal_all", "quick_ar_causal_all", "quick_ar_causal_last", "quick_ar_noncausal_last",
    "quick_ar_attention_causal_all"]


def test_required_presets_exist_and_validate():
    names = preset_names()
    assert set(REQUIRED_PRESETS) <= set(names)
    for name in names:
        cfg = load_config(name)
        regime = name.removeprefix("quick_").split("_", 1)[1]
        assert cfg.loss == regime.rsplit("_", 1)[1]
        assert cfg.causal == ("noncausal" not in regime and "bidirectional" not in regime)
        assert cfg.model["kind"] == ("attention" if "attention" in regime else "hyena")


def test_ar_causal_all_is_the_safari_fixture_setup():
    cfg = load_config("ar_causal_all")
    d, m = cfg.data, cfg.model
    assert (d.task, d.vocab_size, d.input_seq_len, d.num_examples, d.num_test_examples) == ("ar", 10, 64, 5000, 500)
    assert (m["d_model"], m["n_layers"], m["order"], cfg.schedule.epochs, cfg.schedule.batch_size) == (64, 2, 2, 12, 32)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.schedule.warmup, cfg.schedule.decay) == (5e-4, 0.1, 0.1, "linear")


def test_preset_by_path_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 5e-4\nmodel:\n  d_model: 16\n")
    cfg = load_config(str(p), ["model.d_model=8", "optimizer.betas=[0.8, 0.9]", "data.seed=3", "loss=last"])
    assert cfg.optimizer.lr == 5e-4 and isinstance(cfg.optimizer.lr, float)  # YAML 1.1 would give a string
    assert cfg.model["d_model"] == 8 and cfg.optimizer.betas == [0.8, 0.9] and cfg.data.seed == 3
    assert cfg.loss == "last"


@pytest.mark.parametrize("raw, needle", [
    ({"bogus": 1}, "unknown config key bogus"),
    ({"model": {"d_modle": 8}}, "did you mean model.d_model"),
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr must be float"),
    ({"data": {"remove_overlap": "maybe"}}, "data.remove_overlap must be bool"),
    ({"data": {"num_examples": 2.5}}, "data.num_examples must be int"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr=-1"),
    ({"schedule": {"warmup": 1.5}}, "schedule.warmup=1.5 is out of range"),
    ({"schedule": {"decay": "step"}}, "schedule.decay='step'"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
    ({"data": {"task": "copy"}}, "data.task='copy'"),
    ({"model": {"kind": "rnn"}}, "model.kind='rnn' is unknown"),
    ({"model": {"emb_dim": 4}}, "model.emb_dim=4"),
    ({"model": {"kind": "attention", "d_model": 30, "n_heads": 4}}, "model.n_heads=4"),
    ({"loss": "first"}, "loss='first'"),
    ({"seed": -1}, "seed=-1"),
    ({"model": 3}, "model must be a mapping"),
    ({"checkpoints": {"steep": 0}}, "checkpoints.steep=0"),
])
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(UserError) as e:
        validate_config(raw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("model", [{"kind": "hyena", "causal": False}, {"kind": "attention", "causal": False}])
def test_noncausal_all_loss_is_an_invalid_regime(model):
    with pytest.raises(UserError, match="invalid regime.*leaks"):
        validate_config({"model": model, "loss": "all"})
    assert not validate_config({"model": model, "loss": "last"}).causal


def test_override_syntax_and_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["model.d_model"])
    with pytest.raises(UserError, match="not a section"):
        apply_overrides({"loss": "all"}, ["loss.x=1"])
    with pytest.raises(UserError, match="not valid YAML"):
        parse_yaml("model: [unclosed", "x")
    with pytest.raises(UserError, match="did you mean ar_causal_all"):
        read_config_source("ar_causl_all")
    with pytest.raises(UserError, match="does not exist"):
        read_config_source(str(tmp_path / "missing.yaml"))


def test_resolution_derives_model_keys_and_diffs_name_keys():
    cfg = resolve_config(validate_config({"seed": 4}), vocab_size=10, seq_len=66)
    assert (cfg.model["vocab_size"], cfg.model["l_max"], cfg.data.seed) == (10, 66, 4)
    assert cfg.model["d_inner"] == 4 * cfg.model["d_model"] and "filter_order" in cfg.model
    assert resolve_config(cfg, 10, 66).to_dict() == cfg.to_dict()  # idempotent
    with pytest.raises(UserError, match="model.l_max=8 is shorter than the sequence length 66"):
        resolve_config(validate_config({"model": {"l_max": 8}}), 10, 66)
    other = resolve_config(validate_config({"seed": 4, "optimizer": {"lr": 1e-3}}), 10, 66)
    assert config_diff(cfg, other) == ["optimizer.lr: 0.0005 -> 0.001"]


def _model(kind):
    from models import build_model

    extra = {"filter_order": 8, "embed_dropout": 0.0} if kind == "hyena" else {}
    return build_model({"kind": kind, "vocab_size": 10, "d_model": 8, "n_layers": 1, "l_max": 12, **extra}, seed=0)


@pytest.mark.parametrize("kind", ["hyena", "attention"])
def test_weight_decay_groups(kind):
    model = _model(kind)
    names = {n for n, _ in named_params(model)}
    assert not any("_original_component" in n for n in names)
    no = set(no_decay_names(model))
    for n, p in named_params(model):
        expect_no = p.ndim < 2 or "filter_fn" in n or "pos_emb" in n
        assert (n in no) == expect_no, n
    if kind == "hyena":
        assert any("filter_fn.implicit_filter.2.weight" in n for n in no)  # a 2-D filter weight
        assert "blocks.0.mixer.in_proj.weight" not in no
    else:
        assert "pos_embed.weight" in no and "blocks.0.attn.q.weight" not in no
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_adamw_matches_torch_bit_for_bit():
    m1, m2 = _model("hyena"), _model("hyena")
    g2 = param_groups(m2, 0.1)
    for g in g2:
        g.pop("name")
    o1, o2 = AdamW(param_groups(m1, 0.1), lr=1e-2), torch.optim.AdamW(g2, lr=1e-2, foreach=False)
    x = torch.randint(0, 10, (4, 12))
    for i in range(4):
        for m, o in ((m1, o1), (m2, o2)):
            for g in o.param_groups:
                g["lr"] = 1e-2 * (i + 1) / 4
            loss = m(x).logsumexp(-1).mean()
            o.zero_grad()
            loss.backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_lr_schedules():
    lin = ScheduleConfig(warmup=0.1, decay="linear")
    assert [lr_factor(s, 100, lin) for s in (0, 5, 10, 55, 100)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    cos = ScheduleConfig(warmup=0.1, decay="cosine")
    assert lr_factor(55, 100, cos) == pytest.approx(0.5) and lr_factor(100, 100, cos) == pytest.approx(0.0)
    assert lr_factor(90, 100, ScheduleConfig(warmup=0.0, decay="constant")) == 1.0
    assert math.isclose(lr_factor(3, 100, ScheduleConfig(warmup=0.0)), 0.97)


def test_checkpoint_schedule_plan_and_adaptive_rule():
    s = CheckpointSchedule(CheckpointConfig(log_count=5, every=10, dense_every=2, steep=0.05), total=100)
    assert s.planned[0] == 0 and s.planned[-1] == 100 and set(range(10, 101, 10)) <= set(s.planned)
    acc = {0: 0.0, 1: 0.0, 3: 0.0, 10: 0.0, 20: 0.01}
    for step, a in acc.items():
        s.observe(step, {"test_acc_last": a})
    assert not s.dense and s.next_after(20) == 30
    s.observe(30, {"test_acc_last": 0.2})  # +0.19 over the last 10 steps: steep
    assert s.dense and s.next_after(30) == 32
    for step in (32, 34, 36, 38, 40):
        s.observe(step, {"test_acc_last": 0.2 + 0.03 * (step - 30)})
        assert s.dense
    for step in (42, 44, 46, 48, 50, 52):
        s.observe(step, {"test_acc_last": 0.5})
    assert not s.dense and s.next_after(52) == 60  # calmed: back to the plan
    restored = CheckpointSchedule(s.cfg, 100)
    restored.load_state(s.state())
    assert restored.state() == s.state()
