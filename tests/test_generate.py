"""KV-cache generation against `transformers`' generate on a tiny random Qwen2, sampling filters,
text-level generation, and the `generate` / `convert` commands."""
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from hf_models import make_hf_model, save_hf_model
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from seallm_jax.cli import main as cli_main
from seallm_jax.hf import load_pretrained
from seallm_jax.model import generate as generate_module
from seallm_jax.model.generate import filter_logits, generate, generate_text, greedy_token, left_pad, prompt_bucket
from seallm_jax.tokenizer import QWEN2_CHAT_TEMPLATE, load_tokenizer, save_tokenizer_files

MODEL_NAME = "untied_gqa2"  # vocab 311, hidden 64, 2 layers, 4 heads, 2 KV heads (tests/hf_models.py)
PROMPT_LENGTHS = (5, 11, 3, 17)  # left-padded to one 32-token bucket
NEW_TOKENS = 32  # every test decodes this many, so the tests share two compiled programs (greedy, sampled)


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model(MODEL_NAME)


@pytest.fixture(scope="module")
def model_dir(hf_model, tmp_path_factory):
    return save_hf_model(hf_model, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_pretrained(model_dir)


@pytest.fixture(scope="module")
def prompts(hf_model):
    rng = np.random.default_rng(0)
    return [rng.integers(0, hf_model.config.vocab_size, n).tolist() for n in PROMPT_LENGTHS]


def hf_greedy(hf_model, prompts, max_new_tokens, eos_token_id=None, pad_token_id=0, **generate_kwargs):
    """transformers' greedy generate on the same left-padded batch, new tokens padded to max_new_tokens."""
    input_ids, attention_mask = left_pad(prompts, max(len(p) for p in prompts))
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.as_tensor(input_ids, dtype=torch.long),
            attention_mask=torch.as_tensor(attention_mask, dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            **generate_kwargs,
        )
    new = out[:, input_ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, max_new_tokens - new.shape[1])), constant_values=pad_token_id)


def test_greedy_equals_transformers_generate(model, hf_model, prompts):
    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS)
    reference = hf_greedy(hf_model, prompts, NEW_TOKENS)
    assert ours.shape == (len(prompts), NEW_TOKENS)
    np.testing.assert_array_equal(ours, reference)


def test_each_row_stops_at_eos_like_transformers(model, hf_model, prompts):
    free_run = hf_greedy(hf_model, prompts, NEW_TOKENS)
    # an EOS that row 0 emits a few tokens in, and that other rows emit later or never
    eos = int(free_run[0, 3])
    pad = 7
    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS, eos_token_ids=[eos], pad_token_id=pad)
    reference = hf_greedy(hf_model, prompts, NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    np.testing.assert_array_equal(ours, reference)
    first_eos = int(np.argmax(ours[0] == eos))
    assert first_eos <= 3 and (ours[0, first_eos + 1:] == pad).all()


def test_decoding_through_the_layer_scan_gives_the_same_tokens_without_a_weight_copy(model, hf_model, prompts):
    scanned = generate(model, prompts, max_new_tokens=NEW_TOKENS, unroll_layers=False)
    np.testing.assert_array_equal(scanned, hf_greedy(hf_model, prompts, NEW_TOKENS))
    # The compiled program's temporaries: unrolling holds a copy of the decoder weights for the call.
    graphdef, state = nnx.split(model)
    input_ids, attention_mask = left_pad(prompts, prompt_bucket(max(map(len, prompts))))
    args = (graphdef, state, input_ids, attention_mask, np.zeros((model.config.vocab_size,), bool),
            np.int32(0), np.float32(1.0), np.int32(0), np.float32(1.0), jax.random.key(0))
    temporaries = {
        unroll: generate_module._generate_jit.lower(*args, max_new_tokens=NEW_TOKENS, greedy=True, unroll_layers=unroll)
        .compile().memory_analysis().temp_size_in_bytes
        for unroll in (True, False)
    }
    layer_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.split(model.model.layers)[1]))
    assert temporaries[True] - temporaries[False] >= 0.9 * layer_bytes, (temporaries, layer_bytes)


def test_prefill_by_flash_attention_gives_the_same_tokens(model_dir, hf_model, prompts):
    """The prompt's prefill attends within itself by the model's attention_impl (the cache is empty): with
    flash and 8-token blocks the 32-token bucket spans four blocks, and the tokens stay transformers'."""
    flash_model = load_pretrained(model_dir, attention_impl="flash", attention_block_q=8, attention_block_k=8)
    np.testing.assert_array_equal(generate(flash_model, prompts, max_new_tokens=NEW_TOKENS),
                                  hf_greedy(hf_model, prompts, NEW_TOKENS))
    graphdef, state = nnx.split(flash_model)
    input_ids, attention_mask = left_pad(prompts, prompt_bucket(max(map(len, prompts))))
    args = (graphdef, state, input_ids, attention_mask, np.zeros((flash_model.config.vocab_size,), bool),
            np.int32(0), np.float32(1.0), np.int32(0), np.float32(1.0), jax.random.key(0))
    program = generate_module._generate_jit.lower(*args, max_new_tokens=NEW_TOKENS, greedy=True).as_text()
    bucket, cache_length = input_ids.shape[1], input_ids.shape[1] + NEW_TOKENS
    # no [batch, heads or 1, bucket, cache] scores or mask (the dense path's): flash works in 8 x 8 tiles
    assert not re.search(rf"tensor<\d+x\d+x{bucket}x{cache_length}x", program)


def test_repetition_penalty_equals_transformers(model, hf_model, prompts):
    # Prompts of one length: transformers would penalize its left padding too, this library does not.
    same_length = [prompt[:3] for prompt in prompts]
    plain = generate(model, same_length, max_new_tokens=NEW_TOKENS)
    penalized = generate(model, same_length, max_new_tokens=NEW_TOKENS, repetition_penalty=1.5)
    np.testing.assert_array_equal(penalized, hf_greedy(hf_model, same_length, NEW_TOKENS, repetition_penalty=1.5))
    assert not np.array_equal(penalized, plain)
    repeats = lambda tokens: sum(len(row) - len(set(row)) for row in tokens.tolist())
    assert repeats(penalized) < repeats(plain)


def test_compiles_once_per_batch_and_prompt_bucket(model, prompts):
    generate(model, prompts, max_new_tokens=NEW_TOKENS)
    compiled = generate_module._generate_jit._cache_size()
    # other prompt lengths, EOS and padding ids, same batch and bucket (17..32 tokens): no recompilation
    longer = [p + p for p in prompts[:2]] + [p * 6 for p in prompts[2:3]] + [prompts[3] + [1]]
    assert prompt_bucket(max(map(len, longer))) == prompt_bucket(max(map(len, prompts))) == 32
    generate(model, longer, max_new_tokens=NEW_TOKENS, eos_token_ids=[1, 2], pad_token_id=3)
    assert generate_module._generate_jit._cache_size() == compiled
    assert prompt_bucket(3) == prompt_bucket(16) == 16 and prompt_bucket(17) == 32


def test_greedy_token_is_argmax_with_first_index_on_ties():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 1000)).astype(np.float32)
    logits[1, [7, 400, 999]] = 9.0  # a tie: the first index wins, as with argmax
    logits[2, -1] = 9.0  # the maximum at the last id
    logits[3] = -np.inf
    logits[3, 500] = -1.0  # everything else impossible
    logits[4] = 0.0  # all equal
    np.testing.assert_array_equal(greedy_token(logits), np.argmax(logits, axis=-1))
    assert greedy_token(logits).dtype == np.int32


def test_filter_logits_keeps_the_same_tokens_as_transformers_warpers():
    rng = np.random.default_rng(1)
    logits = (3.0 * rng.standard_normal((6, 311))).astype(np.float32)
    for temperature, top_k, top_p in [(1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 40, 0.5), (0.5, 0, 0.95)]:
        scores = torch.as_tensor(logits)
        scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        scores = TopPLogitsWarper(top_p)(None, scores)
        ours = np.asarray(filter_logits(logits, np.float32(temperature), np.int32(top_k), np.float32(top_p)))
        kept = np.isfinite(ours)
        np.testing.assert_array_equal(kept, np.isfinite(scores.numpy()), err_msg=f"{temperature=} {top_k=} {top_p=}")
        assert kept.sum(axis=-1).max() < logits.shape[-1]  # the filter removed something
        np.testing.assert_allclose(ours[kept], logits[kept] / temperature, rtol=1e-6)


def _filter_by_sorting(logits, temperature, top_k, top_p):
    """The documented rule, by sorting (float64): top-k keeps every token tied with the k-th; top-p keeps a
    token when the mass of the tokens ranked before it is below top_p, plus every token tied with the last."""
    scaled = logits.astype(np.float64) / temperature
    if top_k:
        kth = -np.sort(-scaled, axis=-1)[:, min(top_k, scaled.shape[-1]) - 1: min(top_k, scaled.shape[-1])]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    if top_p < 1.0:
        descending = -np.sort(-scaled, axis=-1)
        probs = np.exp(descending - descending[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        kept = (np.cumsum(probs, axis=-1) - probs < top_p) | (np.arange(scaled.shape[-1]) == 0)
        threshold = np.min(np.where(kept, descending, np.inf), axis=-1, keepdims=True)
        scaled = np.where(scaled >= threshold, scaled, -np.inf)
    return np.isfinite(scaled)


def test_filter_logits_keeps_ties_and_extremes_as_the_sorting_rule():
    rng = np.random.default_rng(2)
    vocab = 151936  # Qwen2's: the bisection covers any float range
    logits = (2.0 * rng.standard_normal((5, vocab))).astype(np.float32)
    logits[1] = np.round(logits[1])  # thousands of ties at every value
    logits[2, 123] = 40.0  # one token holds almost all the mass
    logits[3, : vocab // 2] = -np.inf  # half the vocabulary impossible
    logits[4] = np.round(logits[4] * 1e-3, 2)  # nearly flat, heavily tied
    for temperature, top_k, top_p in [(1.0, 50, 1.0), (1.0, 0, 0.9), (0.7, 1000, 0.8), (1.0, 1, 0.5),
                                      (1.0, 0, 0.3), (2.0, vocab + 5, 0.99)]:
        ours = np.isfinite(np.asarray(filter_logits(logits, np.float32(temperature), np.int32(top_k),
                                                    np.float32(top_p))))
        expected = _filter_by_sorting(logits, temperature, top_k, top_p)
        np.testing.assert_array_equal(ours, expected, err_msg=f"{temperature=} {top_k=} {top_p=}")
        assert ours[np.arange(5), np.argmax(logits, axis=-1)].all()  # the most likely token survives


@jax.jit
def _forward(graphdef, state, input_ids):
    return nnx.merge(graphdef, state)(input_ids)


def _teacher_forced_logits(model, prompts, generated):
    """Per row, the logits that predicted each generated token: [batch, new_tokens, vocab] (one forward)."""
    full = [prompt + row for prompt, row in zip(prompts, generated.tolist())]
    input_ids = np.zeros((len(full), max(map(len, full))), np.int32)  # right padding: causal, so harmless
    for row, tokens in enumerate(full):
        input_ids[row, : len(tokens)] = tokens
    logits = np.asarray(_forward(*nnx.split(model), input_ids))
    return np.stack([logits[row, len(p) - 1: len(p) - 1 + generated.shape[1]] for row, p in enumerate(prompts)])


def test_sampled_tokens_stay_inside_top_k(model, prompts):
    top_k = 3
    tokens = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=1.5, top_k=top_k, seed=3)
    logits = _teacher_forced_logits(model, prompts, tokens)
    top = np.argsort(-logits, axis=-1)[..., :top_k]
    assert (tokens[..., None] == top).any(axis=-1).all(), (tokens, top)
    # the draws are random, not greedy: some token is not the argmax
    assert (tokens != top[..., 0]).any()


def test_sampled_tokens_stay_inside_top_p_nucleus(model, prompts):
    temperature, top_p = 0.5, 0.3
    tokens = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=temperature, top_p=top_p, seed=5)
    nucleus_sizes = []
    all_logits = _teacher_forced_logits(model, prompts, tokens) / temperature
    for row, logits in zip(tokens.tolist(), all_logits):
        for token, step_logits in zip(row, logits):
            order = np.argsort(-step_logits)
            probs = np.exp(step_logits[order] - step_logits[order].max())
            probs /= probs.sum()
            size = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
            nucleus_sizes.append(size)
            assert token in order[:size], (token, order[:size])
    assert np.mean(nucleus_sizes) < 50  # the nucleus is a real restriction of the 311-token vocabulary


def test_sampling_is_reproducible_per_seed(model, prompts):
    first = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=11)
    again = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=11)
    other = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=12)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_top_k_one_is_greedy(model, prompts):
    sampled = generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=0.8, top_k=1, seed=2)
    np.testing.assert_array_equal(sampled, generate(model, prompts, max_new_tokens=NEW_TOKENS))


def test_bad_arguments_name_the_problem(model, prompts):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [prompts[0], []])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, [[1, 2, 311]])
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompts, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        generate(model, prompts, repetition_penalty=0.0)


# ---- text level and the command line ------------------------------------------------------------

TEXT_PROMPTS = ["Xin chào", "สวัสดีครับ, how are you?"]
TEXT_NEW_TOKENS = 10


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer with Qwen2's ChatML tokens, small enough for the tiny model."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(BPE({char: i for i, char in enumerate(sorted(alphabet))}, [], ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        chat_template=QWEN2_CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module")
def model_dir_with_tokenizer(model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_with_tokenizer")
    for file in Path(model_dir).iterdir():
        (directory / file.name).write_bytes(file.read_bytes())
    save_tokenizer_files(byte_level_tokenizer(), directory)
    return directory


def _cut_at(row, stops):
    return row[: next((i for i, t in enumerate(row) if t in stops), len(row))]


def test_generate_text_uses_the_chat_template_and_stops_at_eos(model, model_dir_with_tokenizer):
    tokenizer = load_tokenizer(model_dir_with_tokenizer)
    prompts = TEXT_PROMPTS
    chat_ids = [
        list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False))
        for p in prompts
    ]
    assert tokenizer.decode(chat_ids[0]).startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert tokenizer.decode(chat_ids[0]).endswith("<|im_start|>assistant\n")
    tokens = generate(model, chat_ids, max_new_tokens=TEXT_NEW_TOKENS)
    stop = int(tokens[0, 2])  # whatever the model emits third in row 0 plays EOS
    texts = generate_text(model, tokenizer, prompts, chat=True, max_new_tokens=TEXT_NEW_TOKENS, eos_token_ids=[stop])
    for text, row in zip(texts, tokens.tolist()):
        assert text == tokenizer.decode(_cut_at(row, [stop]), skip_special_tokens=True)

    # without chat the prompt is the raw text; the tokenizer's <|im_end|> / <|endoftext|> stop it
    assert generate_module.stop_token_ids(tokenizer) == [258, 256]
    plain = generate_text(model, tokenizer, prompts, max_new_tokens=TEXT_NEW_TOKENS)
    tokens = generate(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=TEXT_NEW_TOKENS)
    assert plain == [tokenizer.decode(_cut_at(row, [258, 256]), skip_special_tokens=True) for row in tokens.tolist()]


@pytest.mark.parametrize("layers", [[], ["--no-unroll-layers"]], ids=["unrolled", "scanned"])
def test_generate_command_prints_one_completion_per_prompt(model, model_dir_with_tokenizer, capsys, layers):
    code = cli_main([
        "generate", "--model", str(model_dir_with_tokenizer), "--prompt", TEXT_PROMPTS[0], "--prompt", TEXT_PROMPTS[1],
        "--max-new-tokens", str(TEXT_NEW_TOKENS), "--chat", "--json", *layers,
    ])
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    tokenizer = load_tokenizer(model_dir_with_tokenizer)
    completions = generate_text(model, tokenizer, TEXT_PROMPTS, chat=True, max_new_tokens=TEXT_NEW_TOKENS)
    assert printed == [{"prompt": p, "completion": c} for p, c in zip(TEXT_PROMPTS, completions)]


def test_generate_command_rejects_a_missing_model(tmp_path, capsys):
    assert cli_main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) != 0
    assert "nope" in capsys.readouterr().err


def test_convert_commands_round_trip_bit_exact_and_generate_reads_orbax(model_dir_with_tokenizer, tmp_path, capsys):
    from safetensors.numpy import load_file

    source = Path(model_dir_with_tokenizer)
    assert cli_main(["convert", "hf-to-orbax", str(source), str(tmp_path / "ckpt")]) == 0
    assert cli_main(["convert", "orbax-to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    original = load_file(str(source / "model.safetensors"))
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert original.keys() == exported.keys()
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()

    capsys.readouterr()
    completions = []
    for model_path in (source, tmp_path / "ckpt"):  # HF directory and Orbax checkpoint give the same text
        args = ["generate", "--model", str(model_path), "--max-new-tokens", str(TEXT_NEW_TOKENS), "--chat", "--json"]
        assert cli_main(args + ["--prompt", TEXT_PROMPTS[0], "--prompt", TEXT_PROMPTS[1]]) == 0
        completions.append(capsys.readouterr().out)
    assert completions[0] == completions[1] and completions[0].count("completion") == 2


def test_convert_command_rejects_a_missing_directory(tmp_path, capsys):
    assert cli_main(["convert", "hf-to-orbax", str(tmp_path / "missing"), str(tmp_path / "ckpt")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_stop_strings_end_a_row_after_the_token_that_holds_one_and_keep_its_text(model, prompts):
    """lm-eval's `until`: a row stops after a token whose text holds a stop string (any number of such
    tokens, far more than an EOS list), and its text cut at the string is the text of decoding on."""
    from seallm_jax.eval.generation import BatchGenerator, GenerationConfig
    from seallm_jax.model.generate import tokens_containing
    from seallm_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    vocab = model.config.vocab_size
    generator = BatchGenerator(model, tokenizer, GenerationConfig(batch_size=len(prompts), show_progress=False))
    free = generator.generate_tokens(prompts, NEW_TOKENS, stop_ids=[])
    assert all(len(ids) == NEW_TOKENS for ids in free)
    # the text of an early token of row 0 (a whole character, not a piece of one)
    position = next(p for p in range(1, NEW_TOKENS) if "\ufffd" not in tokenizer.decode([free[0][p]])
                    and tokenizer.decode([free[0][p]]).strip())
    stop = tokenizer.decode([free[0][position]])
    finishing = tokens_containing(tokenizer, [stop], vocab)
    assert free[0][position] in finishing and all(stop in tokenizer.decode([i]) for i in finishing)
    stopped = generator.generate_tokens(prompts, NEW_TOKENS, stop_ids=[], stop_strings=[stop])
    assert len(stopped[0]) <= position + 1 < NEW_TOKENS and stopped[0][-1] in finishing  # ended after it
    for ours, full in zip(stopped, free):
        assert ours == full[:len(ours)]  # the same tokens up to where the row stopped
        assert tokenizer.decode(ours).split(stop)[0] == tokenizer.decode(full).split(stop)[0]
    # More stop tokens than any fixed list holds, one compiled program for every stop set.
    assert len(tokens_containing(tokenizer, ["e"], vocab)) > 8
    compiled = generator.compile_count
    generator.generate_tokens(prompts, NEW_TOKENS, stop_ids=[], stop_strings=["e"])
    assert generator.compile_count == compiled


def test_first_line_masks_stop_a_row_at_a_newline_only_after_text(model, prompts):
    """`first_line_masks`: a newline token ends a row only once the row has emitted text; a token with text
    and then a newline ends it at once; before any text a newline does not."""
    free = generate(model, prompts, max_new_tokens=NEW_TOKENS)
    vocab = model.config.vocab_size
    row = free[0].tolist()
    first = {}
    for position, token in enumerate(row):
        first.setdefault(token, position)
    distinct = sorted(first, key=first.get)  # ids in the order the row first emits them
    assert len(distinct) >= 3, row
    early, word, late = distinct[0], distinct[1], distinct[2]

    def rule(ends, newline, text):  # where the rule stops the free-running row (None: it does not)
        armed = False
        for position, token in enumerate(row):
            if ends[token] or armed and newline[token]:
                return position
            armed |= bool(text[token])
        return None

    ends, newline, text = (np.zeros((vocab,), bool) for _ in range(3))
    newline[[early, late]] = True  # `early` comes before any text: it cannot stop the row there
    text[word] = True
    stop = rule(ends, newline, text)
    # the first newline token after the text (`early` again, or `late`), never the one before it
    assert stop is not None and stop > first[word] > first[early] and row[stop] in (early, late)
    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS, pad_token_id=-1, first_line_masks=(ends, newline, text))
    np.testing.assert_array_equal(ours[0, :stop + 1], free[0, :stop + 1])
    assert (ours[0, stop + 1:] == -1).all()
    ends[word] = True  # text, then a newline, in one token: the row ends at once
    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS, pad_token_id=-1, first_line_masks=(ends, newline, text))
    assert ours[0, first[word]] == word and (ours[0, first[word] + 1:] == -1).all()


def test_first_line_masks_of_a_real_tokenizer():
    from seallm_jax.model.generate import first_line_masks
    from seallm_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    ends, newline, text = first_line_masks(tokenizer, 151936)
    one = lambda piece: tokenizer.encode(piece, add_special_tokens=False)  # noqa: E731
    (nl,), (word,), (eot,) = one("\n"), one("Hello"), one("<|endoftext|>")
    assert newline[nl] and not text[nl] and not ends[nl]
    assert text[word] and not newline[word] and not ends[word]
    assert not (newline[eot] or text[eot] or ends[eot])  # special tokens are dropped when decoding
    both = [i for i in range(len(tokenizer)) if ends[i]]
    assert both and all("\n" in tokenizer.decode([i]) and tokenizer.decode([i]).split("\n")[0].strip()
                        for i in both[:50])


def test_stop_at_newline_gives_the_first_line_of_decoding_on(model, prompts):
    """The library's own generative tasks keep `text.strip().split("\\n")[0].strip()`: stopping once the
    first line is complete gives the same answers as decoding to the limit."""
    from seallm_jax.eval.generation import BatchGenerator, GenerationConfig
    from seallm_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    generator = BatchGenerator(model, tokenizer, GenerationConfig(batch_size=len(prompts), show_progress=False))
    full = [tokenizer.decode(ids, skip_special_tokens=True)
            for ids in generator.generate_tokens(prompts, NEW_TOKENS, stop_ids=[])]
    assert generator.generate(prompts, NEW_TOKENS, stop_at_newline=True) == [
        text.strip().split("\n")[0].strip() for text in full]
