"""Where a run config comes from: a YAML file or a shipped preset, plus dotted overrides.

Presets are the YAML files of the package `models.config.presets` (models/config/presets/, shipped
as its package data), found with `importlib.resources`, so `hyenalens train ar_causal_all` works
from any directory.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from models.config.schema import validate_config
from models.errors import UserError


# ---- YAML: floats like 5e-4 are floats (YAML 1.1 would read them as strings), and a key
# given twice in one mapping is an error (YAML requires unique keys; PyYAML keeps the last) ----
class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are left to the structure checks
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str,
               duplicate_hint: str = "only the last value would count, so keep one") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if problem.startswith("duplicate key"):
            raise UserError(f"{source}: {problem}{where}; {duplicate_hint}") from None
        raise UserError(f"{source} is not valid YAML{where} ({problem}); fix the syntax") from None


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _presets_dir().iterdir() if p.name.endswith(".yaml"))


def _presets_dir():
    from importlib.resources import files

    return files("models.config.presets")


def read_config_source(name_or_path: str) -> tuple[dict, str]:
    """(raw mapping, description) from a YAML path or a preset name."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
        if p.is_dir():
            raise UserError(f"config {p} is a directory; pass a YAML file or a preset name")
        if not p.is_file():
            raise UserError(f"config file {p} does not exist; check the path, or use a preset ({', '.join(preset_names())})")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read config {p} ({type(e).__name__}: {e}); check its permissions and encoding") from None
        source = str(p)
    else:
        res = _presets_dir() / f"{name_or_path}.yaml"
        if not res.is_file():
            close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"no config file or preset named {name_or_path!r}; {hint}presets: {', '.join(preset_names())}")
        text, source = res.read_text(encoding="utf-8"), f"preset {name_or_path}"
    raw = parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a YAML mapping of config sections, got {type(raw).__name__}")
    return raw, source


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (values parsed as YAML) applied to a raw mapping."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not KEY=VALUE; write e.g. model.d_model=32")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(f"override key {key!r} is malformed; write e.g. optimizer.lr=1e-3")
        value = parse_yaml(text, f"override {key}") if text.strip() else None
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"override {key}: {'.'.join(parts[:i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(name_or_path: str, overrides: list[str] | None = None):
    """Read a preset or YAML file, apply dotted overrides, validate."""
    raw, _ = read_config_source(name_or_path)
    return validate_config(apply_overrides(raw, list(overrides or [])))
