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
    torch.set_num_threads(args.threads)
    from hyenalens.runtime import tune_malloc

    tune_malloc()  # as the hyenalens CLI runs: same process settings for ours and the reference
    from benchmarks.suite import run

    text = run(args.device, args.quick, args.only, Path(args.out), args.demo, progress=not args.no_progress)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
