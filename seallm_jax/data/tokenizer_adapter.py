"""The tokenizer adapter the data code shares: `encode`, `encode_batch` and special-token ids from a
`transformers` tokenizer, a vocabulary subset, any object with `encode`, or a plain callable.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

from seallm_jax.errors import DataFormatError
from seallm_jax.tokenizer.special import document_separator_id, special_token_id

Encode = Callable[[str], list]


class TokenizerAdapter:
    """Turns a `transformers` tokenizer, an object with `encode`, or a plain callable into
    `encode(text) -> list[int]`, plus the special-token ids the data code needs."""

    def __init__(self, tokenizer: object, *, eos_id: int | None = None):
        self.tokenizer = tokenizer
        self._is_hf = hasattr(tokenizer, "convert_tokens_to_ids") and hasattr(tokenizer, "encode")
        if self._is_hf:
            self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        elif hasattr(tokenizer, "encode"):
            self.encode = tokenizer.encode
        elif callable(tokenizer):
            self.encode = tokenizer
        else:
            raise TypeError(f"tokenizer must be a transformers tokenizer, have .encode, or be callable; "
                            f"got {type(tokenizer).__name__}")
        self.eos_id = eos_id if eos_id is not None else self._document_separator()

    def _document_separator(self) -> int | None:
        if not self._is_hf:
            return None
        return document_separator_id(self.tokenizer)

    def special_id(self, token: str, *, required: bool = True) -> int | None:
        """The id of a special token such as `<|im_start|>` (see `seallm_jax.tokenizer.special_token_id`)."""
        token_id = special_token_id(self.tokenizer, token) if self._is_hf else None
        if token_id is None and required:
            raise DataFormatError(f"the tokenizer has no {token!r} token; this data needs a tokenizer with it "
                                  "(Qwen2's has it), or pass its id explicitly")
        return token_id

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts at once; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self._is_hf else None
        if backend is not None:
            # The Rust tokenizer directly: the Python wrapper's per-item conversion costs more than
            # the tokenization itself for short texts.
            encoded = [encoding.ids for encoding in backend.encode_batch(unique, add_special_tokens=False)]
        elif callable(getattr(self.tokenizer, "encode_batch", None)):
            encoded = [list(ids) for ids in self.tokenizer.encode_batch(unique)]
        else:
            encoded = [list(self.encode(text)) for text in unique]
        by_text = dict(zip(unique, encoded))
        return [by_text[text] for text in texts]


def as_tokenizer(tokenizer: object | None, eos_id: int | None = None) -> TokenizerAdapter:
    """None loads the project's Qwen2 tokenizer (`seallm_jax.tokenizer.load_tokenizer()`)."""
    if isinstance(tokenizer, TokenizerAdapter):
        return tokenizer
    if tokenizer is None:
        from seallm_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    elif isinstance(tokenizer, (str, os.PathLike)):
        from seallm_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    return TokenizerAdapter(tokenizer, eos_id=eos_id)
