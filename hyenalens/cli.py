"""`hyenalens` command line.

Each subcommand is registered by a `_cmd_*` function below; the heavy layers are imported
inside the command that needs them, so `hyenalens --help` stays fast.
Bad input (`models.errors.UserError`) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

import hyenalens
from hyenalens.runtime import tune_malloc
from models.config.schema import validate_config
from models.errors import UserError
from models.rundir.discover import discover_runs
from models.rundir.layout import RunDir


def _cmd_smoke(args: argparse.Namespace) -> int:
    from hyenalens.smoke import smoke

    return smoke(quiet=args.quiet)


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be >= 1")
        import torch

        torch.set_num_threads(args.threads)


def _cmd_train(args: argparse.Namespace) -> int:
    _set_threads(args)
    from models.training.loop import train

    result = train(args.config, args.out, args.overrides, device=args.device, quiet=args.quiet,
                   max_steps=args.max_steps)
    if not args.quiet:
        m = result.last_metrics or {}
        acc = m.get("test_acc_last")
        state = "finished" if result.finished else f"stopped (rerun to continue to step {result.total_steps})"
        print(f"{result.run_dir}: {state} at step {result.step}, {result.checkpoints} checkpoints"
              + (f", test_acc_last {acc:.3f}" if acc is not None else ""))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports import write_report

    summary = write_report(args.run_dirs, args.out, detail="all" if args.all_runs else "first",
                           progress=not args.quiet, group=args.group)
    if not args.quiet:
        from pathlib import Path

        bad = [f["figure"] for f in summary["figures"] if f["status"] == "error"]
        print(summary["seed_claim"]["sentence"])
        if bad:
            print(f"{len(bad)} figure(s) could not be drawn: {', '.join(bad)} (reasons in the page)")
        print(Path(args.out).resolve() / "index.html")
    return 0


def _check_run_config(run_dir: str) -> None:
    """A RUN_DIR whose config.yaml is not HyenaLens' (a safari or Lightning folder) is refused
    naming the file and saying the folder is not a run, before any model is built."""
    run = RunDir(run_dir)
    if run.is_run():
        validate_config(run.read_config(), source=run.config, run_dir=run.root)


def _cmd_capture(args: argparse.Namespace) -> int:
    from interp.capture import capture_run

    _check_run_config(args.run_dir)
    _set_threads(args)

    hooks = [h for item in (args.hooks or []) for h in item.split(",") if h]
    out = capture_run(args.run_dir, hooks=hooks or None, n_probe=args.n_probe, seed=args.probe_seed,
                      progress=not args.quiet, limit=args.limit)
    if not args.quiet:
        print(f"{args.run_dir}: captured {len(out['captured'])} checkpoint(s), "
              f"{len(out['skipped'])} already captured")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from interp.run_metrics import probe_run

    _check_run_config(args.run_dir)
    _set_threads(args)

    path = probe_run(args.run_dir, progress=not args.quiet, force=args.force)
    if not args.quiet:
        print(path)
    return 0


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Usage errors of this subcommand as one line on stderr, exit 2 (bad input contract);
    KEY=VALUE overrides may come before or after the options (intermixed parsing)."""
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message}; see {parser.prog} --help\n")

    plain = parser.parse_known_args
    busy: list[bool] = []

    def parse_known_args(args=None, namespace=None):
        if busy:  # inside parse_known_intermixed_args
            return plain(args, namespace)
        busy.append(True)
        try:
            ns, extra = parser.parse_known_intermixed_args(args, namespace)
        finally:
            busy.pop()
        if extra:
            error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    return parser


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis import analyze_group, analyze_run

    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / "sweep.json").is_file():
        from hyenalens.sweep import analyze_sweep

        group = analyze_sweep(args.run_dirs[0], args.out)
        out = args.out or Path(args.run_dirs[0]) / "analysis" / "formation_group.json"
        print(f"{sum(g['n_runs'] for g in group['groups'].values())} runs in {len(group['groups'])} sweep groups; "
              f"wrote {out} and each run's formation.json")
        return 0
    runs = [path for path, _ in discover_runs(args.run_dirs)]
    if not runs:
        raise UserError(f"no run directories (with metrics.jsonl) under {' '.join(args.run_dirs)}; "
                        "train or import a run first")
    if len(runs) == 1 and args.out is None:
        formation = analyze_run(runs[0])
        trs = ", ".join(f"{j['midpoint']:.0f}" for j in formation["transitions"].get("test_acc_last", []))
        rj = formation["recall_jump"]
        jump = (f"recall jump at {rj['midpoint']:.0f}" if rj else formation["recall_jump_status"])
        rc, mech = formation["recall_circuit"], formation.get("mechanism") or {}
        circuit = (f"recall circuit (swap selectivity) at {rc['midpoint']:.0f}" if rc["status"] == "measured"
                   else f"recall circuit: {rc['status']}")
        print(f"{runs[0]}: {len(formation['transitions'])} curves timed; test_acc_last transitions at "
              f"{trs or 'none'}; {jump}; {circuit}; mechanism: {mech.get('verdict', 'not measured')}; "
              f"wrote {runs[0]}/analysis/formation.json")
        _say_missing(runs)
        return 0
    out = args.out or str(_common_folder(runs) / "analysis" / "formation_group.json")
    group = analyze_group(runs, out_path=out)
    print(f"{len(runs)} runs in {len(group.get('groups', {}))} groups; wrote {out} and each run's formation.json")
    _say_missing(runs)
    return 0


def _say_missing(runs) -> None:
    """One stderr line per analyzed run without analysis/metrics.csv: only its training curves
    were timed, and the commands that add the rest."""
    for run in map(RunDir, runs):
        if run.metrics_csv.is_file():
            continue
        todo = ([] if run.captured_steps() else [f"`hyenalens capture {run.root}`"]) + [f"`hyenalens probe {run.root}`"]
        print(f"hyenalens analyze: {run.root}: no analysis/metrics.csv, so only the training curves are "
              f"timed: the circuit metrics and the recall circuit are not; run {' and '.join(todo)}, "
              "then analyze again", file=sys.stderr)


def _common_folder(runs):
    from pathlib import Path

    parents = {Path(r).resolve().parent for r in runs}
    return parents.pop() if len(parents) == 1 else Path.cwd()


def _cmd_import_safari(args: argparse.Namespace) -> int:
    from models.safari.run_import import import_safari

    _set_threads(args)
    run = import_safari(args.safari_dir, args.out, trust_pickle=args.trust_pickle, quiet=args.quiet)
    print(f"imported {args.safari_dir} into {run}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hyenalens.pipeline import DEMO, QUICK, demo

    demo(args.out, seeds=args.seeds, attention_seeds=args.attention_seeds, workers=args.workers,
         quiet=args.quiet, overrides=tuple(args.overrides), plan=QUICK if args.quick else DEMO)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hyenalens.sweep import run_sweep, summary_lines

    res = run_sweep(args.sweep, args.out, backend=args.backend, address=args.address, workers=args.workers,
                    threads=1 if args.threads is None else args.threads, quiet=args.quiet,
                    only=args.only)
    if not args.quiet:
        print("\n".join(summary_lines(res)))
    for r in res["failed"]:
        print(f"hyenalens sweep: run {r['name']} failed: {r['error']}", file=sys.stderr)
    return 1 if res["failed"] else 0


def _cmd_study(args: argparse.Namespace) -> int:
    from reports.study import write_study

    res = write_study(args.sweep_dir, args.out, lr_sweep=args.lr_sweep)
    print(f"{len(res['runs'])} runs in runs.csv" + (f", {len(res['lr_runs'])} in lr_runs.csv" if args.lr_sweep else "")
          + f"; {len(res['figures'])} figures; wrote {args.out}")
    for m in [*res["missing"], *res["lr_missing"]]:
        print(f"hyenalens study: run {m['run']} is in no row ({m['reason']})", file=sys.stderr)
    return 0


def _threads_and_quiet(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or summary")


class _Version(argparse.Action):
    """`--version`: the version is looked up when asked for (hyenalens.__version__: the installed
    distribution's, else setup.cfg's), so neither it nor torch costs a normal start anything."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {hyenalens.__version__}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyenalens", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("smoke", help="build each model kind, run a batch, print what was checked")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_smoke)

    t = _one_line_errors(sub.add_parser(
        "train", help="train one run into a run directory (rerun to resume)",
        description="Train one run. CONFIG is a preset name (models/presets) or a YAML file; "
                    "KEY=VALUE overrides use dotted keys (docs/config.md)."))
    t.add_argument("config", metavar="CONFIG")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    t.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop at the first checkpoint at or after step N; rerun to continue")
    _threads_and_quiet(t)
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("report", help="write the HTML report (index.html, summary.json, figures) for runs",
                       description="Write DIR/index.html and DIR/summary.json. RUN_DIR is a run directory "
                                   "or a folder of runs (e.g. a sweep or demo output).")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--all-runs", action="store_true",
                   help="draw figures 2-6 for every run, not one run (the lowest seed) per regime")
    r.add_argument("--group", default=None, metavar="JSON",
                   help="a combined analysis (analyze_group's JSON) to take regime statistics from; "
                        "default: one found in a RUN_DIR folder or its analysis/")
    r.add_argument("--quiet", action="store_true", help="no progress or summary lines")
    r.set_defaults(func=_cmd_report)
    c = sub.add_parser("capture", help="store a probe set and every checkpoint's activations (rerun: only new ones)",
                       description="Draw a fixed probe set from the run's test split (once) and store the "
                                   "selected activations, filters and logits of every checkpoint under "
                                   "RUN_DIR/capture. Checkpoints already captured are skipped.")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("--hooks", action="append", metavar="NAME[,NAME...]",
                   help="extra hook names to store, besides the defaults (repeatable)")
    c.add_argument("--n-probe", type=int, default=None, metavar="N",
                   help="probe-set size on first capture (default 256)")
    c.add_argument("--probe-seed", type=int, default=None, metavar="S",
                   help="seed of the probe-set draw on first capture (default 0)")
    c.add_argument("--limit", type=int, default=None, metavar="N",
                   help="capture at most N checkpoints, dense around the accuracy transitions "
                        "(default: all; the first and last are always kept)")
    _threads_and_quiet(c)
    c.set_defaults(func=_cmd_capture)

    pr = sub.add_parser("probe", help="compute every interp metric at every captured checkpoint",
                        description="Write RUN_DIR/analysis/metrics.csv (probes, map scores, filters, "
                                    "attribution, patching) for every captured checkpoint; already "
                                    "computed checkpoints are reused.")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("--force", action="store_true", help="recompute every checkpoint")
    _threads_and_quiet(pr)
    pr.set_defaults(func=_cmd_probe)

    a = sub.add_parser("analyze", help="time transitions: formation.json per run, and per regime for several runs",
                       description="Write RUN_DIR/analysis/formation.json for each run; with several runs "
                                   "(or a folder of runs) also a combined JSON grouped by regime (by task and "
                                   "regime when the runs span several tasks; by sweep point for a sweep folder).")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    a.add_argument("--out", default=None, metavar="JSON",
                   help="combined JSON (default: analysis/formation_group.json in the runs' folder)")
    a.set_defaults(func=_cmd_analyze)

    i = sub.add_parser("import-safari", help="turn a safari run folder into a HyenaLens run directory",
                       description="Read safari's config.yaml and checkpoints (safetensors by step, or "
                                   "Lightning .ckpt loaded weights-only), regenerate the data and evaluate "
                                   "every checkpoint.")
    i.add_argument("safari_dir", metavar="SAFARI_DIR")
    i.add_argument("--out", required=True, metavar="RUN_DIR")
    i.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of .ckpt files (only for files you trust)")
    _threads_and_quiet(i)
    i.set_defaults(func=_cmd_import_safari)

    d = sub.add_parser("demo", help="the main job: train AR runs in every regime, capture, probe, analyze, report",
                       description="Train AR (safari's setup: vocab 10, length 64) in three Hyena regimes "
                                   "(causal/all, causal/last, noncausal/last) x seeds plus causal attention, "
                                   "with one recipe and step budget for all, then capture, probe, analyze and "
                                   "report (about 10 minutes on 2 cores). --quick: a 2-minute smoke version "
                                   "that stops at stage one. Rerunning resumes: finished work is not redone.")
    d.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every run")
    d.add_argument("--out", default="hyenalens-demo", metavar="DIR")
    d.add_argument("--seeds", type=int, default=3, help="seeds per Hyena regime (default 3)")
    d.add_argument("--attention-seeds", type=int, default=1, help="seeds of the attention baseline (default 1)")
    d.add_argument("--workers", type=int, default=None, help="processes (default: the CPU cores)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--quick", action="store_true",
                   help="the 2-minute smoke version (length 16; its Hyena runs stop at stage one)")
    d.set_defaults(func=_cmd_demo)
    w = sub.add_parser("sweep", help="run a grid of runs (regimes x parameters x seeds), each train → analyze",
                       description="Expand SWEEP (a shipped sweep name or a YAML file, docs/sweeps.md) into runs "
                                   "SWEEP_DIR/runs/<point>, each trained, captured, probed and analyzed, then "
                                   "aggregated per group over seeds. Rerun to resume: finished runs are skipped.")
    w.add_argument("sweep", metavar="SWEEP")
    w.add_argument("--out", required=True, metavar="SWEEP_DIR")
    w.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray (pip install 'hyenalens[ray]')")
    w.add_argument("--address", default=None, help="an existing Ray cluster (auto, HOST:PORT or ray://...)")
    w.add_argument("--workers", type=int, default=None, help="processes (default: the CPU cores)")
    w.add_argument("--only", default=None, metavar="RUN",
                   help="run just this point (its name: a folder of SWEEP_DIR/runs, a row of docs/study/runs.csv)")
    _threads_and_quiet(w)
    w.set_defaults(func=_cmd_sweep)
    y = sub.add_parser("study", help="write a sweep's committed record: runs.csv, tables.md, figures",
                       description="From a finished sweep folder (and its learning-rate check) write runs.csv "
                                   "(one row per run), group_summary.json, tables.md and the figures (docs/study.md).")
    y.add_argument("sweep_dir", metavar="SWEEP_DIR")
    y.add_argument("--lr-sweep", default=None, metavar="LR_SWEEP_DIR", help="the learning-rate check's sweep folder")
    y.add_argument("--out", required=True, metavar="DIR")
    y.set_defaults(func=_cmd_study)
    for name, sp in sub.choices.items():
        if name != "train":  # train's parser was wrapped where it was made
            _one_line_errors(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_malloc()  # hyenalens/runtime.py: reuse freed activation memory (capture is 1.15x → 1.07x)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"hyenalens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_bars()
        print(f"hyenalens {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _close_bars() -> None:
    """Close the progress bars an interrupt left open (a bar that a function closes only when it
    finishes stays alive with the traceback's frames), so that the message below starts on a line of
    its own: tqdm's close redraws the bar and ends its line."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)  # no bar was made if tqdm was never imported
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
