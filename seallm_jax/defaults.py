"""Defaults and names shared by the library and the command line, in a module without heavy imports so that
the command line can show them (`--help`) and check arguments without importing JAX."""

# Generation (`seallm_jax.model.generate`, `seallm-jax generate`).
DEFAULT_MAX_NEW_TOKENS = 64

# Neuron statistics and ablation batches (`seallm_jax.lsn.inputs`, `seallm-jax lsn stats|ablate`).
LSN_SEQ_LEN = 256
LSN_BATCH_SIZE = 8  # rows per process

# The device mesh's axes, in order (`seallm_jax.sharding`, every `--mesh` flag).
MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh(spec: str | None, flag: str = "--mesh") -> dict[str, int] | None:
    """"data=2,fsdp=-1" -> {"data": 2, "fsdp": -1}; None stays None."""
    from seallm_jax.errors import ConfigError

    if spec is None:
        return None
    sizes: dict[str, int] = {}
    for item in spec.split(","):
        axis, _, size = (part.strip() for part in item.partition("="))
        if axis not in MESH_AXES or not size.lstrip("-").isdigit() or (int(size) < 1 and int(size) != -1):
            raise ConfigError(f"{flag} {spec!r}: expected AXIS=SIZE items with AXIS in {', '.join(MESH_AXES)} "
                              "and SIZE a positive integer or -1 (the remaining devices), e.g. data=-1,fsdp=1")
        if axis in sizes:
            raise ConfigError(f"{flag} {spec!r} gives {axis} twice")
        sizes[axis] = int(size)
    return sizes
