"""An encoder giving exactly a Hugging Face byte-level BPE tokenizer's ids (Qwen2's) several times faster:
the tokenizer's own vocabulary, split regex, NFC and added tokens run by tiktoken's BPE (`data tokenize`).
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence


class FastBPE:
    """Encodes plain text (added tokens in it become their ids, as the Rust tokenizer does with
    `add_special_tokens=False`) with tiktoken. Picklable: it sends its definition, and each process
    builds the tiktoken encoding on first use."""

    def __init__(self, pattern: str, ranks: dict[bytes, int], added: dict[str, int], nfc: bool, name: str = "bpe"):
        self.pattern, self.ranks, self.added, self.nfc, self.name = pattern, ranks, added, nfc, name
        self._encoding = None
        # Leftmost match, and the longest of the added tokens that match there (Python tries the
        # alternatives in order at each position, so longest first).
        self._added_regex = (re.compile("|".join(re.escape(token) for token in sorted(added, key=len, reverse=True)))
                             if added else None)

    def __getstate__(self) -> dict:
        return {"pattern": self.pattern, "ranks": self.ranks, "added": self.added, "nfc": self.nfc, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _core(self):
        if self._encoding is None:
            import tiktoken

            self._encoding = tiktoken.Encoding(self.name, pat_str=self.pattern, mergeable_ranks=self.ranks,
                                               special_tokens={})
        return self._encoding._core_bpe

    def encode(self, text: str) -> list[int]:
        core = self._core()
        if self._added_regex is None or self._added_regex.search(text) is None:
            return self._ordinary(core, text)
        ids: list[int] = []
        start = 0
        for match in self._added_regex.finditer(text):
            if match.start() > start:
                ids.extend(self._ordinary(core, text[start:match.start()]))
            ids.append(self.added[match.group()])
            start = match.end()
        if start < len(text):
            ids.extend(self._ordinary(core, text[start:]))
        return ids

    def _ordinary(self, core, text: str) -> list[int]:
        # The Rust tokenizer normalizes each stretch between added tokens on its own; so does this.
        return core.encode_ordinary(unicodedata.normalize("NFC", text) if self.nfc else text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One call per text in this thread: tiktoken's encode_ordinary_batch goes through a Python thread
        # pool whose per-text cost exceeds the encoding of a short text; processes give the parallelism.
        return [self.encode(text) for text in texts]


_CACHE: dict[str, FastBPE | str] = {}


def fast_encoder(tokenizer: object) -> FastBPE | None:
    """The tiktoken encoder equal to `tokenizer` (a `tokenizers.Tokenizer` or a `transformers` fast
    tokenizer), or None when it does not qualify; then `fast_encoder_refusal` says why. What qualifies:
      * model: BPE without dropout, word prefixes/suffixes or byte fallback, all 256 byte tokens in the
        vocabulary, and its ids are the ranks: along the merge list the merged tokens' ids never decrease,
        every split of a token into two vocabulary tokens is a merge (tiktoken merges any such pair), and
        either `ignore_merges` is set or merging a vocabulary token's bytes gives that token (tiktoken looks
        a pre-token up in the vocabulary before merging);
      * pre-tokenizer: Split(Qwen2's regex, isolated) then ByteLevel without a regex or a prefix space
        (other regexes are not known to match alike in Oniguruma and tiktoken's engine); normalizer none
        or NFC;
      * added tokens: matched in the raw text (not normalized), no strip or single-word rules, as the Rust
        tokenizer extracts them (leftmost, longest first) before normalizing the text between them.
    What the ranks cannot carry, the Rust BPE resolving two equal-rank merges (different splits of one
    token) by its merge list where tiktoken takes the leftmost, is checked against the Rust tokenizer in
    tests/test_fast_bpe.py and on the benchmark's whole file (benchmarks/data.py)."""
    result = _qualify(tokenizer)
    return result if isinstance(result, FastBPE) else None


def fast_encoder_refusal(tokenizer: object) -> str | None:
    """Why `tokenizer` gets no fast encoder (None: it gets one)."""
    result = _qualify(tokenizer)
    return None if isinstance(result, FastBPE) else result


def _backend(tokenizer: object):
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if getattr(tokenizer, "base_tokenizer", None) is not None:
        return None  # a vocabulary subset renumbers ids
    return getattr(tokenizer, "backend_tokenizer", None)


def _qualify(tokenizer: object) -> FastBPE | str:
    backend = _backend(tokenizer)
    if backend is None:
        return f"{type(tokenizer).__name__} is not a Hugging Face fast tokenizer"
    definition = backend.to_str()
    key = hashlib.sha256(definition.encode("utf-8")).hexdigest()
    if key not in _CACHE:
        try:
            _CACHE[key] = _build(json.loads(definition), backend)
        except ImportError:
            _CACHE[key] = "tiktoken is not installed"
    return _CACHE[key]


def _build(spec: dict, backend) -> FastBPE | str:
    import tiktoken  # noqa: F401 - refuse here, not in a worker, when it is missing

    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model {model.get('type')}, not BPE"
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("byte_fallback"):
        return "BPE with dropout, word prefixes/suffixes or byte fallback"
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return f"normalizer {normalizer.get('type')}"
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return "pre-tokenizer is not Split(a known regex, isolated) + ByteLevel(no regex, no prefix space)"
    if getattr(backend, "encode_special_tokens", False):
        return "encode_special_tokens is set"
    added = {}
    for token in spec.get("added_tokens") or []:
        if token.get("normalized") or token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            return f"added token {token['content']!r} is normalized or has strip/single-word rules"
        added[token["content"]] = int(token["id"])
    from seallm_jax.tokenizer.qwen2 import _byte_to_unicode

    alphabet = _byte_to_unicode()  # byte b -> the character a ByteLevel BPE sees for it
    to_latin1 = str.maketrans({char: chr(b) for b, char in enumerate(alphabet)})
    drop_alphabet = str.maketrans({char: None for char in alphabet})
    vocab = model["vocab"]
    for token in vocab:
        if token.translate(drop_alphabet):
            return f"vocabulary token {token!r} is not byte-level"
    ranks = {token.translate(to_latin1).encode("latin-1"): int(rank) for token, rank in vocab.items()}
    if len(set(ranks.values())) != len(ranks) or any(bytes([b]) not in ranks for b in range(256)):
        return "vocabulary ids are not unique or a byte token is missing"
    merges = [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    problem = _check_merges(model["vocab"], merges)
    if problem:
        return problem
    if not model.get("ignore_merges"):
        # Without ignore_merges the Rust BPE merges even a pre-token that is a vocabulary token; tiktoken
        # returns it whole. Equal only if merging each token's characters gives the token itself.
        bpe = backend.model
        for token, rank in model["vocab"].items():
            if len(token) > 1 and [t.id for t in bpe.tokenize(token)] != [rank]:
                return f"merging {token!r} does not give that token (and ignore_merges is off)"
    return FastBPE(pattern, ranks, added, normalizer is not None, name=f"hf-{len(ranks)}")


def _split_pattern(pre_tokenizer: dict | None) -> str | None:
    if not pre_tokenizer or pre_tokenizer.get("type") != "Sequence":
        return None
    steps = pre_tokenizer.get("pretokenizers") or []
    if len(steps) != 2:
        return None
    split, byte_level = steps
    if (split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert")
            or byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex")
            or byte_level.get("add_prefix_space")):
        return None
    from seallm_jax.tokenizer.qwen2 import QWEN2_PATTERN

    pattern = (split.get("pattern") or {}).get("Regex")
    return pattern if pattern == QWEN2_PATTERN else None


def _check_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str | None:
    """The merge list is the ranks' order: the merged token's id never decreases along it, and every
    split of a vocabulary token into two vocabulary tokens is in it (tiktoken would merge that pair)."""
    previous = -1
    listed = set()
    for left, right in merges:
        merged = vocab.get(left + right)
        if merged is None or left not in vocab or right not in vocab:
            return f"merge {left!r} + {right!r} is not of vocabulary tokens"
        if merged < previous:
            return f"merge {left!r} + {right!r} comes after a merge into a higher id: ids are not its ranks"
        previous = merged
        listed.add(left + " " + right)
    # Every listed merge is a split into vocabulary tokens: the splits are all listed iff they number the same.
    splits = 0
    for token in vocab:
        for cut in range(1, len(token)):
            if token[:cut] in vocab and token[cut:] in vocab:
                splits += 1
    if splits != len(listed):
        return (f"{splits - len(listed)} splits of vocabulary tokens into two vocabulary tokens are no merge "
                "(tiktoken would merge them)")
    return None
