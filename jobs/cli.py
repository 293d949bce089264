"""`deep-spectral` command line: one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from jobs import extract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deep-spectral", description="Deep Spectral Methods on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    extract.add_arguments(sub.add_parser("extract", help="images -> eigenvector shards", description=extract.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "extract":
        return extract.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
