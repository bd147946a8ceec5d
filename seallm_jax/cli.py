"""The `seallm-jax` command.

Each subsystem owns its subcommands in a `cli.py` module that exposes `register(subparsers)`;
this file only collects them, so `seallm-jax --help` lists every command.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn

from seallm_jax.errors import UserError, close_progress_bars

# module that registers the command(s) -> command names, imported lazily so that
# `seallm-jax data stats` does not pay for importing the training stack.
COMMAND_MODULES = (
    "seallm_jax.model.cli",   # convert, generate
    "seallm_jax.train.cli",   # train
    "seallm_jax.data.cli",    # data
    "seallm_jax.lsn.cli",     # lsn
    "seallm_jax.eval.cli",    # eval
    "seallm_jax.demo",        # demo
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`seallm-jax lsn stats: error: ...`), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="seallm-jax",
        description="Adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax.",
        epilog="A mistake the user can fix prints one line and exits 2; --debug (or SEALLM_JAX_DEBUG=1) "
               "adds the traceback. A bug exits 1 with its traceback; Ctrl-C exits 130.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: SEALLM_JAX_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# OSErrors about the user's own paths: reported like a UserError, naming the path.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _command_name(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """'seallm-jax lsn stats' for argv ['lsn', 'stats', ...]: the chain of subcommands given."""
    names = [parser.prog]
    for token in argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or token not in actions[0].choices:
            if token.startswith("-"):
                continue
            break
        parser = actions[0].choices[token]
        names.append(token)
    return " ".join(names)


def _user_message(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug."""
    if isinstance(error, UserError):
        return str(error) or type(error).__name__
    if isinstance(error, USER_OS_ERRORS) and error.filename is not None:
        reason = error.strerror or str(error)
        paths = f"{error.filename!s}" + (f" -> {error.filename2!s}" if error.filename2 else "")
        return f"{reason}: {paths}"
    return None


def _one_line_warnings() -> None:
    """Our UserWarnings (data skipped, truncated, ...) as one `warning: ...` line, without the source line
    that Python's default format adds; other warnings keep their format."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "seallm_jax" in str(filename) + str(getattr(message, "__module__", "")):
            print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv or os.environ.get("SEALLM_JAX_DEBUG", "") not in ("", "0")
    argv = [token for token in argv if token != "--debug"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.overrides = unknown
    command = _command_name(parser, argv)
    if not debug:
        _one_line_warnings()
    try:
        result = args.func(args)
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"\n{command}: interrupted{detail}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted into the user's mistakes and bugs below
        close_progress_bars()  # the error (or traceback) starts its own line, not the bar's
        message = _user_message(error)
        if message is None:
            raise  # a bug: keep the traceback (exit 1)
        if debug:
            traceback.print_exc()
        print(f"{command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
