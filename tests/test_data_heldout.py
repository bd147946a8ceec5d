"""Slow end-to-end check: `seallm-jax train` on the shipped corpus lowers every language's held-out loss.

    python -m pytest -m slow tests/test_data_heldout.py -s     # prints the per-language table

The run happens in a subprocess on one CPU device: on a busy machine the 8 fake devices of the test
session can miss XLA's 40 s collective rendezvous deadline over a run of minutes.
"""
import json
import os
import subprocess
import sys

import pytest

STEPS = 150
SEQ_LEN = 64
BATCH = 8
EVAL_BATCHES = 4


def heldout_losses(trainer, params, tokenizer, languages):
    """Mean validation cross-entropy per language over the same first batches of each."""
    import jax

    from seallm_jax.data import SequentialLoader
    from seallm_jax.data.tokenize import shipped_corpus_store

    store = shipped_corpus_store(tokenizer)
    losses = {}
    for language in languages:
        stream = SequentialLoader([store.documents(language, "validation")], seq_len=SEQ_LEN, global_batch_size=BATCH,
                                  pad_id=store.eos_id)
        loss_sum = tokens = 0.0
        for _, batch in zip(range(EVAL_BATCHES), stream):
            out = jax.device_get(trainer.eval_step(params, trainer.put_batch(batch)))
            loss_sum, tokens = loss_sum + float(out["loss_sum"]), tokens + float(out["target_tokens"])
        losses[language] = loss_sum / tokens
    return losses


def measure(workdir: str) -> dict[str, dict[str, float]]:
    """Train the tiny config on all shipped languages, then held-out loss per language before/after."""
    import jax

    from seallm_jax import sharding as shd
    from seallm_jax.checkpoint import load_params
    from seallm_jax.data import shipped_languages
    from seallm_jax.tokenizer import load_tokenizer
    from seallm_jax.train.config import load_config
    from seallm_jax.train.loop import train
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import Trainer, model_config_from

    languages = shipped_languages()
    overrides = [f"--config.train.steps={STEPS}", f"--config.train.seq_len={SEQ_LEN}",
                 f"--config.train.global_batch_size={BATCH}", "--config.train.eval_every=0",
                 "--config.train.log_every=50", "--config.train.progress_bar=False",
                 "--config.data.source=corpus", f"--config.data.languages={languages}",
                 "--config.data.weighting=temperature", "--config.model.vocab_size=151936",
                 "--config.model.tie_word_embeddings=True", f"--config.checkpoint.every={STEPS}",
                 "--config.optimizer.learning_rate=3e-3", "--config.optimizer.warmup_steps=20"]
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"), overrides)
    train(config, workdir)

    mesh = shd.make_mesh(config.mesh.to_dict())
    trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config),
                      model_config=model_config_from(config))
    tokenizer = load_tokenizer()
    initial = trainer.init_state(int(config.train.seed)).params
    before = heldout_losses(trainer, initial, tokenizer, languages)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), initial)
    after = heldout_losses(trainer, load_params(workdir, abstract), tokenizer, languages)
    return {"before": before, "after": after}


@pytest.mark.slow
def test_training_on_the_shipped_corpus_lowers_heldout_loss_of_every_language(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    before, after = losses["before"], losses["after"]
    print(f"\n{'language':<9}{'before':>9}{'after':>9}")
    for language in before:
        print(f"{language:<9}{before[language]:>9.3f}{after[language]:>9.3f}")
    assert all(after[language] < before[language] for language in before), losses


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
