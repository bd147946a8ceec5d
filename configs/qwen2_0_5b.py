"""Qwen2-0.5B continued pretraining on the SEA corpus, for one GPU node or a TPU slice.

    # 8 GPUs on one node (add `--config.model.init_from=/models/Qwen2-0.5B` to start from the release):
    seallm-jax train --config configs/qwen2_0_5b.py:gpu --workdir runs/qwen2-0.5b
    # TPU v4-8 / v5p-8 (run on every worker, e.g. launch/tpu_pod.sh):
    seallm-jax train --config configs/qwen2_0_5b.py:tpu --workdir gs://BUCKET/runs/qwen2-0.5b

Pure FSDP over all devices (0.5B needs no tensor parallelism: 14 heads and 2 KV heads would not
split well anyway), bfloat16 compute over float32 master weights, 0.5M tokens per step (128 x 4096)
in 8 micro-batches, full remat of each decoder layer, blockwise `flash` attention (packed segments,
O(T) memory; `--config.model.attention_impl=splash` for the Pallas TPU kernel) and the chunked loss.
`cpu` is a 4-step smoke test of the same recipe at seq_len 128.

What to expect: loss and step time on GPU / TPU, not measured. Memory (docs/long_context.md,
`benchmarks/memory.py`, compiled for one device): parameters + AdamW state 5.52 GiB, plus 6.52 GiB of
temporaries per 16,384 tokens with the `tpu` settings (bf16 compute, full remat).
"""
from seallm_jax.errors import ConfigError
from seallm_jax.model.config import PRESETS
from seallm_jax.train.config import base_config

PEAK_FLOPS = {"gpu": 989e12, "tpu": 459e12, "cpu": 0.0}  # bf16 dense per device: H100 SXM; TPU v5p


def get_config(platform: str = "gpu"):
    if platform not in PEAK_FLOPS:
        raise ConfigError(f"configs/qwen2_0_5b.py:{platform}: unknown variant; expected one of {sorted(PEAK_FLOPS)}")
    config = base_config()
    config.model.update(
        **PRESETS["qwen2-0.5b"],
        dtype="bfloat16", param_dtype="float32", remat="full",
        attention_impl="flash" if platform != "cpu" else "auto")
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.train.update(steps=20000, global_batch_size=128, seq_len=4096, micro_batches=8, log_every=10,
                        eval_every=500, eval_batches=8, peak_flops=PEAK_FLOPS[platform], z_loss_weight=1e-4)
    config.optimizer.update(learning_rate=1e-4, warmup_steps=500, schedule="cosine", end_lr_ratio=0.1,
                            weight_decay=0.1, max_grad_norm=1.0)
    config.checkpoint.update(every=1000, keep=3)
    config.data.update(source="corpus", languages=["en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta", "jv"],
                       weighting="temperature")
    if platform == "cpu":
        config.model.update(dtype="float32", remat="none")
        config.train.update(steps=4, global_batch_size=2, seq_len=128, micro_batches=1, log_every=1,
                            eval_every=0)
    return config
