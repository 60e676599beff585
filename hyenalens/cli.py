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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyenalens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("smoke", help="build each model kind, run a batch, print what was checked")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_smoke)
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
