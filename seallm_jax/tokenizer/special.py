"""Special tokens: their names and the one way this library resolves their ids, for any tokenizer
(the built-in Qwen2 one, a local Hugging Face one, a `VocabularySubset`). Standard library only, so the
data code can use it without importing `transformers`."""
from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def special_token_id(tokenizer: object, token: str) -> int | None:
    """The id of `token` in the tokenizer's vocabulary (added tokens included), or None.

    The one way this library resolves special tokens. It looks the token up in the vocabulary
    instead of using `convert_tokens_to_ids`, which returns the unknown token's id for a missing
    token, and which some tokenizers make ambiguous: SmolLM2's `<|endoftext|>` is id 0 and also its
    unk token, so an "is it the unk id?" check would reject the real separator.
    Tokenizers without a vocabulary (a plain `encode` callable) have no special tokens: None.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return None
    token_id = get_vocab().get(token)
    return None if token_id is None else int(token_id)


def document_separator_id(tokenizer: object) -> int | None:
    """The token that separates (precedes or follows) documents in pretraining: `<|endoftext|>` if
    the vocabulary has it (Qwen2, SmolLM2, GPT-2-style vocabularies), else BOS, else EOS. Chat
    tokenizers often name `<|im_end|>` as their EOS, which never separates documents, hence BOS first."""
    separator = special_token_id(tokenizer, ENDOFTEXT)
    for candidate in (separator, getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return None
