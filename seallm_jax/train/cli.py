"""`seallm-jax train --config CONFIG.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]`."""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or resume a model from an ml_collections config",
        description="Train (or resume, if DIR/checkpoints holds a complete checkpoint) from a config file. "
                    "Override any field with --config.SECTION.KEY=VALUE, e.g. --config.train.steps=100.")
    parser.add_argument("--config", required=True, metavar="CONFIG.py[:ARG]",
                        help="config file defining get_config(); ':ARG' is passed to it (e.g. configs/qwen2_7b.py:tpu)")
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="run directory: metrics.jsonl, tensorboard/, checkpoints/")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from seallm_jax.train.config import check_run_inputs, load_config

    config = load_config(args.config, getattr(args, "overrides", None) or [])
    wrapper = optimizer_wrapper_for(config)
    check_run_inputs(config, args.workdir, wrapper)
    from seallm_jax.train.loop import TrainingDivergedError, train

    try:
        train(config, args.workdir, optimizer_wrapper=wrapper)
    except TrainingDivergedError as error:  # not the user's input, not a bug: one line, exit 1
        print(f"seallm-jax train: {error}", file=sys.stderr)
        return 1
    return 0


def optimizer_wrapper_for(config):
    """The optimizer wrapper `config` asks for: LSN's neuron mask (`config.lsn.neurons`), LoRA
    (`config.lora.rank > 0`) or none. The command layer joins them to the engine, which knows neither."""
    from seallm_jax.train.optim import requested_wrapper

    asked = requested_wrapper(config)
    if asked == "lsn":
        from seallm_jax.lsn.optim import WRAPPER
    elif asked == "lora":
        from seallm_jax.lora import WRAPPER
    else:
        return None
    return WRAPPER
