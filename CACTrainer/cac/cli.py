"""The ``cac`` command line: one entry point, one subcommand per workflow stage.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds an argparse sub-parser and sets ``func=run`` on it.  Modules import
their heavy dependencies (torch, slicer-core) inside ``run`` so that
``cac --help`` and ``cac info`` stay fast.

Errors: a :class:`~CACIdentifierLib.errors.CacError` is printed as one line
``cac: error: ...`` on stderr with exit code 2 (the argparse convention), and
so is a MemoryError (``cac: error: not enough memory for ...``); other
exceptions are bugs and keep their traceback.  Warnings are printed as
``cac: warning: ...`` and the work goes on.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from CACIdentifierLib import __version__
from CACIdentifierLib.errors import MESSAGE_LIMIT, CacError, printable

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
    "cac.cli_calibrate",  # calibrate
]


class CacArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as every other error of ``cac``: one ``cac: error:`` line, exit code 2.

    argparse prints the whole usage block and ``cac identify: error: ...``; the usage of a subcommand
    with twenty options buries the one line that says what is wrong, so the line names where to look
    instead.  Sub-parsers inherit the class (argparse makes them with the parent's type).
    """

    def error(self, message):
        command = " ".join(self.prog.split()[1:])  # "cac identify" -> "identify"
        where = f"cac {command} --help" if command else "cac --help"
        self.exit(2, f"cac: error: {printable(message, MESSAGE_LIMIT)}; see '{where}'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CacArgumentParser(
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
    print(f"cac: warning: {printable(message, MESSAGE_LIMIT)}", file=sys.stderr)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (pytest capture)
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (the Slicer panels' Cancel, a cluster's job stop): handled as Ctrl-C is, exit code 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def terminate_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C: outputs being written are removed, a training keeps the
    checkpoint of its last finished epoch, and one line says so (the default action ends the
    process on the spot, with no message and temporary files left behind)."""
    import signal
    import threading

    if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _stopped(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, Terminated):
        print("cac: terminated", file=sys.stderr)
        return 143
    print("cac: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every subcommand module: Ctrl-C may come here too
        args = parser.parse_args(argv)
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        print("cac: error: no command given; choose one of the commands above", file=sys.stderr)
        return 2
    warnings.showwarning = _show_warning
    from CACIdentifierLib.allocator import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory (1.4x faster training steps on a CPU, allocator.py)
    try:
        result = args.func(args)
    except CacError as exc:
        # One printable line whatever the message quotes (tag values, parser messages, paths).
        print(f"cac: error: {printable(exc, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except MemoryError:
        # Last resort for an allocation no check foresaw: a traceback would only say numpy or torch asked
        # for too much; outputs are written through temporaries, so nothing half-written is left.
        print(f"cac: error: not enough memory for `cac {args.command}` with these inputs and settings; "
              "close other programs, or give a smaller input or smaller settings", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`cac info ... | head -1`): end quietly, like cat does.
        _quiet_stdout()
        return 141
    try:
        sys.stdout.flush()  # a closed pipe shows up here when the output fitted in the buffer
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    return int(result or 0)


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process at once, skipping the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def entry(argv: list[str] | None = None) -> None:
    """The ``cac`` program (console script, ``python -m cac``, ``python -m cac.cli``): :func:`main`, then exit.

    After an interrupt (exit code 130, or 143 for SIGTERM) the process ends at once: the outputs
    are already cleaned up and the message printed, and the interpreter's own
    shutdown (torch's library finalizers) takes seconds on a busy machine,
    which Ctrl-C should not wait for.
    """
    terminate_as_interrupt()  # the program only: main() called from Slicer's console or a test leaves it alone
    code = main(argv)
    if code in (130, 143):
        exit_now(code)
    # The work is done and reported: a Ctrl-C now must not turn a finished run into a signal death
    # (exit -2) during the interpreter's shutdown.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
