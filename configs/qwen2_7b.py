"""Qwen2-7B continued pretraining on the SEA corpus, multi-node GPU or a TPU pod slice.

    # 4 nodes x 8 H100 with SLURM (see launch/slurm.sbatch):
    sbatch --nodes=4 launch/slurm.sbatch --config configs/qwen2_7b.py:gpu --workdir /shared/runs/qwen2-7b \
        --config.model.init_from=/models/Qwen2-7B
    # TPU v5p-64 (launch/tpu_pod.sh runs it on every worker):
    launch/tpu_pod.sh my-tpu us-east5-a -- seallm-jax train --config configs/qwen2_7b.py:tpu \
        --workdir gs://BUCKET/runs/qwen2-7b --config.model.init_from=/models/Qwen2-7B

GPU: FSDP over the 8 GPUs of a node (NVLink) and data parallelism across nodes (data=-1), so only
gradient all-reduces cross the slower network; TPU: FSDP over the whole slice (ICI everywhere).
float32 master weights + AdamW = 16 bytes/parameter (~122 GB) split over the FSDP axis; bfloat16
compute; full remat; 1M tokens per step (256 x 4096) in 8 micro-batches (one row per device per
micro-batch on 32 devices: global_batch_size must be a multiple of micro_batches x batch devices).

What to expect: loss, step time and memory, not measured.
"""
from seallm_jax.errors import ConfigError
from seallm_jax.model.config import PRESETS
from seallm_jax.train.config import base_config

PEAK_FLOPS = {"gpu": 989e12, "tpu": 459e12}  # bf16 dense per device: H100 SXM; TPU v5p


def get_config(platform: str = "gpu"):
    if platform not in PEAK_FLOPS:
        raise ConfigError(f"configs/qwen2_7b.py:{platform}: unknown variant; expected one of {sorted(PEAK_FLOPS)}")
    config = base_config()
    config.model.update(
        **PRESETS["qwen2-7b"],
        dtype="bfloat16", param_dtype="float32", remat="full",
        attention_impl="flash")
    if platform == "gpu":
        config.mesh.update(data=-1, fsdp=8, tensor=1)
    else:
        config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.train.update(steps=10000, global_batch_size=256, seq_len=4096, micro_batches=8, log_every=10,
                        eval_every=500, eval_batches=8, peak_flops=PEAK_FLOPS[platform], z_loss_weight=1e-4)
    config.optimizer.update(learning_rate=3e-5, warmup_steps=200, schedule="cosine", end_lr_ratio=0.1,
                            weight_decay=0.1, max_grad_norm=1.0)
    config.checkpoint.update(every=500, keep=3)
    config.data.update(source="corpus", languages=["en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta", "jv"],
                       weighting="temperature")
    return config
