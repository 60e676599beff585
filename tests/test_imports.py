"""The first-party import graph (models, interp, analysis, reports, hyenalens), read from the
source with `ast`: no cycles, no arrow against models → interp → analysis → reports (hyenalens may
import them all; nothing imports hyenalens), and first-party imports at the top of each module
except the entries of ALLOWED, each with its reason.

An import inside a function is what hid the two cycles this test was written for
(lm → hyena → safari → lm, config ↔ config_source), so the graph counts every import, wherever
it stands. Lazy package `__init__`s that resolve names through `importlib` (PEP 562) are not
imports and are not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "interp", "analysis", "reports", "hyenalens")
LAYER = {"models": 0, "interp": 1, "analysis": 2, "reports": 3, "hyenalens": 4}

_CLI = ("the CLI loads each command's code when that command runs, so `hyenalens --help`, a bad "
        "flag or a config error answers in a fraction of a second without importing torch, "
        "transformer_lens, sklearn or matplotlib")
_FIGURES = ("the figure modules import matplotlib and seaborn (and restyle matplotlib); `import "
            "reports` (RunData, discover_runs, load_run_data) stays free of both until a report is drawn")
_BASELINE = ("a run whose metrics.jsonl predates the logged no-recall baseline gets it from its config "
             "by regenerating the test split, which needs torch; analysis, and the report that imports it, "
             "stay torch-free for every run that logged it")
# (importing module, imported module): why the import stays inside a function
ALLOWED: dict[tuple[str, str], str] = {
    ("analysis.recall_jump", "models.data.baseline"): _BASELINE,
    ("analysis.recall_jump", "models.rundir.run"): _BASELINE,
    ("hyenalens.cli", "analysis"): _CLI,
    ("hyenalens.cli", "hyenalens.pipeline"): _CLI,
    ("hyenalens.cli", "hyenalens.smoke"): _CLI,
    ("hyenalens.cli", "hyenalens.sweep"): _CLI,
    ("hyenalens.cli", "interp.capture"): _CLI,
    ("hyenalens.cli", "interp.run_metrics"): _CLI,
    ("hyenalens.cli", "models.safari.run_import"): _CLI,
    ("hyenalens.cli", "models.training.loop"): _CLI,
    ("hyenalens.cli", "reports"): _CLI,
    ("hyenalens.cli", "reports.study"): _CLI,
    ("reports.report", "reports.figures_common"): _FIGURES,
    ("reports.report", "reports.figures_compare"): _FIGURES,
    ("reports.report", "reports.figures_curves"): _FIGURES,
    ("reports.report", "reports.figures_maps"): _FIGURES,
    ("reports.report", "reports.figures_sources"): _FIGURES,
    ("reports.study", "reports.figures_study"): _FIGURES,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The first-party module an import names (a `from pkg import name` of a non-module name
    resolves to pkg)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, inside a function or class body) for each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in child.names]
            else:
                visit(child, inner)
                continue
            for n in names:
                target = _resolve(n, mods)
                if target and target != mod:
                    out.append((target, child.lineno, nested))

    visit(tree, False)
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """module → imported modules, and the (module, target, line) of every nested import."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    nested = set()
    for m, path in mods.items():
        for target, line, inner in _imports(m, path, mods):
            if target.startswith(m + "."):  # a package __init__ re-exporting its own submodule
                continue
            graph[m].add(target)
            if inner:
                nested.add((m, target, line))
    return graph, sorted(nested)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_layers_import_only_to_their_left():
    graph, _ = _graph()
    against = [(m, t) for m, targets in graph.items() for t in targets
               if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert against == []


def test_first_party_imports_are_at_the_top():
    _, nested = _graph()
    unexplained = [f"{m}:{line} imports {t}" for m, t, line in nested if (m, t) not in ALLOWED]
    assert unexplained == []
    stale = sorted(set(ALLOWED) - {(m, t) for m, t, _ in nested})
    assert stale == []  # an allowlist entry whose import is gone is removed too


def test_the_scanner_sees_cycles_and_nested_imports(tmp_path, monkeypatch):
    """The checks can fail: a hand-built package with a cycle through a function-level import."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from models.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from models.a import g\n    return g\n")
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
        (tmp_path / other / "__init__.py").write_text("")
    (tmp_path / "interp" / "x.py").write_text("import analysis\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    graph, nested = _graph()
    assert _cycles(graph) == [["models.a", "models.b"]]
    assert nested == [("models.b", "models.a", 2)]
    assert ("interp.x", "analysis") in {(m, t) for m, ts in graph.items() for t in ts}
