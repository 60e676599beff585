"""Every interp metric at every captured checkpoint: `hyenalens probe RUN_DIR` (`probe_run`).

Output: one tidy table RUN_DIR/analysis/metrics.csv (interp/metrics_table.py, atomically), one row per
(step, metric, layer, hook, role, target), sorted by step, columns `METRIC_COLUMNS`:

    step     checkpoint step
    metric   name (below)
    layer    block index; −1 where the metric is not about one layer (attribution, LDs, acc)
    value    the number
    target   filters: "o{order}_{forward|backward}" (order step o of h^o); probes: the probed
             label (prev_token / next_token / answer); else empty
    hook     the hook the metric reads: probes (blocks.{l}.hook_resid_post), patching (the
             patched hook), filters (…mixer.hook_filter / _rev); "embed" for attribution
    role     probes: the positions probed (value / key / query); patching: the position group
             (query / match_key / match_value / other / all / none)
    control  probe accuracy rows: the control-task accuracy (same as the _control row)
    ci       95% half-width where defined: probes (binomial), attribution shares (normal,
             over sequences), patch_recovery (percentile bootstrap over pairs), answer_acc
    n        test samples / sequences / pairs behind the value
    floor    the same (metric, layer, hook, role, target) on the random-initialized model
             build_model(run model config, run seed), i.e. the run's own initialization

Empty cells are missing values. Metric names:
- prev_token_score, recall_score_values, recall_score_keys: interp.scores on the token-level
  mean-|H| map with normalized rows (attention: the head-mean pattern), per layer, on the
  first `n_scores` circuit rows; the query row is the probe set's query position.
- filter_lag1_mass, filter_effective_length: interp.filters on the captured hook_filter
  (and hook_filter_rev), per layer and order step (`target`); Hyena only.
- probe_{prev_token,next_token,answer} (+ _control, _selectivity): interp.probes on
  blocks.{l}.hook_resid_post, per layer.
- attr_share_{keys,values,rest,query}, attr_delta, attr_delta_rel: interp.attribution on the
  first `n_attr` circuit rows (rest includes the query; query is reported on its own too).
- patch_recovery (hook and role columns), patch_ld_clean, patch_ld_corrupt: interp.patching on
  the first `n_patch` circuit pairs (tasks with key/value roles: AR, MQAR; none for IH).
- answer_acc: the model's own accuracy at the query over the whole probe set.
- recall_swap_{follow,control,selectivity,drop,positions,key_drop,key_control_drop}:
  interp.swap, the position-swap recall test on the whole probe set (seed `swap_seed`).
- source_share (target direct / grad, role), source_total (target): interp.decompose, the exact
  signed source decomposition of each layer's output at the query, on the first `n_sources`
  probe rows; source_patch_follow (role): its path patching by role with the value swap.
Definitions of every metric: docs/metrics.md.

The final checkpoint's per-source terms of one example (probe row 0) are written to
RUN_DIR/analysis/source_example.json (`source_example`), for the report's figure 8b. Every
checkpoint's part also holds, under "source_example", the per-source terms of the example the
capture's maps show (probe row `interp.capture.example_row`, the first circuit row), for the
report's training-time explorer (None where the layers have no per-source split).

Incremental: each checkpoint's rows are kept in RUN_DIR/analysis/metrics_parts/
step_{step:08d}.json with a signature (probe-set digest, metric version, options), the
seconds each part took and the example's terms; a rerun computes only checkpoints without a
matching part, and the floor once (floor.json), then rewrites metrics.csv from the parts. A
matching part written before parts held the example (no "source_example" key) only gets the
example added: one forward and one backward on one row, its rows are kept.

`evaluate_model(model, probe_set)` computes the same rows on a model object (no run dir).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from models.build import is_hyena
from models.data.vocab import icl_vocab, mqar_vocab
from models.errors import UserError
from models.rundir.io import atomic_write_json, atomic_write_text
from models.rundir.layout import RunDir
from models.rundir.run import load_checkpoint_model, random_init_model

from interp.attribution import attribution_metrics
from interp.capture import capture_model, default_hooks, example_row, load_step, n_layers_of
from interp.decompose import source_example, source_metrics
from interp.filters import LayerFilters, filter_metrics, model_filters
from interp.metrics_table import write_metrics_csv
from interp.patching import patch_recovery
from interp.probe_set import CAPTURE_VERSION, ProbeSet
from interp.probes import probe_hooks, run_probes
from interp.scores import map_for_scores, map_scores
from interp.sources import projectable
from interp.swap import probe_task, probe_vocab_size, swap_metrics, value_candidates, value_swap

METRICS_VERSION = 2


@dataclass
class MetricOptions:
    """What `evaluate_model` computes, and how much it costs. The row counts take the first
    rows of the probe set's circuit subset (`ProbeSet.circuit_idx`, 32 by default). The
    defaults keep capture + metrics of one safari-sized checkpoint (d_model 64, 2 layers,
    L 66, 256 probe sequences) near 1 s of one CPU core; raise them for tighter estimates."""

    probes: bool = True
    scores: bool = True
    filters: bool = True
    attribution: bool = True
    patching: bool = True
    ig_steps: int = 16          # Gauss-Legendre nodes of integrated gradients
    n_attr: int = 8             # circuit rows used for attribution (≤ the probe set's circuit rows)
    n_scores: int = 8           # circuit rows used for the map scores
    n_patch: int = 16           # circuit rows (clean/corrupted pairs) used for patching
    patch_hooks: list[str] | None = None  # None: interp.patching.default_patch_hooks
    swap: bool = True           # the position-swap recall test (interp.swap), whole probe set
    sources: bool = True        # the signed source decomposition and its patching (interp.decompose)
    n_sources: int = 32         # probe rows used for the decomposition and its path patching
    swap_seed: int = 0          # seeds the substitutes and control positions of the swap test
    skip_identical: bool = True

    def signature(self) -> dict[str, Any]:
        return asdict(self)


# ====================================================================== one model
def evaluate_model(
    model: nn.Module,
    ps: Any,
    acts: dict[str, Tensor] | None = None,
    options: MetricOptions | None = None,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Every metric on one model over a `ProbeSet` (interp.capture). `acts` are the captured
    activations (capture_model's output); when None they are captured here, in memory.
    Rows carry no `step` (the caller adds it). `timings` collects seconds per part."""
    opt = options or MetricOptions()
    t = timings if timings is not None else {}
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    n_layers = n_layers_of(model)

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        t[name] = t.get(name, 0.0) + t1 - t0
        return t1

    t0 = time.perf_counter()
    try:
        if acts is None:
            acts = capture_model(model, ps, default_hooks(model))
            t0 = tick("capture", t0)
        if "logits" in acts:
            acc = (acts["logits"][:, 0].argmax(-1) == ps.answer).double()
            rows.append(dict(metric="answer_acc", layer=-1, value=float(acc.mean()), n=ps.n,
                             ci=1.96 * float(acc.std()) / math.sqrt(ps.n)))
        if opt.probes:
            rows += run_probes(acts, ps, probe_hooks(acts, n_layers))
            t0 = tick("probes", t0)
        if opt.filters and is_hyena(model):
            rows += _filter_rows(acts, model, n_layers, ps.length)
            t0 = tick("filters", t0)
        circuit = ps.circuit()
        if opt.scores:
            rows += _score_rows(model, circuit, n_layers, opt.n_scores)
            t0 = tick("scores", t0)
        if opt.attribution:
            k = min(opt.n_attr, len(circuit["inputs"]))
            sub = {key: v[:k] for key, v in circuit.items()}
            rows += attribution_metrics(model, sub, n_steps=opt.ig_steps)
            t0 = tick("attribution", t0)
        if opt.patching:
            k = min(opt.n_patch, len(circuit["inputs"]))
            sub = {key: v[:k] for key, v in circuit.items()}
            rows += patch_recovery(model, sub, opt.patch_hooks, skip_identical=opt.skip_identical)
            t0 = tick("patching", t0)
        # the clean logits at the query, from the capture forward (slot 0 is the query)
        clean = acts["logits"][:, 0].float() if "logits" in acts and probe_task(ps) != "mqar" else None
        if opt.swap:
            rows += swap_metrics(model, ps, seed=opt.swap_seed, clean_logits=clean)
            t0 = tick("swap", t0)
        if opt.sources:
            swap = value_swap(ps, seed=opt.swap_seed)
            # without projectable layers no per-source split in d_model exists (docs/metrics.md)
            rows += source_metrics(model, ps, swap.inputs, swap.substitute, value_candidates(ps),
                                   rows=opt.n_sources, shares=projectable(model),
                                   clean_pred=None if clean is None else clean.argmax(-1))
            t0 = tick("sources", t0)
    finally:
        model.train(was_training)
    return rows


def _filter_rows(acts: dict[str, Tensor], model: nn.Module, n_layers: int, L: int) -> list[dict[str, Any]]:
    per_layer = []
    for l in range(n_layers):
        pre = f"blocks.{l}.mixer."
        if pre + "hook_filter" in acts:
            per_layer.append(LayerFilters(acts[pre + "hook_filter"].float(), acts.get(pre + "hook_filter_rev")))
        else:
            per_layer = None
            break
    if per_layer is None:
        per_layer = model_filters(model, L)
    rows = []
    for r in filter_metrics(per_layer):
        hook = f"blocks.{r['layer']}.mixer.hook_filter" + ("_rev" if r["direction"] == "backward" else "")
        rows.append(dict(metric=r["metric"], layer=r["layer"], value=r["value"], hook=hook,
                         target=f"o{r['order']}_{r['direction']}"))
    return rows


def _score_rows(model: nn.Module, circuit: dict[str, Tensor], n_layers: int, n: int) -> list[dict[str, Any]]:
    k = min(n, len(circuit["inputs"]))
    tokens = circuit["inputs"][:k]
    m, L = tokens.shape
    query = torch.zeros(m, L, dtype=torch.bool)
    query[torch.arange(m), circuit["qpos"][:k]] = True
    rows = []
    for l in range(n_layers):
        maps = map_for_scores(model, tokens, l)
        sc = map_scores(maps, query=query, match_value=circuit["match_value"][:k],
                        match_key=circuit["match_key"][:k])
        for name, v in sc.items():
            rows.append(dict(metric=name, layer=l, value=float(v), n=m))
    return rows


# ====================================================================== a run
def _read_part_data(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    """A part's whole JSON object when its signature matches, else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("signature") != signature:
        return None
    return data


def _read_part(path: Path, signature: dict[str, Any]) -> list[dict[str, Any]] | None:
    data = _read_part_data(path, signature)
    return None if data is None else data.get("rows")


def _write_part(path: Path, signature: dict[str, Any], rows: list[dict[str, Any]], seconds: dict[str, float],
                **extra: Any) -> None:
    atomic_write_text(path, json.dumps({"signature": signature, "rows": rows, "seconds": seconds, **extra},
                                       default=_json_num, allow_nan=True) + "\n")


def _part_todo(path: Path, signature: dict[str, Any], force: bool, want_example: bool) -> str | None:
    """What a checkpoint's part needs: "all" (missing, stale or forced), "example" (a matching
    part without the explorer's example), or None (complete)."""
    data = None if force else _read_part_data(path, signature)
    if data is None or data.get("rows") is None:
        return "all"
    return "example" if want_example and "source_example" not in data else None


def _example_terms(model: nn.Module, ps: Any, row: int) -> dict[str, Any] | None:
    """The per-source terms of probe row `row`, with its string tokens; None when the layers
    have no per-source split (interp.sources.projectable)."""
    if not projectable(model):
        return None
    ex = source_example(model, ps, value_candidates(ps), row=row)
    v = probe_vocab_size(ps)
    vocab = mqar_vocab(v) if probe_task(ps) == "mqar" else icl_vocab(v)
    ex["str_tokens"] = [vocab[t] if 0 <= t < len(vocab) else str(t) for t in ex["tokens"]]
    return ex


def _json_num(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def probe_run(
    run_dir: str | Path,
    progress: bool = True,
    force: bool = False,
    floor: bool = True,
    options: MetricOptions | None = None,
) -> Path:
    """Compute every metric at every captured checkpoint and write RUN_DIR/analysis/metrics.csv.

    Checkpoints whose part is already computed (same probe set, version and options) are not
    recomputed unless `force`. Returns the path of metrics.csv."""
    from tqdm.auto import tqdm

    run = RunDir(run_dir)
    run_dir = run.root
    opt = options or MetricOptions()
    if not run.probe_set.is_file():
        raise UserError(f"{run_dir} has no capture yet; run `hyenalens capture {run_dir}` first")
    cfg = run.run_config()
    ps = ProbeSet.load(run.probe_set)
    digest = ps.digest()
    signature = {"probe_set": digest, "version": METRICS_VERSION, "options": opt.signature()}
    listed = {s for s, _ in run.list_checkpoints()}  # a pruned checkpoint's capture is stale
    steps = []
    for s in run.captured_steps():
        if s not in listed:
            continue
        meta = run.capture_meta(s)
        if meta and meta.get("probe_set") == digest and meta.get("version") == CAPTURE_VERSION:
            steps.append(s)
    if not steps:
        raise UserError(f"{run_dir} has no captured checkpoint for its probe set; run `hyenalens capture {run_dir}`")
    need = {s: _part_todo(run.part_file(s), signature, force, opt.sources) for s in steps}
    todo = [s for s in steps if need[s]]
    floor_path = run.metrics_parts / "floor.json"
    need_floor = floor and (force or _read_part(floor_path, signature) is None)
    bar = tqdm(total=len(todo) + int(need_floor), desc=f"probe {run_dir.name}", unit="ckpt",
               disable=not progress or not (todo or need_floor))
    if need_floor:
        bar.set_postfix(step="floor")
        secs: dict[str, float] = {}
        rows = evaluate_model(random_init_model(cfg), ps, options=opt, timings=secs)
        _write_part(floor_path, signature, rows, secs)
        bar.update()
    for s in todo:
        bar.set_postfix(step=s)
        secs = {}
        t0 = time.perf_counter()
        if need[s] == "example":  # only the explorer's example is missing: keep the rows
            old = _read_part_data(run.part_file(s), signature) or {}
            model = load_checkpoint_model(run_dir, s, cfg)
            example = _example_terms(model, ps, example_row(ps))
            _write_part(run.part_file(s), signature, old["rows"], dict(old.get("seconds") or {},
                        source_example=time.perf_counter() - t0), source_example=example)
            del model
            bar.update()
            continue
        acts, _ = load_step(run_dir, s)
        model = load_checkpoint_model(run_dir, s, cfg)
        secs["load"] = time.perf_counter() - t0
        rows = evaluate_model(model, ps, acts=acts, options=opt, timings=secs)
        extra = {}
        if opt.sources:
            t1 = time.perf_counter()
            extra["source_example"] = _example_terms(model, ps, example_row(ps))
            secs["source_example"] = time.perf_counter() - t1
        _write_part(run.part_file(s), signature, rows, secs, **extra)
        del acts, model
        bar.update()
    bar.close()
    table = []
    for s in steps:
        for r in _read_part(run.part_file(s), signature) or []:
            table.append(dict(r, step=s))
    floor_rows = _read_part(floor_path, signature) if floor else None
    write_metrics_csv(run.metrics_csv, table, floor_rows)
    if opt.sources:
        _write_source_example(run, steps[-1], cfg, ps, signature, force)
    return run.metrics_csv


def _write_source_example(run: RunDir, step: int, cfg: Any, ps: Any, signature: dict, force: bool) -> None:
    """The final checkpoint's per-source terms of probe row 0 (the report draws them)."""
    path = run.source_example
    if not force and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("step") == step and old.get("signature") == signature:
            return
    ex = _example_terms(load_checkpoint_model(run.root, step, cfg), ps, row=0)
    if ex is not None:
        atomic_write_json(path, dict(ex, step=step, signature=signature))
