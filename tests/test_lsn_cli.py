"""LSN ablation and the `seallm-jax lsn stats | select | ablate` commands on a tiny model and tiny files."""
import json
import math

import numpy as np
import optax
import pytest
from flax import nnx
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from seallm_jax import hf
from seallm_jax.cli import main
from seallm_jax.lsn.ablate import ablation_matrix
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.stats import NeuronStats
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM

TEXTS = {
    "th": ["สวัสดีครับ ยินดีต้อนรับ", "ภาษาไทยเป็นภาษาที่สวยงาม", "วันนี้อากาศดีมาก", "ขอบคุณมากครับ"] * 3,
    "vi": ["Xin chào các bạn", "Tiếng Việt rất hay", "Hôm nay trời đẹp quá", "Cảm ơn bạn rất nhiều"] * 3,
}


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens plus <|endoftext|> (the document separator the data stream needs)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(BPE({char: i for i, char in enumerate(sorted(alphabet))}, [], ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsn_cli")
    config = Qwen2Config(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=256)
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(1))
    model_dir = root / "model"
    hf.save_pretrained(model, model_dir, tokenizer=byte_level_tokenizer())
    files = {}
    for lang, lines in TEXTS.items():
        files[lang] = root / f"{lang}.txt"
        files[lang].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root, model, model_dir, files


def test_ablation_matrix_matches_direct_perplexity(tiny):
    _, model, _, _ = tiny
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(2, 17)).astype(np.int32)
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((2, 16), np.float32),
             "segment_ids": np.ones((2, 16), np.int32)}
    neuron_set = NeuronSet("lape", 2, 64, languages={"th": {0: list(range(0, 64, 2))}, "vi": {1: [5]}})
    result = ablation_matrix(model, neuron_set, {"th": [batch], "vi": [batch]})
    assert result.deactivated == ["none", "th", "vi"] and result.evaluated == ["th", "vi"]

    def direct(scale):
        logits = model(batch["input_ids"], ffn_gate_scale=scale)
        return math.exp(float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()))

    assert result.perplexity[0, 0] == pytest.approx(direct(None), rel=1e-5)
    assert result.perplexity[1, 1] == pytest.approx(direct(neuron_set.gate_scale(["th"])), rel=1e-5)
    assert result.perplexity[1, 0] != pytest.approx(result.perplexity[0, 0], rel=1e-6)  # deactivation matters
    assert result.neurons == {"th": 32, "vi": 1}
    np.testing.assert_allclose(result.relative_change()[0], 0.0)


def test_stats_select_ablate_commands(tiny):
    root, _, model_dir, files = tiny
    stats_path, neurons_path, ablation_path = root / "stats.npz", root / "neurons.json", root / "ablation.json"
    data = [f"--data=th={files['th']}", f"--data=vi={files['vi']}"]
    common = ["--seq-len", "96", "--batch-size", "8", "--no-progress"]
    assert main(["lsn", "stats", "--model", str(model_dir), "--languages", "th,vi", *data, *common,
                 "--top-k", "4", "--out", str(stats_path)]) == 0
    stats = NeuronStats.load(stats_path)
    assert stats.languages == ["th", "vi"] and stats.top_k == 4
    assert (stats.document_count == 12).all()  # one document per line
    assert stats.token_count[0] > stats.token_count[1]  # Thai takes three bytes a character
    assert stats.metadata["model"].endswith("model")

    assert main(["lsn", "select", "--stats", str(stats_path), "--method", "lape", "--top-rate", "0.1",
                 "--out", str(neurons_path)]) == 0
    neuron_set = NeuronSet.load(neurons_path)
    assert neuron_set.method == "lape" and sum(neuron_set.counts().values()) > 0
    assert (root / "neurons.png").stat().st_size > 1000
    saved = json.loads(neurons_path.read_text())
    assert saved["config"]["top_rate"] == 0.1 and saved["parameter_fraction_union"] > 0

    assert main(["lsn", "select", "--stats", str(stats_path), "--method", "plnd", "--membership-fraction", "0.5",
                 "--out", str(root / "plnd.json")]) == 0
    assert NeuronSet.load(root / "plnd.json").method == "plnd"

    assert main(["lsn", "ablate", "--model", str(model_dir), "--neurons", str(neurons_path), "--languages", "th,vi",
                 *data, *common, "--out", str(ablation_path)]) == 0
    ablation = json.loads(ablation_path.read_text())
    assert ablation["deactivated"][0] == "none" and ablation["evaluated"] == ["th", "vi"]
    assert set(ablation["perplexity"]["none"]) == {"th", "vi"}
    assert (root / "ablation.png").stat().st_size > 1000
