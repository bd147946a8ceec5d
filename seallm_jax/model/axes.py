"""Logical axis names: the one table that names every parameter's axes, and activation constraints.

Model code speaks only logical names ('embed', 'mlp', ... for parameters, 'activation_batch', ... for
activations); `seallm_jax.sharding` maps them to mesh axes (its one rules table and resolver) and,
through `sharding.activation_sharding`, makes `constrain` pin activations while a step is traced.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = tuple[str | None, ...]

# (module name, parameter name) -> logical axes of one layer's parameter. Parameters under
# `layers` get a leading 'layers' axis (the scan axis).
PARAM_AXES: dict[tuple[str, str], LogicalAxes] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("input_layernorm", "scale"): ("norm",),
    ("post_attention_layernorm", "scale"): ("norm",),
    ("q_proj", "kernel"): ("embed", "heads"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "kernel"): ("heads", "embed"),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("norm", "scale"): ("norm",),
    ("lm_head", "kernel"): ("embed", "vocab"),
}


def logical_axes_of(path: Sequence[str]) -> LogicalAxes:
    """Logical axes of the parameter at `path`, e.g. ('model', 'layers', 'mlp', 'up_proj', 'kernel')."""
    path = tuple(str(p) for p in path)
    try:
        axes = PARAM_AXES[path[-2:]]
    except KeyError:
        raise KeyError(f"no logical axes known for parameter {'/'.join(path)}") from None
    return ("layers", *axes) if "layers" in path else axes


def param_logical_axes(params: Mapping[str, Any]) -> dict[str, Any]:
    """The tree of logical-axis tuples matching a nested-dict parameter tree (or nnx.State)."""

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping) or hasattr(node, "items") and not hasattr(node, "shape"):
            return {key: walk(value, path + (str(key),)) for key, value in node.items()}
        return logical_axes_of(path)

    return walk(params, ())


# ---- activation constraints ----------------------------------------------------------------------
#
# Activations are named with the `activation_*` names of `seallm_jax.sharding`'s rules table (they shard
# differently from parameters: the batch takes the data axes, features never take 'fsdp'). This module
# only holds the hook: `sharding.activation_sharding(mesh, rules)` installs the resolver while a step is
# traced, so the model never depends on the mesh or the rules.

# sharding(logical axes, shape) -> NamedSharding, and its mesh; None outside `activation_sharding`.
Resolver = Callable[[LogicalAxes, tuple[int, ...]], NamedSharding]
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Resolver] | None] = contextvars.ContextVar(
    "seallm_jax_activation_sharding", default=None
)


@contextlib.contextmanager
def resolving_activations(mesh: Mesh, resolve: Resolver) -> Iterator[None]:
    """While tracing inside this context, `constrain` pins activations with `resolve` (see
    `seallm_jax.sharding.activation_sharding`, the one caller)."""
    token = _ACTIVE.set((mesh, resolve))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh_specs(*arrays: tuple[LogicalAxes, Sequence[int]]) -> tuple[Mesh, tuple[PartitionSpec, ...]] | None:
    """Inside `activation_sharding`: its mesh and the specs of `(axes, shape)` pairs (for `shard_map`
    around a kernel XLA cannot partition itself); None outside (one device)."""
    active = _ACTIVE.get()
    if active is None:
        return None
    mesh, resolve = active
    return mesh, tuple(resolve(axes, tuple(shape)).spec for axes, shape in arrays)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """Sharding constraint by logical axes; a no-op outside `activation_sharding` (one device)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    _, resolve = active
    return jax.lax.with_sharding_constraint(x, resolve(axes, tuple(x.shape)))
