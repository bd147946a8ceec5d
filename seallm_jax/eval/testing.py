"""A tiny byte-level tokenizer (ChatML template included) and tiny random Qwen2 models, for tests and
for smoke-running `seallm-jax eval` without real weights.
"""
from __future__ import annotations

import os

from flax import nnx
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM
from seallm_jax.tokenizer import ENDOFTEXT, IM_END, IM_START, QWEN2_CHAT_TEMPLATE

# 256 byte tokens, then the three special tokens the ChatML template and decoding need.
BYTE_VOCAB_SIZE = 256
TINY_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
TINY_VOCAB_SIZE = BYTE_VOCAB_SIZE + len(TINY_SPECIAL_TOKENS)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id = UTF-8 byte value; any script round-trips exactly."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps byte b to a printable character; order the vocabulary so that id == byte value.
    byte_to_char = {}
    for character in alphabet:
        byte_to_char[_byte_of(character)] = character
    vocab = {byte_to_char[b]: b for b in range(BYTE_VOCAB_SIZE)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def _byte_of(character: str) -> int:
    """Inverse of GPT-2's byte-to-printable-character map."""
    code = ord(character)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if code in printable:
        return code
    shifted = [b for b in range(256) if b not in printable]
    return shifted[code - 256]


def tiny_config(**overrides) -> Qwen2Config:
    """A two-layer Qwen2 small enough to compile and run in seconds on one CPU core."""
    fields = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=None, eos_token_id=BYTE_VOCAB_SIZE)
    fields.update(overrides)
    return Qwen2Config(**fields)


def tiny_model(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(tiny_config(**overrides), rngs=nnx.Rngs(seed))


def save_tiny_model(path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """A tiny random model and the byte tokenizer as a Hugging Face directory `--model` accepts."""
    from seallm_jax.hf import save_pretrained

    return save_pretrained(tiny_model(seed, **overrides), path, tokenizer=tiny_tokenizer())
