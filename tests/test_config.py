"""Run configs: presets, overrides, validation messages, resolution, optimizer and schedules."""
from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from models.build import build_model
from models.config.model import SAFARI_OPERATOR_DEFAULTS, SYNTHETICS_DEFAULTS, AttentionConfig, HyenaConfig
from models.hyena.operator import HyenaOperator
from models.safari.conversion import _OPERATOR_MATH, lm_config_from_safari
from models.training.schedule import CheckpointSchedule
from models.config import (CheckpointConfig, ScheduleConfig, apply_overrides, config_diff, config_hash, config_yaml,
                           load_config, model_build_dict, parse_yaml, preset_names, read_config_source, resolve_config,
                           validate_config)
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
        assert cfg.model.kind == ("attention" if "attention" in regime else "hyena")


def test_ar_causal_all_is_the_safari_fixture_setup():
    cfg = load_config("ar_causal_all")
    d, m = cfg.data, cfg.model
    assert (d.task, d.vocab_size, d.input_seq_len, d.num_examples, d.num_test_examples) == ("ar", 10, 64, 5000, 500)
    assert (m.d_model, m.n_layers, m.order, cfg.schedule.epochs, cfg.schedule.batch_size) == (64, 2, 2, 12, 32)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.schedule.warmup, cfg.schedule.decay) == (5e-4, 0.1, 0.1, "linear")


def test_preset_by_path_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 5e-4\nmodel:\n  d_model: 16\n")
    cfg = load_config(str(p), ["model.d_model=8", "optimizer.betas=[0.8, 0.9]", "data.seed=3", "loss=last"])
    assert cfg.optimizer.lr == 5e-4 and isinstance(cfg.optimizer.lr, float)  # YAML 1.1 would give a string
    assert cfg.model.d_model == 8 and cfg.optimizer.betas == [0.8, 0.9] and cfg.data.seed == 3
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
    assert (cfg.model.vocab_size, cfg.model.l_max, cfg.data.seed) == (10, 66, 4)
    assert cfg.model.d_inner == 4 * cfg.model.d_model and "filter_order" in cfg.to_dict()["model"]
    assert resolve_config(cfg, 10, 66).to_dict() == cfg.to_dict()  # idempotent
    with pytest.raises(UserError, match="model.l_max=8 is shorter than the sequence length 66"):
        resolve_config(validate_config({"model": {"l_max": 8}}), 10, 66)
    other = resolve_config(validate_config({"seed": 4, "optimizer": {"lr": 1e-3}}), 10, 66)
    assert config_diff(cfg, other) == ["optimizer.lr: 0.0005 -> 0.001"]


# The resolved config.yaml and config_hash, byte for byte as the untyped (dict) model config
# wrote them: a run directory's format, and the hash every checkpoint and index carries.
RESOLVED_YAML = {
    "ar_causal_all": ("f763d446229f2d42", """\
seed: 0
loss: all
model: {kind: hyena, causal: true, activation: id, d_inner: 256, d_model: 64, dropout: 0.0,
  emb_dim: 5, embed_dropout: 0.1, fast_decay_pct: 0.3, filter_bias: true, filter_dropout: 0.0,
  filter_order: 64, initializer_range: 0.02, l_max: 66, layer_norm_epsilon: 1.0e-05,
  lr_pos_emb: 0.0, max_position_embeddings: 0, modulate: true, modulation_lr: 0.0,
  n_layers: 2, normalized: false, num_inner_mlps: 2, order: 2, resid_dropout: 0.0,
  shift: 0.0, short_filter_order: 3, slow_decay_pct: 1.5, target: 0.01, vocab_size: 10,
  w: 10.0}
data: {task: ar, vocab_size: 10, input_seq_len: 64, num_examples: 5000, num_test_examples: 500,
  num_kv_pairs: 8, remove_overlap: false, fresh_samples: false, seed: 0}
optimizer:
  lr: 0.0005
  weight_decay: 0.1
  betas: [0.9, 0.999]
schedule: {epochs: 12, steps: null, batch_size: 32, warmup: 0.1, decay: linear}
checkpoints: {log_count: 30, every: null, adaptive: true, dense_every: null, steep: 0.05}
eval: {train_subset: 1000, test_subset: null}
"""),
    "ar_attention_bidirectional_last": ("3dc266344dbbf5ef", """\
seed: 0
loss: last
model: {kind: attention, causal: false, d_inner: 256, d_model: 64, l_max: 66, n_heads: 1,
  n_layers: 2, vocab_size: 10}
data: {task: ar, vocab_size: 10, input_seq_len: 64, num_examples: 5000, num_test_examples: 500,
  num_kv_pairs: 8, remove_overlap: false, fresh_samples: false, seed: 0}
optimizer:
  lr: 0.0005
  weight_decay: 0.1
  betas: [0.9, 0.999]
schedule: {epochs: 12, steps: null, batch_size: 32, warmup: 0.1, decay: linear}
checkpoints: {log_count: 30, every: null, adaptive: true, dense_every: null, steep: 0.05}
eval: {train_subset: 1000, test_subset: null}
"""),
}


@pytest.mark.parametrize("preset", sorted(RESOLVED_YAML))
def test_resolved_config_yaml_and_hash_are_pinned(preset):
    digest, text = RESOLVED_YAML[preset]
    cfg = resolve_config(load_config(preset), vocab_size=10, seq_len=66)
    assert config_yaml(cfg) == text and config_hash(cfg) == digest
    assert model_build_dict(cfg) == cfg.to_dict()["model"] == yaml.safe_load(text)["model"]
    assert list(cfg.to_dict()["model"])[:2] == ["kind", "causal"]
    # a stored config.yaml (an existing run directory) loads to the same typed config
    stored = resolve_config(validate_config(parse_yaml(text, "config.yaml")), 3, 3, check=False)
    assert isinstance(stored.model, HyenaConfig if preset == "ar_causal_all" else AttentionConfig)
    assert stored == cfg and config_yaml(stored) == text and config_hash(stored) == digest


def test_build_model_takes_the_typed_config_or_a_flat_dict():
    cfg = resolve_config(load_config("quick_ar_causal_all", ["model.n_layers=1", "model.d_model=8"]), 10, 18)
    typed, flat = build_model(cfg.model, seed=3), build_model(cfg.model.to_dict(), seed=3)
    assert typed.cfg == cfg.model and typed.cfg is not cfg.model
    assert all(torch.equal(a, b) for a, b in zip(typed.state_dict().values(), flat.state_dict().values()))
    # unresolved (vocab_size, l_max still None) builds like a flat dict without them: class defaults
    unresolved = build_model(load_config("quick_ar_causal_all").model, seed=0)
    assert (unresolved.cfg.vocab_size, unresolved.cfg.l_max) == (HyenaConfig().vocab_size, HyenaConfig().l_max)


def test_validating_a_config_imports_neither_torch_nor_transformer_lens():
    code = ("import sys; from models.config.source import load_config; cfg = load_config('ar_causal_all');"
            "from models.config.schema import config_keys, resolve_config, validate_config;"
            "from models.config.source import read_config_source;"
            "[validate_config(read_config_source(p)[0]) for p in ('ar_attention_causal_all', 'quick_ar_noncausal_last')];"
            "resolve_config(cfg, 10, 66); config_keys('attention');"
            "print(type(cfg.model).__name__, [m for m in ('torch', 'transformer_lens') if m in sys.modules])")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HyenaConfig []"


def test_each_default_set_has_one_table():
    sig = inspect.signature(HyenaOperator.__init__).parameters
    assert {k: p.default for k, p in sig.items() if p.default is not p.empty} == dict(SAFARI_OPERATOR_DEFAULTS)
    assert {f.name: f.default for f in fields(HyenaConfig)} == dict(SYNTHETICS_DEFAULTS)
    assert HyenaConfig().operator_kwargs().keys() == set(sig) - {"self"}  # every operator argument
    assert _OPERATOR_MATH == set(SAFARI_OPERATOR_DEFAULTS) - {"causal"}  # safari has no causal switch
    # a safari layer that omits a key means safari's default, not the synthetics one
    lm = lm_config_from_safari({"d_model": 8, "n_layer": 1, "vocab_size": 10, "layer": {"l_max": 12}})
    op = lm.operator_kwargs()
    assert {k: op[k] for k in SAFARI_OPERATOR_DEFAULTS} == dict(SAFARI_OPERATOR_DEFAULTS)
    assert (SYNTHETICS_DEFAULTS["emb_dim"], SYNTHETICS_DEFAULTS["w"]) != (op["emb_dim"], op["w"])


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
