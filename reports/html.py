"""Self-contained HTML: inline CSS, no external URLs, images as relative PNG paths; the only
script is the training-time explorer's own, inline (reports/explorer.py).

Every piece of text that reaches the page goes through `esc` (html.escape with quotes) — run
names, paths, config values, error messages. Only the markup built here is raw.
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:0.3em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.88em}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.tw{overflow-x:auto;max-width:100%}
.verdict{background:#eef4ff;border-left:4px solid #1f4e9c;padding:10px 14px;font-size:1.05em}
.note{color:#555;font-size:0.9em}.missing{color:#8a5300}.figerr{color:#b00020;font-weight:bold}
figure{margin:16px 0 28px}figure img{max-width:100%;height:auto;border:1px solid #e4e4e4}
figcaption{font-size:0.88em;color:#444;margin-top:4px;max-width:1100px}
pre{background:#f7f7f7;border:1px solid #e4e4e4;padding:8px;overflow-x:auto;font-size:0.82em}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
#answers h2{margin-top:0.6em}ol.answers{margin:4px 0;padding-left:22px;font-size:0.9em}
ol.answers li{margin:3px 0}.ans{color:#1f4e9c;font-weight:bold}.rule{color:#666;font-size:0.86em}
nav#toc{margin:6px 0 10px}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if not math.isfinite(f):
        return "–"
    return f"{f:,.{digits}f}"


def fmt_stat(st: dict[str, Any] | None, digits: int = 0, signed: bool = False) -> str:
    """"mean [lo, hi] (n=k)" — escaped, ready for a cell. n counts the runs with a value."""
    if not st or st.get("mean") is None:
        n_total = (st or {}).get("n_total")
        return "none" + (f" (n=0 of {n_total})" if n_total else "")
    f = (lambda v: f"{v:+,.{digits}f}") if signed else (lambda v: f"{v:,.{digits}f}")
    ci = st.get("ci")
    body = f(st["mean"]) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci else " [no CI]")
    n, tot = st.get("n", 0), st.get("n_total", st.get("n", 0))
    return esc(body + (f" (n={n})" if n == tot else f" (n={n} of {tot})"))


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], num_cols: Iterable[int] = ()) -> str:
    """Headers are escaped here; cells must already be escaped (use `esc`/`num`/`fmt_stat`)."""
    nc = set(num_cols)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{c}</td>" if i in nc else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<div class=\"tw\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def figure(src: str, caption: str, alt: str) -> str:
    return (f"<figure><img src=\"{esc(src)}\" alt=\"{esc(alt)}\" loading=\"eager\">"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def fig_problem(label: str, reason: str, skipped: bool) -> str:
    if skipped:
        return f"<p class=\"missing\">{esc(label)} not drawn: {esc(reason)}</p>"
    return f"<p class=\"figerr\">{esc(label)} could not be drawn: {esc(reason)}</p>"


def pre_json(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=1, sort_keys=True, default=str))}</pre>"


def pre_yaml(obj: Any) -> str:
    try:
        import yaml

        text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - a config that YAML cannot dump is shown as JSON
        text = json.dumps(obj, indent=1, default=str)
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
