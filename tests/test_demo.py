"""The README's demo, shrunk: every stage runs and hands the next one what it needs."""
import json
import os

import numpy as np
from safetensors.numpy import load_file

from seallm_jax.demo import run_demo


def test_demo_runs_end_to_end_and_changes_only_the_target_neurons(tmp_path):
    summary = run_demo(str(tmp_path / "demo"), languages=("en", "th", "vi"), target="th", pretrain_steps=6,
                       lsn_steps=3, top_rate=0.2, eval_tokens=1024, stats_tokens=2048)
    out = summary["out"]
    for name in ("tokenizer", "base_hf", "export_hf", "stats.npz", "neurons.json", "neurons.png", "summary.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert summary["transformers_max_abs_logit_diff"] < 1e-4
    assert set(summary["perplexity_after"]) == {"en", "th", "vi"}
    assert set(summary["perplexity_after_random_neurons"]) == {"en", "th", "vi"}  # the random-neuron control
    assert set(summary["selectivity"]) == {"lsn", "random"} and summary["verdict"].startswith("th")

    neurons = json.load(open(os.path.join(out, "neurons.json")))["languages"]["th"]
    base = load_file(os.path.join(out, "base_hf", "model.safetensors"))
    trained = load_file(os.path.join(out, "export_hf", "model.safetensors"))
    changed_somewhere = False
    for name, before in base.items():
        after = trained[name]
        allowed = np.zeros(before.shape, bool)
        layer = name.split(".")[2] if ".mlp." in name else None
        ids = neurons.get(layer, []) if layer is not None else []
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            allowed[ids, :] = True  # HF layout: neuron j = row j of gate/up
        elif name.endswith("down_proj.weight"):
            allowed[:, ids] = True  # and column j of down
        np.testing.assert_array_equal(before[~allowed], after[~allowed], err_msg=name)
        changed_somewhere |= bool((before[allowed] != after[allowed]).any())
    assert changed_somewhere


def test_demo_verdict_weighs_the_target_gain_against_what_moves_elsewhere():
    from seallm_jax.demo import selectivity, summary_verdict

    lsn = selectivity({"th": -2.0, "en": 0.4, "km": -0.2}, "th")
    assert np.allclose(lsn, (2.0, 0.3, 0.4))
    random = selectivity({"th": -2.2, "en": 1.7, "km": 9.6}, "th")
    # a slightly smaller target gain, far less change elsewhere: the selection matters
    assert "beat random ones" in summary_verdict(lsn, random, "th")
    assert "less change elsewhere" in summary_verdict(lsn, random, "th")
    # more gain but more change elsewhere: not called a win
    assert "but move the other languages more" in summary_verdict(random, lsn, "th")
    # worse on both counts: said so
    assert "do not beat" in summary_verdict((1.0, 3.0, 5.0), lsn, "th")
    assert "did not lower" in summary_verdict((-1.0, 0.1, 0.2), random, "th")
