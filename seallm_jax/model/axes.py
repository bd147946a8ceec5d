"""Logical axis names: the one table that names every parameter's axes, and activation constraints.

Model code speaks only logical names ('embed', 'mlp', ...); `seallm_jax.sharding` maps them to mesh
axes and, through `activation_sharding`, makes `constrain` pin activations while a step is traced.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
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

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping[str, Any]] | None] = contextvars.ContextVar(
    "seallm_jax_activation_sharding", default=None
)


def logical_to_spec(axes: LogicalAxes, rules: Mapping[str, Any]) -> PartitionSpec:
    """Map logical names to mesh axes; a mesh axis is used at most once (later uses are dropped)."""
    used: set[str] = set()
    spec = []
    for name in axes:
        mesh_axes = rules.get(name) if name is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return PartitionSpec(*spec)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Mapping[str, Any]) -> Iterator[None]:
    """While tracing inside this context, `constrain` pins activations to the mesh by `rules`."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh_specs(*axes: LogicalAxes) -> tuple[Mesh, tuple[PartitionSpec, ...]] | None:
    """Inside `activation_sharding`: its mesh and the specs of `axes` (for `shard_map` around a
    kernel XLA cannot partition itself); None outside (one device)."""
    active = _ACTIVE.get()
    if active is None:
        return None
    mesh, rules = active
    return mesh, tuple(logical_to_spec(a, rules) for a in axes)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """Sharding constraint by logical axes; a no-op outside `activation_sharding` (one device)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))
