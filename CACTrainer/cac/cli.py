"""The ``cac`` command line: one entry point, one subcommand per workflow stage.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds an argparse sub-parser and sets ``func=run`` on it.  Modules import
their heavy dependencies (torch, slicer-core) inside ``run`` so that
``cac --help`` and ``cac info`` stay fast.

Errors: a :class:`~CACIdentifierLib.errors.CacError` is printed as one line
``cac: error: ...`` on stderr with exit code 2 (the argparse convention);
warnings are printed as ``cac: warning: ...`` and the work goes on.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from CACIdentifierLib import __version__
from CACIdentifierLib.errors import CacError

# Order is the order of `cac --help`.
SUBCOMMAND_MODULES = [
    "cac.cli_io",  # info, convert
    "cac.cli_sync",  # sync
    "cac.cli_phantom",  # phantom
    "cac.cli_identify",  # identify
    "cac.cli_evaluate",  # evaluate
    "cac.cli_dataset",  # dataset add|check|info
    "cac.cli_train",  # train
    "cac.cli_model",  # model-info, gradcam
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cac",
        description="Coronary artery calcification (CAC) identification in X-ray angiography cines.",
    )
    parser.add_argument("--version", action="version", version=f"cac {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not an absent subcommand
                raise
            continue
        module.register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"cac: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    warnings.showwarning = _show_warning
    try:
        result = args.func(args)
    except CacError as exc:
        print(f"cac: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cac: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
