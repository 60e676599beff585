"""`python -m benchmarks` (or `make bench`): measure, print and write BENCHMARKS.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.suite import SECTIONS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one or two rounds: checks the machinery")
    ap.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file to update (default BENCHMARKS.md)")
    ap.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                    help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    ap.add_argument("--demo", action="store_true", help="also time `hyenalens demo` (minutes)")
    ap.add_argument("--study", action="store_true",
                    help="also measure study runs per CPU-hour (tens of minutes; see --baseline-src)")
    ap.add_argument("--compile", action="store_true", dest="compile_lever",
                    help="also time torch.compile of LayerNorm + MLP, cold and warm cache (minutes)")
    ap.add_argument("--safari-src", metavar="PATH",
                    help="a checkout of HazyResearch/safari: the train table also times safari's own model")
    ap.add_argument("--baseline-src", metavar="PATH",
                    help="another source tree (e.g. the HEAD a change started from): the study section "
                         "runs it interleaved with this one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fair on a shared box)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda was asked for but CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"--threads {args.threads} must be >= 1", file=sys.stderr)
        return 2
    for flag, path in (("--safari-src", args.safari_src), ("--baseline-src", args.baseline_src)):
        if path is not None and not Path(path).expanduser().is_dir():
            print(f"{flag} {path}: no such folder; give the path of a checkout", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    from hyenalens.runtime import tune_malloc

    tune_malloc()  # as the hyenalens CLI runs: same process settings for ours and the reference
    from benchmarks.suite import run

    text = run(args.device, args.quick, args.only, Path(args.out), args.demo, progress=not args.no_progress,
               safari_src=args.safari_src, baseline_src=args.baseline_src, study=args.study,
               compile_lever=args.compile_lever)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
