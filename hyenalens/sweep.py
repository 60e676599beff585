"""`hyenalens sweep`: every point of a sweep (models/config/sweep.py) as a normal run directory.

    SWEEP_DIR/sweep.json                    the expanded sweep; a rerun must expand to the same points
    SWEEP_DIR/runs/<point>/                 one run directory each: train → capture → probe → analyze
    SWEEP_DIR/status/<point>.json           written when a run's pipeline finished: timings and the
                                            stamps (mtime, size) of the run's main files then
    SWEEP_DIR/analysis/formation_group.json analyze_group per sweep group (point name minus the seed)

A point whose status record is not stale (RunDir's rule: none of the run's main files changed
after it) and whose config digest matches is done and not touched again; any other
point goes through `pipeline.run_job`, whose stages all resume (training from its latest
checkpoint). Backends: a spawn process pool (local, the default; one torch thread per worker)
or Ray tasks (`pip install 'hyenalens[ray]'`; imported only when asked for). A run that fails
is reported at the end and does not stop the others.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from hyenalens.pipeline import Job, run_job, run_jobs, worker_init
from models.errors import UserError
from models.rundir.io import atomic_write_json
from models.rundir.layout import RunDir, is_stale
from models.config.sweep import Point, expand, load_sweep, read_record, sweep_record
from analysis import analyze_group

BACKENDS = ("local", "ray")
RAY_HINT = "install it with pip install 'hyenalens[ray]'"


# ---- the sweep directory -------------------------------------------------------------------
def _check_dir(out: Path, record: dict[str, Any]) -> bool:
    """True when `out` already holds this very sweep; refuses any other sweep or folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another path")
    old = read_record(out)
    if old is None:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"--out {out} is a non-empty folder without sweep.json; choose a new or empty folder")
        return False
    new = json.loads(json.dumps(record["points"]))  # as it reads back from JSON
    before = {p.get("name"): p for p in old["points"] if isinstance(p, dict)}
    after = {p["name"]: p for p in new}
    if before == after:
        return True
    diff = [f"{len(s)} run(s) {what}, e.g. {sorted(s)[0]}" for s, what in (
        (set(after) - set(before), "added"), (set(before) - set(after), "removed"),
        ({n for n in set(after) & set(before) if after[n] != before[n]}, "changed")) if s]
    raise UserError(f"{out} holds a different sweep ({'; '.join(diff)}); rerun it with its own sweep file, "
                    "or use another --out")


def _digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _stamped(run: RunDir) -> tuple[Path, ...]:
    """The run's main files, which a status record stamps: the pipeline's outputs."""
    return (run.config, run.metrics, run.index, run.metrics_csv, run.formation)


def _stamps(run: RunDir) -> dict[str, list[int]]:
    out = {}
    for p in _stamped(run):
        with contextlib.suppress(OSError):
            st = p.stat()
            out[p.relative_to(run.root).as_posix()] = [st.st_mtime_ns, st.st_size]
    return out


def _done(out: Path, point: Point) -> dict[str, Any] | None:
    """The status record of a finished point whose files all exist and none changed after
    the record was written (RunDir's staleness rule), else None."""
    status = out / "status" / f"{point.name}.json"
    try:
        rec = json.loads(status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = _stamped(RunDir(out / "runs" / point.name))
    ok = (isinstance(rec, dict) and rec.get("config_digest") == _digest(point.config)
          and all(p.is_file() for p in files) and not is_stale(status, files))
    return rec if ok else None


# ---- running one point ----------------------------------------------------------------------
def _run_one(job: Job) -> dict[str, Any]:
    """run_job with a failure returned, not raised, so one bad run does not stop the sweep."""
    try:
        return run_job(job)
    except Exception as e:  # noqa: BLE001 - reported per run when the sweep ends
        return {"run": job.out, "error": (f"{type(e).__name__}: {e}".splitlines() or ["?"])[0]}


def _ray_task(job: Job, threads: int) -> dict[str, Any]:
    worker_init(threads)
    return _run_one(job)


def _import_ray():
    if importlib.util.find_spec("ray") is None:
        raise UserError(f"--backend ray needs Ray, which is not installed here; {RAY_HINT}")
    import ray

    return ray


@contextlib.contextmanager
def _ray_session(address: str | None, workers: int | None, quiet: bool):
    """A connection to `address`, or a local Ray instance; a connection the caller already
    made (ray.init before us) is used as it is and left open."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    level = logging.ERROR if quiet else logging.WARNING
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     logging_level=level)
    except Exception as e:  # noqa: BLE001 - Ray raises several types for an unreachable cluster
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or reach {where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "check --address (e.g. auto or HOST:6379)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(ray, jobs: list[Job], threads: int, quiet: bool, on_result: Callable[[dict[str, Any]], None]) -> None:
    task = ray.remote(num_cpus=threads, max_retries=0)(_ray_task)
    refs = {task.remote(job, threads): job for job in jobs}
    pending = list(refs)
    with tqdm(total=len(jobs), desc="sweep (ray)", unit="run", disable=quiet) as bar:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker crash is that run's failure
                        res = {"run": refs[ref].out, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
                    on_result(res)
                    bar.update()
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


# ---- the sweep ------------------------------------------------------------------------------
def _only(points: list[Point], name: str, sweep: str) -> list[Point]:
    """The one point named `name` (a `run` of runs.csv, a folder of SWEEP_DIR/runs)."""
    chosen = [p for p in points if p.name == name]
    if not chosen:
        names = [p.name for p in points]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"--only {name}: sweep {sweep} has no run of that name; {hint}"
                        f"run names look like {names[0]} (sweep.json lists them all)")
    return chosen


def run_sweep(sweep: str, out: str | Path, *, backend: str = "local", address: str | None = None,
              workers: int | None = None, threads: int = 1, quiet: bool = False,
              only: str | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep into `out`; everything is validated before anything is written.
    With `only`, just that point runs (its directory is a full sweep directory, so the other
    points can be run into it later)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise UserError("--address names a Ray cluster; add --backend ray")
    if (workers is not None and workers < 1) or threads < 1:
        raise UserError(f"--workers {workers} and --threads {threads} must be >= 1")
    t0 = time.perf_counter()
    spec = load_sweep(sweep)
    points = expand(spec)
    record = sweep_record(spec, points)
    out = Path(out)
    same = _check_dir(out, record)
    if backend == "ray":
        _import_ray()  # a missing extra is bad input: refuse before anything is written
    chosen = _only(points, only, sweep) if only is not None else points
    done = {p.name: rec for p in chosen if same and (rec := _done(out, p)) is not None}
    todo = [p for p in chosen if p.name not in done]
    by_out = {str((out / "runs" / p.name).resolve()): p for p in todo}
    results: list[dict[str, Any]] = []

    def on_result(res: dict[str, Any]) -> None:
        point = by_out[res["run"]]
        res = {**res, "name": point.name, "group": point.group}
        if "error" not in res and res.get("finished"):
            run = RunDir(out / "runs" / point.name)
            atomic_write_json(out / "status" / f"{point.name}.json",
                              {"config_digest": _digest(point.config), "stamps": _stamps(run), **res})
        results.append(res)

    jobs = [Job(p.config, p.seed, run, (), spec.capture_limit) for run, p in by_out.items()]
    session = _ray_session(address, workers, quiet) if backend == "ray" and jobs else contextlib.nullcontext()
    with session as ray:
        if not same:
            atomic_write_json(out / "sweep.json", record)
        if jobs and backend == "ray":
            _run_ray(ray, jobs, threads, quiet, on_result)
        elif jobs:
            run_jobs(jobs, workers, quiet, threads=threads, run=_run_one, on_result=on_result, desc="sweep")
    skipped = [{**rec, "name": n, "skipped": True, "steps_trained": 0} for n, rec in done.items()]
    failed = [r for r in results if "error" in r]
    group = analyze_sweep(out, reuse_group=not results) if len(failed) < len(chosen) else None
    return {"name": spec.name, "out": str(out), "backend": backend, "points": len(chosen),
            "groups": len({p.group for p in chosen}), "ran": [r for r in results if "error" not in r],
            "skipped": skipped, "failed": failed, "analysis": group, "elapsed": time.perf_counter() - t0}


def analyze_sweep(sweep_dir: str | Path, out_path: str | Path | None = None, *,
                  reuse_group: bool = False) -> dict[str, Any]:
    """analyze_group per sweep group (the runs of one point over its seeds), written to
    SWEEP_DIR/analysis/formation_group.json in analyze_group's layout ("groups": {...}).
    With `reuse_group`, an existing file that is not stale against the status records
    (RunDir's rule) is read instead."""
    sweep_dir = Path(sweep_dir)
    record = read_record(sweep_dir)
    if record is None:
        raise UserError(f"{sweep_dir} has no sweep.json; it is not a sweep directory (run hyenalens sweep)")
    path = Path(out_path) if out_path else sweep_dir / "analysis" / "formation_group.json"
    if reuse_group and not is_stale(path, (sweep_dir / "status").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text(encoding="utf-8"))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in record["points"]:
        if RunDir(sweep_dir / "runs" / p["name"]).evaluated():
            groups.setdefault(p["group"], []).append(p)
    if not groups:
        raise UserError(f"no run of {sweep_dir} has been trained yet; run hyenalens sweep first")
    out: dict[str, Any] = {"group_by": "sweep point", "sweep": record.get("name"), "confidence": 0.95, "groups": {}}
    for name, pts in groups.items():
        res = analyze_group([sweep_dir / "runs" / p["name"] for p in pts], group_by="regime")
        out.setdefault("excluded", []).extend(res["excluded"])  # unfinished runs: named, in no estimate
        if not res["groups"]:
            continue  # every run of this point is unfinished
        (regime, summary), = res["groups"].items()  # a sweep group differs only by seed: one regime
        out["groups"][name] = {**summary, "regime": regime, "sweep_regime": pts[0]["regime"],
                               "params": pts[0]["params"], "seeds": [p["seed"] for p in pts],
                               "n_planned": sum(1 for p in record["points"] if p["group"] == name)}
    _answers(sweep_dir, out, groups)
    atomic_write_json(path, out)
    return out


def _answers(sweep_dir: Path, out: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> None:
    """The four answers across the sweep's groups (analysis.answers), as `hyenalens analyze`
    gives them for the same runs: grouped by experiment (one sweep group is one experiment) and
    labelled by task and regime, so causal/all pairs with causal/last of the same task and
    settings. `answer_groups` maps each answer label to its sweep group(s)."""
    runs = {p["name"]: p["group"] for pts in groups.values() for p in pts}
    combined = analyze_group([sweep_dir / "runs" / n for n in runs], group_by="regime")
    out["answers"] = combined["answers"]
    out["answer_groups"] = {label: sorted({runs[r] for r in g["runs"]}) for label, g in combined["groups"].items()}


def summary_lines(res: dict[str, Any]) -> list[str]:
    """What `hyenalens sweep` prints: counts and timing, then one line per group."""
    secs = {k: sum(r["times"][k] for r in res["ran"]) for k in ("train", "capture", "probe", "analyze")}
    lines = [f"sweep {res['name']}: {res['points']} runs in {res['groups']} groups ({res['backend']}): "
             f"{len(res['ran'])} run now, {len(res['skipped'])} already done, {len(res['failed'])} failed; "
             f"{res['elapsed']:.0f} s wall, worker seconds " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
    for name, g in ((res.get("analysis") or {}).get("groups") or {}).items():
        jump = g["recall_jump_midpoint"]["steps"]
        ci = f" (95% CI {jump['lo']:.0f}-{jump['hi']:.0f})" if jump.get("lo") is not None else ""
        where = f"recall jump at step {jump['value']:.0f}{ci}" if jump.get("value") is not None else "no recall jump"
        lines.append(f"  {name}: {g['n_runs']}/{g['n_planned']} runs, {where} in {jump['n']} run(s), "
                     f"seed claim {g['seed_claim']['verdict']}")
    answers = (res.get("analysis") or {}).get("answers") or {}
    if answers:
        lines.append("answers: " + "; ".join(f"{k}: {a['verdict']}" for k, a in answers.items() if isinstance(a, dict)))
    if res.get("analysis"):
        lines.append(f"per-group statistics: {Path(res['out']) / 'analysis' / 'formation_group.json'}")
    return lines
