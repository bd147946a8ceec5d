"""Two-stage multilingual SFT, stage 1: a broad, temperature-balanced mix of every shipped language.

    # GPU node (8 devices): start from a pretrained (or LSN-trained) Hugging Face model
    seallm-jax train --config configs/sft_stage1.py:gpu --workdir runs/sft_stage1 \
        --config.model.init_from=/models/Qwen2-0.5B
    # then stage 2 (configs/sft_stage2.py) from this workdir
    # your own conversations instead of the shipped translation data (JSON-lines, docs/data.md):
    #   --config.data.files=chat_th.jsonl,chat_vi.jsonl,chat_en.jsonl
    # CPU: a tiny model on a vocabulary subset, the whole recipe in a few minutes. Build the subset once
    # (the Qwen2 tokens of both stages' conversations; ~30 s), then train:
    seallm-jax data sft-vocabulary ~/.cache/seallm_jax/sft_cpu_vocabulary_200_60 \
        --max-per-language 200 --min-source-chars 0,60
    seallm-jax train --config configs/sft_stage1.py:cpu --workdir /tmp/sft_stage1
    seallm-jax train --config configs/sft_stage2.py:cpu --workdir /tmp/sft_stage2 \
        --config.model.init_from=/tmp/sft_stage1

What to expect. `cpu` (docs/training.md, measured on a shared 2-core CPU): 87 s wall for 160 steps;
train loss 7.25 at step 20 -> 5.10 at step 160, held-out loss 6.20 at step 40 -> 5.26 at step 160.
`gpu` / `tpu`: not measured.

Data: `data.source='sft'` with no files = translation conversations (both directions with English) built
from the shipped parallel corpus; languages are sampled with p ∝ n^(1/T), T=3, so small languages are
upsampled; the loss covers assistant tokens only; held-out loss is on the validation split.
`cpu` trains a 2-layer width-64 Qwen2 from scratch on at most CPU_PER_LANGUAGE conversations per
language, with the Qwen2 tokens those conversations use: the subset the command above saves in
CPU_VOCABULARY (`$SEALLM_JAX_CACHE` replaces `~/.cache/seallm_jax`). This file only reads its size.
"""
import os

from seallm_jax.data.corpus import shipped_languages
from seallm_jax.errors import ConfigError
from seallm_jax.tokenizer.vocabulary import FILE_NAME, VocabularySubset
from seallm_jax.train.config import base_config

PLATFORMS = ("gpu", "tpu", "cpu")
CPU_PER_LANGUAGE = 200  # conversations per language in the CPU variant (both stages)
# The CPU vocabulary covers both stages: min_source_chars 0 (stage 1) and 60 (configs/sft_stage2.py).
CPU_VOCABULARY = os.path.join(os.environ.get("SEALLM_JAX_CACHE") or os.path.expanduser("~/.cache/seallm_jax"),
                              f"sft_cpu_vocabulary_{CPU_PER_LANGUAGE}_60")
BUILD_CPU_VOCABULARY = (f"seallm-jax data sft-vocabulary {CPU_VOCABULARY} --max-per-language {CPU_PER_LANGUAGE} "
                        "--min-source-chars 0,60")


def get_config(platform: str = "gpu"):
    if platform not in PLATFORMS:
        raise ConfigError(f"configs/sft_stage1.py:{platform}: unknown variant; expected one of {PLATFORMS}")
    config = base_config()
    # With init_from the architecture comes from its config.json; these are Qwen2-0.5B's shapes.
    config.model.update(dtype="bfloat16" if platform != "cpu" else "float32", param_dtype="float32",
                        remat="full" if platform != "cpu" else "none",
                        attention_impl="flash" if platform != "cpu" else "auto")
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.train.update(steps=3000, global_batch_size=64, seq_len=2048, micro_batches=4, log_every=10,
                        eval_every=250, eval_batches=8, z_loss_weight=1e-4)
    # SFT from a pretrained model: a fraction of the pretraining rate, short warmup, cosine to 10 %.
    config.optimizer.update(learning_rate=2e-5, warmup_steps=100, schedule="cosine", end_lr_ratio=0.1,
                            weight_decay=0.0, max_grad_norm=1.0)
    config.checkpoint.update(every=500, keep=2)
    config.data.update(source="sft", languages=shipped_languages(), files=[], weighting="temperature",
                       temperature=3.0, min_source_chars=0, max_per_language=0, truncation="turns")
    if platform == "cpu":
        if not os.path.isfile(os.path.join(CPU_VOCABULARY, FILE_NAME)):
            raise ConfigError(f"configs/sft_stage1.py:cpu trains on the vocabulary subset in {CPU_VOCABULARY}, "
                              f"which is not built yet; build it once with: {BUILD_CPU_VOCABULARY}")
        vocabulary = VocabularySubset.model_fields(CPU_VOCABULARY)
        config.model.update(
            vocab_size=vocabulary["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            bos_token_id=vocabulary["eos_token_id"], eos_token_id=vocabulary["eos_token_id"])
        config.train.update(steps=160, global_batch_size=8, seq_len=128, micro_batches=1, log_every=20,
                            eval_every=40, eval_batches=4, z_loss_weight=0.0, progress_bar=False)
        # A model trained from scratch takes a pretraining-sized rate.
        config.optimizer.update(learning_rate=5e-3, warmup_steps=10)
        config.checkpoint.update(every=0, keep=1)
        config.data.update(tokenizer=CPU_VOCABULARY, max_per_language=CPU_PER_LANGUAGE)
        config.mesh.update(data=-1, fsdp=1)
        config.distributed.mode = "none"
    return config
