"""`hyenalens` command line.

Each subcommand is registered by a `_cmd_*` function below; the heavy layers are imported
inside the command that needs them, so `hyenalens --help` stays fast.
Bad input (`models.errors.UserError`) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from models.errors import UserError


def _cmd_smoke(args: argparse.Namespace) -> int:
    from models.smoke import smoke

    return smoke(quiet=args.quiet)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    from models.train import train

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


def _interp_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be >= 1")
        import torch

        torch.set_num_threads(args.threads)


def _cmd_capture(args: argparse.Namespace) -> int:
    from interp.capture import capture_run

    _interp_threads(args)

    hooks = [h for item in (args.hooks or []) for h in item.split(",") if h]
    out = capture_run(args.run_dir, hooks=hooks or None, n_probe=args.n_probe, seed=args.probe_seed,
                      progress=not args.quiet)
    if not args.quiet:
        print(f"{args.run_dir}: captured {len(out['captured'])} checkpoint(s), "
              f"{len(out['skipped'])} already captured")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from interp.run_metrics import probe_run

    _interp_threads(args)

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyenalens", description=__doc__.splitlines()[0])
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
    t.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
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
    c.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    c.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    c.set_defaults(func=_cmd_capture)

    pr = sub.add_parser("probe", help="compute every interp metric at every captured checkpoint",
                        description="Write RUN_DIR/analysis/metrics.csv (probes, map scores, filters, "
                                    "attribution, patching) for every captured checkpoint; already "
                                    "computed checkpoints are reused.")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("--force", action="store_true", help="recompute every checkpoint")
    pr.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    pr.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    pr.set_defaults(func=_cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"hyenalens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hyenalens {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
