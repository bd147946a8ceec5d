"""Tiny random `transformers` models for parity tests (created in the test, never downloaded)."""
from __future__ import annotations

import os

import numpy as np
import torch
import transformers

# Every config the numerics contract names: tied/untied, GQA ratios 1/2/4 and one KV head,
# rope_theta 1e4/1e6, rms_norm_eps 1e-6/1e-5, vocab and intermediate sizes not multiples of 8.
PARITY_CONFIGS = {
    "untied_gqa2": dict(vocab_size=311, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "tied_mha": dict(vocab_size=257, hidden_size=48, intermediate_size=91, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4, rope_theta=1e4, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "one_kv_head": dict(vocab_size=199, hidden_size=64, intermediate_size=123, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=1, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "gqa4_tied": dict(vocab_size=333, hidden_size=64, intermediate_size=77, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "deep_narrow": dict(vocab_size=129, hidden_size=32, intermediate_size=45, num_hidden_layers=4,
                        num_attention_heads=2, num_key_value_heads=1, rope_theta=5e5, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "llama": dict(vocab_size=301, hidden_size=64, intermediate_size=99, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  architecture="llama"),
}


def make_hf_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny torch model with every weight random (norm scales and biases included)."""
    spec = dict(PARITY_CONFIGS[name])
    architecture = spec.pop("architecture", "qwen2")
    rope_theta = spec.pop("rope_theta")
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    torch.manual_seed(seed)
    if architecture == "llama":
        config = transformers.LlamaConfig(**spec, rope_parameters=rope, attention_bias=False, mlp_bias=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**spec, rope_parameters=rope)
        model = transformers.Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            scale = 0.2 if parameter_name.endswith("norm.weight") else 0.05
            base = 1.0 if parameter_name.endswith("norm.weight") else 0.0
            parameter.copy_(base + scale * torch.randn(parameter.shape, generator=generator))
    model.config._attn_implementation = "eager"
    return model.eval()


def save_hf_model(model: transformers.PreTrainedModel, path: str | os.PathLike) -> str:
    model.save_pretrained(path, safe_serialization=True)
    return os.fspath(path)


def torch_logits(model: transformers.PreTrainedModel, input_ids: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in kwargs.items()}
        return model(torch.as_tensor(np.asarray(input_ids)), **tensors).logits.float().numpy()


def save_smollm2_style_tokenizer(directory) -> "transformers.PreTrainedTokenizerFast":
    """A byte-level tokenizer laid out like SmolLM2's (Llama-family, GPT-2 style): `<|endoftext|>` is
    id 0 *and* the unk token, `<|im_start|>`/`<|im_end|>` are ids 1 and 2, then the 256 bytes.
    Built offline with `tokenizers` and saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(specials + sorted(byte_chars))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        additional_special_tokens=specials)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
