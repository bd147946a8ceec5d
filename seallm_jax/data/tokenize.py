"""`seallm-jax data tokenize`: text files per language -> a token store (store.py), in parallel over
processes, streaming in fixed-size chunks, resumable after a kill with byte-identical output. Conversation
files (`kind="conversations"`) are rendered with ChatML (`seallm_jax.data.sft.ChatTemplate`) and stored with
their assistant-only loss mask.

The reading rules (formats, ids, the validation split, errors naming file and line) are corpus.py's.
"""
from __future__ import annotations

import array
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from seallm_jax.data.corpus import CORPUS_DIR, check_language, files_by_language, shipped_languages, split_of
from seallm_jax.data.sft import QWEN2_DEFAULT_SYSTEM
from seallm_jax.data.store import (MANIFEST, MASK_DTYPE, OFFSET_DTYPE, STORE_SPLITS, TOKEN_DTYPE, TokenStore,
                                   build_manifest, canonical_json, file_sha256, tokenizer_info, write_manifest,
                                   write_shard)
from seallm_jax.errors import DataFormatError, MissingDataError, UserError
from seallm_jax.files import atomic_file, check_output_dir

TextUnit = Literal["line", "paragraph"]
Kind = Literal["text", "conversations"]
KINDS = ("text", "conversations")
Encoder = Literal["auto", "fast", "hf"]
ENCODERS = ("auto", "fast", "hf")
# "auto" takes the tiktoken encoder (seallm_jax.tokenizer.fast_bpe) from this much input on: checking that a
# tokenizer qualifies reads its whole definition (~1-2 s for Qwen2), more than it saves on less text.
FAST_MIN_BYTES = 32_000_000
# Input read per chunk: one chunk is one task for a worker and one shard per split. 16 MB of text is
# ~3M tokens: a worker's memory stays ~100 MB, and a 100 GB corpus is ~6,000 shards.
DEFAULT_CHUNK_BYTES = 16_000_000
# A document longer than this many characters is encoded in pieces (see `split_long_text`).
DEFAULT_PIECE_CHARS = 100_000
# Texts handed to the tokenizer at once: bounds the memory of its per-token encodings.
_ENCODE_BATCH_CHARS = 1 << 20
PROGRESS_DIR = ".progress"
# Bump when the bytes tokenize_files writes for the same inputs change, so cached stores are rebuilt.
_LAYOUT_VERSION = 1
STORE_ENV_VAR = "SEALLM_JAX_CACHE"
_JSONL_SUFFIXES = (".jsonl", ".json")
_COMPRESSIONS = ("", ".gz", ".zst")


@dataclasses.dataclass(frozen=True)
class TokenizeSettings:
    """What besides the inputs and the tokenizer decides a store's bytes (part of its identity)."""

    text_field: str = "text"
    text_unit: TextUnit = "line"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    piece_chars: int = DEFAULT_PIECE_CHARS
    kind: Kind = "text"
    # conversations: the system message inserted where a conversation has none (None: nothing inserted)
    default_system: str | None = None

    def entry(self) -> dict:
        """The settings as the manifest records them (a text store's: those of stores written before
        conversation stores existed, so their identity is unchanged)."""
        entry = dataclasses.asdict(self)
        if self.kind == "text":
            del entry["kind"], entry["default_system"]
        return entry

    def check(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"store kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.text_unit not in ("line", "paragraph"):
            raise UserError(f"text unit {self.text_unit!r}: expected 'line' or 'paragraph'")
        if self.chunk_bytes < 1 or self.piece_chars < 16:
            raise UserError(f"chunk size {self.chunk_bytes} and piece length {self.piece_chars} must be positive "
                            "(piece length at least 16 characters)")
        if not self.text_field:
            raise UserError("--text-field must not be empty")


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file of one language."""

    language: str
    path: str
    format: str        # "jsonl", "text" or "parquet"
    compression: str   # "", ".gz" or ".zst"
    bytes: int
    sha256: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def source_format(path: str | os.PathLike) -> tuple[str, str]:
    """(format, compression) of a file by its name: JSON-lines (`.jsonl`/`.json`), Parquet (`.parquet`),
    otherwise plain text; `.gz` or `.zst` on top of JSON-lines or text."""
    name = os.path.basename(os.fspath(path)).lower()
    compression = next((suffix for suffix in _COMPRESSIONS[1:] if name.endswith(suffix)), "")
    stem = name[: len(name) - len(compression)] if compression else name
    if stem.endswith(".parquet"):
        if compression:
            raise UserError(f"{path}: a compressed Parquet file; Parquet compresses inside, give the .parquet file")
        return "parquet", ""
    return ("jsonl" if stem.endswith(_JSONL_SUFFIXES) else "text"), compression


# -- long documents ----------------------------------------------------------------------------------------
# Cut points where Qwen2-style pre-tokenizers (GPT-2 family regexes: a space joins the word after it, a
# newline run ends a pre-token) already separate pre-tokens, so the pieces' tokens equal the whole text's:
# before a space that precedes a non-space, after a newline that precedes a non-space.
_WHITESPACE_CUT = re.compile(r"(?= \S)|(?<=\n)(?=\S)")


def split_long_text(text: str, piece_chars: int = DEFAULT_PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most `piece_chars` characters, so that the Rust tokenizer never
    gets one huge string. Each cut is at the last suitable place before the limit, in this order:
    before a space (or after a newline) followed by a non-space; else between a letter and a following
    punctuation mark or symbol (CJK text without spaces); else at the limit, moved back so a combining
    mark stays with its base character. The first two give exactly the whole text's tokens (pre-tokens
    never span them); the last may differ at the cut, in text with no space or punctuation for
    `piece_chars` characters."""
    if len(text) <= piece_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _cut_point(text, start, start + piece_chars)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _cut_point(text: str, start: int, end: int) -> int:
    last = None
    for match in _WHITESPACE_CUT.finditer(text, start + 1, end + 1):
        last = match.start()
    if last is not None and last > start:
        return last
    for position in range(end - 1, start, -1):
        if (unicodedata.category(text[position - 1])[0] == "L"
                and unicodedata.category(text[position])[0] in "PS"):
            return position
    position = end
    while position > start + 1 and unicodedata.category(text[position])[0] == "M":
        position -= 1
    return position


# -- reading chunks (main process) ------------------------------------------------------------------------
@dataclasses.dataclass
class _Chunk:
    first_record: int        # line number (text, JSON-lines) or row number (Parquet) of its first record
    payload: bytes | list    # raw lines, or [(row, id, text)] for Parquet
    raw_position: int        # bytes of the file read so far (for the progress bar)


def _open_raw(path: str, compression: str) -> tuple[io.BufferedReader, io.RawIOBase]:
    """(decompressed byte stream, the underlying file: its position is the progress)."""
    raw = open(path, "rb")
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise UserError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard)") \
                from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), raw
    return raw, raw


def _iter_byte_chunks(source: Source, settings: TokenizeSettings) -> Iterator[_Chunk]:
    """Chunks of whole lines (whole paragraphs in paragraph mode): each ends at the first record end
    at or after `chunk_bytes` bytes. Where a chunk ends depends only on the file and the settings,
    never on how the reads happened to return, on timing or on the number of workers."""
    stream, raw = _open_raw(source.path, source.compression)
    line, buffer = 1, b""
    with stream, raw:
        while True:
            try:
                block = stream.read(settings.chunk_bytes)
            except (OSError, EOFError, ValueError) as error:  # gzip/zstd: truncated or not compressed
                raise DataFormatError(f"{source.path}: not a readable {source.compression[1:]} file "
                                      f"({error})") from None
            buffer += block
            while len(buffer) >= settings.chunk_bytes or (not block and buffer):
                # A record longer than a chunk makes a bigger chunk, never a split record.
                cut = _cut_bytes(buffer, settings)
                if cut <= 0:
                    if block:
                        break
                    cut = len(buffer)  # the end of the file ends the last record
                payload, buffer = buffer[:cut], buffer[cut:]
                yield _Chunk(line, payload, raw.tell())
                line += payload.count(b"\n")
            if not block:
                return


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


def _cut_bytes(buffer: bytes, settings: TokenizeSettings) -> int:
    """Where the chunk starting `buffer` ends: after the first newline at or past `chunk_bytes` (line
    mode), or after the first line there that a blank line follows (paragraph mode); 0: not read yet."""
    if settings.text_unit == "line":
        return buffer.find(b"\n", settings.chunk_bytes - 1) + 1
    match = _BLANK_LINE.search(buffer, settings.chunk_bytes - 1)
    return match.start() + 1 if match else 0


def _iter_parquet_chunks(source: Source, settings: TokenizeSettings) -> Iterator[_Chunk]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{source.path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataFormatError(f"{source.path}: not a readable Parquet file ({error})") from None
    columns = _parquet_columns(source, parquet.schema_arrow, settings.text_field)
    rows_total = max(parquet.metadata.num_rows, 1)
    row, rows, size = 1, [], 0
    first = 1
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
        for text, identifier in zip(texts, ids):
            rows.append((row, identifier, text))
            size += len(text) if isinstance(text, str) else 0
            row += 1
        if size >= settings.chunk_bytes:
            yield _Chunk(first, rows, source.bytes * (row - 1) // rows_total)
            rows, size, first = [], 0, row
    if rows:
        yield _Chunk(first, rows, source.bytes)


def _parquet_columns(source: Source, schema, text_field: str) -> list[str]:
    import pyarrow as pa

    if text_field not in schema.names:
        raise DataFormatError(f"{source.path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                              "pass --text-field")
    if not (pa.types.is_string(schema.field(text_field).type) or pa.types.is_large_string(schema.field(text_field).type)):
        raise DataFormatError(f"{source.path}: column {text_field!r} holds {schema.field(text_field).type}, "
                              "not text")
    return [text_field, "id"] if "id" in schema.names and text_field != "id" else [text_field]


def _iter_chunks(source: Source, settings: TokenizeSettings) -> Iterator[_Chunk]:
    if source.format == "parquet":
        return _iter_parquet_chunks(source, settings)
    return _iter_byte_chunks(source, settings)


# -- tokenizing a chunk (worker process) ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Task:
    store: str
    language: str
    number: int              # the chunk's number within its language: its shards' number
    source_index: int
    source: Source
    chunk: _Chunk
    settings: TokenizeSettings
    run_key: str
    eos_id: int
    template: object | None = None  # conversations: the ChatTemplate (seallm_jax.data.sft)


_ADAPTER = None  # the worker's tokenizer (TokenizerAdapter), set once per process


class _RustEncoder:
    """The Rust tokenizer alone, as TokenizerAdapter.encode_batch uses it: workers that get only it start
    without importing `transformers` (seconds and ~200 MB less per worker)."""

    name = "hf"

    def __init__(self, backend: object):
        self.backend = backend

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(list(texts), add_special_tokens=False)]


def _worker_tokenizer(tokenizer: object, encoder: Encoder = "hf", total_bytes: int = 0) -> object:
    """What to send to the worker processes: the tiktoken encoder that gives the tokenizer's exact ids
    (`encoder` "fast", or "auto" on at least FAST_MIN_BYTES of input, when the tokenizer qualifies);
    else a Hugging Face fast tokenizer's Rust backend, else the tokenizer itself (a vocabulary subset
    renumbers ids in Python). Every choice writes the same bytes."""
    if encoder == "fast" or (encoder == "auto" and total_bytes >= FAST_MIN_BYTES):
        from seallm_jax.tokenizer.fast_bpe import fast_encoder, fast_encoder_refusal

        fast = fast_encoder(tokenizer)
        if fast is not None:
            return fast
        if encoder == "fast":
            raise UserError(f"--encoder fast: this tokenizer has no exact fast encoder "
                            f"({fast_encoder_refusal(tokenizer)}); use --encoder hf or auto")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "base_tokenizer", None) is not None:
        return tokenizer
    if backend.truncation is not None or backend.padding is not None:
        # A store holds whole documents: a copy without the tokenizer's truncation/padding settings.
        backend = type(backend).from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def _worker_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe, spawn where it is not. Forked workers share the loaded tokenizer and
    modules (seconds of start-up less per worker); a process that has loaded JAX (train, lsn stats calling
    `ensure_store`) holds runtime threads that a fork would copy mid-state, so its workers are spawned."""
    if sys.platform == "linux" and "jax" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """Ends this worker once the process that started it is gone. A parent killed on its own (the OOM
    killer, `kill -9 PID`) leaves pool workers blocked on its queue for ever: they would hold memory, and
    one mid-chunk could still write a shard beside the rerun's."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)
    threading.Thread(target=watch, name="seallm-jax-parent-watch", daemon=True).start()


def _init_worker(tokenizer: object, pooled: bool = True, parent: int | None = None) -> None:
    if pooled:  # one of N worker processes already: the tokenizer's own thread pool would oversubscribe
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if parent is not None:
        _exit_with_parent(parent)
    global _ADAPTER
    if type(tokenizer).__module__.startswith("tokenizers"):
        _ADAPTER = _RustEncoder(tokenizer)
        return
    from seallm_jax.tokenizer.fast_bpe import FastBPE

    if isinstance(tokenizer, FastBPE):
        _ADAPTER = tokenizer
        return
    from seallm_jax.data.tokenizer_adapter import as_tokenizer

    _ADAPTER = as_tokenizer(tokenizer)


def _documents(task: _Task) -> list[tuple[str, str]]:
    """(id, text) of each non-empty document of the chunk, with corpus.py's rules: ids from an `id`
    field or `file:line`, malformed lines raising with file and line."""
    source, chunk, settings = task.source, task.chunk, task.settings
    if source.format == "parquet":
        documents = []
        for row, identifier, text in chunk.payload:
            if not isinstance(text, str):
                raise DataFormatError(f"{source.path}: row {row}: no text in column {settings.text_field!r}")
            if text.strip():
                documents.append((str(identifier) if identifier is not None else f"{source.name}:{row}", text))
        return documents
    lines = _chunk_lines(task)
    if source.format == "jsonl":
        return _jsonl_documents(task, lines)
    if settings.text_unit == "line":
        return [(f"{source.name}:{number}", line.strip())
                for number, line in enumerate(lines, start=chunk.first_record) if line.strip()]
    documents, paragraph, first = [], [], 0
    for number, line in enumerate(lines + [""], start=chunk.first_record):
        if line.strip():
            if not paragraph:
                first = number
            paragraph.append(line)
        elif paragraph:
            documents.append((f"{source.name}:{first}", "\n".join(paragraph).strip()))
            paragraph = []
    return documents


def _chunk_lines(task: _Task) -> list[str]:
    """The lines of a text or JSON-lines chunk; bytes that are not UTF-8 raise naming file and line."""
    chunk = task.chunk
    try:
        text = chunk.payload.decode("utf-8")
    except UnicodeDecodeError as error:
        line = chunk.first_record + chunk.payload.count(b"\n", 0, error.start)
        raise DataFormatError(f"{task.source.path}:{line}: not UTF-8 text (byte {chunk.payload[error.start]:#04x}): "
                              "save it as UTF-8, or is it the wrong file?") from None
    return text.split("\n")


def _jsonl_records(task: _Task, lines: list[str]) -> Iterator[tuple[int, str, dict]]:
    """(line number, line, object) of each non-empty line; bad JSON raises naming file and line."""
    for number, line in enumerate(lines, start=task.chunk.first_record):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise DataFormatError(f"{task.source.path}:{number}: malformed JSON line ({error})") from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{task.source.path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, line, record


def _jsonl_documents(task: _Task, lines: list[str]) -> list[tuple[str, str]]:
    source, field = task.source, task.settings.text_field
    documents = []
    for number, line, record in _jsonl_records(task, lines):
        text = record.get(field)
        if not isinstance(text, str):
            raise DataFormatError(f"{source.path}:{number}: missing string field {field!r}"
                                  + ("" if field != "text" else " (another field: --text-field)"))
        language = record.get("language")
        if language is not None and language != task.language:
            check_language(language, f"{source.path}:{number}")
            raise DataFormatError(f"{source.path}:{number}: a {language!r} record in a file given as "
                                  f"{task.language}={source.path}; give each language its own file")
        if "\\u" in line and _SURROGATE_ESCAPE.search(line):
            _require_unicode(text, f"{source.path}:{number}")
        if text.strip():
            documents.append((str(record.get("id", f"{source.name}:{number}")), text))
    return documents


def _conversation_documents(task: _Task, lines: list[str]) -> tuple[list[tuple[str, str, object]], list[str]]:
    """(id, split, Conversation) of each conversation of the chunk that has an assistant turn, and where the
    others are ("file:line"): they carry no loss and are reported, not stored. A record's `split` field
    (train, validation, test) wins over the id hash."""
    from seallm_jax.data.sft import conversation_from_record

    source = task.source
    documents, skipped = [], []
    for number, line, record in _jsonl_records(task, lines):
        where = f"{source.path}:{number}"
        if "\\u" in line and _SURROGATE_ESCAPE.search(line):
            for message in record.get("messages") or []:
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    _require_unicode(message["content"], where)
        conversation = conversation_from_record(record, where, task.language)
        if conversation.language != task.language:
            raise DataFormatError(f"{where}: a {conversation.language!r} conversation in a file given as "
                                  f"{task.language}={source.path}; give each language its own file")
        if not conversation.has_assistant:
            skipped.append(where)
            continue
        identifier = str(record.get("id", f"{source.name}:{number}"))
        split = record.get("split", split_of(identifier))
        if split not in STORE_SPLITS:
            raise DataFormatError(f"{where}: split {split!r}: expected one of {', '.join(STORE_SPLITS)}")
        documents.append((identifier, split, conversation))
    return documents, skipped


# JSON may escape a UTF-16 surrogate that has no partner (`"\ud800"`): json.loads accepts it, no encoder can.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _require_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataFormatError(f"{where}: the text holds a lone surrogate escape (\\u{ord(text[error.start]):04x}), "
                              "which is no Unicode character; fix or drop the line") from None


def _token_array(ids) -> np.ndarray:
    # A list of ints through array.array is 2-3x faster than np.asarray (5% of a tiktoken worker's time).
    if isinstance(ids, list) and _UINT_IS_4_BYTES:
        return np.frombuffer(array.array("I", ids), TOKEN_DTYPE)
    return np.asarray(ids, TOKEN_DTYPE)


_UINT_IS_4_BYTES = array.array("I").itemsize == 4 and sys.byteorder == "little"


def _encode(adapter, texts: list[str], piece_chars: int) -> list[np.ndarray]:
    """Each text's token ids; long texts are encoded in pieces, in batches of bounded size."""
    pieces, owner = [], []
    for index, text in enumerate(texts):
        for piece in split_long_text(text, piece_chars):
            pieces.append(piece)
            owner.append(index)
    encoded: list[list[np.ndarray]] = [[] for _ in texts]
    start = 0
    while start < len(pieces):
        stop, chars = start, 0
        while stop < len(pieces) and (chars < _ENCODE_BATCH_CHARS or stop == start):
            chars += len(pieces[stop])
            stop += 1
        for index, ids in zip(owner[start:stop], adapter.encode_batch(pieces[start:stop])):
            encoded[index].append(_token_array(ids))
        start = stop
    return [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in encoded]


def _tokenize_chunk(task: _Task) -> dict:
    """Encode one chunk, write its shards (one per split that has documents) and then its progress
    record; returns that record."""
    if task.settings.kind == "conversations":
        return _tokenize_conversation_chunk(task)
    documents = _documents(task)
    tokens = _encode(_ADAPTER, [text for _, text in documents], task.settings.piece_chars)
    by_split: dict[str, list[np.ndarray]] = {split: [] for split in STORE_SPLITS}
    separator = np.asarray([task.eos_id], TOKEN_DTYPE)
    for (identifier, _), ids in zip(documents, tokens):
        by_split[split_of(identifier)].append(ids)
    shards = {}
    for split, docs in by_split.items():
        if not docs:
            continue
        lengths = np.fromiter((len(ids) + 1 for ids in docs), np.int64, len(docs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(OFFSET_DTYPE)
        flat = np.concatenate([part for ids in docs for part in (ids, separator)])
        shards[split] = write_shard(task.store, f"{task.language}/{split}-{task.number:05d}", flat, offsets)
    record = {"key": task.run_key, "language": task.language, "number": task.number,
              "source": task.source_index, "documents": len(documents),
              "tokens": int(sum(len(ids) + 1 for ids in tokens)), "shards": shards}
    with atomic_file(_progress_path(task.store, task.language, task.number)) as staging:
        Path(staging).write_text(json.dumps(record), encoding="utf-8")
    return record


def _tokenize_conversation_chunk(task: _Task) -> dict:
    """`_tokenize_chunk` for conversations: each rendered with ChatML, its loss mask beside its tokens
    (the document separator after it is never a target)."""
    documents, skipped = _conversation_documents(task, _chunk_lines(task))
    contents = _encode(_ADAPTER, [m.content for _, _, c in documents for m in c.messages], task.settings.piece_chars)
    by_split: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {split: [] for split in STORE_SPLITS}
    start, total = 0, 0
    for _, split, conversation in documents:
        count = len(conversation.messages)
        tokens, mask = task.template.render([m.role for m in conversation.messages], contents[start:start + count])
        start += count
        by_split[split].append((np.asarray([*tokens, task.eos_id], TOKEN_DTYPE),
                                np.asarray([*mask, 0], MASK_DTYPE)))
        total += len(tokens) + 1
    shards = {}
    for split, docs in by_split.items():
        if not docs:
            continue
        lengths = np.fromiter((len(ids) for ids, _ in docs), np.int64, len(docs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(OFFSET_DTYPE)
        shards[split] = write_shard(task.store, f"{task.language}/{split}-{task.number:05d}",
                                    np.concatenate([ids for ids, _ in docs]), offsets,
                                    np.concatenate([mask for _, mask in docs]))
    record = {"key": task.run_key, "language": task.language, "number": task.number,
              "source": task.source_index, "documents": len(documents), "tokens": total, "shards": shards,
              "skipped": len(skipped), "first_skipped": skipped[0] if skipped else None}
    with atomic_file(_progress_path(task.store, task.language, task.number)) as staging:
        Path(staging).write_text(json.dumps(record), encoding="utf-8")
    return record


# -- the command ------------------------------------------------------------------------------------------
def _progress_path(store: str, language: str, number: int) -> str:
    return os.path.join(store, PROGRESS_DIR, f"{language}-{number:05d}.json")


def _run_key(fingerprint: str, sources: Mapping[str, Sequence[Mapping]], settings: Mapping) -> str:
    """A store's identity: the tokenizer, each source's name, size and content, the settings. Paths are
    left out: the same files moved elsewhere make the same store."""
    identity = {"tokenizer": fingerprint, "settings": dict(settings),
                "sources": {language: [[os.path.basename(s["path"]), s["bytes"], s["sha256"]] for s in entries]
                            for language, entries in sources.items()}}
    return hashlib.sha256(canonical_json(identity)).hexdigest()


def plan_sources(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]]) -> dict[str, list[Source]]:
    """Check every input before any work (language codes, files exist, not empty, known format) and
    hash it: {language: [Source]}."""
    planned: dict[str, list[Source]] = {}
    for language, paths in files_by_language(files).items():
        for path in paths:
            if not os.path.exists(path):
                raise MissingDataError(f"data file not found: {path}")
            if os.path.isdir(path):
                raise UserError(f"{path} is a directory; give the data files themselves")
            size = os.path.getsize(path)
            if size == 0:
                raise DataFormatError(f"{path}: empty source, no documents found (the file is empty)")
            form, compression = source_format(path)
            planned.setdefault(language, []).append(Source(language, path, form, compression, size,
                                                           file_sha256(path)))
    return planned


def tokenize_files(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
                   out: str | os.PathLike, *, tokenizer: object | None = None, text_field: str = "text",
                   text_unit: TextUnit = "line", workers: int | None = None,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, piece_chars: int = DEFAULT_PIECE_CHARS,
                   progress: bool | None = None, encoder: Encoder = "auto", kind: Kind = "text",
                   default_system: str | None = None) -> TokenStore:
    """Tokenize {language: file or [files]} into the token store `out` and open it.

    `tokenizer`: a tokenizer object, a local Hugging Face tokenizer directory, or None (Qwen2).
    `workers` processes encode chunks in parallel (None: all cores; 1: in this process). Rerun after a
    kill, it keeps the finished chunks and writes the rest: the store is byte-identical to an
    uninterrupted run's, whatever the number of workers. `progress` None shows a bar on a terminal only.
    `encoder`: "fast" encodes with tiktoken where that gives exactly the tokenizer's ids (byte-level BPE
    tokenizers such as Qwen2's, `seallm_jax.tokenizer.fast_bpe`; an error for others), "hf" with the
    tokenizer itself, "auto" fast on large inputs when the tokenizer qualifies. The store's bytes are
    the same whichever encodes.
    `kind="conversations"`: the inputs are JSON-lines conversations (`{"messages": [{"role", "content"},
    ...]}`, docs/data.md), each stored rendered with ChatML (Qwen2's template; `default_system` is
    inserted where a conversation has no system message) with a loss mask of its assistant tokens;
    conversations without an assistant turn are skipped with a warning.
    """
    if kind == "conversations":
        text_unit = "line"
    settings = TokenizeSettings(text_field, text_unit, int(chunk_bytes), int(piece_chars), kind,
                                default_system if kind == "conversations" else None)
    settings.check()
    workers = len(os.sched_getaffinity(0)) if workers is None else int(workers)
    if workers < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    if encoder not in ENCODERS:
        raise UserError(f"--encoder {encoder!r}: expected one of {', '.join(ENCODERS)}")
    out = check_output_dir(out, "--out")
    if isinstance(tokenizer, (str, os.PathLike)):
        from seallm_jax.errors import require_dir

        require_dir(tokenizer, "--tokenizer")
    sources = plan_sources(files)  # bad input fails here, before the tokenizer loads
    # No more workers than chunks (a compressed file holds ~4x its size in text): small inputs, such as
    # an SFT run's conversations, are tokenized in this process without starting a pool.
    chunks = sum(-(-source.bytes * (4 if source.compression or source.format == "parquet" else 1)
                   // settings.chunk_bytes) for planned in sources.values() for source in planned)
    workers = max(1, min(workers, chunks))
    if kind == "conversations":
        for source in (source for planned in sources.values() for source in planned):
            if source.format != "jsonl":
                raise UserError(f"{source.path}: conversations are read from JSON-lines files (.jsonl, .jsonl.gz, "
                                ".jsonl.zst), one {\"messages\": [...]} object per line")
    from seallm_jax.data.tokenizer_adapter import as_tokenizer

    adapter = as_tokenizer(tokenizer)
    entry = tokenizer_info(adapter)
    template = None
    if kind == "conversations":
        from seallm_jax.data.sft import ChatTemplate

        template = ChatTemplate.from_tokenizer(adapter, default_system)
    source_entries = {language: [{"path": s.path, "bytes": s.bytes, "sha256": s.sha256} for s in planned]
                      for language, planned in sources.items()}
    settings_entry = settings.entry()
    run_key = _run_key(entry["fingerprint"], source_entries, settings_entry)

    # Chosen (and a refused --encoder fast reported) before `out` is touched.
    worker_tokenizer = _worker_tokenizer(adapter.tokenizer, encoder,
                                         sum(source.bytes for planned in sources.values() for source in planned))
    existing = _prepare_output(out, run_key)
    if existing is not None:
        return existing
    try:
        records = _run_chunks(out, sources, settings, run_key, entry["eos_id"], worker_tokenizer, workers, progress,
                              template)
        for language, planned in sources.items():
            for index, source in enumerate(planned):
                if not any(r["documents"] for r in records if r["language"] == language and r["source"] == index):
                    what = "conversation with an assistant turn" if kind == "conversations" else "documents"
                    raise DataFormatError(f"{source.path}: empty source, no {what} found")
    except UserError:
        shutil.rmtree(out, ignore_errors=True)  # a store that cannot be completed is not left behind
        raise
    languages = {}
    for language, planned in sources.items():
        ordered = sorted((r for r in records if r["language"] == language), key=lambda r: r["number"])
        for index, source_entry in enumerate(source_entries[language]):
            source_entry["documents"] = sum(r["documents"] for r in ordered if r["source"] == index)
            if kind == "conversations":
                mine = [r for r in ordered if r["source"] == index]
                source_entry["skipped_without_assistant"] = sum(r["skipped"] for r in mine)
                first = next((r["first_skipped"] for r in mine if r["first_skipped"]), None)
                if first:  # nothing dropped silently: they carry no loss, so they are not stored
                    warnings.warn(f"{source_entry['path']}: {source_entry['skipped_without_assistant']} conversations "
                                  f"without an assistant turn skipped (first: {first})", stacklevel=2)
        languages[language] = {"sources": source_entries[language],
                               "splits": {split: [r["shards"][split] for r in ordered if split in r["shards"]]
                                          for split in STORE_SPLITS}}
    write_manifest(out, build_manifest(entry, languages, settings=settings_entry))
    _clean(out, finished=True)
    return TokenStore.open(out)


def _prepare_output(out: str, run_key: str) -> TokenStore | None:
    """Make `out` ready: the finished store if it is already this one; else an empty directory or this
    store's own unfinished work. Anything else in `out` is never overwritten."""
    root = Path(out)
    if root.is_dir() and (root / MANIFEST).is_file():
        try:
            store = TokenStore.open(out)
        except UserError as error:
            raise UserError(f"--out {out} holds a damaged token store ({error}); delete it and run again") from None
        manifest = store.manifest
        sources = {language: entry["sources"] for language, entry in manifest["languages"].items()}
        if _run_key(store.tokenizer_fingerprint, sources, manifest.get("settings", {})) != run_key:
            raise UserError(f"--out {out} already holds a token store of other files, tokenizer or settings; "
                            "give another --out, or delete it first")
        _clean(out, finished=True)  # killed after the manifest, before the clean-up
        return store
    run_file = root / PROGRESS_DIR / "run.json"
    if root.is_dir() and any(root.iterdir()):
        if not (root / PROGRESS_DIR).is_dir():
            raise UserError(f"--out {out} is a non-empty directory that is not a token store; give a new or "
                            "empty directory")
        try:
            key = json.loads(run_file.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError):
            key = None  # killed before its first record
        if key != run_key:
            # An unfinished store of other inputs: nothing in it is reusable. The progress directory goes
            # last, so that a kill in between still leaves the directory recognisably ours.
            for child in sorted(root.iterdir(), key=lambda child: child.name == PROGRESS_DIR):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    _clean(out, finished=False)
    with atomic_file(run_file) as staging:
        Path(staging).write_text(json.dumps({"key": run_key}), encoding="utf-8")
    return None


def _clean(out: str, *, finished: bool) -> None:
    """Remove temporary files of writes a kill interrupted, and (finished) the progress records."""
    root = Path(out)
    if not root.is_dir():
        return
    for directory in [root, *(child for child in root.iterdir() if child.is_dir())]:
        for child in directory.iterdir():
            if child.name.startswith(".") and ".tmp-" in child.name:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if finished:
        shutil.rmtree(root / PROGRESS_DIR, ignore_errors=True)


def _load_done(out: str, run_key: str) -> dict[tuple[str, int], dict]:
    done = {}
    directory = Path(out) / PROGRESS_DIR
    for path in directory.glob("*-*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if record.get("key") == run_key:
            done[(record["language"], record["number"])] = record
    return done


class _Progress:
    """A tqdm bar over input bytes (MB/s and ETA) with tokens/s beside it."""

    def __init__(self, total: int, enabled: bool | None, desc: str = "tokenize"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                        disable=None if enabled is None else not enabled, smoothing=0.1, dynamic_ncols=True)
        self.tokens = 0
        self.start = time.perf_counter()

    def update(self, raw_bytes: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed / 1e6:.2f}M tokens/s", refresh=False)
        self.bar.update(raw_bytes)

    def close(self) -> None:
        self.bar.close()


def _run_chunks(out: str, sources: Mapping[str, Sequence[Source]], settings: TokenizeSettings, run_key: str,
                eos_id: int, tokenizer: object, workers: int, progress: bool | None,
                template: object | None = None) -> list[dict]:
    """Read every source in chunks and tokenize the chunks not done yet, at most 2 per worker in flight
    (memory stays bounded whatever the input's size). Returns every chunk's record."""
    done = _load_done(out, run_key)
    records: list[dict] = []
    encoder = "tiktoken" if type(tokenizer).__name__ == "FastBPE" else "tokenizer"
    bar = _Progress(sum(s.bytes for planned in sources.values() for s in planned), progress, f"tokenize ({encoder})")
    executor = None
    if workers > 1:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=_worker_context(), initializer=_init_worker, initargs=(tokenizer, True, os.getpid()))
    else:
        _init_worker(tokenizer, pooled=False)
    pending: dict[concurrent.futures.Future, int] = {}

    def collect(block: bool) -> None:
        finished, _ = concurrent.futures.wait(
            list(pending), return_when=concurrent.futures.FIRST_COMPLETED if block else concurrent.futures.ALL_COMPLETED)
        for future in finished:
            raw_bytes = pending.pop(future)
            record = future.result()
            records.append(record)
            bar.update(raw_bytes, record["tokens"])

    try:
        for language, planned in sources.items():
            number = 0
            for index, source in enumerate(planned):
                position = 0
                for chunk in _iter_chunks(source, settings):
                    raw_bytes, position = chunk.raw_position - position, chunk.raw_position
                    if (language, number) in done:
                        records.append(done[(language, number)])
                        bar.update(raw_bytes, 0)
                    else:
                        task = _Task(out, language, number, index, source, chunk, settings, run_key, eos_id, template)
                        if executor is None:
                            record = _tokenize_chunk(task)
                            records.append(record)
                            bar.update(raw_bytes, record["tokens"])
                        else:
                            pending[executor.submit(_tokenize_chunk, task)] = raw_bytes
                            while len(pending) >= 2 * workers:
                                collect(block=True)
                    number += 1
        while pending:
            collect(block=False)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return records


# -- caches for raw files and the shipped corpus ---------------------------------------------------------------
def _cache_root() -> Path:
    root = os.environ.get(STORE_ENV_VAR)
    return (Path(root) if root else Path.home() / ".cache" / "seallm_jax") / "token_stores"


def ensure_store(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], *,
                 tokenizer: object | None = None, cache_dir: str | os.PathLike | None = None,
                 text_field: str = "text", text_unit: TextUnit = "line",
                 workers: int | None = None, kind: Kind = "text", default_system: str | None = None) -> TokenStore:
    """A token store of raw files ({language: file or [files]}), tokenized once into a cache under
    `cache_dir` (default `$SEALLM_JAX_CACHE/token_stores`, else `~/.cache/seallm_jax/token_stores`) and
    reused while the files (paths, sizes, modification times), the tokenizer and the settings stay the
    same. Processes that ask at once wait for one of them to write it. `kind`, `default_system`: as
    `tokenize_files`."""
    from seallm_jax.data.tokenizer_adapter import as_tokenizer

    adapter = as_tokenizer(tokenizer)
    fingerprint = tokenizer_info(adapter)["fingerprint"]
    identity = {"tokenizer": fingerprint, "text_field": text_field, "text_unit": text_unit, "files": {},
                "layout": _LAYOUT_VERSION}
    if kind != "text":
        identity.update(kind=kind, default_system=default_system)
    for language, paths in files.items():
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        entries = []
        for path in paths:
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise MissingDataError(f"data file not found: {path}")
            stat = os.stat(path)
            entries.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        identity["files"][language] = entries
    key = hashlib.sha256(canonical_json(identity)).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    path = root / key
    with contextlib.suppress(UserError):
        if (path / MANIFEST).is_file():
            return TokenStore.open(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be writing this very store
        if (path / MANIFEST).is_file():
            try:
                return TokenStore.open(path)  # written by the process we waited for
            except UserError:
                shutil.rmtree(path)  # a damaged cache entry is rebuilt, not reported
        return tokenize_files(files, path, tokenizer=adapter.tokenizer, text_field=text_field,
                              text_unit=text_unit, workers=workers, kind=kind, default_system=default_system)


def shipped_corpus_store(tokenizer: object | None = None, *, cache_dir: str | os.PathLike | None = None,
                         workers: int | None = 1) -> TokenStore:
    """The shipped corpus (every language of `seallm_jax/data/corpus`) as a cached token store; its splits
    are those of `load_corpus`. Small: one process tokenizes it in seconds."""
    files = {language: [str(CORPUS_DIR / f"{language}.jsonl.gz")] for language in shipped_languages()}
    return ensure_store(files, tokenizer=tokenizer, cache_dir=cache_dir, workers=workers)


# -- SFT conversations as a cached token store -----------------------------------------------------------------
_CONVERSATION_LAYOUT = 1  # bump when the JSON-lines files written below change


def conversation_store(files: Sequence[str] = (), *, tokenizer: object | None = None,
                       languages: Sequence[str] | None = None, min_source_chars: int = 0,
                       max_per_language: int | None = None, default_system: str | None = QWEN2_DEFAULT_SYSTEM,
                       cache_dir: str | os.PathLike | None = None):
    """The conversations of an SFT run as a token store (tokens and assistant-only loss mask), tokenized
    once into the cache of `seallm_jax.data.tokenize.ensure_store` and reused.

    `files`: JSON-lines conversation files, as LANG=PATH items (streamed as they are) or plain paths whose
    records name their `language` (first sorted by language into per-language files in the cache). None
    or empty: translation conversations built from the shipped parallel corpus (`languages`,
    `min_source_chars`, `max_per_language` as in `translation_conversations`; the corpus's train and
    validation splits, its test split never).
    """
    from seallm_jax.data.store import parse_data_args

    items = [os.fspath(item) for item in files or ()]
    if not items:
        by_language = _translation_files(languages, min_source_chars, max_per_language, cache_dir)
    else:
        named = parse_data_args([item for item in items if "=" in item], flag="config.data.files") \
            if any("=" in item for item in items) else {}
        plain = [item for item in items if "=" not in item]
        by_language = {language: list(paths) for language, paths in named.items()}
        for language, path in _files_by_record_language(plain, cache_dir).items():
            by_language.setdefault(language, []).append(path)
    return ensure_store(by_language, tokenizer=tokenizer, cache_dir=_store_cache(cache_dir), kind="conversations",
                        default_system=default_system)


def _cache(cache_dir: str | os.PathLike | None, kind: str) -> str:
    if cache_dir is not None:
        return os.path.join(os.fspath(cache_dir), kind)
    root = os.environ.get(STORE_ENV_VAR) or os.path.expanduser(os.path.join("~", ".cache", "seallm_jax"))
    return os.path.join(root, kind)


def _store_cache(cache_dir: str | os.PathLike | None) -> str | None:
    return None if cache_dir is None else os.path.join(os.fspath(cache_dir), "token_stores")


def _write_language_files(directory: str, records: Mapping[str, Sequence[Mapping]]) -> dict[str, str]:
    """{language: [record]} as DIRECTORY/{language}.jsonl, written whole or not at all."""
    from seallm_jax.files import atomic_directory

    if not os.path.isdir(directory):
        with atomic_directory(directory, if_exists="keep") as staging:
            for language, items in records.items():
                with open(os.path.join(staging, f"{language}.jsonl"), "w", encoding="utf-8") as handle:
                    for record in items:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {name[:-len(".jsonl")]: os.path.join(directory, name)
            for name in sorted(os.listdir(directory)) if name.endswith(".jsonl")}


def _translation_files(languages: Sequence[str] | None, min_source_chars: int, max_per_language: int | None,
                       cache_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    """The shipped translation conversations as per-language JSON-lines files (each record with its corpus
    split), in a cache directory keyed by the settings."""
    from seallm_jax.data.sft import translation_conversations

    key = json.dumps({"languages": sorted(languages) if languages else None, "min_source_chars": min_source_chars,
                      "max_per_language": max_per_language, "layout": _CONVERSATION_LAYOUT}, sort_keys=True)
    directory = os.path.join(_cache(cache_dir, "conversations"), hashlib.sha256(key.encode()).hexdigest()[:24])
    records: dict[str, list[dict]] = {}
    if not os.path.isdir(directory):
        for split in ("train", "validation"):
            grouped = translation_conversations(split, languages, min_source_chars=min_source_chars,
                                                max_per_language=max_per_language)
            for language, items in grouped.items():
                records.setdefault(language, []).extend(
                    {"id": item.id, "language": language, "split": split,
                     "messages": [{"role": m.role, "content": m.content} for m in item.messages]} for item in items)
    return {language: [path] for language, path in _write_language_files(directory, records).items()}


def _files_by_record_language(paths: Sequence[str], cache_dir: str | os.PathLike | None) -> dict[str, str]:
    """Conversation files whose records name their `language`, sorted into one file per language (each
    record keeping its id: its `id`, else FILE:LINE), in a cache directory keyed by the files' paths,
    sizes and modification times. Malformed lines raise naming file and line."""
    from seallm_jax.data.corpus import read_jsonl
    from seallm_jax.data.sft import conversation_from_record

    if not paths:
        return {}
    identity = []
    for path in paths:
        if not os.path.isfile(path):
            raise MissingDataError(f"data file not found: {path}")
        stat = os.stat(path)
        identity.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    key = json.dumps({"files": identity, "layout": _CONVERSATION_LAYOUT})
    directory = os.path.join(_cache(cache_dir, "conversations"), hashlib.sha256(key.encode()).hexdigest()[:24])
    records: dict[str, list[dict]] = {}
    if not os.path.isdir(directory):
        without_assistant = []
        for path in paths:
            for number, record in read_jsonl(path):
                where = f"{path}:{number}"
                if record.get("language") is None:
                    raise DataFormatError(f"{where}: no 'language' field; give the file as LANG=PATH "
                                          f"(th={path}) or name each record's language")
                # Checked here, so that an error names the user's file and line, not the sorted copy.
                conversation = conversation_from_record(record, where)
                if not conversation.has_assistant:
                    without_assistant.append(where)
                    continue
                record.setdefault("id", f"{os.path.basename(path)}:{number}")
                records.setdefault(conversation.language, []).append(record)
        if without_assistant:
            warnings.warn(f"{len(without_assistant)} conversations without an assistant turn skipped (first: "
                          f"{without_assistant[0]})", stacklevel=3)
        if not records:
            raise DataFormatError(f"empty source: no conversation with an assistant turn in {', '.join(paths)}")
    return _write_language_files(directory, records)
