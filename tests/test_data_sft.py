"""ChatML SFT with the real Qwen2 tokenizer: exact assistant-only loss mask, packing, truncation, reports."""
import json

import numpy as np
import pytest

from seallm_jax.data import (ChatMLRenderer, Conversation, DataFormatError, LoadReport, Message, as_tokenizer,
                             load_conversations, sft_stream, translation_conversations)
from seallm_jax.data.sft import sft_examples

MULTI_TURN = [
    {"role": "system", "content": "You are a translator."},
    {"role": "user", "content": "Translate to Thai: Good morning"},
    {"role": "assistant", "content": "สวัสดีตอนเช้า"},
    {"role": "user", "content": "And 'thank you'?\nPlease be brief."},
    {"role": "assistant", "content": "ขอบคุณ\n(khop khun)"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from seallm_jax.tokenizer import load_tokenizer

    return load_tokenizer()


def conversation(messages, language="th", id=""):
    return Conversation(tuple(Message(m["role"], m["content"]) for m in messages), language, id)


def template_ids(tokenizer, messages, **kwargs):
    ids = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def test_rendering_matches_qwen2_chat_template(tokenizer):
    renderer = ChatMLRenderer(as_tokenizer(tokenizer))
    assert renderer.render(conversation(MULTI_TURN)).tokens == template_ids(tokenizer, MULTI_TURN)
    # Without a system message Qwen2's template inserts its default one; so does the renderer.
    assert renderer.render(conversation(MULTI_TURN[1:])).tokens == template_ids(tokenizer, MULTI_TURN[1:])


def test_loss_mask_is_exactly_the_assistant_content_and_im_end(tokenizer):
    example = ChatMLRenderer(as_tokenizer(tokenizer)).render(conversation(MULTI_TURN))
    expected = np.zeros(len(example.tokens))
    for index, message in enumerate(MULTI_TURN):
        if message["role"] != "assistant":
            continue
        # HF's own template: the answer starts after the generation prompt and ends with <|im_end|>.
        start = len(template_ids(tokenizer, MULTI_TURN[:index], add_generation_prompt=True))
        end = len(template_ids(tokenizer, MULTI_TURN[:index + 1])) - 1  # the trailing "\n" is not trained
        expected[start:end] = 1
        assert example.tokens[end - 1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert tokenizer.decode(example.tokens[start:end - 1]) == message["content"]
    np.testing.assert_array_equal(example.loss_mask, expected)

    # In the packed batch the mask moves to the position that predicts the token.
    stream = sft_stream(conversations={"th": [conversation(MULTI_TURN)]}, seq_len=128, batch_size=1,
                        tokenizer=tokenizer, max_epochs=1)
    batch = next(stream)
    count = len(example.tokens) - 1
    np.testing.assert_array_equal(batch["input_ids"][0, :count], example.tokens[:-1])
    np.testing.assert_array_equal(batch["targets"][0, :count], example.tokens[1:])
    np.testing.assert_array_equal(batch["loss_mask"][0, :count], expected[1:])
    assert batch["loss_mask"][0, count:].sum() == 0


def test_several_conversations_per_row_never_split_across_rows(tokenizer):
    conversations = [conversation([{"role": "user", "content": f"Question {i}?" * (1 + i % 4)},
                                   {"role": "assistant", "content": f"Answer {i}." * (1 + i % 3)}],
                                  id=str(i)) for i in range(30)]
    stream = sft_stream(conversations={"th": conversations}, seq_len=96, batch_size=4, tokenizer=tokenizer,
                        max_epochs=1)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    rows = 0
    for batch in stream:
        for row in range(4):
            segment_ids = batch["segment_ids"][row]
            if segment_ids.max() == 0:
                continue
            rows += 1
            for segment in range(1, segment_ids.max() + 1):
                tokens = batch["input_ids"][row][segment_ids == segment]
                assert tokens[0] == im_start  # every segment is a whole conversation
                assert batch["positions"][row][segment_ids == segment][0] == 0
    assert rows < 30  # packed: fewer rows than conversations


def test_truncation_policies(tokenizer):
    adapter = as_tokenizer(tokenizer)
    renderer = ChatMLRenderer(adapter, default_system=None)
    long = conversation(MULTI_TURN)
    first_answer_end = len(template_ids(tokenizer, MULTI_TURN[:3]))
    report = LoadReport()
    kept = renderer.render(long, max_tokens=first_answer_end + 3, truncation="turns", report=report)
    assert kept.tokens == template_ids(tokenizer, MULTI_TURN[:3])  # whole turns, ending with an answer
    cut = renderer.render(long, max_tokens=first_answer_end + 3, truncation="tokens", report=report)
    assert len(cut.tokens) == first_answer_end + 3
    assert renderer.render(long, max_tokens=first_answer_end + 3, truncation="drop", report=report) is None
    assert renderer.render(long, max_tokens=5, truncation="turns", report=report) is None
    assert report.truncated == 2 and len(report.dropped_too_long) == 2
    with pytest.raises(ValueError, match="empty source"), pytest.warns(UserWarning, match="dropped"):
        sft_examples({"th": [long]}, renderer, max_tokens=5)


def test_conversation_files_report_problems(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": MULTI_TURN[1:3], "language": "th"},
        {"messages": [{"role": "user", "content": "no answer here"}], "language": "vi"},
        {"messages": MULTI_TURN[1:3]},
    ]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n{oops\n")
    with pytest.raises(DataFormatError, match=r"chat\.jsonl:4: malformed JSON"):
        load_conversations(path, language="th")
    report = LoadReport()
    with pytest.warns(UserWarning, match="1 conversations without an assistant turn"):
        grouped = load_conversations(path, language="th", on_error="skip", report=report)
    assert len(grouped["th"]) == 2 and "vi" not in grouped
    assert report.without_assistant == [f"{path}:2"]
    assert len(report.malformed) == 1 and ":4:" in report.malformed[0]

    bad_role = tmp_path / "role.jsonl"
    bad_role.write_text(json.dumps({"messages": [{"role": "bot", "content": "hi"}], "language": "th"}) + "\n")
    with pytest.raises(DataFormatError, match=r"role\.jsonl:1: message 0"):
        load_conversations(bad_role)
    unknown = tmp_path / "lang.jsonl"
    unknown.write_text(json.dumps({"messages": MULTI_TURN, "language": "xx"}) + "\n")
    with pytest.raises(ValueError, match=r"lang\.jsonl:1: unknown language code 'xx'.*known codes"):
        load_conversations(unknown)


def test_translation_conversations_from_the_parallel_corpus(tokenizer):
    grouped = translation_conversations("test", ["th", "km"])
    assert set(grouped) == {"th", "km", "en"}
    thai = grouped["th"][0]
    assert "Thai" in thai.messages[0].content and thai.messages[1].role == "assistant"
    assert any("\u0e00" <= char <= "\u0e7f" for char in thai.messages[1].content)
    subset = translation_conversations("test", ["th"], max_per_language=10, min_source_chars=30)
    assert {language: len(items) for language, items in subset.items()} == {"th": 10, "en": 10}
    assert subset == translation_conversations("test", ["th"], max_per_language=10, min_source_chars=30)
    longer = translation_conversations("test", ["th"], min_source_chars=30)
    assert 10 < len(longer["th"]) < len(grouped["th"])
    stream = sft_stream(languages=["th", "km"], split="test", seq_len=256, batch_size=2,
                        tokenizer=tokenizer, weighting="uniform")
    for _ in range(20):
        batch = next(stream)
    assert batch["loss_mask"].sum() > 0
    shares = stream.token_shares()
    assert set(shares) == {"th", "km"} and all(share > 0.4 for share in shares.values())
