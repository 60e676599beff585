"""Run configs: typed sections, YAML loading, dotted overrides, validation, resolution.

Every key and its default is documented in docs/config.md. A config is validated before
anything is written: an unknown key, a wrong type or an out-of-range value is a `UserError`
whose one line names the key and the fix.

    seed, loss                       top-level scalars
    model                            a typed `HyenaConfig | AttentionConfig` (models/config/model.py),
                                     chosen by `model.kind`; `models.build_model` builds it
    data, optimizer, schedule,       dataclass sections below
    checkpoints, eval

`resolve_config` fills what is derived from the data (model.vocab_size, model.l_max,
data.seed); the typed model config holds every model default, so a run directory's
config.yaml holds every key.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from models.config.model import DERIVED_MODEL_KEYS, KERNELS, MODEL_CONFIGS, AttentionConfig, HyenaConfig
from models.errors import UserError

TASKS = ("ar", "ih", "mqar")
LOSSES = ("all", "last")
DECAYS = ("linear", "cosine", "constant")
MODEL_KINDS = tuple(MODEL_CONFIGS)  # ("hyena", "attention")


@dataclass
class DataConfig:
    task: str = "ar"
    vocab_size: int = 10
    input_seq_len: int = 64
    num_examples: int = 5000
    num_test_examples: int = 500
    num_kv_pairs: int = 8
    remove_overlap: bool = False
    fresh_samples: bool = False
    seed: int | None = None


@dataclass
class OptimizerConfig:
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    epochs: int = 12
    steps: int | None = None
    batch_size: int = 32
    warmup: float = 0.1
    decay: str = "linear"


@dataclass
class CheckpointConfig:
    log_count: int = 30
    every: int | None = None
    adaptive: bool = True
    dense_every: int | None = None
    steep: float = 0.05


@dataclass
class EvalConfig:
    train_subset: int | None = 1000
    test_subset: int | None = None


SECTIONS = {
    "data": DataConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
    "checkpoints": CheckpointConfig, "eval": EvalConfig,
}
TOP_LEVEL = {"seed": 0, "loss": "all"}


@dataclass
class RunConfig:
    seed: int = 0
    loss: str = "all"
    model: HyenaConfig | AttentionConfig = field(
        default_factory=lambda: HyenaConfig(**dict.fromkeys(DERIVED_MODEL_KEYS)))
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @property
    def causal(self) -> bool:
        return bool(self.model.causal)

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.seed is None else self.data.seed


# ---- validation ---------------------------------------------------------------------------
def _unknown(key: str, known: list[str]) -> UserError:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: -len(leaf)]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    return UserError(f"unknown config key {key}; {hint}known keys here: {', '.join(known)}")


def _type_name(annotation: str) -> str:
    return annotation.replace(" | None", " or null")


def check_value(key: str, value: Any, annotation: str) -> Any:
    """Coerce/validate `value` against a simple annotation string ('int', 'float | None', ...)."""
    nullable = "None" in annotation
    base = annotation.replace(" | None", "").replace("None | ", "").strip()
    if value is None:
        if nullable:
            return None
        raise UserError(f"{key} must be {_type_name(annotation)}, got null; give a value or drop the key for its default")
    bad = UserError(f"{key} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__}); see docs/config.md")
    if base == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if base == "list":
        if not isinstance(value, list):
            raise bad
        return value
    return value


def _need(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is out of range: it must be {rule}")


def _section(name: str, cls, raw: Any):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{name} must be a mapping of keys, got {raw!r}; see docs/config.md")
    known = [f.name for f in fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        if k not in known:
            raise _unknown(f"{name}.{k}", known)
        ann = next(f.type for f in fields(cls) if f.name == k)
        kwargs[k] = check_value(f"{name}.{k}", v, ann)
    return cls(**kwargs)


def _model_fields(kind: str) -> dict[str, Any]:
    """{key: (annotation, default)} of the model class for `kind`, `kind` included."""
    out = {f.name: (str(f.type), f.default) for f in fields(MODEL_CONFIGS[kind])}
    out["kind"] = ("str", kind)
    return out


def config_keys(kind: str = "hyena") -> list[str]:
    """Every dotted config key for a model `kind` (`seed`, `loss`, `model.d_model`, `data.task`, ...)."""
    if kind not in MODEL_KINDS:
        raise UserError(f"model.kind={kind!r} is unknown; use one of {', '.join(MODEL_KINDS)}")
    keys = list(TOP_LEVEL) + [f"model.{k}" for k in sorted(_model_fields(kind))]
    return keys + [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)]


_MODEL_MIN = {"vocab_size": 3, "d_model": 1, "n_layers": 1, "d_inner": 1, "order": 2, "l_max": 1,
              "filter_order": 1, "emb_dim": 3, "num_inner_mlps": 0, "short_filter_order": 1,
              "n_heads": 1, "max_position_embeddings": 0}
_MODEL_PROB = ("dropout", "filter_dropout", "embed_dropout", "resid_dropout")


def validate_model(raw: Any) -> HyenaConfig | AttentionConfig:
    """The typed model config for `raw` (`kind` picks the class); keys it does not give take
    the class's defaults, except `vocab_size` and `l_max`, which stay None (derived later)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"model must be a mapping of keys, got {raw!r}; see docs/config.md")
    kind = raw.get("kind", "hyena")
    if kind not in MODEL_KINDS:
        raise UserError(f"model.kind={kind!r} is unknown; use one of {', '.join(MODEL_KINDS)}")
    spec = _model_fields(kind)
    out: dict[str, Any] = {"kind": kind, "causal": True}
    for k, v in raw.items():
        if k not in spec:
            raise _unknown(f"model.{k}", sorted(spec))
        ann = spec[k][0]
        if k in DERIVED_MODEL_KEYS:
            ann = "int | None"  # derived from the data when null or absent
        out[k] = check_value(f"model.{k}", v, ann)
    for k, lo in _MODEL_MIN.items():
        v = out.get(k)
        if v is not None:
            _need(v >= lo, f"model.{k}", v, f">= {lo}")
    for k in _MODEL_PROB:
        if out.get(k) is not None:
            _need(0.0 <= out[k] < 1.0, f"model.{k}", out[k], "in [0, 1)")
    if out.get("emb_dim") is not None:
        _need(out["emb_dim"] % 2 == 1, "model.emb_dim", out["emb_dim"], "odd (time plus cos/sin bands)")
    if "kernels" in out:
        _need(out["kernels"] in KERNELS, "model.kernels", out["kernels"], f"one of {', '.join(KERNELS)}")
    if kind == "attention" and out.get("d_model") and out.get("n_heads"):
        _need(out["d_model"] % out["n_heads"] == 0, "model.n_heads", out["n_heads"], f"a divisor of model.d_model={out['d_model']}")
    if kind == "hyena" and not out["causal"]:
        sfo = out.get("short_filter_order", spec["short_filter_order"][1])
        _need(sfo % 2 == 1, "model.short_filter_order", sfo, "odd for a non-causal model (the short conv is centered)")
    given = {k: v for k, v in out.items() if k != "kind"}
    return MODEL_CONFIGS[kind](**{**dict.fromkeys(DERIVED_MODEL_KEYS), **given})


def _foreign(raw: dict, known: list[str], source: Any, run_dir: Any) -> UserError | None:
    """The error for a mapping from `source` whose top-level keys are not HyenaLens': one of them
    resembles none of ours (a safari or Lightning config has `trainer`, `loader`, ...). None for
    a near miss (a typo gets `_unknown`'s "did you mean", with the file named)."""
    unknown = [str(k) for k in raw if k not in known]
    alien = [k for k in unknown if not difflib.get_close_matches(k, known, n=1)]
    if not alien:
        return None
    what = f"{source} is not a HyenaLens config: its key {alien[0]!r} is not one of ours ({', '.join(known)})"
    if run_dir is not None:
        return UserError(f"{what}, so {run_dir} is not a HyenaLens run: use a run directory made by "
                         f"`hyenalens train` (or a new --out to train into), or convert a safari run folder "
                         f"with `hyenalens import-safari {run_dir} --out NEW_RUN_DIR`")
    return UserError(f"{what}; pass a preset or a HyenaLens YAML config (docs/config.md)")


def validate_config(raw: Any, source: Any = None, run_dir: Any = None) -> RunConfig:
    """A `RunConfig` from a raw mapping; every problem is a one-line UserError.

    `source`: the file `raw` was read from (named when its keys are not ours); `run_dir`: the
    run directory whose config.yaml it is (then the error says the folder is not a run)."""
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    known = sorted(list(TOP_LEVEL) + ["model"] + list(SECTIONS))
    for k in raw:
        if k not in known:
            if source is None:
                raise _unknown(str(k), known)
            raise _foreign(raw, known, source, run_dir) or UserError(f"{source}: {_unknown(str(k), known)}")
    seed = check_value("seed", raw.get("seed", 0), "int")
    _need(0 <= seed < 2**32, "seed", seed, "an integer in [0, 2**32)")
    loss = check_value("loss", raw.get("loss", "all"), "str")
    _need(loss in LOSSES, "loss", loss, f"one of {', '.join(LOSSES)}")
    cfg = RunConfig(seed=seed, loss=loss, model=validate_model(raw.get("model")),
                    **{name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()})
    _check_ranges(cfg)
    if not cfg.causal and cfg.loss == "all":
        raise UserError("invalid regime: model.causal=false with loss=all leaks every target through the "
                        "future context; use loss=last (or model.causal=true)")
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    d, o, s, c, e = cfg.data, cfg.optimizer, cfg.schedule, cfg.checkpoints, cfg.eval
    _need(d.task in TASKS, "data.task", d.task, f"one of {', '.join(TASKS)}")
    for k in ("vocab_size", "input_seq_len", "num_examples", "num_test_examples", "num_kv_pairs"):
        _need(getattr(d, k) >= 1, f"data.{k}", getattr(d, k), ">= 1")
    if d.seed is not None:
        _need(0 <= d.seed < 2**32, "data.seed", d.seed, "null or an integer in [0, 2**32)")
    _need(o.lr > 0, "optimizer.lr", o.lr, "> 0")
    _need(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, ">= 0")
    betas_ok = (len(o.betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                          and 0 <= b < 1 for b in o.betas))
    _need(betas_ok, "optimizer.betas", o.betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
    o.betas = [float(b) for b in o.betas]
    _need(s.epochs >= 1, "schedule.epochs", s.epochs, ">= 1")
    if s.steps is not None:
        _need(s.steps >= 1, "schedule.steps", s.steps, "null (use epochs) or >= 1")
    _need(s.batch_size >= 1, "schedule.batch_size", s.batch_size, ">= 1")
    _need(0 <= s.warmup < 1, "schedule.warmup", s.warmup, "a fraction of the steps in [0, 1)")
    _need(s.decay in DECAYS, "schedule.decay", s.decay, f"one of {', '.join(DECAYS)}")
    _need(c.log_count >= 0, "checkpoints.log_count", c.log_count, ">= 0 (0 turns log spacing off)")
    if c.every is not None:
        _need(c.every >= 0, "checkpoints.every", c.every, "null (auto), 0 (off) or >= 1")
    if c.dense_every is not None:
        _need(c.dense_every >= 1, "checkpoints.dense_every", c.dense_every, "null (auto) or >= 1")
    _need(0 < c.steep <= 1, "checkpoints.steep", c.steep, "an accuracy change in (0, 1]")
    for k in ("train_subset", "test_subset"):
        v = getattr(e, k)
        if v is not None:
            _need(v >= 1, f"eval.{k}", v, "null (all) or >= 1")


# ---- resolution (derived keys) -----------------------------------------------------------
def resolve_config(cfg: RunConfig, vocab_size: int, seq_len: int, check: bool = True) -> RunConfig:
    """Fill data.seed and model.vocab_size / l_max (from the data); the typed model config
    already holds every other model default (d_inner: 4 · d_model).
    `check=False` skips the checks against the data (for a stored, already resolved config)."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.seed is None:
        cfg.data.seed = cfg.seed
    m = cfg.model
    if m.vocab_size is None:
        m.vocab_size = vocab_size
    elif check and m.vocab_size < vocab_size:
        raise UserError(f"model.vocab_size={m.vocab_size} is smaller than the data's {vocab_size} tokens; "
                        "drop it (it is derived) or raise it")
    if m.l_max is None:
        m.l_max = seq_len
    elif check and m.l_max < seq_len:
        raise UserError(f"model.l_max={m.l_max} is shorter than the sequence length {seq_len}; "
                        "drop it (it is derived) or raise it")
    return cfg


def model_build_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model.to_dict()


def config_hash(cfg: RunConfig) -> str:
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_yaml(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    order = ["seed", "loss", "model", *SECTIONS]
    return yaml.safe_dump({k: d[k] for k in order}, sort_keys=False, default_flow_style=None)


def flat_items(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat_items(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """'key: old -> new' for every dotted key that differs."""
    a, b = flat_items(old.to_dict()), flat_items(new.to_dict())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
