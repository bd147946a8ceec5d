"""Token stores: text tokenized once into flat little-endian uint32 files with document offsets and a
manifest, read back memory-mapped by (language, split) without loading anything but metadata.

Layout and API: docs/data.md ("Token stores"); `seallm-jax data tokenize` writes them (`tokenize.py`).
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seallm_jax import files
from seallm_jax.errors import (ConfigError, DataFormatError, MissingDataError, UnknownLanguageError, UserError,
                               require_file)
from seallm_jax.files import atomic_file
from seallm_jax.languages import LANGUAGES

FORMAT = "seallm-jax-token-store"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<u4")
OFFSET_DTYPE = np.dtype("<u8")
MASK_DTYPE = np.dtype("u1")
# Splits by the shipped corpus' id hash (corpus.split_of): "test" documents are kept apart too, so that a
# store's train split never holds the held-out parallel text the translation evaluation uses.
STORE_SPLITS = ("train", "validation", "test")
_HASH_BLOCK = 1 << 22


# -- fingerprints ---------------------------------------------------------------------------------------
def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that fingerprints hash: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tokenizer_fingerprint(tokenizer: object) -> str:
    """sha256 of the tokenizer's full definition: its serialised `tokenizer.json` (vocabulary, merges, normalizer,
    pre-tokenizer, added tokens), plus the kept ids of a vocabulary subset. Two tokenizers with the same
    fingerprint give the same ids for every text."""
    from seallm_jax.data.tokenizer_adapter import TokenizerAdapter

    if isinstance(tokenizer, TokenizerAdapter):
        tokenizer = tokenizer.tokenizer
    digest = hashlib.sha256()
    base_ids = getattr(tokenizer, "base_ids", None)
    base = getattr(tokenizer, "base_tokenizer", None)
    if base is not None and base_ids is not None:  # a VocabularySubset: its base tokenizer and its renumbering
        digest.update(bytes.fromhex(tokenizer_fingerprint(base)))
        digest.update(np.asarray(base_ids, "<i8").tobytes())
        return digest.hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"cannot fingerprint a {type(tokenizer).__name__} tokenizer: a token store needs a Hugging "
                        "Face fast tokenizer (a directory with tokenizer.json) or a vocabulary subset")
    cached = _FINGERPRINTS.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    # to_str() is tokenizer.json with the added tokens, serialised in a fixed order (vocabulary by id).
    digest.update(backend.to_str().encode("utf-8"))
    _FINGERPRINTS[tokenizer] = (len(tokenizer), digest.hexdigest())
    return digest.hexdigest()


# Serialising Qwen2's tokenizer takes a second or more; a tokenizer object is fingerprinted once (again
# only if tokens were added to it since).
_FINGERPRINTS: "weakref.WeakKeyDictionary[object, tuple[int, str]]" = weakref.WeakKeyDictionary()


def tokenizer_info(tokenizer: object) -> dict:
    """The manifest's `tokenizer` entry: fingerprint, a readable name, vocabulary size, separator id."""
    from seallm_jax.data.tokenizer_adapter import as_tokenizer
    from seallm_jax.tokenizer.special import document_separator_id

    adapter = as_tokenizer(tokenizer)
    inner = adapter.tokenizer
    eos_id = adapter.eos_id if adapter.eos_id is not None else document_separator_id(inner)
    if eos_id is None:
        raise UserError("the tokenizer has no document separator (<|endoftext|>, BOS or EOS); a token store "
                        "needs one to mark where documents end")
    return {"fingerprint": tokenizer_fingerprint(inner), "name": _tokenizer_name(inner),
            "vocab_size": int(len(inner)), "eos_id": int(eos_id)}


def _tokenizer_name(tokenizer: object) -> str:
    # The built-in Qwen2 tokenizer loads from a cache path that differs between machines; a store's
    # manifest (and so its fingerprint) must not.
    base = getattr(tokenizer, "base_tokenizer", None)
    if base is not None:
        return f"{_tokenizer_name(base)} (vocabulary subset)"
    try:
        from seallm_jax.tokenizer.qwen2 import _is_builtin_qwen2

        if _is_builtin_qwen2(tokenizer):
            return "qwen2"
    except Exception:  # noqa: BLE001 - only the name is at stake
        pass
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return os.path.basename(name.rstrip("/")) or name


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# -- writing ----------------------------------------------------------------------------------------------
def write_shard(store: str | os.PathLike, name: str, tokens: np.ndarray, offsets: np.ndarray,
                mask: np.ndarray | None = None) -> dict:
    """Write shard `name` ("th/train-00000") of `store`: `tokens` (uint32, separators included) and
    `offsets` (num_documents + 1, first 0, last len(tokens)); each file appears whole or not at all.
    Returns the shard's manifest entry."""
    tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
    offsets = np.ascontiguousarray(offsets, dtype=OFFSET_DTYPE)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) \
            or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ValueError(f"shard {name}: offsets must start at 0, not decrease and end at {len(tokens)}")
    arrays = {"bin": tokens, "idx": offsets}
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=MASK_DTYPE)
        if mask.shape != tokens.shape:
            raise ValueError(f"shard {name}: loss mask has {mask.shape[0]} entries for {len(tokens)} tokens")
        arrays["mask"] = mask
    checksums = {}
    for extension, array in arrays.items():
        data = array.tobytes()
        checksums[extension] = hashlib.sha256(data).hexdigest()
        with atomic_file(Path(store) / f"{name}.{extension}") as staging:
            with open(staging, "wb") as handle:
                handle.write(data)
    return {"name": name, "documents": len(offsets) - 1, "tokens": len(tokens), "sha256": checksums}


def build_manifest(tokenizer: Mapping, languages: Mapping[str, Mapping], **extra: object) -> dict:
    """A manifest from the tokenizer entry (`tokenizer_info`) and, per language, {"sources": [...],
    "splits": {split: [shard entries]}}: totals are summed, and the fingerprint covers everything."""
    manifest: dict = {"format": FORMAT, "version": VERSION, "dtype": "uint32", "tokenizer": dict(tokenizer),
                      "languages": {}}
    for language in sorted(languages, key=_language_order):
        entry = languages[language]
        splits = {}
        for split in STORE_SPLITS:
            shards = list(entry["splits"].get(split, []))
            splits[split] = {"documents": sum(shard["documents"] for shard in shards),
                             "tokens": sum(shard["tokens"] for shard in shards), "shards": shards}
        manifest["languages"][language] = {"sources": list(entry.get("sources", [])), "splits": splits}
    manifest.update(extra)
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    return manifest


def _language_order(language: str) -> tuple[int, str]:
    return (LANGUAGES.index(language) if language in LANGUAGES else len(LANGUAGES), language)


def manifest_fingerprint(manifest: Mapping) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != "fingerprint"})).hexdigest()


def write_manifest(store: str | os.PathLike, manifest: Mapping) -> None:
    """The manifest, written atomically: its presence is what makes a store complete."""
    with atomic_file(Path(store) / MANIFEST) as staging:
        Path(staging).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_store(path: str | os.PathLike, documents: Mapping[str, Mapping[str, Sequence[Sequence[int]]]], *,
                tokenizer: object | None = None, tokenizer_entry: Mapping | None = None,
                shard_documents: int = 0) -> "TokenStore":
    """A store from already tokenized documents, {language: {split: [token ids of each document]}}: the
    separator is appended to each. For tests and synthetic stores; text goes through `tokenize_files`.
    `shard_documents` > 0 cuts each split into shards of that many documents."""
    entry = dict(tokenizer_entry) if tokenizer_entry is not None else tokenizer_info(tokenizer)
    eos_id = int(entry["eos_id"])
    languages = {}
    for language, splits in documents.items():
        shards_by_split = {}
        for split, docs in splits.items():
            if split not in STORE_SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {', '.join(STORE_SPLITS)}")
            step = shard_documents or max(len(docs), 1)
            shards = []
            for number, start in enumerate(range(0, len(docs), step)):
                group = [np.append(np.asarray(doc, TOKEN_DTYPE), np.asarray([eos_id], TOKEN_DTYPE))
                         for doc in docs[start:start + step]]
                offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in group])]).astype(OFFSET_DTYPE)
                shards.append(write_shard(path, f"{language}/{split}-{number:05d}", np.concatenate(group), offsets))
            shards_by_split[split] = shards
        languages[language] = {"sources": [], "splits": shards_by_split}
    write_manifest(path, build_manifest(entry, languages))
    return TokenStore.open(path)


# -- reading ----------------------------------------------------------------------------------------------
class _Shard:
    """One shard's files, opened on first use."""

    def __init__(self, root: Path, entry: Mapping, has_mask: bool):
        self.name = entry["name"]
        self.documents = int(entry["documents"])
        self.num_tokens = int(entry["tokens"])
        self.bin = root / f"{self.name}.bin"
        self.idx = root / f"{self.name}.idx"
        self.mask = root / f"{self.name}.mask" if has_mask else None
        self._tokens: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            # np.memmap refuses empty files; an empty shard is an empty array.
            self._tokens = (np.memmap(self.bin, TOKEN_DTYPE, "r") if self.num_tokens
                            else np.zeros(0, TOKEN_DTYPE))
        return self._tokens

    def loss_mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = np.memmap(self.mask, MASK_DTYPE, "r") if self.num_tokens else np.zeros(0, MASK_DTYPE)
        return self._mask

    def offsets(self) -> np.ndarray:
        return np.fromfile(self.idx, OFFSET_DTYPE)


class DocumentArray:
    """The documents of one (language, split): all shards as one sequence of tokens, memory-mapped
    lazily. Global token positions run across shards in manifest order; each document's tokens end
    with the separator. Also a Grain random-access data source: `len()` documents, `[i]` one document."""

    def __init__(self, language: str, split: str, shards: Sequence[_Shard]):
        self.language = language
        self.split = split
        self._shards = list(shards)
        self.num_documents = sum(shard.documents for shard in self._shards)
        self.num_tokens = sum(shard.num_tokens for shard in self._shards)
        # Where each shard starts, in tokens and in documents: from the manifest, no file read.
        self.shard_token_starts = np.concatenate(
            [[0], np.cumsum([shard.num_tokens for shard in self._shards], dtype=np.int64)]).astype(np.int64)
        self.shard_document_starts = np.concatenate(
            [[0], np.cumsum([shard.documents for shard in self._shards], dtype=np.int64)]).astype(np.int64)
        self.has_loss_mask = bool(self._shards) and all(shard.mask is not None for shard in self._shards)
        self._offsets: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"DocumentArray({self.language}/{self.split}: {self.num_documents} documents, "
                f"{self.num_tokens} tokens, {len(self._shards)} shards)")

    @property
    def offsets(self) -> np.ndarray:
        """[num_documents + 1] uint64 token offsets of each document, global across shards (read from
        the .idx files on first use: 8 bytes per document)."""
        if self._offsets is None:
            parts = [np.zeros(1, OFFSET_DTYPE)]
            for shard, start in zip(self._shards, self.shard_token_starts):
                offsets = shard.offsets()
                if len(offsets) != shard.documents + 1 or offsets[0] != 0 or offsets[-1] != shard.num_tokens:
                    raise DataFormatError(f"{shard.idx}: offsets do not match the manifest ({shard.documents} "
                                          f"documents, {shard.num_tokens} tokens): the store is corrupted")
                parts.append(offsets[1:] + np.uint64(start))
            self._offsets = np.concatenate(parts).astype(OFFSET_DTYPE)
        return self._offsets

    def _ranges(self, start: int, stop: int):
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside {self.language}/{self.split}'s "
                             f"{self.num_tokens} tokens")
        first = int(np.searchsorted(self.shard_token_starts, start, side="right")) - 1
        position = start
        for index in range(max(first, 0), len(self._shards)):
            if position >= stop:
                break
            base = int(self.shard_token_starts[index])
            end = min(stop, int(self.shard_token_starts[index + 1]))
            if end > position:
                yield self._shards[index], position - base, end - base
            position = max(position, end)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the concatenation of all documents (may cross shard boundaries)."""
        pieces = [shard.tokens()[lo:hi] for shard, lo, hi in self._ranges(int(start), int(stop))]
        if not pieces:
            return np.zeros(0, TOKEN_DTYPE)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def loss_mask(self, start: int, stop: int) -> np.ndarray | None:
        """The loss mask of tokens [start, stop) (1: the token counts in the loss), or None if the store
        has none (pretraining text: every token counts)."""
        if not self.has_loss_mask:
            return None
        pieces = [shard.loss_mask()[lo:hi] for shard, lo, hi in self._ranges(int(start), int(stop))]
        if not pieces:
            return np.zeros(0, MASK_DTYPE)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def document(self, index: int) -> np.ndarray:
        """Document `index`'s tokens, its trailing separator included."""
        index = int(index)
        if index < 0:
            index += self.num_documents
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} of {self.num_documents} in {self.language}/{self.split}")
        shard_index = int(np.searchsorted(self.shard_document_starts, index, side="right")) - 1
        shard = self._shards[shard_index]
        local = index - int(self.shard_document_starts[shard_index])
        # Two offsets read from the shard's index, not the whole global offsets array.
        lo, hi = np.fromfile(shard.idx, OFFSET_DTYPE, count=2, offset=local * OFFSET_DTYPE.itemsize)
        return shard.tokens()[int(lo):int(hi)]

    # Grain's RandomAccessDataSource protocol: grain.MapDataset.source(store.documents("th")) works.
    def __len__(self) -> int:
        return self.num_documents

    def __getitem__(self, index: int) -> np.ndarray:
        return self.document(index)


class TokenStore:
    """A complete token store on disk. `open` reads only the manifest and stat()s each shard file."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.tokenizer_fingerprint: str = manifest["tokenizer"]["fingerprint"]
        self.eos_id: int = int(manifest["tokenizer"]["eos_id"])
        self.vocab_size: int = int(manifest["tokenizer"]["vocab_size"])

    def __repr__(self) -> str:
        return f"TokenStore({self.path!r}: {', '.join(self.languages)})"

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> "TokenStore":
        """The store at `path`. Each shard's size is checked against the manifest (a truncated file is a
        `DataFormatError` naming it); `verify=True` also checks every file's sha256."""
        path = os.fspath(path)
        from seallm_jax import paths

        if paths.is_remote(path):
            # A store in object storage (gs://, s3://) is read from this host's copy of it, made once
            # and size-checked (files.local_copy; cache: $SEALLM_JAX_CACHE/remote); only a finished
            # store (its manifest is written last) is copied.
            path = paths.check_bucket(path, "token store")
            if not paths.isfile(paths.join(path, MANIFEST)):
                raise DataFormatError(f"token store {path!r} has no {MANIFEST}: it does not exist, or the "
                                      "tokenization writing it did not finish")
            path = files.local_copy(path)
        root = Path(path)
        if not root.exists():
            raise MissingDataError(f"token store {path!r} does not exist")
        if not root.is_dir():
            raise DataFormatError(f"token store {path!r} is a file, not a store directory")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            unfinished = (root / ".progress").is_dir()
            raise DataFormatError(
                f"{manifest_path} does not exist: " + ("the tokenization writing this store did not finish; run the "
                                                       "same `seallm-jax data tokenize` command again to complete it"
                                                       if unfinished else "not a token store directory"))
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise DataFormatError(f"{manifest_path}: not valid JSON ({error}): the store is corrupted") from None
        _check_manifest(manifest, manifest_path)
        store = cls(path, manifest)
        for language in store.languages:
            for split, entry in manifest["languages"][language]["splits"].items():
                for shard in entry["shards"]:
                    _check_shard(root, shard, verify)
        return store

    @property
    def languages(self) -> list[str]:
        return list(self.manifest["languages"])

    @property
    def kind(self) -> str:
        """"text" (documents), or "conversations" (ChatML conversations with an assistant-only loss mask,
        `data tokenize --conversations`)."""
        return str(self.manifest.get("settings", {}).get("kind", "text"))

    def splits(self, language: str) -> dict[str, dict]:
        """{split: {"documents", "tokens", "shards"}} of `language`."""
        self._check_language(language)
        return self.manifest["languages"][language]["splits"]

    def num_tokens(self, language: str, split: str = "train") -> int:
        return int(self.splits(language).get(split, {"tokens": 0})["tokens"])

    def documents(self, language: str, split: str = "train") -> DocumentArray:
        """All documents of `language` in `split` ("train", "validation" or "test")."""
        splits = self.splits(language)
        if split not in STORE_SPLITS:
            raise UserError(f"unknown split {split!r}; a token store has {', '.join(STORE_SPLITS)}")
        entry = splits.get(split, {"shards": []})
        root = Path(self.path)
        return DocumentArray(language, split, [_Shard(root, shard, "mask" in shard["sha256"])
                                               for shard in entry["shards"]])

    def _check_language(self, language: str) -> None:
        if language not in self.manifest["languages"]:
            raise UnknownLanguageError(f"token store {self.path} has no language {language!r}; it has: "
                                       f"{', '.join(self.languages) or 'none'}")


def _check_manifest(manifest: object, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataFormatError(f"{path}: not a seallm-jax token store manifest")
    if manifest.get("version") != VERSION:
        raise DataFormatError(f"{path}: token store version {manifest.get('version')!r}; this seallm-jax reads "
                              f"version {VERSION}: tokenize the text again")
    try:
        for key in ("fingerprint", "eos_id", "vocab_size"):
            manifest["tokenizer"][key]
        for language in manifest["languages"].values():
            for entry in language["splits"].values():
                for shard in entry["shards"]:
                    shard["name"], int(shard["documents"]), int(shard["tokens"]), shard["sha256"]["bin"]
    except (KeyError, TypeError, ValueError) as error:
        raise DataFormatError(f"{path}: incomplete manifest (missing {error}): the store is corrupted") from None
    if manifest.get("fingerprint") != manifest_fingerprint(manifest):
        raise DataFormatError(f"{path}: the manifest does not match its fingerprint (edited or corrupted); "
                              "tokenize the text again")


def _check_shard(root: Path, shard: Mapping, verify: bool) -> None:
    expected = {"bin": int(shard["tokens"]) * TOKEN_DTYPE.itemsize,
                "idx": (int(shard["documents"]) + 1) * OFFSET_DTYPE.itemsize}
    if "mask" in shard["sha256"]:
        expected["mask"] = int(shard["tokens"]) * MASK_DTYPE.itemsize
    for extension, size in expected.items():
        file = root / f"{shard['name']}.{extension}"
        try:
            actual = file.stat().st_size
        except FileNotFoundError:
            raise DataFormatError(f"{file}: missing from the token store (the manifest lists it)") from None
        if actual != size:
            raise DataFormatError(f"{file}: {actual} bytes, expected {size} (truncated or corrupted token file); "
                                  "tokenize the text again")
        if verify and file_sha256(file) != shard["sha256"][extension]:
            raise DataFormatError(f"{file}: sha256 does not match the manifest (corrupted token file); "
                                  "tokenize the text again")


def parse_data_args(items: Sequence[str] | None, languages: Sequence[str] | None = None,
                    flag: str = "--data", stores: bool = False) -> dict[str, list[str]]:
    """`["th=a.jsonl", "th=b.txt"]` -> {"th": ["a.jsonl", "b.txt"]}; each file must exist and not be
    empty, and (given `languages`) each language must be one of them. With `stores`, a PATH may also be
    a token store directory (`seallm-jax data tokenize`) that holds the language."""
    from seallm_jax.data.corpus import check_language

    files: dict[str, list[str]] = {}
    for item in items or []:
        language, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not language or not path:
            raise ConfigError(f"{flag} {item!r}: expected LANG=PATH, e.g. th=data/th.jsonl")
        check_language(language, f"{flag} {item}")
        if stores and os.path.isdir(path):
            TokenStore.open(path).documents(language)  # a complete store that holds the language
        else:
            require_file(path, f"{flag} {language}:")
        files.setdefault(language, []).append(path)
    if languages is not None:
        unused = sorted(set(files) - set(languages))
        if unused:
            raise ConfigError(f"{flag} is given for {', '.join(unused)}, which --languages does not list "
                              f"({', '.join(languages)}); add it there or drop the {flag}")
    return files
