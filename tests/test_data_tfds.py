"""The TFDS builder prepares and loads offline into a local data_dir; TFDS stays optional."""
import subprocess
import sys

import pytest

from seallm_jax.data import load_corpus, load_tfds

tfds = pytest.importorskip("tensorflow_datasets")


def test_importing_the_library_does_not_import_tensorflow():
    code = ("import sys, seallm_jax, seallm_jax.data, seallm_jax.data.cli; "
            "print('tensorflow' in sys.modules or 'tensorflow_datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_shipped_config_builds_and_loads_offline(tmp_path):
    from seallm_jax.data.tfds_sea import Builder

    builder = Builder(config="km", data_dir=str(tmp_path))
    builder.download_and_prepare()
    expected = {split: load_corpus(split, ["km"])["km"] for split in ("train", "validation", "test")}
    assert {split: info.num_examples for split, info in builder.info.splits.items()} == {
        split: len(documents) for split, documents in expected.items()}
    loaded = tfds.load("sea_corpus/km", split="test", data_dir=str(tmp_path), download=False)
    texts = sorted(example["text"].decode() for example in tfds.as_numpy(loaded))
    assert texts == sorted(doc.text for doc in expected["test"])
    # The same data as Documents for the streams.
    documents = load_tfds("sea_corpus/km", "validation", data_dir=str(tmp_path))
    assert sorted(doc.id for doc in documents["km"]) == sorted(doc.id for doc in expected["validation"])


def test_user_corpus_config_builds_from_local_files(tmp_path):
    from seallm_jax.data.tfds_sea import Builder, user_corpus_config

    thai = tmp_path / "th.jsonl"
    thai.write_text("".join(f'{{"text": "ประโยคที่ {i}"}}\n' for i in range(40)))
    vietnamese = tmp_path / "vi.txt"
    vietnamese.write_text("".join(f"Câu số {i}\n" for i in range(30)))
    config = user_corpus_config({"th": thai, "vi": [vietnamese]})
    builder = Builder(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    total = sum(info.num_examples for info in builder.info.splits.values())
    assert total == 70
    examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert {example["language"].decode() for example in examples} == {"th", "vi"}
    assert user_corpus_config({"th": thai}).name != config.name  # another corpus, another config
