"""Defaults and names shared by the library and the command line, in a module without heavy imports so that
the command line can show them (`--help`) and check arguments without importing JAX."""

# Generation (`seallm_jax.model.generate`, `seallm-jax generate`).
DEFAULT_MAX_NEW_TOKENS = 64

# Neuron statistics and ablation batches (`seallm_jax.lsn.inputs`, `seallm-jax lsn stats|ablate`).
LSN_SEQ_LEN = 256
LSN_BATCH_SIZE = 8  # rows per process

# The device mesh's axes, in order (`seallm_jax.sharding`, every `--mesh` flag).
MESH_AXES = ("data", "fsdp", "tensor")
