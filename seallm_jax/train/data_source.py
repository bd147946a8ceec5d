"""Where training batches come from: the config picks the source; each process gets only its rows.

A source yields this process's rows of each global batch (numpy dicts per docs/architecture.md) and
exposes `state()` / `restore(state)`: a JSON-serialisable position saved with every checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import ml_collections
import numpy as np

from seallm_jax.errors import ConfigError

if TYPE_CHECKING:
    from seallm_jax.tokenizer.vocabulary import VocabularySubset


class BatchSource(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class SyntheticSource:
    """Packed rows of arithmetic token sequences `start, start+k, start+2k, ... (mod vocab)`.

    Learnable (the stride is visible from context), deterministic from (seed, batch index), and
    identical for any number of processes: every batch is drawn for the whole global batch and each
    process keeps its rows [row_start, row_stop). Rows hold 1-3 documents and end in padding
    (segment 0, loss_mask 0), so masking and packing are exercised.
    """

    def __init__(self, *, vocab_size: int, seq_len: int, global_batch_size: int, row_start: int, row_stop: int,
                 seed: int):
        self.vocab_size, self.seq_len, self.global_batch_size = vocab_size, seq_len, global_batch_size
        self.row_start, self.row_stop, self.seed = row_start, row_stop, seed
        self.index = 0

    def _global_batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        b, t = self.global_batch_size, self.seq_len
        tokens = np.zeros((b, t + 1), np.int64)
        segments = np.zeros((b, t + 1), np.int32)
        positions = np.zeros((b, t + 1), np.int32)
        for row in range(b):
            cursor, segment = 0, 1
            # leave a random tail of padding (up to an eighth of the row)
            end = t + 1 - int(rng.integers(0, max(t // 8, 1) + 1))
            while cursor < end and segment <= 3:
                length = end - cursor if segment == 3 else int(rng.integers(t // 4, t + 1))
                length = min(length, end - cursor)
                start, stride = rng.integers(0, self.vocab_size), rng.integers(1, 8)
                tokens[row, cursor:cursor + length] = (start + stride * np.arange(length)) % self.vocab_size
                segments[row, cursor:cursor + length] = segment
                positions[row, cursor:cursor + length] = np.arange(length)
                cursor += length
                segment += 1
        same_doc = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        return {
            "input_ids": tokens[:, :-1].astype(np.int32),
            "targets": tokens[:, 1:].astype(np.int32),
            "loss_mask": same_doc.astype(np.float32),
            "segment_ids": segments[:, :-1],
            "positions": positions[:, :-1],
        }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._global_batch(self.index)
        self.index += 1
        return {k: v[self.row_start:self.row_stop] for k, v in batch.items()}

    def state(self) -> dict[str, Any]:
        return {"index": self.index}

    def restore(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


# The corpus languages a run reads when config.data.languages is empty (source 'corpus' and 'sft').
DEFAULT_CORPUS_LANGUAGES = ("en", "zh", "id", "vi", "th")


def store_paths(config: ml_collections.ConfigDict) -> list[str]:
    """config.data.path as a list of store directories (one, or several comma-separated)."""
    path = config.data.get("path") or ""
    paths = [part.strip() for part in (path if isinstance(path, (list, tuple)) else str(path).split(",")) if part.strip()]
    if not paths:
        raise ConfigError("config.data.source='tokens' needs --config.data.path=STORE (a directory written by "
                          "`seallm-jax data tokenize`; several comma-separated)")
    return paths


def corpus_files(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
    """config.data.files of source 'corpus' as {language: [paths]}: LANG=PATH items, or plain paths when
    config.data.languages names exactly one language."""
    from seallm_jax.data.store import parse_data_args

    items = [str(item) for item in config.data.get("files") or []]
    languages = list(config.data.get("languages") or [])
    plain = [item for item in items if "=" not in item]
    if plain:
        if len(languages) != 1:
            raise ConfigError(f"config.data.files: {plain[0]!r} has no language; give files as LANG=PATH "
                              "(th=my_th.jsonl), or name one language with --config.data.languages=th")
        items = [f"{languages[0]}={item}" if "=" not in item else item for item in items]
    return parse_data_args(items, languages or None, flag="config.data.files")


def check_data_inputs(config: ml_collections.ConfigDict) -> None:
    """What the data section names, checked before anything heavy starts: the stores (their manifests),
    languages and mixture weights of source 'tokens', the files of 'corpus' and 'sft'."""
    from seallm_jax.errors import require_file

    data = config.data
    # A field the chosen source does not read is a mistake, never silently ignored.
    if data.source == "tokens" and data.get("files"):
        raise ConfigError("config.data.files is read by source 'corpus' (text files) and 'sft'; with "
                          "source='tokens' give token stores in config.data.path (`seallm-jax data tokenize` "
                          "makes them from files)")
    if data.source != "tokens" and data.get("path"):
        raise ConfigError(f"config.data.path is read by source 'tokens' only (this run's source is "
                          f"{data.source!r}); add --config.data.source=tokens")
    if data.get("weights") and data.source not in ("tokens", "corpus", "sft"):
        raise ConfigError(f"config.data.weights is read by sources 'tokens', 'corpus' and 'sft', not "
                          f"{data.source!r}; use config.data.weighting")
    if data.source == "tokens":
        from seallm_jax.data.loader import parse_weights, resolve_languages

        stores = data_stores(config)  # the stores' tokenizer against the model's
        arrays = resolve_languages(stores, list(data.languages) or None, "train")
        weights = parse_weights(list(data.get("weights") or []))
        unknown = sorted(set(weights) - set(arrays))
        if unknown:
            raise ConfigError(f"config.data.weights gives a weight for {', '.join(unknown)}, which the run does not "
                              f"read (its languages: {', '.join(arrays)}; stores: {', '.join(store_paths(config))})")
    elif data.source == "corpus" and data.get("files"):
        from seallm_jax.data.loader import parse_weights

        files = corpus_files(config)
        unknown = sorted(set(parse_weights(list(data.get("weights") or []))) - set(files))
        if unknown:
            raise ConfigError(f"config.data.weights gives a weight for {', '.join(unknown)}, which config.data.files "
                              f"has no file for (it has {', '.join(files)})")
    elif data.source == "sft":
        from seallm_jax.data.store import parse_data_args

        items = [str(item) for item in data.get("files") or []]
        parse_data_args([item for item in items if "=" in item], flag="config.data.files")
        for path in (item for item in items if "=" not in item):
            require_file(path, "config.data.files:")
    else:
        if data.source == "corpus":  # the shipped corpus
            from seallm_jax.data.corpus import shipped_languages
            from seallm_jax.errors import UnknownLanguageError

            shipped = shipped_languages()
            missing = [language for language in data.languages if language not in shipped]
            if missing:
                raise UnknownLanguageError(
                    f"config.data.languages: the shipped corpus has no {', '.join(repr(m) for m in missing)} (it has "
                    f"{', '.join(shipped)}); give your own text with --config.data.files={missing[0]}=FILE")
        for path in data.get("files") or []:
            require_file(path, "config.data.files:")


def open_stores(config: ml_collections.ConfigDict) -> list[Any]:
    from seallm_jax.data.store import TokenStore

    return [TokenStore.open(path) for path in store_paths(config)]


_TOKENIZERS: dict[tuple[str, str], Any] = {}
_FINGERPRINTS: dict[tuple[int, str], bool] = {}


def run_tokenizer(config: ml_collections.ConfigDict) -> Any:
    """The tokenizer the model reads: config.data.tokenizer, else model.init_from's own, else Qwen2's."""
    from seallm_jax.tokenizer import tokenizer_for

    key = (str(config.model.get("init_from") or ""), str(config.data.get("tokenizer") or ""))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = tokenizer_for(key[0] or None, key[1] or None)
    return _TOKENIZERS[key]


def data_stores(config: ml_collections.ConfigDict) -> list[Any] | None:
    """The token stores a run of source 'tokens' or 'corpus' reads, checked against the model's tokenizer;
    None for the other sources. User files and the shipped corpus are tokenized once into a cached store."""
    source = config.data.source
    if source == "tokens":
        stores = open_stores(config)
    elif source == "corpus" and config.data.get("files"):
        from seallm_jax.data.tokenize import ensure_store

        stores = [ensure_store(corpus_files(config), tokenizer=run_tokenizer(config))]
    elif source == "corpus":
        from seallm_jax.data.tokenize import shipped_corpus_store

        stores = [shipped_corpus_store(run_tokenizer(config))]
    elif source == "sft":
        from seallm_jax.data.tokenize import conversation_store

        data = config.data
        stores = [conversation_store(
            list(data.files), tokenizer=run_tokenizer(config), languages=sft_languages(config),
            min_source_chars=int(data.min_source_chars), max_per_language=int(data.max_per_language) or None)]
    else:
        return None
    from seallm_jax.data.loader import check_tokenizers, tokenizer_matches

    fingerprint = check_tokenizers(stores)
    tokenizer = run_tokenizer(config)
    key = (id(tokenizer), fingerprint)
    if key not in _FINGERPRINTS:  # hashing a 150k-token tokenizer's definition takes ~0.5 s
        _FINGERPRINTS[key] = tokenizer_matches(fingerprint, tokenizer)
    if not _FINGERPRINTS[key]:
        store = stores[0]
        built = store.manifest.get("tokenizer", {}).get("name", "?")
        model = config.data.get("tokenizer") or config.model.get("init_from") or "the bundled Qwen2 tokenizer"
        raise ConfigError(f"token store {store.path} was built with another tokenizer ({built}) than the model's "
                          f"({model}); tokenize the text again with `seallm-jax data tokenize ... --tokenizer DIR`, "
                          "or set --config.data.tokenizer to the store's tokenizer")
    return stores


def sft_languages(config: ml_collections.ConfigDict) -> list[str] | None:
    """The languages an SFT run reads: config.data.languages; when empty, every language of the user's
    conversation files (None), or the default corpus languages for the shipped translation conversations."""
    if config.data.languages:
        return list(config.data.languages)
    return None if config.data.files else list(DEFAULT_CORPUS_LANGUAGES)


def fit_vocabulary(config: ml_collections.ConfigDict, log: Any = print) -> None:
    """A model trained from scratch on a store gets an embedding row for every id of its tokenizer:
    config.model.vocab_size is raised to fit (rounded up to a multiple of 128) when it is smaller."""
    if config.data.source not in ("tokens", "corpus") or config.model.get("init_from"):
        return
    needed = max(store.vocab_size for store in data_stores(config))
    if int(config.model.vocab_size) < needed:
        fitted = -(-needed // 128) * 128
        log(f"model.vocab_size {int(config.model.vocab_size)} -> {fitted}: the token store's tokenizer has "
            f"{needed} ids")
        config.model.vocab_size = fitted


def make_source(config: ml_collections.ConfigDict, *, split: str, row_start: int, row_stop: int,
                vocab_size: int) -> BatchSource | None:
    """The batch source for `split` ('train' or 'eval') of `config.data.source` (None for 'eval' when the
    token stores hold no validation documents).

    'tokens', 'corpus' (`config.data.files`, else the shipped corpus, tokenized once into a cached
    store) and 'sft' (`config.data.files` of JSON-lines conversations, else translation conversations from
    the shipped parallel corpus, tokenized once into a cached conversation store) are the deterministic
    loader `seallm_jax.data.loader.token_loader`: the batch of a step is a function of the step, this
    process building rows [row_start, row_stop); 'eval' reads the stores' validation split. SFT rows
    hold whole conversations, with the loss on assistant tokens only.
    """
    source = config.data.source
    global_batch = int(config.train.global_batch_size)
    if source == "synthetic":
        # The eval split is a different seed: same distribution, batches never seen in training.
        seed = int(config.data.seed) * 2 + (1 if split == "eval" else 0)
        return SyntheticSource(vocab_size=vocab_size, seq_len=int(config.train.seq_len), global_batch_size=global_batch,
                               row_start=row_start, row_stop=row_stop, seed=seed)
    if source in ("tokens", "corpus", "sft"):
        return _store_source(config, data_stores(config), "validation" if split == "eval" else "train",
                             row_start=row_start, row_stop=row_stop, vocab_size=vocab_size)
    raise ConfigError(f"config.data.source={source!r}: expected 'synthetic', 'tokens', 'corpus' or 'sft'")


class _ResumableLoader:
    """A TokenLoader whose `restore` honours config.data.allow_data_changes (with a warning)."""

    def __init__(self, loader: Any, allow_changes: bool):
        self.loader, self.allow_changes = loader, allow_changes

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.loader)

    def state(self) -> dict[str, Any]:
        return self.loader.state()

    def restore(self, state: dict[str, Any]) -> None:
        changed = self.loader.restore(state, allow_changes=self.allow_changes)
        if changed:
            import sys

            print(f"warning: resuming at step {state.get('step')} although {'; '.join(changed)} changed "
                  "(config.data.allow_data_changes)", file=sys.stderr)

    def metrics(self) -> dict[str, float]:
        return self.loader.metrics()


def _store_source(config: ml_collections.ConfigDict, stores: list[Any], split: str, *, row_start: int,
                  row_stop: int, vocab_size: int) -> BatchSource | None:
    from seallm_jax.data.loader import parse_weights, resolve_languages, token_loader

    data = config.data
    needed = max(store.vocab_size for store in stores)
    if needed > vocab_size:
        raise ConfigError(f"the token store's tokenizer has {needed} ids but the model's vocabulary {vocab_size}: "
                          f"set --config.model.vocab_size={-(-needed // 128) * 128}, or train a model of this tokenizer")
    languages = list(data.languages) or None
    if data.source == "corpus" and not data.get("files"):
        languages = languages or list(DEFAULT_CORPUS_LANGUAGES)
    elif data.source == "sft":
        languages = sft_languages(config)
    weights = parse_weights(list(data.get("weights") or []))
    if split == "validation":
        # Held-out loss over the languages that have held-out text, mixed by the same rule.
        arrays = resolve_languages(stores, languages, split)
        languages = [language for language, items in arrays.items() if sum(a.num_tokens for a in items) > 1]
        if not languages:
            # Small files may have no document in the validation share: train on, without held-out loss.
            import sys

            print(f"warning: the token store(s) {', '.join(store.path for store in stores)} have no validation "
                  "documents: no held-out loss (config.train.eval_every is ignored)", file=sys.stderr)
            return None
        weights = {language: weight for language, weight in weights.items() if language in languages}
    loader = token_loader(
        stores, languages=languages, split=split, seq_len=int(config.train.seq_len),
        global_batch_size=int(config.train.global_batch_size), row_start=row_start, row_stop=row_stop,
        seed=int(data.seed), weighting=data.weighting, weights=weights or None, temperature=float(data.temperature),
        block_rows=int(data.get("mixture_block_rows") or 0), truncation=data.truncation)
    return _ResumableLoader(loader, bool(data.get("allow_data_changes")))


def sft_vocabulary(directory: str | os.PathLike, *, languages: Sequence[str] | None = None,
                   max_per_language: int | None = None, min_source_chars: Sequence[int] = (0,)) -> "VocabularySubset":
    """Save to `directory` the Qwen2 vocabulary subset of the shipped translation conversations that
    these settings select (train and validation splits, each `min_source_chars` value: one
    vocabulary for every SFT stage), unless it is already there; returns it (`len()` is the model's
    vocab_size, `eos_token_id` its end-of-text id).

    A tiny CPU model trains in seconds on a few thousand rows of embedding instead of 151,936.
    """
    from seallm_jax.data.sft import ROLES, QWEN2_DEFAULT_SYSTEM, translation_conversations
    from seallm_jax.files import atomic_directory
    from seallm_jax.tokenizer import load_tokenizer
    from seallm_jax.tokenizer.vocabulary import FILE_NAME, VocabularySubset

    directory = os.fspath(directory)
    saved = os.path.join(directory, FILE_NAME)
    if not os.path.exists(saved):
        # The renderer encodes each message content and each role header on its own: exactly these texts.
        texts = [f"{role}\n" for role in ROLES] + ["\n", QWEN2_DEFAULT_SYSTEM]
        for split in ("train", "validation"):
            for chars in min_source_chars:
                grouped = translation_conversations(split, languages, min_source_chars=chars,
                                                    max_per_language=max_per_language)
                texts += [m.content for items in grouped.values() for c in items for m in c.messages]
        subset = VocabularySubset.from_texts(load_tokenizer(), texts)
        # Written beside, then renamed: concurrent processes never read a half-written subset.
        with atomic_directory(directory, if_exists="keep") as staging:
            subset.save_pretrained(staging)
    return VocabularySubset.load(directory)
