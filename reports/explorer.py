"""The report's training-time explorer: for one run, a slider over ≤ 20 of its captured
checkpoints (denser around the accuracy jump) that redraws, for one example (the probe-set row
figure 4 shows), the implicit-attention map per layer, the filter heatmap |h| by channel × lag
(backward lags left of 0, forward right) per layer and order step, and the signed per-source
terms per layer with the matching-pair / other-pair / query footprints shaded (as figure 8b), with
the accuracy curve (test_acc_last over steps) marking the chosen step.

Offline and self-contained: the data sits in the page as JSON (matrices as log-scaled uint8,
base64) and a small inline script draws it on `<canvas>` elements; no server, network or PNGs.

Only reads (never a checkpoint, never torch): the maps and filters from the capture files
(`RunDir.read_capture`: `capture_map_key(l)`, `blocks.{l}.mixer.hook_filter[_rev]`), the terms
from each checkpoint's metrics part (`RunDir.part_file(step)`, key "source_example", which
`hyenalens probe` writes; interp/run_metrics.py), the accuracy from metrics.jsonl.

    data = explorer_data(rd)          # a dict (JSON-able); ExplorerMissing names the command
    html = explorer_html(data, "x1")  # the explorer's markup (+ EXPLORER_JS once per page)
"""
from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import numpy as np

from models.rundir.layout import CAPTURE_MAP_PREFIX, RunDir, capture_map_key
from reports import html as H
from reports.rundata import RunData

MAX_STEPS = 20
MAP_FLOOR = 1e-3      # maps: log scale over [vmax · MAP_FLOOR, vmax] per layer, shared by the steps
FILTER_FLOOR = 1e-4   # filters: the same with this floor
MAX_CELLS = 128       # a longer axis (positions, lags) is max-pooled down to at most this many cells
_FILTER_RE = re.compile(r"^blocks\.(\d+)\.mixer\.hook_filter(_rev)?$")


class ExplorerMissing(Exception):
    """The run lacks what the explorer reads; the message names the command that makes it."""


# ------------------------------------------------------------------ which checkpoints
def choose_steps(available: list[int], jump: dict[str, float] | None, k: int = MAX_STEPS) -> list[int]:
    """≤ k distinct steps of `available`, first and last included: without a jump, evenly
    spread in log-step (ln(step+1)); with one, 40% spread over the run and 60% evenly in
    log-step over the jump's [onset, end] widened by half its width on each side. Each target
    takes the nearest step not yet taken."""
    av = np.asarray(sorted(set(int(s) for s in available)), dtype=float)
    if len(av) <= k:
        return [int(s) for s in av]
    lx = np.log1p(av)
    lo, hi = float(lx[0]), float(lx[-1])
    if jump and all(_finite(jump.get(n)) for n in ("onset", "end")):
        a, b = math.log1p(max(float(jump["onset"]), 0.0)), math.log1p(max(float(jump["end"]), 0.0))
        pad = max(b - a, 1e-6) / 2
        a, b = max(lo, a - pad), min(hi, b + pad)
        n_wide = max(2, round(0.4 * k))
        targets = list(np.linspace(lo, hi, n_wide)) + list(np.linspace(a, b, k - n_wide))
    else:
        targets = list(np.linspace(lo, hi, k))
    taken: set[int] = set()
    for t in targets:
        free = [i for i in range(len(av)) if i not in taken]
        taken.add(min(free, key=lambda i: abs(lx[i] - t)))
    return [int(av[i]) for i in sorted(taken)]


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _jump(rd: RunData) -> dict[str, float] | None:
    """The largest test_acc_last transition of formation.json (None without the file)."""
    return rd.jump() if rd.formation else None


# ------------------------------------------------------------------ reading
def read_part_example(run: RunDir, step: int) -> tuple[bool, dict[str, Any] | None, str | None]:
    """(has the key, the step's "source_example" or None, the part's probe-set digest)."""
    try:
        data = json.loads(run.part_file(step).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False, None, None
    if not isinstance(data, dict) or "source_example" not in data:
        return False, None, None
    sig = data.get("signature") or {}
    return True, data["source_example"], sig.get("probe_set") if isinstance(sig, dict) else None


def _quantize(m: np.ndarray, vmax: float, floor: float) -> str:
    """|m| on a log scale over [vmax·floor, vmax] → uint8 (0: at or below the floor), base64."""
    v = np.abs(np.asarray(m, dtype=np.float64))
    top = max(vmax, 1e-30)
    q = (np.log10(np.maximum(v, top * floor)) - math.log10(top * floor)) / -math.log10(floor)
    return base64.b64encode(np.round(np.clip(q, 0, 1) * 255).astype(np.uint8).tobytes()).decode("ascii")


def _pool(m: np.ndarray, f: int, axes: tuple[int, ...]) -> np.ndarray:
    """Max over blocks of f along `axes` (zero-padded at the end); f = 1: `m` itself."""
    if f <= 1:
        return m
    for ax in axes:
        n = m.shape[ax]
        pad = [(0, 0)] * m.ndim
        pad[ax] = (0, -n % f)
        m = np.pad(m, pad)
        shape = m.shape[:ax] + (m.shape[ax] // f, f) + m.shape[ax + 1:]
        m = m.reshape(shape).max(axis=ax + 1)  # [..., n/f, f, ...] → [..., n/f, ...]
    return m


def _two_sided(fwd: np.ndarray, bwd: np.ndarray | None) -> np.ndarray:
    """[N−1, d, lags]: backward lags −(L−1)…−1 then forward 0…L−1 (figure 3's layout)."""
    return fwd if bwd is None else np.concatenate([bwd[..., :0:-1], fwd], axis=-1)


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if _finite(x) else None


def explorer_data(rd: RunData, k: int = MAX_STEPS) -> dict[str, Any]:
    """The explorer's data for run `rd` (module doc); ExplorerMissing when it has no maps."""
    run = RunDir(rd.path)
    if not rd.mapped:
        raise ExplorerMissing(f"run {rd.name} has no captured maps; run `hyenalens capture {rd.path}`")
    metas = {s: run.capture_meta(s) or {} for s in rd.mapped}
    terms: dict[int, dict[str, Any] | None] = {}
    notes: list[str] = []
    for s in rd.mapped:
        has, ex, digest = read_part_example(run, s)
        if has and digest == metas[s].get("probe_set") and (ex is None or ex.get("row") == metas[s]["maps"].get("row")):
            terms[s] = ex
    if not terms:
        notes.append(f"no per-source terms per checkpoint; run `hyenalens probe {rd.path}`")
    steps = choose_steps(list(terms) or rd.mapped, _jump(rd), k)
    n_layers = int(metas[steps[0]]["maps"]["layers"])
    keys = {capture_map_key(l) for l in range(n_layers)}
    maps, filters = [], []
    for s in steps:
        arr, _ = run.read_capture(s, keep=lambda n: n in keys or _FILTER_RE.match(n) is not None)
        maps.append([np.abs(arr[capture_map_key(l)].astype(np.float64)) for l in range(n_layers)])
        per: dict[int, list] = {}
        for name, v in arr.items():
            m = _FILTER_RE.match(name)
            if m:
                per.setdefault(int(m.group(1)), [None, None])[1 if m.group(2) else 0] = v.astype(np.float64)
        filters.append([np.abs(_two_sided(*per[l])) for l in range(n_layers)] if len(per) == n_layers else None)
    L = int(maps[0][0].shape[-1])
    pool = -(-L // MAX_CELLS)  # ceil: the map cells per position block
    maps = [[_pool(m, pool, (0, 1)) for m in per] for per in maps]
    two_sided = filters[0] is not None and filters[0][0].shape[-1] != L  # backward lags present
    filters = [None if f is None else [_pool(x, -(-x.shape[-1] // MAX_CELLS), (2,)) for x in f] for f in filters]
    map_vmax = [float(max(m[l].max() for m in maps)) for l in range(n_layers)]
    data: dict[str, Any] = {
        "run": rd.name, "regime": rd.regime, "kind": rd.kind, "steps": steps, "layers": n_layers, "L": L,
        "map_cells": int(maps[0][0].shape[-1]), "pool": pool,
        "row": metas[steps[0]]["maps"].get("row"), "roles": metas[steps[0]]["maps"].get("roles") or {},
        "jump": _jump(rd), "notes": notes, "map_floor": MAP_FLOOR, "filter_floor": FILTER_FLOOR,
        "maps": {"vmax": map_vmax, "data": [[_quantize(m[l], map_vmax[l], MAP_FLOOR) for l in range(n_layers)]
                                            for m in maps]},
    }
    if all(f is not None for f in filters):
        f_vmax = [float(max(f[l].max() for f in filters)) for l in range(n_layers)]
        orders, d, lags = filters[0][0].shape
        data["filters"] = {"orders": int(orders), "d": int(d), "lags": int(lags), "two_sided": two_sided,
                           "vmax": f_vmax,
                           "data": [[[_quantize(f[l][o], f_vmax[l], FILTER_FLOOR) for o in range(orders)]
                                     for l in range(n_layers)] for f in filters]}
    else:
        data["filters"] = None
        if rd.kind != "attention":
            notes.append(f"a chosen capture lacks hook_filter; rerun `hyenalens capture {rd.path}`")
    data["terms"] = None if not terms else [_terms_of(terms.get(s)) for s in steps]
    first = next((terms[s] for s in steps if terms.get(s)), None)
    data["str_tokens"] = (first or {}).get("str_tokens")
    data["footprints"] = [lay.get("roles") or {} for lay in first["layers"]] if first else None
    if terms and first is None:
        notes.append("the layers have no per-source split (not projectable): no contribution bars")
    acc = rd.metrics[["step", "test_acc_last"]].dropna() if "test_acc_last" in rd.metrics else None
    data["curve"] = None if acc is None or acc.empty else {
        "step": [int(s) for s in acc["step"]], "acc": [_round(float(a)) for a in acc["test_acc_last"]]}
    return data


def _terms_of(ex: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if not ex:
        return None
    return [{"terms": [_round(t) for t in lay["terms"]], "bias": _round(lay["bias"]), "total": _round(lay["total"])}
            for lay in ex["layers"]]


# ------------------------------------------------------------------ the page
def _json_script(data: dict[str, Any]) -> str:
    """JSON inside <script type="application/json"> without any "<" (a JSON escape), so that no
    name in it can close the element or open another."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def explorer_html(data: dict[str, Any], uid: str) -> str:
    """One explorer's markup; the page needs `EXPLORER_JS` once, after every explorer."""
    n = len(data["steps"])
    notes = "".join(f"<p class=\"missing\">{H.esc(t)}</p>" for t in data["notes"])
    return (f"<div class=\"hl-explorer\" id=\"{H.esc(uid)}\">"
            f"<h3>{H.esc(data['regime'])} — run {H.esc(data['run'])}</h3>{notes}"
            f"<div class=\"hlx-ctl\"><input type=\"range\" class=\"hlx-slider\" min=\"0\" max=\"{n - 1}\" "
            f"value=\"{n - 1}\" step=\"1\" aria-label=\"checkpoint\"> <span class=\"hlx-label\"></span></div>"
            f"<div class=\"hlx-panels\"></div>"
            f"<script type=\"application/json\" class=\"hlx-data\">{_json_script(data)}</script></div>")


def explorer_section(by_regime: dict[str, list[RunData]]) -> str:
    """The report's "Training-time explorer" section: one explorer per regime (its first run),
    a one-line note (naming the command) for a run without the data."""
    parts = ["<h2 id=\"explorer\">Training-time explorer</h2>",
             "<p class=\"note\">Move the slider to pick a checkpoint (≤ 20 per run, denser around the accuracy "
             "jump). One example (the probe-set row of figure 4): the implicit-attention map per layer "
             f"(log color over [{MAP_FLOOR:g}·max, max] per layer, shared by the steps); the filters |h| by channel × "
             f"lag (log over [{FILTER_FLOOR:g}·max, max]); the signed direct per-source terms at the query per layer "
             "(shaded: matching pairs blue, other pairs red, query green; K/V/A: matching key, value, the "
             "position after it), scaled per step; the accuracy curve marks the chosen step.</p>"]
    drawn = 0
    for i, (regime, runs) in enumerate(by_regime.items()):
        if not runs:
            continue
        rd = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, r.name))[0]
        try:
            parts.append(explorer_html(explorer_data(rd), f"hlx-{i}-{rd.slug}"))
            drawn += 1
        except ExplorerMissing as e:
            parts.append(f"<p class=\"missing\">explorer ({H.esc(regime)}) not drawn: {H.esc(e)}</p>")
        except Exception as e:  # noqa: BLE001 - a damaged run's explorer never loses the page
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            parts.append(f"<p class=\"figerr\">explorer ({H.esc(regime)}) could not be drawn: {H.esc(why)}</p>")
    if drawn:
        parts.append(f"<script>{EXPLORER_JS}</script>")
    return "".join(parts)


# The drawing script (once per page): reads each .hl-explorer's JSON, builds its canvases, and
# redraws them on the slider's `input` event. The accuracy canvas keeps the marker's x in
# data-marker-x (a test reads it).
EXPLORER_JS = r"""
(function(){
var VIR=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function cmap(q){var t=q/255*4,i=Math.min(3,Math.floor(t)),f=t-i,a=VIR[i],b=VIR[i+1];
 return [a[0]+(b[0]-a[0])*f,a[1]+(b[1]-a[1])*f,a[2]+(b[2]-a[2])*f];}
function bytes(b64){var s=atob(b64),u=new Uint8Array(s.length);for(var i=0;i<s.length;i++)u[i]=s.charCodeAt(i);return u;}
function el(tag,cls,txt){var e=document.createElement(tag);if(cls)e.className=cls;if(txt!=null)e.textContent=txt;return e;}
function canvas(parent,title,w,h){var box=el("div","hlx-box");box.style.display="inline-block";
 box.style.margin="4px 10px 4px 0";box.style.verticalAlign="top";box.appendChild(el("div","note",title));
 var c=el("canvas");c.width=w;c.height=h;c.style.border="1px solid #ddd";box.appendChild(c);parent.appendChild(box);return c;}
function heat(c,b64,rows,cols){var u=bytes(b64),ctx=c.getContext("2d"),im=ctx.createImageData(c.width,c.height),
 sx=c.width/cols,sy=c.height/rows;for(var y=0;y<c.height;y++){var r=Math.min(rows-1,Math.floor(y/sy));
 for(var x=0;x<c.width;x++){var k=Math.min(cols-1,Math.floor(x/sx)),v=cmap(u[r*cols+k]),o=(y*c.width+x)*4;
 im.data[o]=v[0];im.data[o+1]=v[1];im.data[o+2]=v[2];im.data[o+3]=255;}}ctx.putImageData(im,0,0);}
function marks(c,roles,L,pool){var ctx=c.getContext("2d"),s=c.width/L,q=(roles.query||[])[0];
 ctx.strokeStyle="#ff4d4d";ctx.lineWidth=1;if(q!=null){ctx.strokeRect(0,Math.floor(q/pool)*s,c.width,s);}
 ctx.fillStyle="#fff";ctx.font="9px sans-serif";[["match_key","K"],["match_value","V"]].forEach(function(p){
 (roles[p[0]]||[]).forEach(function(j){ctx.fillText(p[1],Math.floor(j/pool)*s+1,9);});});}
var FP=[["match_pair","rgba(31,78,156,0.16)"],["other_pair","rgba(209,73,91,0.10)"],["query","rgba(42,157,143,0.22)"]];
function bars(c,lay,fp,toks,L){var ctx=c.getContext("2d"),W=c.width,Hh=c.height,top=14,bot=Hh-16,mid=(top+bot)/2,s=W/L;
 ctx.fillStyle="#fff";ctx.fillRect(0,0,W,Hh);FP.forEach(function(p){ctx.fillStyle=p[1];
 (fp[p[0]]||[]).forEach(function(j){ctx.fillRect(j*s,top,s,bot-top);});});
 ctx.fillStyle="#333";ctx.font="9px sans-serif";[["match_key","K"],["match_value","V"],["match_after","A"]].forEach(function(p){
 (fp[p[0]]||[]).forEach(function(j){ctx.fillText(p[1],j*s+s/2-3,10);});});
 ctx.strokeStyle="#999";ctx.beginPath();ctx.moveTo(0,mid);ctx.lineTo(W,mid);ctx.stroke();
 if(!lay){ctx.fillStyle="#8a5300";ctx.fillText("no terms at this step",6,mid-4);return;}
 var m=1e-12;lay.terms.forEach(function(t){if(t!=null)m=Math.max(m,Math.abs(t));});
 lay.terms.forEach(function(t,j){if(t==null)return;var h=t/m*(bot-top)/2;ctx.fillStyle=t>=0?"#264653":"#e76f51";
 ctx.fillRect(j*s+s*0.15,t>=0?mid-h:mid,s*0.7,Math.abs(h));});
 if(toks){ctx.fillStyle="#444";toks.forEach(function(t,j){if(s>=7)ctx.fillText(String(t).slice(0,3),j*s+1,Hh-4);});}
 return m;}
function curve(c,cv,steps,jump,cur){var ctx=c.getContext("2d"),W=c.width,Hh=c.height,l=34,r=W-8,t=8,b=Hh-18;
 ctx.fillStyle="#fff";ctx.fillRect(0,0,W,Hh);var lx=function(s){return Math.log(1+Math.max(s,0));},
 a=lx(cv.step[0]),z=lx(cv.step[cv.step.length-1]);if(z<=a)z=a+1;var X=function(s){return l+(lx(s)-a)/(z-a)*(r-l);},
 Y=function(v){return b-v*(b-t);};ctx.strokeStyle="#ccc";ctx.strokeRect(l,t,r-l,b-t);
 ctx.fillStyle="#555";ctx.font="9px sans-serif";ctx.fillText("1",l-10,t+6);ctx.fillText("0",l-10,b);
 ctx.fillText("test_acc_last vs step (log)",l+4,Hh-4);
 if(jump&&jump.midpoint!=null){ctx.strokeStyle="#aaa";ctx.setLineDash([3,3]);ctx.beginPath();
 ctx.moveTo(X(jump.midpoint),t);ctx.lineTo(X(jump.midpoint),b);ctx.stroke();ctx.setLineDash([]);}
 ctx.strokeStyle="#1f4e9c";ctx.lineWidth=1.5;ctx.beginPath();var on=false;cv.step.forEach(function(s,i){
 var v=cv.acc[i];if(v==null){on=false;return;}if(on)ctx.lineTo(X(s),Y(v));else ctx.moveTo(X(s),Y(v));on=true;});
 ctx.stroke();ctx.lineWidth=1;ctx.fillStyle="#777";steps.forEach(function(s){ctx.fillRect(X(s)-1,b-4,2,4);});
 var mx=X(cur);ctx.strokeStyle="#d62828";ctx.lineWidth=2;ctx.beginPath();ctx.moveTo(mx,t);ctx.lineTo(mx,b);ctx.stroke();
 ctx.lineWidth=1;c.setAttribute("data-marker-x",mx.toFixed(2));}
function init(root){var D=JSON.parse(root.querySelector(".hlx-data").textContent),P=root.querySelector(".hlx-panels"),
 sl=root.querySelector(".hlx-slider"),lab=root.querySelector(".hlx-label"),L=D.L,M=D.map_cells,n=D.layers,
 cs={maps:[],filt:[],bars:[]};var ms=Math.max(1,Math.floor(240/M));var row=el("div");P.appendChild(row);
 if(D.curve)cs.curve=canvas(row,"accuracy",420,180);
 for(var l=0;l<n;l++)cs.maps.push(canvas(row,"implicit attention, layer "+l+" (rows: query pos.)",M*ms,M*ms));
 if(D.filters){var F=D.filters,fr=el("div");P.appendChild(fr);for(l=0;l<n;l++){cs.filt.push([]);
 for(var o=0;o<F.orders;o++)cs.filt[l].push(canvas(fr,"filter |h|, layer "+l+(F.orders>1?" step "+o:"")+
 " (channel × lag"+(F.two_sided?", 0 at center":"")+")",Math.max(F.lags,Math.min(480,F.lags*4)),Math.min(256,Math.max(F.d,F.d*2))));}}
 if(D.terms){var br=el("div");P.appendChild(br);for(l=0;l<n;l++)cs.bars.push(canvas(br,"per-source terms, layer "+l,
 Math.min(1200,Math.max(360,L*12)),150));}
 function draw(){var i=+sl.value,s=D.steps[i],txt="step "+s+" ("+(i+1)+" of "+D.steps.length+")";
 for(var l=0;l<n;l++){heat(cs.maps[l],D.maps.data[i][l],M,M);marks(cs.maps[l],D.roles,M,D.pool);}
 if(D.filters)for(l=0;l<n;l++)for(var o=0;o<D.filters.orders;o++)heat(cs.filt[l][o],D.filters.data[i][l][o],D.filters.d,D.filters.lags);
 if(D.terms){var T=D.terms[i];for(l=0;l<n;l++){var lay=T?T[l]:null,m=bars(cs.bars[l],lay,D.footprints?D.footprints[l]:{},D.str_tokens,L);
 if(lay)txt+="; layer "+l+": total "+lay.total+", bar scale ±"+(+m).toPrecision(3);}}
 if(cs.curve)curve(cs.curve,D.curve,D.steps,D.jump,s);lab.textContent=txt;}
 sl.addEventListener("input",draw);draw();}
function all(){Array.prototype.forEach.call(document.querySelectorAll(".hl-explorer"),init);}
if(document.readyState==="loading")document.addEventListener("DOMContentLoaded",all);else all();
})();
"""
