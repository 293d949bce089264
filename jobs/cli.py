"""`deep-spectral` command line: one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from jobs import cluster, evaluate, extract, label, matte, nightly

COMMANDS = {
    "extract": (extract, "images -> eigenvector shards"),
    "label": (label, "images -> objects: boxes, instance masks (COCO instances.json), a gallery"),
    "cluster": (cluster, "segment features in shards -> dataset-wide clusters -> pseudo-label PNGs"),
    "evaluate": (evaluate, "benchmark images -> masks / boxes -> metrics (JSON, table, panels)"),
    "matte": (matte, "images -> soft alpha mattes and RGBA cut-outs"),
    "nightly": (nightly, "incremental re-extraction into OUT_ROOT/<backbone>-<digest>/ with a manifest"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="deep-spectral", description="Deep Spectral Methods on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][0].main(args)


if __name__ == "__main__":
    sys.exit(main())
