"""The built-in Qwen2 tokenizer against a direct tiktoken encoding with the same ranks, its special
tokens and ChatML template, the on-disk cache and local-directory loading."""
import unicodedata

import pytest
import tiktoken

from seallm_jax.tokenizer import qwen2 as tokenizer_module
from seallm_jax.tokenizer import (
    QWEN2_ADDED_TOKENS,
    QWEN2_PATTERN,
    load_qwen2_ranks,
    load_tokenizer,
    save_tokenizer_files,
)

TEXTS = {
    "en": "Hello, world! It's 2024 and we're testing   the tokenizer's edge-cases:\n\n\tdon't   stop...  ",
    "zh": "我们来测试一下分词器。东南亚语言包括泰语、越南语和印尼语，共12种语言！",
    "th": "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำ สวัสดีครับ ๑๒๓",
    "vi": "Tiếng Việt có nhiều dấu thanh: à, á, ả, ã, ạ. Xin chào các bạn!",
    "km": "ភាសាខ្មែរ គឺជាភាសាផ្លូវការរបស់ប្រទេសកម្ពុជា។ សួស្តី!",
    "my": "မြန်မာဘာသာစကားသည် မြန်မာနိုင်ငံ၏ ရုံးသုံးဘာသာစကား ဖြစ်သည်။ ၁၂၃",
}


@pytest.fixture(scope="session")
def qwen2_tokenizer(tmp_path_factory):
    """Built once per test session into a private cache (the user's ~/.cache is not touched)."""
    cache = tmp_path_factory.mktemp("seallm_jax_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(tokenizer_module.CACHE_ENV_VAR, str(cache))
        yield load_tokenizer()


@pytest.fixture(scope="session")
def tiktoken_encoding():
    specials = {content: 151643 + offset for offset, (content, _) in enumerate(QWEN2_ADDED_TOKENS)}
    return tiktoken.Encoding(
        "qwen2-reference", pat_str=QWEN2_PATTERN, mergeable_ranks=load_qwen2_ranks(), special_tokens=specials
    )


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_ids_equal_direct_tiktoken_encoding(qwen2_tokenizer, tiktoken_encoding, language):
    text = TEXTS[language]
    expected = tiktoken_encoding.encode(unicodedata.normalize("NFC", text), disallowed_special=())
    assert qwen2_tokenizer.encode(text, add_special_tokens=True) == expected


def test_hello_world_ids(qwen2_tokenizer):
    assert qwen2_tokenizer.encode("Hello, world!") == [9707, 11, 1879, 0]


def test_nfc_normalization(qwen2_tokenizer):
    decomposed = unicodedata.normalize("NFD", TEXTS["vi"])
    assert decomposed != TEXTS["vi"]
    assert qwen2_tokenizer.encode(decomposed) == qwen2_tokenizer.encode(TEXTS["vi"])


def test_special_tokens_have_qwen2_ids(qwen2_tokenizer):
    assert qwen2_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643, 151644, 151645,
    ]
    for offset, (content, _) in enumerate(QWEN2_ADDED_TOKENS):
        assert qwen2_tokenizer.convert_tokens_to_ids(content) == 151643 + offset, content
    assert len(qwen2_tokenizer) == 151665
    # in running text a special token is one id, not split into pieces
    assert qwen2_tokenizer.encode("a<|im_end|>b") == [64, 151645, 65]
    assert qwen2_tokenizer.eos_token == "<|im_end|>" and qwen2_tokenizer.eos_token_id == 151645
    assert qwen2_tokenizer.pad_token == "<|endoftext|>" and qwen2_tokenizer.pad_token_id == 151643
    assert qwen2_tokenizer.bos_token is None


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_decode_round_trips(qwen2_tokenizer, language):
    text = unicodedata.normalize("NFC", TEXTS[language])
    assert qwen2_tokenizer.decode(qwen2_tokenizer.encode(text)) == text


def test_decode_skips_special_but_keeps_tool_tokens(qwen2_tokenizer):
    ids = qwen2_tokenizer.encode("<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>")
    assert qwen2_tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<tool_call>x</tool_call>"


def test_chat_template_renders_chatml_with_default_system_prompt(qwen2_tokenizer):
    messages = [
        {"role": "user", "content": "Xin chào!"},
        {"role": "assistant", "content": "Chào bạn."},
        {"role": "user", "content": "สวัสดี"},
    ]
    rendered = qwen2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nXin chào!<|im_end|>\n"
        "<|im_start|>assistant\nChào bạn.<|im_end|>\n"
        "<|im_start|>user\nสวัสดี<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_keeps_given_system_prompt(qwen2_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = qwen2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    ids = qwen2_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, return_dict=False)
    assert list(ids) == qwen2_tokenizer.encode(rendered)


def test_second_load_reads_the_cache_without_rebuilding(qwen2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(tokenizer_module.CACHE_ENV_VAR, str(tmp_path))
    first = load_tokenizer()
    assert list((tmp_path / "qwen2_tokenizer").iterdir()) == [tokenizer_module.qwen2_tokenizer_cache_dir()]

    def fail_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache exists")

    monkeypatch.setattr(tokenizer_module, "build_qwen2_tokenizer", fail_build)
    cached = load_tokenizer()
    text = TEXTS["km"] + TEXTS["zh"]
    assert cached.encode(text) == first.encode(text) == qwen2_tokenizer.encode(text)
    assert cached.chat_template == qwen2_tokenizer.chat_template
    assert cached.eos_token_id == 151645 and cached.pad_token_id == 151643


def test_exported_files_load_as_a_local_tokenizer_directory(qwen2_tokenizer, tmp_path):
    save_tokenizer_files(qwen2_tokenizer, tmp_path / "hf")
    reloaded = load_tokenizer(tmp_path / "hf")
    text = TEXTS["my"] + "<|im_end|>"
    assert reloaded.encode(text) == qwen2_tokenizer.encode(text)
    assert reloaded.eos_token_id == 151645
    messages = [{"role": "user", "content": "Hi"}]
    assert reloaded.apply_chat_template(messages, tokenize=False) == qwen2_tokenizer.apply_chat_template(
        messages, tokenize=False
    )


def test_local_directory_without_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Hugging Face tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_unwritable_cache_warns_and_still_returns_the_tokenizer(qwen2_tokenizer, tmp_path, monkeypatch):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setenv(tokenizer_module.CACHE_ENV_VAR, str(not_a_directory))
    monkeypatch.setattr(tokenizer_module, "build_qwen2_tokenizer", lambda: qwen2_tokenizer)
    with pytest.warns(UserWarning, match="could not cache"):
        tokenizer = load_tokenizer()
    assert tokenizer.encode("Hello, world!") == [9707, 11, 1879, 0]
