"""KV-cache decoding throughput, side by side in one run: seallm-jax's decoding (the stacked cache in
the layer scan's carry, updated in place), the old path it replaced (the cache as the scan's xs/ys,
kept here only for this comparison), and `transformers.generate` (torch, CPU).

    python -m benchmarks.decode                                   # Qwen2-0.5B shape, batch 4, 1k prompt, 256 new
    python -m benchmarks.decode --num-hidden-layers 4 --prompt-length 128 --new-tokens 32   # a quick look
    python -m benchmarks.decode --paths new,old                   # skip transformers
    python -m benchmarks.decode --paths new,scan                  # generate(unroll_layers=False): no weight copy
    python -m benchmarks.decode --temperature 0.7 --top-p 0.8     # sampled (new and transformers only)

Greedy unless `--temperature` > 0, float32, random weights, no stop token (every row decodes
`--new-tokens`). Each path runs once per repeat; a host timestamp is taken whenever a step's logits are ready (`jax.debug.callback`
in the JAX programs, a logits processor in `transformers`), so the decoding rate -- tokens/s from the
first generated token to the last -- is measured inside the same run as the prefill, not by subtracting
two noisy runs. JAX programs are compiled before timing. Ratios compare the decoding rates. The machine
probe (`benchmarks/machine.py`) is printed first; a decoding step reads every weight once, so each decoding
rate is also given as weight bytes per second, a share of the probe's copy bandwidth (`--json` stores it all).
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import add_model_args, model_config, torch_config
from benchmarks.machine import announce, write_json
from seallm_jax import Qwen2ForCausalLM
from seallm_jax.model import generate as generate_module
from seallm_jax.model.attention import segment_causal_mask
from seallm_jax.model.qwen2 import CacheSlot

NO_STOP = np.full((generate_module.MAX_STOP_TOKENS,), -1, np.int32)
STAMPS: list[float] = []  # host times at which each step's logits were ready, in the current run


def _stamp(_) -> None:
    STAMPS.append(time.perf_counter())


def stamp_when_ready(logits):
    """Record the host time once `logits` exist (the callback depends on them, so it cannot run early)."""
    jax.debug.callback(_stamp, logits[0, -1, 0])


class StampedQwen2ForCausalLM(Qwen2ForCausalLM):
    """The library's model with a timestamp after every call: `generate`'s own program, instrumented."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        stamp_when_ready(out[0] if isinstance(out, tuple) else out)
        return out


# ---- the old path: the cache as scan xs/ys (before issue 12), for comparison only -------------------

def old_cached_call(model: Qwen2ForCausalLM, input_ids, positions, attention_mask, cache, last_position_only=False):
    """`model(..., cache=cache)` as it was: each layer's cache slice goes in as a scan input and comes
    out as a scan output, so every call builds a new [layers, ...] stack and copies it back."""
    decoder, config = model.model, model.config
    segment_ids = attention_mask
    x = decoder.embed_tokens(input_ids)
    cache_index = cache["index"]
    cache_segments = jax.lax.dynamic_update_slice(cache["segment"], segment_ids, (0, cache_index))
    cache_mask = segment_causal_mask(segment_ids, cache_segments, query_offset=cache_index)
    graphdef, layer_state = nnx.split(decoder.layers)

    def layer_step(x, xs):
        state, (k, v) = xs
        layer = nnx.merge(graphdef, state)
        slot = CacheSlot(k[None], v[None], jnp.int32(0), cache_index)  # a one-layer "stack"
        x, (k, v), _ = layer(x, positions, segment_ids, cache_mask, slot, None, None)
        return x, (k[0], v[0])

    x, (k, v) = jax.lax.scan(layer_step, x, (layer_state, (cache["k"], cache["v"])), unroll=config.scan_unroll)
    hidden = decoder.norm(x)
    logits = model.logits(hidden[:, -1:] if last_position_only else hidden)
    return logits, {"k": k, "v": v, "segment": cache_segments, "index": cache_index + input_ids.shape[1]}


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def old_generate(graphdef, state, input_ids, attention_mask, *, max_new_tokens: int):
    """Greedy prefill + `while_loop` decoding as `model/generate.py` ran it, on the old cache path."""
    model = nnx.merge(graphdef, state)
    batch, prompt_length = input_ids.shape
    cache = model.init_cache(batch, prompt_length + max_new_tokens)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = old_cached_call(model, input_ids, positions, attention_mask, cache, last_position_only=True)
    stamp_when_ready(logits)
    output = jnp.zeros((batch, max_new_tokens), jnp.int32)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    output = output.at[:, 0].set(token)

    def decode_step(carry):
        step, cache, token, position, output = carry
        step_model = nnx.merge(graphdef, state)
        logits, cache = old_cached_call(step_model, token[:, None], position[:, None],
                                        jnp.ones((batch, 1), jnp.int32), cache)
        stamp_when_ready(logits)
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        output = jax.lax.dynamic_update_slice(output, token[:, None], (0, step))
        return step + 1, cache, token, position + 1, output

    carry = (jnp.int32(1), cache, token, positions[:, -1] + 1, output)
    return jax.lax.while_loop(lambda carry: carry[0] < max_new_tokens, decode_step, carry)[-1]


# ---- timing -----------------------------------------------------------------------------------------

def timed(run) -> dict[str, float]:
    """Wall seconds of one blocking `run()`: total, prefill (to the first logits) and decoding (first
    logits to last), with the number of timestamps seen."""
    STAMPS.clear()
    start = time.perf_counter()
    tokens = run()
    total = time.perf_counter() - start
    stamps = sorted(STAMPS)
    return dict(total=total, prefill=stamps[0] - start, decode=stamps[-1] - stamps[0], steps=len(stamps)), tokens


def jax_runner(path: str, model: Qwen2ForCausalLM, input_ids: np.ndarray, new_tokens: int,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """A compiled, blocking call that decodes `new_tokens` by `path` ('new', 'scan' = the same program with
    `unroll_layers=False`, or 'old', greedy only), and the compiled program's temporary bytes."""
    graphdef, state = nnx.split(model)
    ids, mask = jnp.asarray(input_ids), jnp.ones(input_ids.shape, jnp.int32)
    if path in ("new", "scan"):  # exactly the program generate() runs (plus the timestamps)
        greedy = temperature == 0.0
        args = (graphdef, state, ids, mask, jnp.asarray(NO_STOP), jnp.int32(0),
                jnp.float32(1.0 if greedy else temperature), jnp.int32(top_k), jnp.float32(top_p), jax.random.key(0))
        compiled = generate_module._generate_jit.lower(*args, max_new_tokens=new_tokens, greedy=greedy,
                                                       unroll_layers=path == "new").compile()
        dynamic = args[1:]
    else:
        compiled = old_generate.lower(graphdef, state, ids, mask, max_new_tokens=new_tokens).compile()
        dynamic = (state, ids, mask)

    def run():
        tokens = np.asarray(jax.block_until_ready(compiled(*dynamic)))
        jax.effects_barrier()  # every timestamp callback has run
        return tokens

    memory = compiled.memory_analysis()
    return run, None if memory is None else memory.temp_size_in_bytes


def torch_runner(config, input_ids: np.ndarray, new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0):
    import torch
    import transformers

    class Stamp(transformers.LogitsProcessor):  # called once per generated token, when its logits exist
        def __call__(self, input_ids, scores):
            _stamp(None)
            return scores

    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(torch_config(config), attn_implementation="sdpa").eval()
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    sampling = (dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if temperature > 0
                else dict(do_sample=False))
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, pad_token_id=0, **sampling,
                                     logits_processor=transformers.LogitsProcessorList([Stamp()]))
        return out[:, ids.shape[1]:].numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per path (the fastest decoding is kept)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass (1.0 = off)")
    parser.add_argument("--paths", default=None,
                        help="comma list of new, scan, old, transformers "
                             "(default: new,old,transformers; new,transformers when sampling)")
    parser.add_argument("--json", help="also write the results (with the machine probe) to this file")
    args = parser.parse_args()
    machine = announce()
    sampled = args.temperature > 0
    paths = [name for name in (args.paths or ("new,transformers" if sampled else "new,old,transformers")).split(",")
             if name]
    if sampled and "old" in paths:
        parser.error("the old path decodes greedily only: drop it from --paths when sampling")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the decoding rate is measured after the first token)")
    config = model_config(args)
    batch, new_tokens = args.batch, args.new_tokens
    input_ids = np.random.RandomState(0).randint(0, config.vocab_size, (batch, args.prompt_length)).astype(np.int32)
    import torch

    print(f"config: {config.num_parameters() / 1e6:.0f}M params ({config.num_hidden_layers} layers), batch {batch}, "
          f"prompt {args.prompt_length}, {new_tokens} new tokens, "
          f"{f'sampled {sampling}' if sampled else 'greedy'} float32; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    model = StampedQwen2ForCausalLM(config, rngs=nnx.Rngs(0)) if {"new", "scan", "old"} & set(paths) else None
    results, tokens = {}, {}
    for path in paths:
        start = time.perf_counter()
        if path == "transformers":
            run, temporaries = torch_runner(config, input_ids, new_tokens, **sampling), None
        else:
            run, temporaries = jax_runner(path, model, input_ids, new_tokens, **sampling)
        setup = time.perf_counter() - start
        if temporaries is not None:
            print(f"  {path:12s}: compiled program's temporaries {temporaries / 2**30:.2f} GiB", flush=True)
        for _ in range(args.repeats):
            timing, tokens[path] = timed(run)
            assert timing["steps"] == new_tokens, (path, timing)  # one timestamp per generated token
            timing.update(end_to_end=batch * new_tokens / timing["total"],
                          decoding=batch * (new_tokens - 1) / timing["decode"])
            if path not in results or timing["decoding"] > results[path]["decoding"]:
                results[path] = timing
            print(f"  {path:12s}: prefill {timing['prefill']:6.2f} s, decoding {timing['decode']:6.2f} s, "
                  f"total {timing['total']:6.2f} s (setup/compile {setup:.1f} s); load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
        del run

    # Each decoding step streams every weight once (float32 here): its floor is the copy bandwidth.
    weight_bytes = 4 * config.num_parameters()
    for r in results.values():
        r["weight_gbps"] = weight_bytes * r["decoding"] / batch / 1e9
        r["share_of_copy_bandwidth"] = r["weight_gbps"] / machine["copy_gbps"]
    print(f"\n| path | prefill (s) | decoding {new_tokens - 1} steps (s) | total (s) | end-to-end tokens/s "
          "| decoding tokens/s | weights read GB/s (share of the probe's copy rate) |")
    print("|---|---|---|---|---|---|---|")
    for path, r in results.items():
        print(f"| {path} | {r['prefill']:.2f} | {r['decode']:.2f} | {r['total']:.2f} | {r['end_to_end']:.1f} "
              f"| {r['decoding']:.1f} | {r['weight_gbps']:.1f} ({100 * r['share_of_copy_bandwidth']:.0f}%) |")
    if "new" in results:
        for other in ("scan", "old", "transformers"):
            if other in results:
                print(f"new / {other}: {results['new']['decoding'] / results[other]['decoding']:.2f}x decoding, "
                      f"{results['new']['end_to_end'] / results[other]['end_to_end']:.2f}x end-to-end")
    for other in ("scan", "old"):  # same weights and key: the same tokens (transformers has its own weights)
        if "new" in tokens and other in tokens:
            print(f"tokens equal, new vs {other}: {float(np.mean(tokens['new'] == tokens[other])):.1%}")
    write_json(args.json, {"machine": machine, "config": vars(args), "weight_bytes": weight_bytes, "results": results})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
