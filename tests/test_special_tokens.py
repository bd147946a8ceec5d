"""Special tokens are resolved one way (`tokenizer.special_token_id`), for Qwen2's tokenizer and for
Llama-family ones such as SmolLM2's, whose `<|endoftext|>` is id 0 and also the unk token."""
import numpy as np
import pytest

from hf_models import save_smollm2_style_tokenizer
from seallm_jax import cli
from seallm_jax.data.tokenizer_adapter import TokenizerAdapter
from seallm_jax.errors import DataFormatError
from seallm_jax.tokenizer import document_separator_id, load_tokenizer, special_token_id
from train_helpers import TINY, metrics


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("smollm2_tokenizer")
    save_smollm2_style_tokenizer(directory)
    return directory


def test_endoftext_that_is_also_unk_is_found(smollm2_tokenizer_dir):
    tokenizer = load_tokenizer(smollm2_tokenizer_dir)
    assert tokenizer.unk_token_id == 0  # the trap: the separator is the unk token too
    assert special_token_id(tokenizer, "<|endoftext|>") == 0
    assert special_token_id(tokenizer, "<|im_end|>") == 2
    assert special_token_id(tokenizer, "<|no_such_token|>") is None
    assert document_separator_id(tokenizer) == 0
    adapter = TokenizerAdapter(tokenizer)
    assert adapter.eos_id == 0
    assert adapter.special_id("<|im_start|>") == 1
    with pytest.raises(DataFormatError, match="no '<|fim_pad|>' token"):
        adapter.special_id("<|fim_pad|>")


def test_qwen2_tokenizer_ids_unchanged():
    tokenizer = load_tokenizer()
    assert special_token_id(tokenizer, "<|endoftext|>") == 151643
    assert document_separator_id(tokenizer) == 151643
    assert TokenizerAdapter(tokenizer).special_id("<|im_start|>") == 151644


def test_corpus_training_runs_with_a_smollm2_style_tokenizer(smollm2_tokenizer_dir, tmp_path):
    """Step 4 of the README's main job on a Llama-family tokenizer: `seallm-jax train` on the shipped
    corpus with `data.tokenizer` pointing at it (this failed with 'the tokenizer has no <|endoftext|>')."""
    workdir = tmp_path / "run"
    code = cli.main(["train", "--config", TINY, "--workdir", str(workdir), "--config.train.progress_bar=False",
                     "--config.data.source=corpus", f"--config.data.tokenizer={smollm2_tokenizer_dir}",
                     "--config.data.languages=vi", "--config.model.vocab_size=320", "--config.train.steps=3",
                     "--config.train.eval_every=0", "--config.checkpoint.every=0"])
    assert code == 0
    losses = [record["loss"] for record in metrics(workdir) if "loss" in record]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
