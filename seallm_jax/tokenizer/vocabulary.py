"""A tokenizer restricted to the tokens a corpus uses, renumbered densely: a far smaller LM head.

Qwen2's 151,936-row embedding dominates a small model's cost; the shipped corpus uses ~17k of its
tokens. The demo and CPU experiments train on `VocabularySubset` ids; `to_base` maps back.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FILE_NAME = "vocabulary_subset.json"
UNKNOWN_ID = 0  # compact id of every base token outside the subset


class VocabularySubset:
    """Wraps a `transformers` tokenizer: encodes with it, then renumbers the kept ids 1..N-1.

    Compact id 0 stands for any token outside the subset (text unseen when the subset was made).
    Special tokens of the base tokenizer are always kept, so ChatML and end-of-text work as usual.
    """

    def __init__(self, base_tokenizer: Any, kept_ids: Sequence[int], *, base_name: str = "qwen2"):
        self.base_tokenizer = base_tokenizer
        self.base_name = base_name
        kept = sorted(set(int(i) for i in kept_ids) | set(base_tokenizer.all_special_ids))
        self.base_ids = np.asarray([-1] + kept, np.int64)  # compact id -> base id (-1: unknown)
        self._compact = np.zeros(len(base_tokenizer), np.int32)  # base id -> compact id (0: unknown)
        self._compact[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)

    @classmethod
    def from_texts(cls, base_tokenizer: Any, texts: Iterable[str], **kwargs: Any) -> "VocabularySubset":
        """The subset of base tokens that occur in `texts` (plus the special tokens)."""
        used: set[int] = set()
        texts = list(texts)
        backend = base_tokenizer.backend_tokenizer
        for start in range(0, len(texts), 4096):
            for encoding in backend.encode_batch(texts[start:start + 4096], add_special_tokens=False):
                used.update(encoding.ids)
        return cls(base_tokenizer, sorted(used), **kwargs)

    def __len__(self) -> int:
        return len(self.base_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.base_ids)

    @property
    def all_special_ids(self) -> list[int]:
        return [int(self._compact[i]) for i in self.base_tokenizer.all_special_ids]

    @property
    def eos_token_id(self) -> int | None:
        eos = self.base_tokenizer.eos_token_id
        return None if eos is None else int(self._compact[eos])

    @property
    def pad_token_id(self) -> int | None:
        pad = self.base_tokenizer.pad_token_id
        return None if pad is None else int(self._compact[pad])

    def from_base(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        return self._compact[np.asarray(ids, np.int64)].tolist()

    def to_base(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        return self.base_ids[np.asarray(ids, np.int64)].tolist()

    def get_vocab(self) -> dict[str, int]:
        """Token -> compact id for the kept tokens (what `special_token_id` looks up)."""
        return {token: int(self._compact[i]) for token, i in self.base_tokenizer.get_vocab().items()
                if i < len(self._compact) and self._compact[i] > 0}

    def convert_tokens_to_ids(self, token: str) -> int:
        return int(self._compact[self.base_tokenizer.convert_tokens_to_ids(token)])

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.from_base(self.base_tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.base_tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self.from_base(encoding.ids) for encoding in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        base = [i for i in self.to_base(ids) if i >= 0]
        return self.base_tokenizer.decode(base, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, *args: Any, tokenize: bool = False, **kwargs: Any) -> Any:
        rendered = self.base_tokenizer.apply_chat_template(*args, tokenize=False, **kwargs)
        return self.encode(rendered) if tokenize else rendered

    # ---- on disk: the base tokenizer's files plus the kept ids ------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from seallm_jax.tokenizer.qwen2 import save_tokenizer_files  # transformers only when writing

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        save_tokenizer_files(self.base_tokenizer, directory)
        # vocab_size and the end-of-text id too, so a config can size its model without a tokenizer.
        with open(os.path.join(directory, FILE_NAME), "w", encoding="utf-8") as f:
            json.dump({"base": self.base_name, "base_ids": self.base_ids[1:].tolist(),
                       "vocab_size": self.vocab_size, "eos_token_id": self.eos_token_id}, f)

    @classmethod
    def model_fields(cls, directory: str | os.PathLike) -> dict[str, int | None]:
        """`vocab_size` and `eos_token_id` of the subset saved in `directory`, read from its JSON file
        alone (no tokenizer is loaded; a file saved without them loads the subset instead)."""
        with open(os.path.join(os.fspath(directory), FILE_NAME), encoding="utf-8") as f:
            spec = json.load(f)
        if "vocab_size" not in spec:
            subset = cls.load(directory)
            return {"vocab_size": subset.vocab_size, "eos_token_id": subset.eos_token_id}
        return {"vocab_size": int(spec["vocab_size"]), "eos_token_id": spec["eos_token_id"]}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "VocabularySubset":
        from seallm_jax.tokenizer.qwen2 import load_local_tokenizer

        path = os.path.join(os.fspath(directory), FILE_NAME)
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        base = load_local_tokenizer(directory)
        return cls(base, spec["base_ids"], base_name=spec.get("base", "qwen2"))
