"""Screenshots of a HyenaLens report at 1280 px width, as docs/screenshots/README.md lists them.

    python docs/screenshots/make_shots.py REPORT_DIR OUT_DIR PREFIX [--first-screen] [--figures 1 2 6]

- `--first-screen`: the report's first screen, index.html in a 1280 × 800 window
  (PREFIX_first_screen.png).
- `--figures N ...`: for each N, the first Figure N of the page (page order: the first regime,
  causal/all in a demo) as it shows in the page at 1280 px: the page's own <figure> element
  (image and caption) under the page's own CSS, in a 1280 px wide window, cropped to it
  (PREFIX_figN.png). The image keeps the size the page gives it: its own size up to the
  1248 px column, scaled down to the column when wider.

Each PNG is kept under MAX_BYTES (256-colour palette, then downscaled, when larger). Needs
Debian's `chromium` (headless) and Pillow.
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

WIDTH = 1280
COLUMN = 1248  # the report's content width at a 1280 px window (max-width 1280, padding 16 px)
MAX_BYTES = 300_000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


def chromium_shot(page: Path, out: Path, height: int) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as prof:
        res = subprocess.run([exe, *FLAGS, f"--user-data-dir={prof}", f"--window-size={WIDTH},{height}",
                              f"--screenshot={out}", page.as_uri()], capture_output=True, text=True, timeout=120)
    if not out.is_file():
        sys.exit(f"chromium made no screenshot of {page} (rc {res.returncode}): {res.stderr[-500:]}")


def crop_to_content(img: Image.Image, margin: int = 8) -> Image.Image:
    """Crop the white margins (anything lighter than 250 in every channel is background)."""
    gray = img.convert("L").point(lambda v: 255 if v < 250 else 0)
    box = gray.getbbox()
    if box is None:
        return img
    x0, y0, x1, y1 = box
    return img.crop((max(0, x0 - margin), max(0, y0 - margin), min(img.width, x1 + margin),
                     min(img.height, y1 + margin)))


def save_small(img: Image.Image, out: Path) -> int:
    """Write `img` as PNG under MAX_BYTES: as is, else a 256-colour palette, else downscaled."""
    img = img.convert("RGB")
    data = b""
    for scale, palette in ((1.0, False), (1.0, True), (0.85, True), (0.7, True), (0.6, True), (0.5, True)):
        cand = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        if palette:
            cand = cand.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        cand.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
        if len(data) <= MAX_BYTES:
            break
    out.write_bytes(data)
    return len(data)


def figure_page(report: Path, n: str) -> tuple[Path, int]:
    """A page beside index.html (relative image paths hold) holding only the first <figure> of
    Figure n, under the report's CSS; and the window height it needs."""
    page = (report / "index.html").read_text(encoding="utf-8")
    css = re.search(r"<style>(.*?)</style>", page, re.S)
    fig = re.search(rf'<figure><img src="(fig{n}[_a-z][^"]*)".*?</figure>', page, re.S)
    if fig is None:
        sys.exit(f"{report}/index.html has no figure {n}")
    w, h = Image.open(report / fig.group(1)).size
    shown_h = h * min(1.0, COLUMN / w)
    html = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>{css.group(1) if css else ''}</style>"
            f"</head><body>{fig.group(0)}</body></html>")
    out = report / f"_shot_fig{n}.html"
    out.write_text(html, encoding="utf-8")
    return out, int(shown_h) + 400


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("prefix")
    ap.add_argument("--first-screen", action="store_true")
    ap.add_argument("--figures", nargs="*", default=[])
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        if a.first_screen:
            chromium_shot(a.report / "index.html", raw, 800)
            dest = a.out / f"{a.prefix}_first_screen.png"
            dest.unlink(missing_ok=True)
            print(dest, save_small(Image.open(raw), dest))
        for n in a.figures:
            page, height = figure_page(a.report, n)
            try:
                chromium_shot(page, raw, height)
            finally:
                page.unlink()
            dest = a.out / f"{a.prefix}_fig{n}.png"
            dest.unlink(missing_ok=True)
            print(dest, save_small(crop_to_content(Image.open(raw)), dest))


if __name__ == "__main__":
    main()
