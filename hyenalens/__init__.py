"""HyenaLens' one namespaced entry point: `import hyenalens as hl`.

    run = hl.load_run("runs/ar_s0")          # a run directory: steps, models, metrics (hyenalens/api.py)
    model = hl.build_model({...})            # a HyenaLM or the TransformerLens attention baseline
    H = hl.implicit_attention(model, tokens, layer=1)

The names below are re-exported lazily (PEP 562): `import hyenalens` imports no torch, and a
name is imported when it is first touched (`hl.__version__` stays torch-free). The `hyenalens`
command line is `hyenalens.cli`.

The layers behind it (`models`, `interp`, `analysis`, `reports`) are top-level packages, so a
folder of the user's own with one of those names, found first on `sys.path` (the working
directory, PYTHONPATH), would be imported in their place. Before a name is imported, the layers
it needs are checked: one that is not this distribution's is a one-line
`PackageShadowedError` (an ImportError) naming the folder and the fix.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from hyenalens.runtime import tune_malloc

# glibc's mmap/trim thresholds raised once per process (ctypes, no torch), so that a notebook's
# run_with_cache reuses freed activation memory as the CLI does (hyenalens/runtime.py says why);
# HYENALENS_MALLOC_TUNING=0 opts out
tune_malloc()

# name → the module that defines it
_EXPORTS = {
    # a run directory, training and configs
    "load_run": "hyenalens.api", "Run": "hyenalens.api",
    "train": "models.training.loop", "load_config": "models.config.source",
    "RunConfig": "models.config.schema", "UserError": "models.errors",
    # the models and the data
    "build_model": "models.build", "HyenaLM": "models.hyena.lm", "HyenaOperator": "models.hyena.operator",
    "HyenaConfig": "models.config.model", "AttentionConfig": "models.config.model",
    "icl_dataset": "models.data.synthetics", "mqar_dataset": "models.data.mqar",
    # interpretability
    "implicit_attention": "interp.implicit_attention", "layer_filters": "interp.filters",
    "swap_metrics": "interp.swap", "source_terms": "interp.sources", "source_rows": "interp.decompose",
    "ProbeSet": "interp.probe_set", "capture_run": "interp.capture", "probe_run": "interp.run_metrics",
    # analysis and the report
    "analyze_run": "analysis.formation", "analyze_group": "analysis.formation",
    "write_report": "reports.report", "load_run_data": "reports.rundata",
}
__all__ = sorted([*_EXPORTS, "PackageShadowedError", "__version__"])

# the first-party top-level packages each layer imports (docs/architecture.md, "Layers";
# tests/test_api.py holds this table to the import graph)
LAYER_DEPENDS = {
    "models": ("models",),
    "interp": ("models", "interp"),
    "analysis": ("models", "analysis"),
    "reports": ("models", "analysis", "reports"),
    "hyenalens.api": ("models", "interp"),
}
_ROOT = Path(__file__).resolve().parents[1]  # the folder holding this distribution's packages
_checked: set[str] = set()


class PackageShadowedError(ImportError):
    """A top-level HyenaLens package (`models`, `interp`, `analysis`, `reports`) resolves to
    someone else's module or folder; the message names it and the fix."""


def check_package(name: str) -> None:
    """Raise PackageShadowedError when the top-level package `name` is not this distribution's
    (found without importing it: its spec, or the module already imported)."""
    if name in _checked:
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a module in sys.modules without a spec
        spec = None
    if spec is None:
        return  # not importable at all: the import itself says so
    ours = _ROOT / name / "__init__.py"
    origin = spec.origin if spec.origin not in (None, "namespace") else None
    if origin is not None and Path(origin).resolve() == ours.resolve():
        _checked.add(name)
        return
    if origin is None:  # a namespace package: a folder without __init__.py
        where = next(iter(spec.submodule_search_locations or []), "?")
    else:
        where = str(Path(origin).parent if Path(origin).name == "__init__.py" else origin)
    raise PackageShadowedError(
        f"HyenaLens' top-level package `{name}` is shadowed by {where}, which Python finds first on sys.path "
        f"(the working folder or PYTHONPATH); run from another folder or rename yours (HyenaLens' own is "
        f"{ours.parent})", name=name, path=str(where))


def _version() -> str:
    """The installed distribution's version, else setup.cfg's beside the packages; torch-free."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hyenalens")
    except PackageNotFoundError:
        pass
    try:
        for line in (_ROOT / "setup.cfg").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "version":
                return value.strip()
    except OSError:
        pass
    return "unknown"


def __getattr__(name: str):
    if name == "__version__":
        value = _version()
    elif name in _EXPORTS:
        module = _EXPORTS[name]
        for pkg in LAYER_DEPENDS.get(module, None) or LAYER_DEPENDS[module.split(".")[0]]:
            check_package(pkg)
        value = getattr(importlib.import_module(module), name)
    else:
        raise AttributeError(f"module 'hyenalens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
