"""A tiny byte-level tokenizer (ChatML template included) and tiny random Qwen2 models, for tests and
for smoke-running `seallm-jax eval` without real weights.
"""
from __future__ import annotations

import os

from flax import nnx
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM
from seallm_jax.tokenizer import ENDOFTEXT, IM_END, IM_START, QWEN2_CHAT_TEMPLATE

# 256 byte tokens, then the three special tokens the ChatML template and decoding need.
BYTE_VOCAB_SIZE = 256
TINY_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
TINY_VOCAB_SIZE = BYTE_VOCAB_SIZE + len(TINY_SPECIAL_TOKENS)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id = UTF-8 byte value; any script round-trips exactly."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps byte b to a printable character; order the vocabulary so that id == byte value.
    byte_to_char = {}
    for character in alphabet:
        byte_to_char[_byte_of(character)] = character
    vocab = {byte_to_char[b]: b for b in range(BYTE_VOCAB_SIZE)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def _byte_of(character: str) -> int:
    """Inverse of GPT-2's byte-to-printable-character map."""
    code = ord(character)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if code in printable:
        return code
    shifted = [b for b in range(256) if b not in printable]
    return shifted[code - 256]


def tiny_config(**overrides) -> Qwen2Config:
    """A two-layer Qwen2 small enough to compile and run in seconds on one CPU core."""
    fields = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=None, eos_token_id=BYTE_VOCAB_SIZE)
    fields.update(overrides)
    return Qwen2Config(**fields)


def tiny_model(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(tiny_config(**overrides), rngs=nnx.Rngs(seed))


def save_tiny_model(path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """A tiny random model and the byte tokenizer as a Hugging Face directory `--model` accepts."""
    from seallm_jax.hf import save_pretrained

    return save_pretrained(tiny_model(seed, **overrides), path, tokenizer=tiny_tokenizer())


# lm-eval tasks over the shipped corpus (`write_corpus_tasks`): multiple choice, rolling perplexity and
# greedy translation, as YAML files over local JSON-lines data, readable by any lm-eval backend offline.
CORPUS_TASKS = ("sea_corpus_mc", "sea_corpus_ppl", "sea_corpus_gen")
_CORPUS_TASK_YAML = {
    "sea_corpus_mc": """task: sea_corpus_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
    "sea_corpus_ppl": """task: sea_corpus_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""",
    "sea_corpus_gen": """task: sea_corpus_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


def write_corpus_tasks(directory: str | os.PathLike, *, languages: tuple[str, ...] = ("th", "vi", "id"),
                       docs_per_language: int = 4, choices: int = 4, max_gen_toks: int = 16,
                       max_chars: int = 80) -> list[str]:
    """Write the `CORPUS_TASKS` YAML files and their JSON-lines data (from the shipped corpus' held-out
    parallel split, the longest messages of at most `max_chars` characters) into `directory` (lm-eval's
    `--include_path`); returns the task names.

    - sea_corpus_mc: "English: <en>\\n<Language>:" with the translations of `choices` messages as the
      options, the right one at a rotating position;
    - sea_corpus_ppl: each English text and its translation on the next line, scored whole (bits per
      byte, perplexities);
    - sea_corpus_gen: the same prompt, completed greedily up to the newline (exact match).
    """
    import json

    from seallm_jax.data.corpus import load_parallel
    from seallm_jax.languages import LANGUAGE_NAMES

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rows: dict[str, list[dict]] = {name: [] for name in CORPUS_TASKS}
    for language in languages:
        # Longer messages first: short UI labels ("OK") make a poor exam.
        pairs = sorted((p for p in load_parallel("test", "en", language)
                        if len(p[0].text) <= max_chars and len(p[1].text) <= max_chars),
                       key=lambda p: (-len(p[0].text), p[0].id))
        pairs = pairs[: docs_per_language * choices]
        name = LANGUAGE_NAMES[language]
        for number in range(docs_per_language):
            (source, target), *others = pairs[number * choices:(number + 1) * choices]
            options = [" " + other.text for _, other in others]
            answer = number % (len(options) + 1)
            options.insert(answer, " " + target.text)
            prompt = f"English: {source.text}\n{name}:"
            rows["sea_corpus_mc"].append({"question": prompt, "choices": options, "answer": answer})
            rows["sea_corpus_ppl"].append({"text": f"{source.text}\n{target.text}"})
            rows["sea_corpus_gen"].append({"prompt": prompt, "target": " " + target.text})
    for task, task_rows in rows.items():
        data = os.path.join(directory, f"{task}.jsonl")
        with open(data, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in task_rows)
        with open(os.path.join(directory, f"{task}.yaml"), "w", encoding="utf-8") as handle:
            handle.write(_CORPUS_TASK_YAML[task].format(data=json.dumps(data), max_gen_toks=max_gen_toks))
    return list(CORPUS_TASKS)
