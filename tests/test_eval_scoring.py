"""The bucketed log-likelihood scorer: exact against the model's logits, option scoring picks the most
likely option, compilations stay bounded over a whole multiple-choice task, and a mesh changes nothing.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from seallm_jax.eval.formats import MultipleChoiceQuestion
from seallm_jax.eval.scoring import LoglikelihoodScorer, ScoreRequest, ScoringConfig, bucket_lengths, truncate_request
from seallm_jax.eval.tasks.multiple_choice import build_prompt, predictions, score_questions
from seallm_jax.eval.testing import tiny_model, tiny_tokenizer

CONFIG = ScoringConfig(batch_size=4, length_buckets=(32, 64, 128), max_length=256, logits_chunk=32, show_progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def scorer(model):
    """One scorer for the tests that do not count compilations, so its compiled shapes are shared."""
    return LoglikelihoodScorer(model, CONFIG)


def direct_log_likelihoods(model, requests):
    """Sum of log p(token_t | tokens_<t) for t >= score_from, from one plain forward pass over all
    requests (right-padded to a common length: causal attention makes the padding invisible)."""
    length = max(len(tokens) for tokens, _ in requests)
    batch = np.zeros((len(requests), length), np.int32)
    for row, (tokens, _) in enumerate(requests):
        batch[row, :len(tokens)] = tokens
    log_probs = np.asarray(jax.nn.log_softmax(model(jnp.asarray(batch)), axis=-1), np.float64)
    return [float(sum(log_probs[row, t - 1, tokens[t]] for t in range(score_from, len(tokens))))
            for row, (tokens, score_from) in enumerate(requests)]


def test_scores_match_direct_computation(model, scorer):
    rng = np.random.default_rng(0)
    requests = [ScoreRequest(list(rng.integers(0, 256, n)), s) for n, s in [(9, 3), (40, 1), (5, 4), (100, 90), (2, 1)]]
    scores = scorer.score(requests)
    direct = direct_log_likelihoods(model, [(r.tokens, r.score_from) for r in requests])
    for request, score, expected in zip(requests, scores, direct):
        assert score.num_tokens == len(request.tokens) - request.score_from
        assert score.log_likelihood == pytest.approx(expected, abs=1e-4)


def test_shared_contexts_packed_rows_and_mixed_requests_match_direct_computation(model, scorer):
    """Contexts shared by 2 and by 18 continuations (more than one context row's worth), requests of
    their own, one with nothing to score, in one call: packed rows and the context cache change nothing."""
    rng = np.random.default_rng(3)
    shared, big = list(rng.integers(0, 256, 30)), list(rng.integers(0, 256, 7))
    requests = ([ScoreRequest(shared + list(rng.integers(0, 256, n)), 30) for n in (1, 12)]
                + [ScoreRequest(big + list(rng.integers(0, 256, 1 + i % 5)), 7) for i in range(18)]
                + [ScoreRequest(list(rng.integers(0, 256, n)), s) for n, s in [(25, 10), (3, 1), (6, 6)]])
    scores = scorer.score(requests)
    direct = direct_log_likelihoods(model, [(r.tokens, r.score_from) for r in requests])
    for request, score, expected in zip(requests, scores, direct):
        assert score.num_tokens == len(request.tokens) - request.score_from
        assert score.log_likelihood == pytest.approx(expected, abs=1e-4)
    assert scores[-1].log_likelihood == 0.0 and scores[-1].is_greedy


def test_greedy_flag(model, scorer):
    prompt = [5, 6, 7]
    greedy_token = int(jnp.argmax(model(jnp.asarray([prompt]))[0, -1]))
    other_token = (greedy_token + 1) % 256
    greedy, other = scorer.score([ScoreRequest(prompt + [greedy_token], 3), ScoreRequest(prompt + [other_token], 3)])
    assert greedy.is_greedy and not other.is_greedy


def test_truncation_keeps_the_continuation():
    request = truncate_request(ScoreRequest(list(range(300)), 290), 256)
    assert request.tokens == list(range(44, 300)) and request.score_from == 246
    with pytest.raises(ValueError, match="score_from=0"):
        truncate_request(ScoreRequest([1, 2], 0), 256)


def test_option_scoring_picks_the_option_of_highest_likelihood(model, tokenizer, scorer):
    question = MultipleChoiceQuestion("Which river is longest?", ["Mekong", "Chao Phraya", "Red River", "Irrawaddy"],
                                      ["A", "B", "C", "D"], answer=0, language="en")
    prompt = build_prompt(question, [], "Header.")
    [scores] = score_questions(scorer, tokenizer, [question], [prompt])
    context = tokenizer.encode(prompt, add_special_tokens=False)
    endings = [tokenizer.encode(" " + text, add_special_tokens=False) for text in [*question.options, *question.labels]]
    direct = direct_log_likelihoods(model, [(context + ending, len(context)) for ending in endings])
    direct_options, direct_letters = direct[:4], direct[4:]
    np.testing.assert_allclose(scores.option_log_likelihoods, direct_options, atol=1e-4)
    np.testing.assert_allclose(scores.letter_log_likelihoods, direct_letters, atol=1e-4)
    picked = predictions(scores)
    assert picked["option"] == int(np.argmax(direct_options))
    assert picked["letter"] == int(np.argmax(direct_letters))
    normalised = [ll / len(option) for ll, option in zip(direct_options, question.options)]
    assert picked["option_norm"] == int(np.argmax(normalised))


def test_compilations_bounded_over_a_whole_task(model, tokenizer):
    # 30 questions of very different lengths, 4 options each: 240 scored sequences.
    rng = np.random.default_rng(1)
    questions, prompts = [], []
    for i in range(30):
        text = "word " * int(rng.integers(1, 40))
        question = MultipleChoiceQuestion(f"Q{i}: {text}?", ["yes", "no", "maybe", "never"], list("ABCD"), i % 4, "en")
        questions.append(question)
        prompts.append(build_prompt(question, [], ""))
    scorer = LoglikelihoodScorer(model, CONFIG)
    score_questions(scorer, tokenizer, questions, prompts)
    assert 1 <= scorer.compile_count <= len(bucket_lengths(CONFIG))
    compiled = scorer.compile_count
    score_questions(scorer, tokenizer, questions[::-1], prompts[::-1])
    assert scorer.compile_count == compiled  # a second pass reuses every shape


def test_mesh_sharded_scores_equal_single_device(model, scorer):
    rng = np.random.default_rng(2)
    requests = [ScoreRequest(list(rng.integers(0, 256, n)), 1) for n in (7, 20, 33)]
    single = scorer.score(requests)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
    sharded_scorer = LoglikelihoodScorer(model, CONFIG, mesh=mesh)
    assert sharded_scorer.batch_size == 8  # rounded up to a multiple of the 8 batch devices
    sharded = sharded_scorer.score(requests)
    for a, b in zip(single, sharded):
        assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=1e-4)
        assert a.num_tokens == b.num_tokens
