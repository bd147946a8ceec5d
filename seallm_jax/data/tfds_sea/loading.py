"""Reading a prepared TFDS dataset back as documents: `sea_corpus` (registered by importing this
package) or any TFDS dataset with a text field and a language field (or one `language` for all)."""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from seallm_jax.data.corpus import Document, check_language
from seallm_jax.errors import DataFormatError


def load_tfds(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
              text_field: str = "text", language_field: str = "language",
              language: str | None = None) -> dict[str, list[Document]]:
    """Documents from a prepared TFDS dataset (e.g. "sea_corpus/all" or a user config built with
    `user_corpus_config`), grouped by language; a record with an unknown language names the dataset."""
    grouped: dict[str, list[Document]] = {}
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
    for index, example in enumerate(tfds.as_numpy(dataset)):
        record_language = example[language_field].decode() if language_field in example else language
        if record_language is None:
            raise DataFormatError(f"{name}: examples have no {language_field!r} field; pass language=")
        check_language(record_language, f"{name}[{split}]")
        document_id = example["id"].decode() if "id" in example else f"{name}:{index}"
        grouped.setdefault(record_language, []).append(
            Document(document_id, record_language, example[text_field].decode()))
    if not grouped:
        raise DataFormatError(f"empty source: {name} split {split!r} has no examples")
    return grouped
