"""Finding run directories: the command line's RUN_DIR arguments, each a run directory or a
folder searched (three levels deep) for runs, so a sweep or demo output folder can be passed
whole. A run is found when it has evaluation records (`RunDir.evaluated`: metrics.jsonl), the
file `analyze` and `report` start from; its config.yaml is optional for them.
"""
from __future__ import annotations

from pathlib import Path

from models.errors import UserError
from models.rundir.layout import RunDir

MAX_DEPTH = 3


def _found(p: Path) -> bool:
    return RunDir(p).evaluated()


def discover_runs(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(run dir, display name) for every run named by `paths`, in argument then path order; a
    name shared by two runs is replaced by the path."""
    if not paths:
        raise UserError("no RUN_DIR given; pass one or more run directories (or a folder of runs)")
    out: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p} does not exist; pass a run directory or a folder of runs")
        if not p.is_dir():
            raise UserError(f"{p} is not a directory; pass a run directory or a folder of runs")
        if _found(p):
            out.append((p, p.resolve().name or str(p)))
            continue
        found: list[tuple[Path, str]] = []
        _walk(p, p, 1, found)
        if not found:
            raise UserError(f"{p} holds no metrics.jsonl (neither itself nor its subfolders): it is not a run "
                            "directory; train a run first")
        out.extend(found)
    seen, uniq = set(), []
    for path, name in out:
        key = str(path.resolve())
        if key not in seen:
            seen.add(key)
            uniq.append((path, name))
    names = [n for _, n in uniq]
    return [(path, (str(path) if names.count(name) > 1 else name)) for path, name in uniq]


def _walk(root: Path, d: Path, depth: int, found: list) -> None:
    if depth > MAX_DEPTH:
        return
    try:
        subs = sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith("."))
    except OSError:
        return
    for s in subs:
        if _found(s):
            found.append((s, str(s.relative_to(root))))
        else:
            _walk(root, s, depth + 1, found)
