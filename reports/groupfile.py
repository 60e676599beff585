"""The combined analysis beside a report's runs: `analysis.formation.analyze_group`'s JSON (or
`hyenalens sweep`'s), given with `--group` or found in a folder argument (or its analysis/)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.errors import UserError
from models.rundir.layout import RunDir


def group_files(paths: list[str | Path]) -> list[Path]:
    """Combined-analysis JSON files beside the runs: for each folder argument, any
    `*.json` directly in it or in its `analysis/` whose top level has a `groups` mapping."""
    found = []
    for p in map(Path, paths):
        if not p.is_dir() or RunDir(p).is_run():
            continue
        for f in sorted([*p.glob("*.json"), *(p / "analysis").glob("*.json")]):
            try:
                obj = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("groups"), dict):
                found.append(f)
    return found


def load_group(source: Any, paths: list[str | Path]) -> tuple[dict[str, Any] | None, str]:
    """(analyze_group output or None, a sentence saying where the statistics come from)."""
    if isinstance(source, dict):
        return source, "Regime statistics: analysis.formation.analyze_group (given)."
    if source:
        try:
            obj = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--group {source} cannot be read as JSON ({type(e).__name__}); pass the file "
                            "analyze_group wrote") from None
        if not (isinstance(obj, dict) and isinstance(obj.get("groups"), dict)):
            raise UserError(f"--group {source} has no `groups` mapping; it is not analyze_group's output")
    files = [Path(source)] if source else group_files(paths)
    for f in files:
        try:
            obj = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return None, (f"Combined analysis {f} could not be read ({type(e).__name__}); regime statistics are "
                          "aggregated here from each run's formation.json.")
        if isinstance(obj, dict) and isinstance(obj.get("groups"), dict):
            return obj, (f"Regime statistics: the combined analysis {f} (analysis.formation.analyze_group) where its "
                         "runs match a regime; else aggregated here.")
    return None, ("No combined analysis (analyze_group JSON) found beside the runs: regime statistics are each "
                  "run's formation.json aggregated here with analysis.bootstrap.bootstrap_ci and analysis' seed-claim rule.")


# ------------------------------------------------------------------ the seed claim
