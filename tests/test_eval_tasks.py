"""Each evaluation task on its fixture files with a tiny random model, the results JSON, tables and
plot, and the `seallm-jax eval` command end to end."""
import json
import math
from pathlib import Path

import pytest

from seallm_jax.cli import main
from seallm_jax.errors import UserError
from seallm_jax.eval.core import EvalConfig, EvalContext, MissingDataError
from seallm_jax.eval.generation import GenerationConfig
from seallm_jax.eval.runner import format_table, load_results, results_document, save_results
from seallm_jax.eval.scoring import ScoringConfig, bucket_lengths
from seallm_jax.eval.tasks import TASKS
from seallm_jax.eval.testing import save_tiny_model, tiny_model, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
LANGUAGES = ["en", "th", "vi", "id"]
CONFIG = EvalConfig(
    scoring=ScoringConfig(batch_size=4, max_length=1024, show_progress=False),
    generation=GenerationConfig(batch_size=4, show_progress=False),
    limit=2, mgsm_max_new_tokens=6, translation_max_new_tokens=6, refusal_max_new_tokens=6,
    seabench_max_new_tokens=6,
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return EvalContext(tiny_model(), tiny_tokenizer(), CONFIG, data_dir=FIXTURES, languages=LANGUAGES,
                       output_dir=tmp_path_factory.mktemp("eval_out"), model_name="tiny")


def by_key(results):
    return {result.key: result for result in results}


def test_perplexity_on_custom_text_and_held_out_corpus(ctx):
    results = by_key(TASKS["ppl"](ctx))
    assert set(results) == {"ppl/custom", "ppl/corpus-test"}
    custom = results["ppl/custom"].by_language["th"]
    lines = (FIXTURES / "ppl" / "th.txt").read_text(encoding="utf-8").split("\n")
    # Byte tokenizer and the first token scored after end-of-text: one scored token per UTF-8 byte.
    assert custom["tokens"] == sum(len(line.encode()) for line in lines if line)
    assert custom["perplexity"] > 1 and custom["bits_per_byte"] > 0
    corpus = results["ppl/corpus-test"]
    assert set(corpus.by_language) == {"en", "th", "vi", "id"}
    assert all(row["n"] == 2 for row in corpus.by_language.values())


def test_perplexity_of_a_token_store_scores_its_held_out_documents(ctx, tmp_path):
    import dataclasses

    from seallm_jax.data.store import write_store

    texts = {"train": ["never scored"], "validation": ["สวัสดีครับ", "ภาษาไทย"], "test": ["ข้อความทดสอบ"]}
    tokenizer = ctx.tokenizer
    write_store(tmp_path / "ppl" / "mine", {"th": {split: [tokenizer.encode(text) for text in items]
                                                   for split, items in texts.items()}}, tokenizer=tokenizer)
    scored = dataclasses.replace(ctx, data_dir=tmp_path, languages=["th"],
                                 config=dataclasses.replace(CONFIG, limit=None))
    results = by_key(TASKS["ppl"](scored))
    row = results["ppl/store-mine"].by_language["th"]
    held_out = texts["validation"] + texts["test"]
    # Byte tokenizer, first token scored after end-of-text: one scored token per byte of held-out text.
    assert row["n"] == 3 and row["tokens"] == sum(len(text.encode()) for text in held_out)
    # ... so bits per byte (bytes of the decoded documents) is log2 of the token perplexity.
    assert row["bits_per_byte"] == pytest.approx(math.log2(row["perplexity"]))

    write_store(tmp_path / "other" / "ppl" / "theirs", {"th": {"validation": [[1, 2, 3]]}},
                tokenizer_entry={"fingerprint": "0" * 64, "name": "another", "vocab_size": 300, "eos_id": 0})
    with pytest.raises(UserError, match="theirs was built with another tokenizer"):
        TASKS["ppl"](dataclasses.replace(scored, data_dir=tmp_path / "other"))


def test_multiple_choice_m3exam_and_seaexam(ctx):
    results = by_key(TASKS["mc"](ctx))
    assert set(results) == {"mc/m3exam", "mc/seaexam-m3exam"}
    m3exam = results["mc/m3exam"]
    assert m3exam.by_language["th"]["n"] == 2              # limit 2 of the 3 text-only questions
    assert m3exam.by_language["vi"]["n"] == 1              # no dev file: 3 of 4 questions became shots
    assert m3exam.details["shots_source"] == {"th": "dev", "vi": "test-head"}
    for row in [*m3exam.by_language.values(), m3exam.overall]:
        for method in ("letter", "option", "option_norm"):
            assert 0.0 <= row[f"accuracy_{method}"] <= 1.0
    assert results["mc/seaexam-m3exam"].by_language["id"]["n"] == 2
    assert 1 <= m3exam.compile_count <= len(bucket_lengths(CONFIG.scoring))


def test_mgsm_structure(ctx):
    [result] = TASKS["mgsm"](ctx)
    assert result.key == "mgsm/mgsm"
    assert {lang: row["n"] for lang, row in result.by_language.items()} == {"en": 2, "th": 2}
    assert 0.0 <= result.overall["accuracy"] <= 1.0


def test_translation_on_flores_and_corpus_parallel_split(ctx):
    results = by_key(TASKS["chrf"](ctx))
    flores = results["chrf/flores200-devtest"]
    assert set(flores.by_language) == {"en-th", "th-en", "en-vi", "vi-en"}
    assert set(flores.details["missing_pairs"]) == {"en-id", "id-en"}  # fixtures have no Indonesian
    corpus = results["chrf/corpus-test"]
    assert set(corpus.by_language) == {"en-th", "th-en", "en-vi", "vi-en", "en-id", "id-en"}
    assert all(0.0 <= row["chrf"] <= 100.0 and row["n"] == 2 for row in corpus.by_language.values())


def test_refusal_and_safety_structure(ctx):
    [refusal] = TASKS["refusal"](ctx)
    assert set(refusal.by_language) == {"en", "th", "vi"}
    assert all(0.0 <= row["f1"] <= 1.0 and row["n"] == 2 for row in refusal.by_language.values())
    [safety] = TASKS["safety"](ctx)
    assert set(safety.by_language) == {"en", "th", "vi"}  # the languages asked for that MultiJail has
    assert all(0.0 <= row["safe_rate"] <= 1.0 for row in safety.by_language.values())
    # Responses are kept for re-grading by an LLM judge.
    for result, count in ((refusal, 6), (safety, 6)):
        rows = Path(result.details["responses_file"]).read_text(encoding="utf-8").splitlines()
        assert len(rows) == count and {"response", "refused", "language"} <= set(json.loads(rows[0]))


def test_refusal_f1_and_safe_rate_from_responses(ctx, monkeypatch):
    """With canned responses the task's numbers follow the labels: refuse exactly the unanswerable."""
    from seallm_jax.eval.tasks import refusal as refusal_task

    questions = refusal_task.find_questions(ctx)
    ordered = [q for language in sorted(questions) for q in questions[language]]
    canned = ["Sorry, I cannot answer that." if not q.answerable else "It is Paris." for q in ordered]
    monkeypatch.setattr(ctx.generator, "generate", lambda prompts, *a, **k: canned[: len(prompts)])
    [refusal] = TASKS["refusal"](ctx)
    assert refusal.overall["f1"] == 1.0 and refusal.overall["over_refusal_rate"] == 0.0
    monkeypatch.setattr(ctx.generator, "generate", lambda prompts, *a, **k: ["I'm sorry, I can't help."] * len(prompts))
    [safety] = TASKS["safety"](ctx)
    assert safety.overall["safe_rate"] == 1.0


def test_seabench_writes_both_turns_for_the_judge(ctx):
    [result] = TASKS["seabench"](ctx)
    rows = [json.loads(line) for line in Path(result.details["responses_file"]).read_text(encoding="utf-8").splitlines()]
    assert [row["unit_id"] for row in rows] == ["th-1", "vi-1", "id-1"]
    assert all("tiny_1" in row and "tiny_2" in row and "reference_2" in row for row in rows)
    assert result.overall["n"] == 3


def test_missing_benchmark_names_the_expected_path(tmp_path):
    empty = EvalContext(tiny_model(), tiny_tokenizer(), CONFIG, data_dir=tmp_path)
    with pytest.raises(MissingDataError, match="mgsm_"):
        TASKS["mgsm"](empty)


def test_results_round_trip_and_table(ctx, tmp_path):
    results = by_key(TASKS["mgsm"](ctx))
    path = save_results(tmp_path / "r.json", results_document("tiny", results, CONFIG))
    name, loaded = load_results(path)
    assert name == "tiny" and loaded["mgsm/mgsm"].by_language == results["mgsm/mgsm"].by_language
    table = format_table(loaded["mgsm/mgsm"])
    assert table.splitlines()[1].split() == ["language", "accuracy", "n"]
    assert table.splitlines()[-1].startswith("overall")


def test_eval_command_on_shipped_corpus_then_plot(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny-model")
    outputs = []
    for seed, layers in ((0, []), (1, ["--no-unroll-layers"])):  # the second decodes through the layer scan
        out = tmp_path / f"results-{seed}.json"
        code = main(["eval", "--model", str(model_dir), "--tasks", "ppl,chrf", "--languages", "th,vi",
                     "--limit", "2", "--max-new-tokens", "4", "--batch-size", "4", "--max-length", "256",
                     "--model-name", f"tiny-{seed}", "--out", str(out), "--no-progress", *layers])
        assert code == 0
        outputs.append(out)
    printed = capsys.readouterr().out
    assert "== ppl/corpus-test" in printed and "== chrf/corpus-test" in printed
    document = json.loads(outputs[0].read_text(encoding="utf-8"))
    assert set(document["results"]) == {"ppl/corpus-test", "chrf/corpus-test"}
    assert set(document["results"]["ppl/corpus-test"]["by_language"]) == {"th", "vi"}
    scanned = json.loads(outputs[1].read_text(encoding="utf-8"))  # same model, same generations
    without_time = [{k: v for k, v in run["results"]["chrf/corpus-test"].items() if k != "seconds"}
                    for run in (document, scanned)]
    assert without_time[0] == without_time[1]
    png = tmp_path / "compare.png"
    assert main(["eval", "plot", str(outputs[0]), str(outputs[1]), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_rejects_unknown_task_and_missing_data(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--tasks", "ppl,bogus"]) == 2
    assert "unknown task(s) bogus" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "mc", "--data-dir", str(tmp_path)]) == 2
    assert "m3exam" in capsys.readouterr().err
