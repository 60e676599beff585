"""The HTML report from small synthetic run directories (docs/architecture.md run format).

One module-scoped folder of runs is built once: a causal/all run with everything (checkpoints
of a tiny Hyena model, captures, metrics.csv, formation.json), a second causal/all seed, a
non-causal/last run with only metrics.jsonl + config, and a run whose name is
`<script>x</script>` (a folder `<script>x<` holding a run folder `script>`). The report over
that folder is written once and checked by several tests, headless Chromium included.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.errors import UserError

EVIL = "<script>x</script>"
STEPS = list(range(0, 1001, 25))
CKPT_STEPS = [0, 200, 350, 500, 1000]
MODEL = dict(kind="hyena", vocab_size=10, d_model=8, n_layers=2, order=2, causal=True, l_max=18,
             filter_order=16, embed_dropout=0.0)
DATA = dict(task="ar", vocab_size=10, input_seq_len=16, num_examples=64, num_test_examples=32)


def sig(x, mid, width):
    return 1.0 / (1.0 + np.exp(-(x - mid) / width))


def write_metrics(run: Path, mid: float, train_shift: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for s in STEPS:
        test = 0.1 + 0.9 * sig(s, mid, 25) + rng.normal(0, noise)
        rec = 0.05 + 0.95 * sig(s, mid + train_shift, 25)
        lines.append(dict(step=s, epoch=s / 100, lr=5e-4, wall_time=s / 10.0, train_loss=2.0 - 1.5 * sig(s, mid, 25),
                          test_loss=2.1 - 1.5 * sig(s, mid, 25), train_acc_all=0.3 + 0.28 * sig(s, mid + train_shift, 25),
                          train_acc_recallable=rec, train_acc_last=min(1.0, test + 0.02), test_acc_last=float(np.clip(test, 0, 1)),
                          train_acc_all_ceiling=0.59))
    (run / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def write_circuit_csv(run: Path, mid: float) -> None:
    rows = ["step,metric,layer,value,target,hook,role,control,ci,floor"]
    for s in STEPS[::2]:
        for l in (0, 1):
            rows.append(f"{s},prev_token_score,{l},{0.1 + 0.6 * sig(s, mid - 60, 30):.4f},,,,,")
            rows.append(f"{s},recall_score_values,{l},{0.05 + 0.5 * sig(s, mid + 10 * l, 25):.4f},,,,,")
            rows.append(f"{s},filter_lag1_mass,{l},{0.2 + 0.3 * sig(s, mid - 100, 40):.4f},,blocks.{l}.mixer.hook_filter,,,")
            acc = 0.2 + 0.7 * sig(s, mid - 20, 30)
            rows.append(f"{s},probe_answer,{l},{acc:.4f},answer,blocks.{l}.hook_resid_post,query,0.15,0.05")
            rows.append(f"{s},probe_answer_control,{l},0.15,answer,blocks.{l}.hook_resid_post,query,,")
            rows.append(f"{s},probe_answer_selectivity,{l},{acc - 0.15:.4f},answer,blocks.{l}.hook_resid_post,query,,")
        k = 0.1 + 0.3 * sig(s, mid, 30)
        v = 0.1 + 0.5 * sig(s, mid, 30)
        for name, val in (("keys", k), ("values", v), ("rest", 1 - k - v), ("query", 0.1)):
            rows.append(f"{s},attr_share_{name},-1,{val:.4f},,embed,,,")
    for s in (450, 500, 1000):
        f = sig(s, mid, 30)
        for l in (0, 1):
            for hook in ("hook_resid_pre", "hook_mixer_out", "mixer.hook_v"):
                for role, base in (("query", 0.3), ("match_key", 0.1), ("match_value", 0.6), ("other", 0.02),
                                   ("all", 1.0), ("none", 0.0)):
                    rows.append(f"{s},patch_recovery,{l},{base * f:.4f},,blocks.{l}.{hook},{role},,")
    rows = [rows[0]] + [r + (",0.1" if ",prev_token_score," in r else ",") for r in rows[1:]]
    (run / "analysis").mkdir(exist_ok=True)
    (run / "analysis" / "metrics.csv").write_text("\n".join(rows) + "\n")


SOURCE_ROLES = ("match_key", "match_value", "match_after", "match_pair", "other_pair", "query", "bias", "rest")
# an AR row (vocab 10: keys 1..4, values 5..8, `=>` 9): pairs (k, v), then `=>` and the query key 1
EX_TOKENS = [1, 5, 2, 6, 3, 7, 4, 8, 1, 5, 2, 6, 3, 7, 9, 1]


def swap_source_rows(mid: float, steps=tuple(STEPS[::4]), layers=(0, 1)) -> list[dict]:
    """The rows `hyenalens probe` writes for the swap test and the source decomposition
    (interp/swap.py, interp/decompose.py), with sigmoid-shaped curves around `mid`."""
    rows = []
    for s in steps:
        f = float(sig(s, mid, 30))
        follow = 0.05 + 0.9 * f
        for name, v, floor in (("follow", follow, 0.05), ("control", 0.05, 0.05), ("selectivity", follow - 0.05, 0.0),
                               ("drop", 3.0 * f, 0.0), ("key_drop", 1.5 * f if s else math.nan, math.nan),
                               ("key_control_drop", 0.1, math.nan), ("positions", 40.0, math.nan)):
            rows.append(dict(step=s, metric=f"recall_swap_{name}", layer=-1, value=v, ci=0.03, n=32, floor=floor))
        for l in layers:
            g = f if l == 0 else 0.5 * f
            share = dict(match_key=0.05, match_value=0.5 * g, match_after=0.1 * g, match_pair=0.1 + 0.6 * g,
                         other_pair=0.2 - 0.1 * g, query=0.3 - 0.2 * g, bias=0.05)
            share["rest"] = 1.0 - sum(share[r] for r in ("match_pair", "other_pair", "query", "bias"))
            for target, scale in (("direct", 1.0), ("grad", 0.8)):
                rows += [dict(step=s, metric="source_share", layer=l, value=scale * v, target=target, role=r, n=8)
                         for r, v in share.items()]
                rows.append(dict(step=s, metric="source_total", layer=l, value=0.5 + 4.0 * g, target=target, n=8))
            rows += [dict(step=s, metric="source_patch_follow", layer=l, value=v * g, role=r, n=8)
                     for r, v in (("match_key", 0.1), ("match_value", 0.8), ("match_after", 0.5), ("match_pair", 0.9))]
    return rows


def add_swap_source_rows(run: Path, mid: float) -> None:
    """Append `swap_source_rows` to RUN_DIR/analysis/metrics.csv (made when absent)."""
    import pandas as pd

    f = run / "analysis" / "metrics.csv"
    f.parent.mkdir(exist_ok=True)
    new = pd.DataFrame(swap_source_rows(mid))
    df = pd.concat([pd.read_csv(f), new], ignore_index=True) if f.is_file() else new
    df.to_csv(f, index=False)


def source_example(str_tokens: bool = True, step: int = 1000) -> dict:
    """A source_example.json as documented: terms large on the matching pair's footprint."""
    L = len(EX_TOKENS)
    rng = np.random.default_rng(7)
    roles = {"match_key": [0, 8], "match_value": [1, 9], "match_after": [2, 10], "match_pair": [1, 2, 9, 10],
             "other_pair": [3, 4, 5, 6, 7, 8, 11, 12, 13, 14], "query": [L - 1]}
    layers = []
    for l in (0, 1):
        terms = rng.normal(0, 0.1, L)
        terms[roles["match_pair"]] += 1.0 - 0.6 * l
        terms[L - 1] -= 0.3
        layers.append({"layer": l, "hook": f"blocks.{l}.hook_mixer_out", "target": "direct", "terms": terms.tolist(),
                       "bias": 0.1, "total": float(terms.sum() + 0.1), "roles": roles})
    ex = {"step": step, "row": 0, "qpos": L - 1, "tokens": EX_TOKENS, "answer": 5, "layers": layers}
    if str_tokens:
        ex["str_tokens"] = [f"k{t}" if t <= 4 else f"v{t}" if t <= 8 else "=>" for t in EX_TOKENS]
    return ex


def write_source_example(run: Path, ex: dict | None = None) -> None:
    (run / "analysis").mkdir(exist_ok=True)
    (run / "analysis" / "source_example.json").write_text(json.dumps(source_example() if ex is None else ex))


def write_formation(run: Path) -> None:
    """formation.json by analysis.formation when it exists, else the documented JSON from
    analysis.transitions on the accuracy curves and the circuit metrics."""
    try:
        from analysis.formation import analyze_run  # type: ignore
    except ImportError:
        analyze_run = None
    if analyze_run is not None:
        try:
            analyze_run(run)
            if (run / "analysis" / "formation.json").is_file():
                return
        except Exception:  # noqa: BLE001 - a colleague's module in flux: fall back to the documented JSON
            pass
    from analysis.transitions import detect_transitions

    ms = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in ms]
    tr = {c: [t.to_dict() for t in detect_transitions(steps, [m[c] for m in ms])]
          for c in ("test_acc_last", "train_acc_all", "train_acc_recallable")}
    import pandas as pd

    df = pd.read_csv(run / "analysis" / "metrics.csv")
    for (metric, layer), g in df[df.metric.isin(["prev_token_score", "recall_score_values"])].groupby(["metric", "layer"]):
        tr[f"{metric}/layer{layer}"] = [t.to_dict() for t in detect_transitions(g.step, g.value)]
    jump = tr["test_acc_last"][0]["midpoint"]
    lead = {k: {"steps": v[0]["midpoint"] - jump, "log_steps": math.log1p(v[0]["midpoint"]) - math.log1p(jump)}
            for k, v in tr.items() if v and k != "test_acc_last"}
    (run / "analysis" / "formation.json").write_text(json.dumps({"transitions": tr, "lead_lag": lead}))


def write_model_files(run: Path, cfg: dict) -> None:
    """Checkpoints of a tiny Hyena (weights moved off init step by step), a probe set, captures."""
    from interp.capture import capture_model, example_maps
    from interp.probe_set import make_probe_set
    from models import build_model, icl_dataset
    from models.rundir.checkpoint import checkpoint_name, save_checkpoint, write_index
    from models.rundir.io import atomic_save_tensors
    from models.rundir.layout import RunDir

    model = build_model(dict(cfg["model"]), seed=cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    data = icl_dataset("assoc_recall", DATA["vocab_size"], DATA["input_seq_len"], DATA["num_examples"],
                       DATA["num_test_examples"], seed=cfg["seed"])
    inputs, targets, roles = data.split("test")
    ps = make_probe_set(inputs, targets, roles, n_probe=16, n_circuit=4)
    (run / "capture").mkdir(parents=True, exist_ok=True)
    ps.save(run / "capture" / "probe_set.safetensors")
    prev, entries = 0, []
    for s in CKPT_STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * (s - prev) / 100 * torch.randn(p.shape, generator=g))
        prev = s
        f = run / "checkpoints" / checkpoint_name(s)
        save_checkpoint(f, model, step=s, epoch=s / 100, kind="hyena", config_hash="test", model_config=cfg["model"])
        entries.append({"step": s, "epoch": s / 100, "file": f.name})
        maps, info = example_maps(model, ps)  # what `hyenalens capture` stores for figure 4
        atomic_save_tensors(RunDir(run).capture_file(s), {**capture_model(model, ps), **maps}, {"step": s, "maps": info})
    write_index(run / "checkpoints" / "index.json", "test", entries)


def make_run(run: Path, seed: int, causal: bool = True, loss: str = "all", mid: float = 400.0,
             full: bool = True, extra_cfg: dict | None = None) -> Path:
    run.mkdir(parents=True)
    cfg = dict(seed=seed, loss=loss, model=dict(MODEL, causal=causal), data=dict(DATA), **(extra_cfg or {}))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "run.json").write_text(json.dumps({"seed": seed, "git": {"revision": "abc1234", "dirty": False}, "versions":
                                              {"hyenalens": "0.1.0", "torch": torch.__version__},
                                              "data": {"overlap": 3}}))
    write_metrics(run, mid, train_shift=30.0 * (seed + 1), noise=0.005, seed=seed)
    if full:
        write_model_files(run, cfg)  # captured before probed, as the commands run (else metrics.csv is stale)
        write_circuit_csv(run, mid)
        add_swap_source_rows(run, mid)
        write_source_example(run)
        write_formation(run)
    return run


def build_runs(root: Path) -> Path:
    runs = root / "sweep"
    make_run(runs / "causal_all_s0", 0, full=True)
    make_run(runs / "causal_all_s1", 1, mid=450.0, full=False)
    make_run(runs / "noncausal_last_s0", 0, causal=False, loss="last", mid=600.0, full=False)
    make_run(runs / "<script>x<" / "script>", 2, causal=False, loss="last", mid=650.0, full=False,
             extra_cfg={"note": "<img src=x onerror=alert(1)>"})
    return runs


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    from reports import write_report

    root = tmp_path_factory.mktemp("report")
    runs = build_runs(root)
    out = root / "out"
    write_report([runs], out)
    return out


# ------------------------------------------------------------------ tests
def test_report_renders(report_dir: Path):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    summary = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"),
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}: not strict JSON"))
    assert page.startswith("<!DOCTYPE html>")
    assert set(summary["regimes"]) == {"causal/all", "noncausal/last"}
    assert summary["regimes"]["causal/all"]["n_runs"] == 2
    # the jump of the sigmoid at 400 is found, with a CI over the two seeds
    mid = summary["regimes"]["causal/all"]["midpoint_test_acc_last"]
    assert 330 < mid["mean"] < 500 and mid["n"] == 2 and mid["ci"] is not None
    # one-sentence seed-claim verdict, with its numbers, right after the summary table
    sentence = summary["seed_claim"]["sentence"]
    assert sentence.count(". ") == 0 and "n=2" in sentence and "causal/all" in sentence
    assert page.index("<table") < page.index('id="seed-claim"') < page.index('id="figures"')
    # every figure but the ones whose inputs are missing was drawn; all <img> files exist
    status = {(f["figure"].split(" (")[0], f["status"]) for f in summary["figures"]}
    errors = [f for f in summary["figures"] if f["status"] == "error"]
    assert not errors, errors
    for n in range(1, 8):
        assert (f"figure {n}", "ok") in status, (n, status)
    assert ("figure 8", "ok") in status  # where the recall signal sits: the full run has its rows
    assert "fig8a_source_shares_" in page and "fig8b_source_example_" in page
    assert "figure 8 (noncausal_last_s0) not drawn" in page  # no metrics.csv: skipped, not an error
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 9
    for s in srcs:
        assert not s.startswith(("http:", "https:", "/", "file:")) and (report_dir / s).is_file()
    # a run with only metrics says what it lacks, in words, and still gets figure 1
    assert "analysis/metrics.csv is missing" in page
    assert "figure 2 (noncausal_last_s0) not drawn" in page
    # self-contained: no scripts, no external URLs
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_report_escapes_names_and_configs(report_dir: Path):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    # the only scripts are the explorer's own (its data block has no "<" at all, so a run name
    # can neither close it nor open a script of its own)
    from reports.explorer import EXPLORER_JS

    scripts = re.findall(r"<script[^>]*>", page, flags=re.IGNORECASE)
    assert set(scripts) <= {'<script type="application/json" class="hlx-data">', "<script>"}, scripts
    assert page.lower().count("<script>") == page.count(f"<script>{EXPLORER_JS}</script>")
    for block in re.findall(r'class="hlx-data">(.*?)</script>', page, flags=re.DOTALL):
        assert "<" not in block
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_report_cli_and_errors(tmp_path: Path, capsys):
    from hyenalens.cli import main

    run = make_run(tmp_path / "only", 0, full=False)
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "summary.json").is_file()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl" in err[0]


def test_missing_metrics_is_user_error(tmp_path: Path):
    from reports import load_run_data

    (tmp_path / "r").mkdir()
    with pytest.raises(UserError, match="metrics.jsonl"):
        load_run_data(tmp_path / "r")
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no evaluation records"):
        load_run_data(tmp_path / "r")


def test_figure_failure_is_logged_not_fatal(tmp_path: Path, monkeypatch):
    import reports.figures_curves as fc
    from reports import write_report

    run = make_run(tmp_path / "runs" / "a", 0, full=False)

    def boom(*a, **k):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(fc, "fig_training_curves", boom)
    summary = write_report([run], tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    assert "figure 1 (causal/all) could not be drawn: RuntimeError: synthetic failure" in page
    assert any(f["figure"] == "figure 7" and f["status"] == "ok" for f in summary["figures"])


# ------------------------------------------------------------------ headless Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
IMG_CHECK = ('<script>window.addEventListener("load",function(){var im=Array.prototype.slice.call(document.images);'
             'var d=document.createElement("pre");d.id="hl-imgcheck";d.textContent=JSON.stringify(im.map('
             'function(i){return [i.getAttribute("src"),i.complete,i.naturalWidth];}));'
             'document.body.appendChild(d);});</script>')


def _chromium() -> str:
    """Debian's chromium; installed here when absent and installable (as .ci/run does)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe:
        return exe
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       capture_output=True, timeout=900)
        exe = shutil.which("chromium")
        if exe:
            return exe
    pytest.skip("chromium is absent and cannot be installed here (needs root and apt-get: "
                "`apt-get install -y chromium`, as .ci/run does)")


def page_check(exe: str, tmp: Path, out_dir: Path, script: str, pre_id: str, window: str = "1280,800"):
    """Load a copy of out_dir/index.html with `script` added (beside the original, so relative
    image paths hold), dump its DOM after load, and return the JSON the script wrote into
    <pre id=pre_id>."""
    page = (out_dir / "index.html").read_text(encoding="utf-8")
    check = out_dir / f"_{pre_id}.html"
    check.write_text(page.replace("</body>", script + "</body>"), encoding="utf-8")
    try:
        res = _run_chromium(exe, tmp, "--virtual-time-budget=10000", f"--window-size={window}", "--dump-dom",
                            check.as_uri())
    finally:
        check.unlink()
    m = re.search(rf'<pre id="{pre_id}">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no {pre_id} report in the dumped DOM; chromium rc={res.returncode}: {res.stderr[-800:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_in_headless_chromium(report_dir: Path, tmp_path: Path):
    exe = _chromium()
    # every image loads: a copy of the page with a checking script, beside the original (same
    # relative image paths), its DOM dumped after load
    n_img = (report_dir / "index.html").read_text(encoding="utf-8").count("<img ")
    imgs = page_check(exe, tmp_path, report_dir, IMG_CHECK, "hl-imgcheck")
    assert len(imgs) == n_img >= 9
    broken = [src for src, complete, width in imgs if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken}"

    # the original page, screenshot: not blank
    shot = tmp_path / "shot.png"
    res = _run_chromium(exe, tmp_path, "--window-size=1200,2000", f"--screenshot={shot}",
                        (report_dir / "index.html").as_uri())
    assert shot.is_file(), f"no screenshot; chromium rc={res.returncode}: {res.stderr[-800:]}"
    import matplotlib.image as mpimg

    px = mpimg.imread(str(shot))[..., :3]
    assert px.shape[0] >= 1000 and px.shape[1] >= 1000
    non_white = float((px.min(axis=-1) < 0.9).mean())
    assert px.std() > 0.05 and non_white > 0.02, (px.std(), non_white)


def test_combined_analysis_drives_regime_statistics(tmp_path: Path):
    """analyze_group's estimates and verdict replace the report's own, for the matching regime."""
    from reports.rundata import discover_runs, load_run_data
    from reports.groupfile import load_group
    from reports.summary import regime_key, regime_summary, run_numbers, seed_claim

    runs_dir = tmp_path / "runs"
    for s in (0, 1):
        make_run(runs_dir / f"causal_all_s{s}", s, mid=400.0 + 50 * s, full=False)
    runs = [load_run_data(p, n) for p, n in discover_runs([runs_dir])]
    numbers, keys = [run_numbers(r) for r in runs], [regime_key(r, runs) for r in runs]
    own = seed_claim(regime_summary(numbers, keys))
    assert own["verdict"] in ("consistent", "undetermined") and "n=2 of 2 runs" in own["sentence"]
    est = dict(value=0.5, lo=0.45, hi=0.55, n=2, method="percentile", confidence=0.95, note="")
    group = {"groups": {"causal/all": {"runs": ["causal_all_s0", "causal_all_s1"], "n_runs": 2,
             "seed_claim": {"train_minus_test_midpoint_log_steps": est, "verdict": "not consistent"}}}}
    (runs_dir / "formation_group.json").write_text(json.dumps(group))
    g, note = load_group(None, [runs_dir])
    assert g == group and "formation_group.json" in note
    regimes = regime_summary(numbers, keys, g)
    claim = seed_claim(regimes)
    assert claim["verdict"] == "not consistent" and "+0.50 log-steps" in claim["sentence"]
    assert regimes["causal/all"]["offset_train_acc_all_log_steps"]["ci"] == [0.45, 0.55]
    with pytest.raises(UserError, match="--group"):
        load_group(str(tmp_path / "nope.json"), [runs_dir])
