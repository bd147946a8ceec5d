"""The tiktoken encoder of `data tokenize` (seallm_jax.tokenizer.fast_bpe) gives exactly the Hugging Face
tokenizer's ids: every shipped document in every language, code points of every script, special-token
strings in text, whitespace runs, CRLF, emojis, text NFC changes, the merges where equal ranks could
disagree; tokenizers that do not qualify fall back, and a store is byte-identical whichever encoder wrote it."""
import json
import os
import random
import unicodedata
from pathlib import Path

import pytest
from hf_models import save_smollm2_style_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seallm_jax.cli import main
from seallm_jax.data.corpus import load_corpus
from seallm_jax.data.tokenize import tokenize_files
from seallm_jax.tokenizer.fast_bpe import fast_encoder, fast_encoder_refusal


@pytest.fixture(scope="module")
def tokenizer():
    from seallm_jax.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def fast(tokenizer):
    encoder = fast_encoder(tokenizer)
    assert encoder is not None, fast_encoder_refusal(tokenizer)
    return encoder


@pytest.fixture(scope="module")
def corpus_texts():
    return [doc.text for docs in load_corpus(None).values() for doc in docs]


def hf_ids(tokenizer, texts):
    backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else tokenizer
    return [encoding.ids for encoding in backend.encode_batch(list(texts), add_special_tokens=False)]


def assert_same(expected, got, texts):
    wrong = [index for index, (a, b) in enumerate(zip(expected, got)) if a != b]
    assert len(expected) == len(got) and not wrong, \
        f"{len(wrong)} texts differ, first {texts[wrong[0]]!r}: {expected[wrong[0]]} vs {got[wrong[0]]}"


def test_every_shipped_document_of_every_language(tokenizer, fast, corpus_texts):
    languages = load_corpus(None)
    assert {"th", "km", "lo", "my", "zh", "vi", "ta"} <= set(languages)
    assert len(corpus_texts) > 50_000
    assert_same(hf_ids(tokenizer, corpus_texts), fast.encode_batch(corpus_texts), corpus_texts)


def hard_texts(corpus_texts):
    """Strings where a pre-tokenizer, normalizer or added-token matcher could disagree."""
    rng = random.Random(0)
    samples = rng.sample(corpus_texts, 300)
    added = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>"]
    texts = [
        "<|im_start|>user\nสวัสดีครับ<|im_end|>\n<|im_start|>assistant\n", "a<|endoftext|>b<|endoftext|>",
        "<|im_start|><|im_end|><|im_start", "<|im_start|", "<<|im_end|>>", "<tool_call>{}</tool_call> <|fim_pad|>",
        "<|endoftext|>\u0301 e\u0301<|im_end|>\u0e31", " " * 1000 + "x" + "\t" * 300 + "\n" * 50 + " \n \n\n  y",
        "a\r\nb\r\n\r\nc\rd\n\re \r\n  \r\n\tf", "line\r\n" * 200, "   \n", "\n", " ", "\u00a0\u2009\u3000\u2028\u2029\u0085x",
        "👨‍👩‍👧‍👦 🇹🇭🇻🇳 👍🏽 ❤️ 🫠" * 5, "e\u0301 A\u030a \u1100\u1161\u11a8 \u0915\u093c \ufb01 \u2126 \u212b",
        "ក្រុមហ៊ុន ຂອບໃຈ မင်္ဂလာပါ ภาษาไทย ๑๒๓ ١٢٣ ½ ²", "I'S WE'RE they'll 'd'm'VE", "1234567890 3.14 1e-9 0x1F",
        "\u200b\u200c\u200d\ufeff\u00ad", "tab\there  two  spaces   three", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \U000e0001",
    ]
    for token in added:  # added tokens inside the corpus' own text, at random places
        for text in rng.sample(samples, 20):
            cut = rng.randrange(len(text) + 1)
            texts.append(text[:cut] + token + text[cut:])
    texts += [text.replace("\n", "\r\n") for text in samples[:100]]
    texts += [unicodedata.normalize("NFD", text) for text in samples[100:200]]  # NFC puts them back
    texts += [text.replace(" ", "  " * rng.randint(1, 40), 3) for text in samples[200:]]
    # Code points of every script and category (every 61st), alone and next to letters, digits, spaces.
    texts += [f"a{c}b {c}{c}1{c} \n{c}  {c}'s{c}\r\n{c}x" for c in map(chr, range(0, 0x110000, 61))
              if not 0xD800 <= ord(c) < 0xE000]
    return texts


def test_special_tokens_whitespace_crlf_emojis_and_every_script(tokenizer, fast, corpus_texts):
    texts = hard_texts(corpus_texts)
    assert_same(hf_ids(tokenizer, texts), fast.encode_batch(texts), texts)


def bpe_pieces_differing(tokenizer, fast, pieces) -> list[str]:
    """The byte-level pieces (one pre-token each, any bytes) on which the Rust BPE and tiktoken's differ."""
    from seallm_jax.tokenizer.qwen2 import _byte_to_unicode

    to_byte = {char: b for b, char in enumerate(_byte_to_unicode())}
    model, core = tokenizer.backend_tokenizer.model, fast._core()
    return [piece for piece in pieces
            if [t.id for t in model.tokenize(piece)] != core.encode_single_piece(bytes(to_byte[c] for c in piece))]


def equal_rank_hazards(tokenizer) -> list[tuple[str, str, str]]:
    """Tokens t = X+Y = Y+Z whose merge (Y, Z) comes first in the Rust BPE's list: given X Y Z, the Rust
    BPE merges Y+Z where tiktoken (equal ranks, leftmost) merges X+Y. Where the merges may differ."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = spec["vocab"]
    order = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m): i for i, m in enumerate(spec["merges"])}
    hazards = []
    for token in vocab:
        for cut in range(1, len(token)):
            left, middle = token[:cut], token[cut:]
            if token.startswith(middle) and len(middle) < len(token) and left in vocab and middle in vocab:
                right = token[len(middle):]
                if order.get((middle, right), len(order)) < order[(left, middle)]:
                    hazards.append((left, middle, right))
    return hazards


def test_bpe_agrees_where_equal_rank_merges_could_differ(tokenizer, fast):
    """The one gap the ranks leave (fast_bpe.fast_encoder's docstring): every such triple of Qwen2's
    vocabulary (~2,900), alone and between two vocabulary tokens, merges the same in both BPEs."""
    hazards = equal_rank_hazards(tokenizer)
    assert len(hazards) > 1000
    rng = random.Random(2)
    tokens = list(tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False))
    pieces = ["".join(triple) for triple in hazards]
    pieces += [rng.choice(tokens) + piece + rng.choice(tokens) for piece in pieces]
    assert not bpe_pieces_differing(tokenizer, fast, pieces)


def smollm2_style_trained(corpus_texts, qwen2_pre_tokenizer: bool) -> Tokenizer:
    """A byte-level BPE trained here (its merges are not ranks in tiktoken's sense), with GPT-2's
    regex as SmolLM2 has it, or with Qwen2's pre-tokenizer."""
    backend = Tokenizer(models.BPE())
    if qwen2_pre_tokenizer:
        from seallm_jax.tokenizer.qwen2 import QWEN2_PATTERN
        from tokenizers import Regex

        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus_texts[::20], trainer)
    return backend


@pytest.mark.parametrize("qwen2_pre_tokenizer", [False, True])
def test_other_byte_level_tokenizers_qualify_exactly_or_fall_back(corpus_texts, qwen2_pre_tokenizer):
    backend = smollm2_style_trained(corpus_texts, qwen2_pre_tokenizer)
    encoder = fast_encoder(backend)
    if qwen2_pre_tokenizer and encoder is not None:  # if it qualifies, it must be exact
        texts = corpus_texts[::7]
        assert_same(hf_ids(backend, texts), encoder.encode_batch(texts), texts)
    else:
        assert encoder is None
        reason = fast_encoder_refusal(backend)
        assert ("pre-tokenizer" in reason) if not qwen2_pre_tokenizer else ("merge" in reason)


def test_the_store_is_byte_identical_whichever_encoder(tmp_path, tokenizer, corpus_texts, capsys):
    rng = random.Random(1)
    texts = rng.sample(corpus_texts, 600) + ["<|im_start|>user\nhi<|im_end|>", " ".join(corpus_texts[:300])]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    stores = {}
    for encoder, workers in (("hf", 1), ("fast", 2)):
        store = tokenize_files({"th": str(path)}, tmp_path / encoder, tokenizer=tokenizer, workers=workers,
                               chunk_bytes=30_000, piece_chars=2000, encoder=encoder, progress=False)
        stores[encoder] = {str(file.relative_to(store.path)): file.read_bytes()
                           for file in sorted(Path(store.path).rglob("*")) if file.is_file()}
    assert len(stores["hf"]) > 4 and stores["fast"] == stores["hf"]

    # A tokenizer without an exact fast encoder: --encoder fast is a one-line error, nothing written.
    directory = tmp_path / "smollm2_style"
    save_smollm2_style_tokenizer(directory)
    out = tmp_path / "refused"
    code = main(["data", "tokenize", f"th={path}", "--out", str(out), "--tokenizer", str(directory), "--encoder",
                 "fast", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--encoder fast" in err and "pre-tokenizer" in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not os.listdir(out)


@pytest.mark.slow
def test_a_saved_qwen2_directory_qualifies_too(tmp_path, tokenizer, corpus_texts):
    """transformers drops BPE's ignore_merges when it saves Qwen2's tokenizer: the encoder is still
    exact because merging every vocabulary token's bytes gives that token (checked, ~151k tokens)."""
    from seallm_jax.tokenizer import load_local_tokenizer, save_tokenizer

    save_tokenizer(tokenizer, tmp_path)
    saved = load_local_tokenizer(tmp_path)
    encoder = fast_encoder(saved)
    assert encoder is not None, fast_encoder_refusal(saved)
    texts = corpus_texts[::5] + hard_texts(corpus_texts)[:400]
    assert_same(hf_ids(saved, texts), encoder.encode_batch(texts), texts)


@pytest.mark.slow
def test_bpe_agrees_on_random_concatenations_of_tokens(tokenizer, fast):
    """200,000 pieces of 2-4 random vocabulary tokens each, merged by both BPEs (no regex between)."""
    rng = random.Random(3)
    tokens = list(tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False))
    pieces = ["".join(rng.choice(tokens) for _ in range(rng.randint(2, 4))) for _ in range(200_000)]
    assert not bpe_pieces_differing(tokenizer, fast, pieces)
