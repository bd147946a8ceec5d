"""TFDS dataset `sea_corpus`: the shipped parallel corpus (configs `all` and one per language) or a
user corpus from local JSON-lines / text files (`user_corpus_config`); builds offline into `data_dir`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import tensorflow_datasets as tfds

from seallm_jax.data.corpus import SPLITS, load_corpus, load_files, shipped_languages

VERSION = tfds.core.Version("1.0.0")


@dataclasses.dataclass
class SeaCorpusConfig(tfds.core.BuilderConfig):
    """`languages`: the shipped languages to include (empty: all). `files`: a user corpus as
    {language: [paths]} (JSON-lines with a `text` field, or plain text, one document per line)."""

    languages: tuple[str, ...] = ()
    files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    text_field: str = "text"


def user_corpus_config(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], *,
                       name: str | None = None, text_field: str = "text") -> SeaCorpusConfig:
    """A config for a user corpus; its default name hashes the file list, so a different corpus
    never reuses another's prepared data in the same `data_dir`."""
    normalized = tuple(sorted(
        (language, tuple(str(Path(p).resolve()) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                                          else paths)))
        for language, paths in files.items()))
    if not normalized:
        raise ValueError("empty source: user_corpus_config needs {language: files}")
    digest = hashlib.sha256(json.dumps([normalized, text_field]).encode()).hexdigest()[:12]
    return SeaCorpusConfig(name=name or f"user_{digest}", version=VERSION,
                           description="User corpus from local files.", files=normalized,
                           text_field=text_field)


def _shipped_configs() -> list[SeaCorpusConfig]:
    configs = [SeaCorpusConfig(name="all", version=VERSION, description="Every shipped language.")]
    configs += [SeaCorpusConfig(name=language, version=VERSION, description=f"Shipped corpus, {language}.",
                                languages=(language,)) for language in shipped_languages()]
    return configs


class Builder(tfds.core.GeneratorBasedBuilder):
    """Documents with `id` (parallel across languages), `language` and `text`."""

    VERSION = VERSION
    RELEASE_NOTES = {"1.0.0": "Firefox l10n (MPL-2.0) for 10 languages, laonlp dictionary (MIT) for Lao."}
    BUILDER_CONFIGS = _shipped_configs()
    DEFAULT_CONFIG_NAME = "all"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "language": tfds.features.Text(),
                "text": tfds.features.Text(),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is local: nothing is downloaded
        # A small user corpus may leave a split empty, which TFDS cannot write: leave it out.
        corpora = {split: self._documents(split) for split in SPLITS}
        return {split: self._generate_examples(corpus) for split, corpus in corpora.items()
                if any(corpus.values())}

    def _documents(self, split: str):
        config: SeaCorpusConfig = self.builder_config
        if config.files:
            return load_files({language: list(paths) for language, paths in config.files},
                              split=split, text_field=config.text_field)
        return load_corpus(split, list(config.languages) or None)

    def _generate_examples(self, corpus):
        for language, documents in corpus.items():
            for index, document in enumerate(documents):
                # Keys must be unique within a split; ids from different user files may repeat.
                yield f"{language}|{index}", {"id": document.id, "language": language, "text": document.text}
