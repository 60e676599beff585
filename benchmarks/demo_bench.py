"""`hyenalens demo` wall time: run only with `--demo` (it takes minutes); otherwise the last
measured number is carried forward with its date."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import Section

REPO = Path(__file__).resolve().parents[1]


def measure(provenance: str) -> Section:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hyenalens", "demo", "--out", str(Path(tmp) / "demo"), "--quiet"],
                              cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    status = "finished" if proc.returncode == 0 else f"**failed** (exit {proc.returncode})"
    return Section("demo", "`hyenalens demo`", provenance,
                   text=[f"`hyenalens demo --out <fresh folder> --quiet`: **{wall:.1f} s** wall, {status}."])


def carried_forward(old_text: str) -> Section:
    """The hand-written demo section's number and date, when this run did not measure it."""
    sec = re.search(r"^## `hyenalens demo`.*?(?=^## |\Z)", old_text, flags=re.S | re.M)
    text = sec.group(0) if sec else ""
    m = re.search(r"\*\*([\d.]+)\*\*", text)
    date = re.search(r"[Dd]ate:? ?(\d{4}-\d{2}-\d{2})", text)
    if m:
        when = f" on {date.group(1)}" if date else ""
        line = (f"Not re-run by this suite run (it takes minutes; `python -m benchmarks --demo` runs it). "
                f"Last measured{when}: **{m.group(1)} s** wall, see the `hyenalens demo` section below.")
    else:
        line = "Not measured yet: `python -m benchmarks --demo` runs it."
    return Section("demo", "`hyenalens demo`", text=[line])
