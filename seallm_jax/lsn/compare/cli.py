"""`seallm-jax lsn compare`'s flags, turned into `CompareSettings`."""
from __future__ import annotations

import argparse

from seallm_jax.errors import ConfigError
from seallm_jax.lsn.compare.settings import (DEFAULT_ARMS, DEFAULT_LEARNING_RATES, DEFAULT_TARGET_GAINS,
                                             CompareSettings)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def register(commands: argparse._SubParsersAction) -> None:
    """Add `compare` to the `lsn` subcommands."""
    from seallm_jax.lsn import compare
    from seallm_jax.lsn.compare.arms import ARM_BUILDERS

    parser = commands.add_parser("compare", help="LSN vs random neurons, full fine-tuning and LoRA on one model",
                                 description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face model directory (the start of every arm)")
    parser.add_argument("--targets", required=True, help="comma-separated target languages, e.g. vi,th")
    parser.add_argument("--languages", required=True, help="statistics and evaluation languages (targets included)")
    parser.add_argument("--out", required=True, help="output folder (compare.json, curves.png, runs/)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"arms (known: {','.join(ARM_BUILDERS)})")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3,
                        help="runs per arm, each with its own data order (and neuron draw for random)")
    parser.add_argument("--eval-every", type=int, default=5,
                        help="score every arm every K steps along its training, from its checkpoints (0: end only)")
    parser.add_argument("--target-gains", default=",".join(f"{g:g}" for g in DEFAULT_TARGET_GAINS),
                        help="target perplexity reductions (%%) the arms are compared at")
    for kind, grid in DEFAULT_LEARNING_RATES.items():
        parser.add_argument(f"--lr-{kind}", default=",".join(f"{v:g}" for v in grid),
                            help=f"learning-rate sweep of the {kind} arm(s)")
    parser.add_argument("--top-rate", type=float, default=0.01, help="LAPE: share of all neurons selected")
    parser.add_argument("--neurons", default=None, help="a LAPE neuron-set JSON to use instead of selecting")
    parser.add_argument("--matrices", default="gate_proj,up_proj,down_proj", help="FFN matrices the neuron arms train")
    parser.add_argument("--lean", action="store_true",
                        help="neuron arms keep optimizer state on their neurons only (config.lsn.lean)")
    parser.add_argument("--lora-larger-factor", type=int, default=4,
                        help="the larger LoRA rank = this x the matched one (0: matched rank only)")
    parser.add_argument("--stats-tokens", type=int, default=20_000)
    parser.add_argument("--eval-tokens", type=int, default=4_096, help="tokens per language and split")
    parser.add_argument("--sweep-eval-tokens", type=int, default=2_048)
    parser.add_argument("--sweep-targets", default=None,
                        help="targets whose arms sweep the learning rate (default: all); others reuse their rates")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train and score nothing: rebuild the report from the arms OUT has finished (also while "
                             "another process is still training into OUT)")
    parser.set_defaults(func=run_compare)


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    def codes(text: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in text.split(",") if v.strip())

    return CompareSettings(
        model=args.model, out=args.out, targets=codes(args.targets), languages=codes(args.languages),
        arms=codes(args.arms), tokenizer=args.tokenizer, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, seeds=args.seeds, eval_every=args.eval_every, target_gains=_floats(args.target_gains),
        learning_rates={kind: _floats(getattr(args, f"lr_{kind}")) for kind in DEFAULT_LEARNING_RATES},
        top_rate=args.top_rate, neurons=args.neurons, matrices=codes(args.matrices), lean=args.lean,
        lora_larger_factor=args.lora_larger_factor, stats_tokens=args.stats_tokens, eval_tokens=args.eval_tokens,
        sweep_eval_tokens=args.sweep_eval_tokens, keep_checkpoints=args.keep_checkpoints,
        sweep_targets=codes(args.sweep_targets) if args.sweep_targets else None,
        progress=not args.no_progress, report_only=args.report_only)


def run_compare(args: argparse.Namespace) -> int:
    from seallm_jax.lsn.compare.run import compare

    compare(settings_from_args(args))
    return 0
