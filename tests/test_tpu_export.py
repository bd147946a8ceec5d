"""TPU readiness without a TPU: the `configs/qwen2_7b.py:tpu` train step exported for a TPU v5p-64.

A v5p-64 slice has 64 TensorCores on 32 chips; with megacore each chip is one JAX device, so its mesh
is 32 devices (the recipe: data 1 x fsdp 32 x tensor 1). The step is exported with
`jax.export.export(jitted, platforms=["tpu"])` for abstract `jax.ShapeDtypeStruct` inputs on 32 fake
CPU devices: tracing, sharding propagation into the StableHLO module and the TPU lowering rules all
run, so shape, sharding and divisibility errors surface here rather than on a pod; nothing is
compiled for TPU (no TPU compiler here) and nothing is allocated.

The export runs in a subprocess because the device count is fixed when JAX starts (the suite's
conftest gives 8).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V5P_64_DEVICES = 32

SCRIPT = textwrap.dedent(r'''
    import json, math, sys, time
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding
    from seallm_jax import sharding as shd
    from seallm_jax.errors import ConfigError
    from seallm_jax.train.config import load_config
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import BATCH_KEYS, Trainer

    def abstract(tree, shardings):
        return jax.tree.map(lambda l, s: jax.ShapeDtypeStruct(l.shape, l.dtype, sharding=s), tree, shardings)

    def inputs(trainer, rows):
        seq_len = int(trainer.config.train.seq_len)
        batch = {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.float32 if k == "loss_mask" else jnp.int32,
                                         sharding=trainer.batch_shardings[k]) for k in BATCH_KEYS}
        return abstract(trainer.abstract_state, trainer.state_shardings), batch

    def build(overrides=()):
        config = load_config("configs/qwen2_7b.py:tpu", list(overrides))
        mesh = shd.make_mesh(config.mesh.to_dict(), jax.devices())
        return Trainer(config, mesh, build_optimizer(config), build_schedule(config))

    out = {"devices": len(jax.devices()), "jax": jax.__version__}
    start = time.perf_counter()
    trainer = build()
    state, batch = inputs(trainer, trainer.global_batch_size)
    exported = jax.export.export(trainer._train_step, platforms=["tpu"])(state, batch)
    out["export_s"] = round(time.perf_counter() - start, 1)
    out["mesh"] = {k: int(v) for k, v in trainer.mesh.shape.items()}
    out["platforms"] = list(exported.platforms)
    out["nr_devices"] = exported.nr_devices
    # (no exported.serialize(): optax states are pytree types export has no serializer for; the
    # StableHLO bytecode is what a TPU would compile)
    out["serialized_bytes"] = len(exported.mlir_module_serialized)
    text = exported.mlir_module()
    out["num_partitions"] = "mhlo.num_partitions = 32" in text
    # Per-device bytes of the train state under the exported shardings.
    def shard_bytes(leaf, s):
        return math.prod(s.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    sizes = jax.tree.map(shard_bytes, trainer.abstract_state, trainer.state_shardings)
    out["state_bytes_per_device"] = int(sum(jax.tree.leaves(sizes)))
    # Parameters that stay whole on every device (a rule that did not divide their dims falls back to
    # replication, which is legal but costs memory): name -> shape, for the big ones.
    flat = jax.tree_util.tree_flatten_with_path(trainer.abstract_params)[0]
    flat_s = jax.tree.leaves(trainer.param_shardings)
    out["replicated_big_params"] = {
        jax.tree_util.keystr(path): list(leaf.shape) for (path, leaf), s in zip(flat, flat_s)
        if math.prod(leaf.shape) >= 2**20 and s.is_fully_replicated}
    out["batch_spec"] = str(trainer.batch_shardings["input_ids"].spec)

    # Must fail: a batch whose rows do not divide over the 32 devices ...
    try:
        state, bad = inputs(trainer, trainer.global_batch_size - 8)
        jax.export.export(trainer._train_step, platforms=["tpu"])(state, bad)
        out["indivisible_batch"] = "exported"
    except Exception as error:
        out["indivisible_batch"] = f"{type(error).__name__}: {str(error)[:800]}"
    # ... and a global batch the Trainer cannot split into micro-batches x devices.
    try:
        build(["--config.train.global_batch_size=128"])
        out["indivisible_config"] = "built"
    except ConfigError as error:
        out["indivisible_config"] = f"ConfigError: {error}"
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def exported() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={V5P_64_DEVICES}"])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_qwen2_7b_tpu_step_exports_for_v5p_64(exported):
    assert exported["devices"] == V5P_64_DEVICES
    assert exported["mesh"] == {"data": 1, "fsdp": 32, "tensor": 1}
    assert exported["platforms"] == ["tpu"]
    assert exported["nr_devices"] == V5P_64_DEVICES
    assert exported["num_partitions"], "the exported module is not partitioned over 32 devices"
    assert exported["serialized_bytes"] > 0
    assert "fsdp" in exported["batch_spec"]  # the 256 rows split over the 32 devices


def test_qwen2_7b_tpu_state_is_fully_sharded(exported):
    # fp32 weights + AdamW mu/nu = 12 bytes/parameter x 7.62e9 / 32 devices ~ 2.9e9 bytes; a big
    # parameter left replicated (an indivisible dim) would show up here and in the per-device bytes.
    assert exported["replicated_big_params"] == {}
    assert exported["state_bytes_per_device"] < 12 * 7.7e9 / V5P_64_DEVICES


def test_indivisible_shapes_fail_here(exported):
    # The same export with 248 rows (not a multiple of the 32 batch devices) must raise, not export.
    assert exported["indivisible_batch"] != "exported"
    assert "divisible" in exported["indivisible_batch"] or "divide" in exported["indivisible_batch"], \
        exported["indivisible_batch"]
    assert exported["indivisible_config"].startswith("ConfigError"), exported["indivisible_config"]
    assert "multiple of" in exported["indivisible_config"]
