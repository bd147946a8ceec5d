"""The `seallm-jax` command.

Each subsystem owns its subcommands in a `cli.py` module that exposes `register(subparsers)`;
this file only collects them, so `seallm-jax --help` lists every command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seallm-jax",
        description="Adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that subsystem is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.overrides = unknown
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
