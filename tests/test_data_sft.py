"""ChatML SFT with the real Qwen2 tokenizer, through the one data path: conversations tokenized into a store
(tokens + assistant-only loss mask), read by the token loader packing whole conversations per row."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from seallm_jax.data import (Conversation, DataFormatError, LoadReport, Message, TokenStore, conversation_store,
                             load_conversations, render_conversation, token_loader, translation_conversations)
from seallm_jax.data.tokenize import tokenize_files
from seallm_jax.errors import UserError

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


def write_conversations(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def store_of(tmp_path, tokenizer, records, name="store", **kwargs):
    path = write_conversations(tmp_path / f"{name}.jsonl", records)
    return tokenize_files({"th": [path]}, tmp_path / name, tokenizer=tokenizer, workers=1, progress=False,
                          kind="conversations", default_system=kwargs.pop("default_system", None), **kwargs)


def rows(batch):
    """Each row's segments as (input tokens, targets, loss mask)."""
    out = []
    for row in range(batch["segment_ids"].shape[0]):
        for segment in np.unique(batch["segment_ids"][row]):
            if segment:
                here = batch["segment_ids"][row] == segment
                out.append((batch["input_ids"][row][here], batch["targets"][row][here], batch["loss_mask"][row][here],
                            batch["positions"][row][here]))
    return out


def test_rendering_matches_qwen2_chat_template(tokenizer):
    assert render_conversation(conversation(MULTI_TURN), tokenizer)[0] == template_ids(tokenizer, MULTI_TURN)
    # Without a system message Qwen2's template inserts its default one; so does the renderer.
    assert render_conversation(conversation(MULTI_TURN[1:]), tokenizer)[0] == template_ids(tokenizer, MULTI_TURN[1:])


def test_loss_mask_is_exactly_the_assistant_content_and_im_end_in_store_and_batch(tmp_path, tokenizer):
    tokens, mask = render_conversation(conversation(MULTI_TURN), tokenizer)
    expected = np.zeros(len(tokens))
    for index, message in enumerate(MULTI_TURN):
        if message["role"] != "assistant":
            continue
        # HF's own template: the answer starts after the generation prompt and ends with <|im_end|>.
        start = len(template_ids(tokenizer, MULTI_TURN[:index], add_generation_prompt=True))
        end = len(template_ids(tokenizer, MULTI_TURN[:index + 1])) - 1  # the trailing "\n" is not trained
        expected[start:end] = 1
        assert tokens[end - 1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert tokenizer.decode(tokens[start:end - 1]) == message["content"]
    np.testing.assert_array_equal(mask, expected)

    # The store holds the rendering, its mask and the document separator (never a target).
    store = store_of(tmp_path, tokenizer, [{"messages": MULTI_TURN}])
    assert store.kind == "conversations"
    documents = store.documents("th", "train")
    np.testing.assert_array_equal(documents.document(0), tokens + [store.eos_id])
    np.testing.assert_array_equal(documents.loss_mask(0, len(tokens) + 1), list(expected) + [0])
    # In the packed batch the mask moves to the position that predicts the token.
    batch = next(token_loader([store], languages=["th"], seq_len=128, global_batch_size=1))
    count = len(tokens) - 1
    np.testing.assert_array_equal(batch["input_ids"][0, :count], tokens[:-1])
    np.testing.assert_array_equal(batch["targets"][0, :count], tokens[1:])
    np.testing.assert_array_equal(batch["loss_mask"][0, :count], expected[1:])
    assert batch["loss_mask"][0, count:].sum() == 0 and batch["segment_ids"][0, count:].sum() == 0


@pytest.fixture(scope="module")
def thirty(tmp_path_factory, tokenizer):
    records = [{"messages": [{"role": "user", "content": f"Question {i}?" * (1 + i % 4)},
                             {"role": "assistant", "content": f"Answer {i}." * (1 + i % 3)}], "split": "train"}
               for i in range(30)]
    return store_of(tmp_path_factory.mktemp("thirty"), tokenizer, records)


def test_whole_conversations_per_row_each_once_per_epoch(thirty, tokenizer):
    loader = token_loader([thirty], languages=["th"], seq_len=96, global_batch_size=4)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    packs = loader.units["th"].count
    assert packs < 30  # several conversations per row
    seen = []
    for _ in range(-(-packs // 4)):
        for inputs, targets, mask, positions in rows(next(loader)):
            assert inputs[0] == im_start and positions[0] == 0 and list(positions) == list(range(len(positions)))
            # ... <|im_end|> (trained) then "\n" (not): the store's separator is never read
            assert targets[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>") and list(mask[-2:]) == [1, 0]
            seen.append(tokenizer.decode(inputs))
    # One epoch holds every conversation exactly once (the first batch of the next epoch may follow).
    assert len(set(seen[:30])) == 30 and all(f"Question {i}?" in "".join(seen) for i in range(30))


def test_processes_and_resume_give_the_same_global_batches(thirty):
    def global_batches(processes, steps=6, resume_at=None):
        out = []
        per = 8 // processes
        loaders = [token_loader([thirty], languages=["th"], seq_len=64, global_batch_size=8, row_start=p * per,
                                row_stop=(p + 1) * per, seed=3) for p in range(processes)]
        for step in range(steps):
            if step == resume_at:  # a fresh loader restored from the saved position
                states = [loader.state() for loader in loaders]
                loaders = [token_loader([thirty], languages=["th"], seq_len=64, global_batch_size=8,
                                        row_start=p * per, row_stop=(p + 1) * per, seed=3) for p in range(processes)]
                for loader, state in zip(loaders, states):
                    loader.restore(state)
            parts = [next(loader) for loader in loaders]
            out.append({key: np.concatenate([part[key] for part in parts]) for key in parts[0]})
        return out

    reference = global_batches(1)
    for processes, resume_at in ((2, None), (4, None), (1, 3), (2, 4)):
        for step, (a, b) in enumerate(zip(reference, global_batches(processes, resume_at=resume_at))):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{processes} processes, step {step}, {key}")


def test_truncation_policies(tmp_path, tokenizer):
    store = store_of(tmp_path, tokenizer, [{"messages": MULTI_TURN}])
    first_answer = template_ids(tokenizer, MULTI_TURN[:3])[:-1]  # up to the first answer's <|im_end|>
    seq_len = len(first_answer) + 2

    def first_row(truncation, seq_len=seq_len):
        loader = token_loader([store], languages=["th"], seq_len=seq_len, global_batch_size=1, truncation=truncation)
        batch = next(loader)
        used = batch["segment_ids"][0] > 0
        return np.concatenate([batch["input_ids"][0][:1], batch["targets"][0][used]])

    with pytest.warns(UserWarning, match="1 of 1 conversations do not fit a row .* 1 truncated, 0 dropped"):
        kept = first_row("turns")
    np.testing.assert_array_equal(kept, first_answer)  # whole turns, ending with an answer
    with pytest.warns(UserWarning, match="1 truncated"):
        assert len(first_row("tokens")) == seq_len + 1
    with pytest.warns(UserWarning, match="0 truncated, 1 dropped"), pytest.raises(DataFormatError, match="no conversation fits"):
        first_row("drop")
    with pytest.warns(UserWarning, match="1 dropped"), pytest.raises(DataFormatError, match="no conversation fits"):
        first_row("turns", seq_len=5)


def test_conversation_files_report_problems(tmp_path, tokenizer):
    good = {"messages": MULTI_TURN[1:3]}
    lines = [json.dumps(good, ensure_ascii=False), json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
             json.dumps(good, ensure_ascii=False), "{oops"]
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"chat\.jsonl:4: malformed JSON"):
        tokenize_files({"th": [tmp_path / "chat.jsonl"]}, tmp_path / "bad", tokenizer=tokenizer, workers=1,
                       progress=False, kind="conversations")
    assert not (tmp_path / "bad").exists()  # nothing half-written is left
    (tmp_path / "chat.jsonl").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 conversations without an assistant turn skipped \(first: .*chat\.jsonl:2\)"):
        store = tokenize_files({"th": [tmp_path / "chat.jsonl"]}, tmp_path / "ok", tokenizer=tokenizer, workers=1,
                               progress=False, kind="conversations")
    source = store.manifest["languages"]["th"]["sources"][0]
    assert source["documents"] == 2 and source["skipped_without_assistant"] == 1

    cases = [({"messages": [{"role": "bot", "content": "hi"}]}, r"role\.jsonl:1: message 0"),
             ({"messages": MULTI_TURN, "language": "xx"}, r"role\.jsonl:1: unknown language code 'xx'"),
             ({"messages": MULTI_TURN, "language": "vi"}, r"a 'vi' conversation in a file given as th="),
             ({"messages": MULTI_TURN, "split": "dev"}, r"split 'dev': expected one of")]
    for record, message in cases:
        write_conversations(tmp_path / "role.jsonl", [record])
        with pytest.raises(ValueError, match=message):
            tokenize_files({"th": [tmp_path / "role.jsonl"]}, tmp_path / "role", tokenizer=tokenizer, workers=1,
                           progress=False, kind="conversations")
    (tmp_path / "plain.txt").write_text("hello\n")
    with pytest.raises(UserError, match="conversations are read from JSON-lines files"):
        tokenize_files({"th": [tmp_path / "plain.txt"]}, tmp_path / "txt", tokenizer=tokenizer, kind="conversations")

    # The Python reader of conversation files keeps its reports.
    report = LoadReport()
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="1 conversations without an assistant turn"):
        grouped = load_conversations(tmp_path / "mixed.jsonl", language="th", on_error="skip", report=report)
    assert len(grouped["th"]) == 2 and len(report.malformed) == 1 and ":4:" in report.malformed[0]


def test_cli_tokenizes_conversations_and_errors_in_one_line(tmp_path):
    write_conversations(tmp_path / "th.jsonl", [{"messages": MULTI_TURN}, {"messages": MULTI_TURN[1:3], "id": "b"}])
    command = [sys.executable, "-m", "seallm_jax.cli", "data", "tokenize", f"th={tmp_path / 'th.jsonl'}",
               "--out", str(tmp_path / "store"), "--conversations", "--no-progress", "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    store = TokenStore.open(tmp_path / "store")
    assert store.kind == "conversations" and store.manifest["settings"]["default_system"]
    (tmp_path / "th.jsonl").write_text('{"messages": "not a list"}\n')
    command[command.index("--out") + 1] = str(tmp_path / "store2")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "th.jsonl:1: expected a non-empty 'messages' list" in done.stderr


def test_translation_conversations_from_the_parallel_corpus():
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


def test_conversation_store_of_translations_and_of_files_naming_their_language(tmp_path, tokenizer):
    store = conversation_store(tokenizer=tokenizer, languages=["th", "km"], max_per_language=20,
                               cache_dir=tmp_path)
    assert set(store.languages) == {"th", "km", "en"}
    # The corpus's own splits: validation conversations held out, the test split never used.
    assert store.splits("th")["train"]["documents"] == 20 and store.splits("th")["validation"]["documents"] == 20
    assert store.splits("th")["test"]["documents"] == 0
    assert conversation_store(tokenizer=tokenizer, languages=["th", "km"], max_per_language=20,
                              cache_dir=tmp_path).path == store.path  # cached
    loader = token_loader([store], languages=["th", "km"], seq_len=256, global_batch_size=8, weighting="uniform",
                          block_rows=8)
    languages = [language for step in range(8) for language, _, _ in loader.row_plan(step)]
    assert languages.count("th") == languages.count("km") == 32
    assert next(loader)["loss_mask"].sum() > 0

    # Plain files whose records name their language are sorted by language; a record without one is an error.
    write_conversations(tmp_path / "chat.jsonl", [{"messages": MULTI_TURN, "language": "th"},
                                                  {"messages": MULTI_TURN[1:2], "language": "th"},
                                                  {"messages": MULTI_TURN[1:3], "language": "vi"}])
    with pytest.warns(UserWarning, match=r"1 conversations without an assistant turn skipped \(first: .*chat\.jsonl:2\)"):
        mixed = conversation_store([str(tmp_path / "chat.jsonl")], tokenizer=tokenizer, cache_dir=tmp_path)
    assert sorted(mixed.languages) == ["th", "vi"] and mixed.splits("th")["train"]["documents"] + \
        mixed.splits("th")["validation"]["documents"] + mixed.splits("th")["test"]["documents"] == 1
    # Errors name the user's file and line (not the per-language copy).
    write_conversations(tmp_path / "role.jsonl", [{"messages": MULTI_TURN, "language": "th"},
                                                  {"messages": [{"role": "bot", "content": "x"}], "language": "th"}])
    with pytest.raises(DataFormatError, match=r"role\.jsonl:2: message 0"):
        conversation_store([str(tmp_path / "role.jsonl")], tokenizer=tokenizer, cache_dir=tmp_path)
    write_conversations(tmp_path / "nolang.jsonl", [{"messages": MULTI_TURN}])
    with pytest.raises(DataFormatError, match=r"nolang\.jsonl:1: no 'language' field; give the file as LANG=PATH"):
        conversation_store([str(tmp_path / "nolang.jsonl")], tokenizer=tokenizer, cache_dir=tmp_path)
    named = conversation_store([f"th={tmp_path / 'nolang.jsonl'}"], tokenizer=tokenizer, cache_dir=tmp_path)
    assert named.languages == ["th"]
