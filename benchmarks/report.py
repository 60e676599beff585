"""BENCHMARKS.md: the suite's sections between markers, everything else left as it is.

Each (device, section) lives between `<!-- bench:{device}:{section}:begin -->` and its `end`
marker, inside a device region `<!-- bench:{device}:begin -->` … `end`. A run replaces the
sections it measured and keeps the others (`--only`), and never touches text outside the
markers (the hand-written demo section, other engineers' sections). Written atomically.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from models.rundir.io import atomic_write_text

DEVICE_TITLES = {"cpu": "CPU", "cuda": "GPU (`--device cuda`)"}
SECTION_ORDER = ("targets", "train", "operator", "levers", "compile", "study", "hooks", "implicit", "capture", "demo",
                 "notes")


@dataclass
class Section:
    """One section: a `### title`, a provenance line, prose, and tables (header + rows)."""

    key: str
    title: str
    provenance: str = ""
    text: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    checks: list[tuple[str, float, float]] = field(default_factory=list)  # (target, measured, bound)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.provenance:
            lines += [self.provenance, ""]
        for para in self.text:
            lines += [para, ""]
        for header, rows in self.tables:
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def _marker(device: str, key: str | None, end: bool) -> str:
    mid = f"{device}:{key}" if key else device
    return f"<!-- bench:{mid}:{'end' if end else 'begin'} -->"


def _block(device: str, key: str | None, body: str) -> str:
    return f"{_marker(device, key, False)}\n{body.rstrip()}\n{_marker(device, key, True)}"


def _find(text: str, device: str, key: str | None) -> re.Match | None:
    pat = re.escape(_marker(device, key, False)) + r"\n?(.*?)\n?" + re.escape(_marker(device, key, True))
    return re.search(pat, text, flags=re.S)


def read_block(text: str, device: str, key: str) -> str | None:
    m = _find(text, device, key)
    return m.group(1) if m else None


def update(text: str, device: str, sections: list[Section], intro: str) -> str:
    """`text` with the given sections of `device` replaced or inserted (canonical order)."""
    if not text.strip():
        text = "# Benchmarks\n"
    region = _find(text, device, None)
    if region is None:
        # a new device region goes after the other generated regions, before hand-written text
        body = f"## {DEVICE_TITLES.get(device, device)}\n\n{intro}\n"
        block = _block(device, None, body) + "\n"
        anchor = None
        for other in DEVICE_TITLES:
            m = _find(text, other, None)
            if m:
                anchor = m.end()
        if anchor is None:
            title = re.search(r"^# .*\n", text, flags=re.M)
            anchor = title.end() if title else 0
            text = text[:anchor] + "\n" + block + "\n" + text[anchor:].lstrip("\n")
        else:
            text = text[:anchor] + "\n\n" + block + text[anchor:]
        region = _find(text, device, None)
    inner = region.group(1)
    for sec in sections:
        blk = _block(device, sec.key, sec.markdown())
        m = _find(inner, device, sec.key)
        if m:
            inner = inner[:m.start()] + blk + inner[m.end():]
            continue
        # insert before the first existing section that comes later in the canonical order
        later = [k for k in SECTION_ORDER[SECTION_ORDER.index(sec.key) + 1:]] if sec.key in SECTION_ORDER else []
        pos = None
        for k in later:
            mk = _find(inner, device, k)
            if mk:
                pos = mk.start()
                break
        if pos is None:
            inner = inner.rstrip("\n") + "\n\n" + blk + "\n"
        else:
            inner = inner[:pos] + blk + "\n\n" + inner[pos:]
    start, end = region.span(1)
    return text[:start] + inner.strip("\n") + text[end:]


def write(path: str | Path, device: str, sections: list[Section], intro: str) -> str:
    p = Path(path)
    old = p.read_text(encoding="utf-8") if p.is_file() else ""
    new = update(old, device, sections, intro)
    if not new.endswith("\n"):
        new += "\n"
    atomic_write_text(p, new)
    return new
