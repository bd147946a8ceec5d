"""Two-stage multilingual SFT, stage 2: a high-quality subset at a lower learning rate, from stage 1.

    seallm-jax train --config configs/sft_stage2.py:gpu --workdir runs/sft_stage2 \
        --config.model.init_from=runs/sft_stage1
    # curated conversations instead of the filtered translation data:
    #   --config.data.files=curated_th.jsonl,curated_vi.jsonl --config.data.min_source_chars=0
    # CPU (after configs/sft_stage1.py:cpu and its vocabulary command, see its docstring):
    seallm-jax train --config configs/sft_stage2.py:cpu --workdir /tmp/sft_stage2 \
        --config.model.init_from=/tmp/sft_stage1

What to expect. `cpu` (docs/training.md, measured on a shared 2-core CPU): 41 s wall for 80 steps;
held-out loss 6.19 (stage 1's final model on stage 2's data) -> 5.87 at step 80. `gpu` / `tpu`: not
measured.

Everything not listed here is stage 1's (configs/sft_stage1.py with the same platform argument).
`model.init_from` is stage 1's workdir: its latest checkpoint's parameters (bit-exact) and its
config.json (the architecture) and tokenizer; the optimizer state, step and schedule start afresh.
The default `runs/sft_stage1` (`/tmp/sft_stage1` for `cpu`) is the workdir of stage 1's commands; a
missing one is an error, never a silent random initialisation. Quality: translation pairs whose source
has at least STAGE2_MIN_SOURCE_CHARS characters (sentences rather than UI labels and dictionary words).
"""
import os

from seallm_jax.train.config import load_config

STAGE2_LR_RATIO = 0.25  # stage 2's peak learning rate relative to stage 1's
STAGE2_MIN_SOURCE_CHARS = 60  # stage 1's CPU vocabulary covers this threshold too
STAGE1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_stage1.py")


def get_config(platform: str = "gpu"):
    config = load_config(f"{STAGE1}:{platform}")
    config.model.init_from = "/tmp/sft_stage1" if platform == "cpu" else "runs/sft_stage1"
    config.data.update(min_source_chars=STAGE2_MIN_SOURCE_CHARS, seed=1)
    config.optimizer.update(learning_rate=config.optimizer.learning_rate * STAGE2_LR_RATIO,
                            warmup_steps=max(config.optimizer.warmup_steps // 2, 1))
    config.train.update(steps=config.train.steps // 2, eval_every=config.train.eval_every // 2)
    return config
