"""Sweeps: one YAML file → a grid of runs over regimes × data/model parameters × seeds.

Pure and typed. `load_sweep` reads the file and the configs its regimes name; `expand(spec)`
turns the spec into `Point`s, one run each, with deterministic names, after checking every
grid key against the config keys and validating every point's config. So a bad sweep is
refused before anything is written. The format is in docs/sweeps.md; running a sweep is
hyenalens/sweep.py. No torch at import (model keys are looked up inside `expand`).
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.config.source import parse_yaml, read_config_source
from models.config.schema import config_keys, validate_config
from models.errors import UserError

SWEEP_FORMAT = "hyenalens-sweep/1"
SWEEP_KEYS = ("name", "base", "regimes", "seeds", "grid", "overrides", "capture_limit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._,+-]")
_DOCS = "see docs/sweeps.md"


@dataclass(frozen=True)
class Regime:
    name: str
    source: str  # where its base config came from, e.g. "preset ar_causal_all"
    config: dict[str, Any]  # raw config: the base, then the sweep's overrides, then the regime's own


@dataclass(frozen=True)
class SweepSpec:
    name: str
    regimes: tuple[Regime, ...]
    seeds: tuple[int, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (dotted config key, values), in file order
    source: str = ""
    capture_limit: int | None = None  # checkpoints captured and probed per run (None: all)


@dataclass(frozen=True)
class Point:
    """One run of a sweep. `name` is its run directory; `group` (the name without the seed)
    is what the analysis aggregates over seeds."""

    name: str
    group: str
    regime: str
    seed: int
    params: dict[str, Any]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading ------------------------------------------------------------------------------
def sweep_names() -> list[str]:
    return sorted(p.name[:-5] for p in _sweeps_dir().iterdir() if p.name.endswith(".yaml"))


def _sweeps_dir():
    from importlib.resources import files

    return files("models.config.presets.sweeps")


def load_sweep(name_or_path: str) -> SweepSpec:
    """A `SweepSpec` from a sweep YAML path or a shipped sweep name (models/config/presets/sweeps)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
        if not p.is_file():
            raise UserError(f"sweep file {p} does not exist; check the path, or use a shipped sweep "
                            f"({', '.join(sweep_names())})")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read sweep {p} ({type(e).__name__}); check its permissions and encoding") from None
        source, base_dir, stem = str(p), p.resolve().parent, p.stem
    else:
        res = _sweeps_dir() / f"{name_or_path}.yaml"
        if not res.is_file():
            close = difflib.get_close_matches(name_or_path, sweep_names(), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"no sweep file or shipped sweep named {name_or_path!r}; {hint}"
                            f"shipped sweeps: {', '.join(sweep_names())}")
        text, source, base_dir, stem = res.read_text(encoding="utf-8"), f"sweep {name_or_path}", None, name_or_path
    raw = parse_yaml(text, source, duplicate_hint="two entries with one name would give duplicate run names, "
                     "so keep one")
    return parse_sweep(raw, source, base_dir, default_name=_UNSAFE.sub("-", stem))


def parse_sweep(raw: Any, source: str = "sweep", base_dir: Path | None = None,
                default_name: str = "sweep") -> SweepSpec:
    """Check a sweep mapping's structure and read the configs its regimes name."""
    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a YAML mapping (base, regimes, seeds, grid, overrides); {_DOCS}")
    for k in raw:
        if k not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(k), SWEEP_KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"unknown sweep key {k!r} in {source}; {hint}sweep keys: {', '.join(SWEEP_KEYS)}")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"sweep name {name!r} may only use letters, digits, '.', '_' and '-'; rename it")
    seeds = _seeds(raw.get("seeds"))
    limit = raw.get("capture_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise UserError(f"capture_limit must be an integer >= 2 (checkpoints captured per run) or null (all), "
                        f"got {limit!r}")
    overrides = _flat(raw.get("overrides"), "overrides")
    grid = _grid(raw["grid"]) if "grid" in raw else ()
    base = raw.get("base")
    if base is not None and not isinstance(base, str):
        raise UserError(f"base must be a preset name or a YAML path, got {base!r}; {_DOCS}")
    if "regimes" in raw:
        regimes_raw = raw["regimes"]
        if not isinstance(regimes_raw, dict) or not regimes_raw:
            raise UserError(f"regimes must be a non-empty mapping NAME: CONFIG (or NAME: {{KEY: VALUE}}), "
                            f"got {regimes_raw!r}; {_DOCS}")
    elif base is not None:
        regimes_raw = {_UNSAFE.sub("-", Path(base).stem): None}
    else:
        raise UserError(f"{source} names no run config; add base: PRESET (or a YAML path) or regimes: "
                        f"{{NAME: PRESET}}; {_DOCS}")
    if "seed" in overrides:
        raise UserError("overrides sets seed; list the seeds under seeds: instead")
    regimes = []
    for rname, value in regimes_raw.items():
        if not isinstance(rname, str) or not _NAME.match(rname):
            raise UserError(f"regime name {rname!r} may only use letters, digits, '.', '_' and '-' "
                            "(it names run directories); rename it")
        if isinstance(value, str):
            src, own = value, {}
        elif value is None or isinstance(value, dict):
            value = dict(value or {})
            src = value.pop("config", base)
            own = _flat(value, f"regimes.{rname}")
        else:
            raise UserError(f"regimes.{rname} must be a preset name, a YAML path or a mapping of overrides, "
                            f"got {value!r}; {_DOCS}")
        if not isinstance(src, str):
            raise UserError(f"regime {rname} names no config; give it config: PRESET or add base: PRESET")
        if "seed" in own:
            raise UserError(f"regime {rname} sets seed; list the seeds under seeds: instead")
        for key, _ in grid:
            if key in own or key in overrides:
                where = f"regime {rname}" if key in own else "overrides"
                raise UserError(f"grid key {key} is also set in {where}; set it in one place")
        cfg, desc = _read_config(src, base_dir)
        regimes.append(Regime(rname, desc, apply_values(apply_values(cfg, overrides), own)))
    return SweepSpec(name, tuple(regimes), seeds, grid, source, limit)


def _read_config(src: str, base_dir: Path | None) -> tuple[dict, str]:
    p = Path(src)
    if base_dir is not None and not p.is_absolute() and (base_dir / p).is_file():
        src = str(base_dir / p)  # a relative path is read beside the sweep file
    return read_config_source(src)


def _seeds(raw: Any) -> tuple[int, ...]:
    if raw is None:
        raise UserError("seeds is missing; give a count (seeds: 5 means 0-4) or a list (seeds: [0, 1, 2])")
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise UserError(f"seeds: {raw} gives an empty grid; use a count >= 1 or a list of seeds")
        return tuple(range(raw))
    if not isinstance(raw, list) or not raw:
        raise UserError(f"seeds must be a count >= 1 or a non-empty list of integers, got {raw!r}")
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise UserError(f"seed {s!r} in seeds must be an integer in [0, 2**32)")
    return tuple(raw)


def _flat(raw: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value}; nested mappings are spelled out (model: {causal: false})."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of config keys to values, got {raw!r}; {_DOCS}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or not all(key.split(".")):
            raise UserError(f"{where}: key {key!r} is malformed; write e.g. model.d_model")
        if isinstance(v, dict):
            out.update(_flat(v, where, f"{key}."))
        else:
            out[key] = v
    return out


def _grid(raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"grid is empty ({raw!r}); list axes as KEY: [VALUES] (e.g. data.vocab_size: [10, 20]) "
                        "or drop grid")
    axes = []
    for key, values in _flat(raw, "grid").items():
        if not isinstance(values, list):
            raise UserError(f"grid axis {key} must be a list of values, got {values!r}; write [{values!r}]")
        if not values:
            raise UserError(f"grid axis {key} is an empty list, which gives an empty grid; give it at least one value")
        axes.append((key, tuple(values)))
    return tuple(axes)


def apply_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of a raw config with dotted `values` set (typed values; cf. apply_overrides)."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise UserError(f"{key}: {'.'.join(parts[:i + 1])} is not a config section; see docs/config.md")
        node[parts[-1]] = copy.deepcopy(value)
    return out


# ---- expansion ----------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif v is None:
        text = "null"
    elif isinstance(v, list):
        text = ",".join(_fmt(x) for x in v)
    else:
        text = str(v)
    return _UNSAFE.sub("-", text)


def _check_grid_keys(spec: SweepSpec) -> None:
    kinds = {str((r.config.get("model") or {}).get("kind", "hyena")) for r in spec.regimes}
    known = {k: config_keys(k) for k in kinds}
    for key, _ in spec.grid:
        if key == "seed":
            raise UserError("grid key seed: list the seeds under seeds:, not in the grid")
        if key == "model.kind":
            raise UserError("grid key model.kind: make each model kind its own regime")
        for kind, keys in known.items():
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                what = "" if len(known) == 1 else f" for model.kind {kind}"
                raise UserError(f"unknown grid key {key}{what}; {hint}grid keys are dotted config keys "
                                "(docs/config.md)")


def expand(spec: SweepSpec) -> list[Point]:
    """Every run of the sweep, in order regimes × grid × seeds, each config validated.
    Names: `<regime>[__<key>=<value>...]__s<seed>` (key: the last part of the dotted key,
    or all of it where two axes share that part)."""
    if not spec.regimes or not spec.seeds:
        raise UserError("the sweep is empty (no regimes or no seeds); give at least one of each")
    for key, values in spec.grid:
        if not values:
            raise UserError(f"grid axis {key} is an empty list, which gives an empty grid; give it at least one value")
    _check_grid_keys(spec)
    keys = [k for k, _ in spec.grid]
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    label = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
    points: list[Point] = []
    seen: dict[str, str] = {}
    for regime in spec.regimes:
        for combo in itertools.product(*(values for _, values in spec.grid)):
            params = dict(zip(keys, combo))
            group = "__".join([regime.name, *(f"{label[k]}={_fmt(v)}" for k, v in params.items())])
            base = apply_values(regime.config, params)
            for seed in spec.seeds:
                name = f"{group}__s{seed}"
                if name in seen:
                    raise UserError(f"duplicate run name {name} ({seen[name]} and regime {regime.name} "
                                    f"{params or ''} seed {seed}); make the regime names, grid values and seeds distinct")
                seen[name] = f"regime {regime.name} {params or ''} seed {seed}".replace("  ", " ")
                config = apply_values(base, {"seed": seed})
                try:
                    validate_config(config)
                except UserError as e:
                    raise UserError(f"sweep run {name}: {e}") from None
                points.append(Point(name, group, regime.name, seed, dict(params), config))
    return points


def sweep_record(spec: SweepSpec, points: list[Point]) -> dict[str, Any]:
    """What SWEEP_DIR/sweep.json holds; `points` is what two sweeps are compared by."""
    return {"format": SWEEP_FORMAT, "name": spec.name, "source": spec.source,
            "regimes": [{"name": r.name, "source": r.source} for r in spec.regimes],
            "seeds": list(spec.seeds), "grid": {k: list(v) for k, v in spec.grid},
            "capture_limit": spec.capture_limit,
            "points": [p.to_dict() for p in points]}


def read_record(sweep_dir: str | Path) -> dict[str, Any] | None:
    """SWEEP_DIR/sweep.json, or None when the folder is not a sweep directory (no sweep.json);
    an unreadable or foreign file is a one-line UserError."""
    f = Path(sweep_dir) / "sweep.json"
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {f} ({type(e).__name__}); restore it or use another --out") from None
    if not isinstance(rec, dict) or rec.get("format") != SWEEP_FORMAT or not isinstance(rec.get("points"), list):
        raise UserError(f"{f} is not a {SWEEP_FORMAT} record; use another --out")
    return rec
