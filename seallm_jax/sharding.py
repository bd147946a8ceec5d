"""The one sharding vocabulary: the device mesh, the logical-axis rules, the one resolver, and the
placement of parameters, batches and activations on the mesh.

Model code names array dimensions logically — parameters by `model.axes.PARAM_AXES` ('embed', 'mlp',
...), activations by `activation_*` names — and every command and the trainer use this module's
helpers to turn those names into shardings: `logical_to_spec` (the resolver), `param_shardings` /
`place_params` (a model on the mesh), `batch_sharding` / `shard_batch` (batches),
`activation_sharding` (constraints while a step is traced) and `make_mesh` (the mesh itself).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from seallm_jax.defaults import MESH_AXES
from seallm_jax.errors import ConfigError
from seallm_jax.model.axes import resolving_activations
from seallm_jax.trees import path_names


# (logical name, mesh axes) pairs, tried in order for each dimension (largest dimension first). A name
# may appear several times: the first rule whose mesh axes are still free in this array, have more
# than one device and divide the dimension wins. This gives "FSDP on the largest embed/vocab dim":
# the vocab dim of the embedding takes 'tensor' when the mesh has a tensor axis, else 'fsdp'.
# Activations have their own names (as in MaxText): their batch takes the data axes ('fsdp' included),
# so their feature dimensions never take 'fsdp', only 'tensor'.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("vocab", "fsdp"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("layers", None),
    ("norm", None),
    # batches and activations
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

LogicalAxes = tuple[str | None, ...]
Rules = Sequence[tuple[str, Any]]


def _mesh_shape(mesh_config: Mapping[str, int], num_devices: int, what: str) -> tuple[int, ...]:
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    unknown = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
    if len(unknown) > 1:
        raise ConfigError(f"{what}: only one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    fixed = math.prod(size for size in sizes if size != -1)
    if unknown:
        if num_devices % fixed:
            raise ConfigError(f"{what}: {num_devices} devices are not divisible by the fixed axes "
                             f"{dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"{what}: mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, Any] | None = None,
              devices: Sequence[jax.Device] | None = None, *, what: str = "config.mesh") -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh from `config.mesh` (a size of -1 takes the rest).

    Multi-slice (TPU over DCN): `mesh.dcn_data` / `mesh.dcn_fsdp` > 1 lay that many slices along the
    axis, with the ICI sizes above describing one slice; collectives across slices then only run on
    the axis that spans them (data parallelism across slices is the usual choice).
    """
    mesh_config = dict(mesh_config or {"data": 1, "fsdp": -1, "tensor": 1})
    devices = list(devices if devices is not None else jax.devices())
    dcn = tuple(int(mesh_config.get(f"dcn_{axis}", 1)) for axis in MESH_AXES)
    num_slices = math.prod(dcn)
    if num_slices > 1:
        per_slice = _mesh_shape(mesh_config, len(devices) // num_slices, f"{what} (per slice)")
        device_array = mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices=devices)
    else:
        shape = _mesh_shape(mesh_config, len(devices), what)
        try:  # topology-aware order on TPU/GPU; plain order elsewhere
            device_array = mesh_utils.create_device_mesh(shape, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            device_array = np.asarray(devices).reshape(shape)
    # Auto axes: jit's in/out shardings decide the layout and XLA propagates the rest.
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_by_name(rules: Rules) -> dict[str, list[tuple[str, ...]]]:
    """Logical name -> its candidate mesh-axis tuples, in rule order."""
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for name, axes in rules:
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        by_name.setdefault(name, []).append(tuple(axes))
    return by_name


def logical_to_spec(logical_axes: LogicalAxes, shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for one array from its logical axes and the rules.

    Dimensions are visited largest first, so FSDP lands on the biggest shardable dimension; a mesh
    axis is used once per array; axes of size 1 are dropped; a rule that does not divide the
    dimension is skipped (that dimension stays replicated rather than padded).
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match shape {tuple(shape)}")
    by_name = rules_by_name(rules)
    spec: list[Any] = [None] * len(shape)
    used: set[str] = set()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        name = logical_axes[i]
        if name is None:
            continue
        if name not in by_name:
            raise KeyError(f"logical axis {name!r} has no rule in config.sharding.logical_axis_rules "
                           f"(known: {sorted(by_name)}); add ('{name}', None) to replicate it")
        for axes in by_name[name]:
            axes = tuple(axis for axis in axes if mesh.shape.get(axis, 1) > 1)
            if not axes or used.intersection(axes):
                continue
            if shape[i] % math.prod(mesh.shape[axis] for axis in axes):
                continue
            spec[i] = axes[0] if len(axes) == 1 else axes
            used.update(axes)
            break
    return PartitionSpec(*spec)


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(abstract_tree: Any, logical_axes_tree: Any, mesh: Mesh,
                   rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding for every array of a tree, given the matching tree of logical-axis tuples."""
    def one(axes: LogicalAxes, leaf: Any) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, mesh, rules))
    return jax.tree.map(one, logical_axes_tree, abstract_tree, is_leaf=_is_axes_leaf)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def follow_param_shardings(abstract_tree: Any, abstract_params: Any, params_shardings: Any,
                           mesh: Mesh) -> Any:
    """Shardings for a tree that embeds copies of the params tree (optimizer state: mu, nu, ...).

    A leaf whose key path ends with a parameter's path and has that parameter's shape gets the
    parameter's sharding; everything else (counts, scalars) is replicated.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    for (path, param), sharding in zip(flat_params, jax.tree.leaves(params_shardings)):
        by_path[path_names(path)] = (tuple(param.shape), sharding)

    def one(path: Any, leaf: Any) -> NamedSharding:
        names = path_names(path)
        for start in range(len(names)):
            match = by_path.get(names[start:])
            if match is not None and match[0] == tuple(leaf.shape):
                return match[1]
        return replicated(mesh)
    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def init_sharded(init_fn: Callable[[], Any], shardings_fn: Callable[[Any], Any]) -> Any:
    """Run `init_fn` under jit straight into its sharding: no full copy ever sits on one device.

    `shardings_fn(abstract_tree)` gives the NamedSharding tree for the `jax.eval_shape` result.
    """
    abstract = jax.eval_shape(init_fn)
    return jax.jit(init_fn, out_shardings=shardings_fn(abstract))()


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their target sharding (what Orbax restores into)."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract_tree, shardings)


def place_host_arrays(host_tree: Any, shardings: Any) -> Any:
    """Put host (numpy) arrays onto the mesh, each device taking only its own slice.

    Used for imported Hugging Face weights: every process holds (or lazily reads) the full host
    array, and each device receives only its shard, so no device ever holds a full copy.
    """
    def one(array: Any, sharding: NamedSharding) -> jax.Array:
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
    return jax.tree.map(one, host_tree, shardings)


def param_shardings(params: Any, mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding of every parameter (a nested dict, `nnx.State` or its abstract shapes) by its
    logical axes: FSDP on the largest `embed`/`vocab` dimension, per-head/per-neuron dims over 'tensor'."""
    from seallm_jax.model.axes import param_logical_axes

    return tree_shardings(params, param_logical_axes(params), mesh, rules)


def params_sharding_fn(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Callable[[Any], Any]:
    """`fn(abstract_params) -> NamedSharding tree`, the form `hf.load_model(sharding=...)` takes: a
    loaded model lands on the mesh exactly as training places it."""
    return lambda abstract_params: param_shardings(abstract_params, mesh, rules)


def place_params(params: Any, mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Any:
    """Parameters (host or device arrays) onto the mesh by `param_shardings`, each device taking only
    its slice; arrays already spread over several processes are resharded in place."""
    shardings = param_shardings(params, mesh, rules)

    def one(array: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(array, jax.Array) and array.sharding == sharding:
            return array
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            return jax.device_put(array, sharding)
        return place_host_arrays(np.asarray(array), sharding)
    return jax.tree.map(one, params, shardings)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> Iterator[None]:
    """While a step is traced inside this context, the model's `constrain` calls pin activations
    (named `activation_*`) to `mesh` by `rules`, through the same resolver as the parameters."""
    def resolve(axes: LogicalAxes, shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))
    with resolving_activations(mesh, resolve):
        yield


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES, ndim: int = 2,
                   batch_size: int | None = None) -> NamedSharding:
    """Sharding of a `[batch, length, ...]` array: batch over the 'batch' rule's mesh axes."""
    shape = (batch_size if batch_size is not None else batch_shard_count(mesh, rules),) + (1,) * (ndim - 1)
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), shape, mesh, rules)
    return NamedSharding(mesh, spec)


def batch_shard_count(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> int:
    """How many ways the batch dimension is split (the product of the 'batch' rule's mesh axes)."""
    axes = rules_by_name(rules).get("batch", [()])[0]
    return math.prod(mesh.shape.get(axis, 1) for axis in axes)


def process_batch_rows(mesh: Mesh, global_batch_size: int,
                       rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> tuple[int, int]:
    """The contiguous rows [start, stop) of the global batch that this process must load."""
    divisor = batch_shard_count(mesh, rules)
    if global_batch_size % divisor:
        raise ConfigError(f"global batch size {global_batch_size} is not divisible by the {divisor} "
                         f"devices the batch is sharded over (mesh {dict(mesh.shape)})")
    sharding = batch_sharding(mesh, rules, batch_size=global_batch_size)
    rows = sorted({(index[0].start or 0, index[0].stop or global_batch_size)
                   for index in sharding.addressable_devices_indices_map((global_batch_size, 1)).values()})
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ConfigError(f"this process's batch rows {rows} are not contiguous; reorder the mesh "
                         "so that each process's devices are neighbours along the batch axes")
    return start, stop


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int,
                rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays sharded over the batch axes."""
    out = {}
    for name, array in local_batch.items():
        array = np.asarray(array)
        sharding = batch_sharding(mesh, rules, ndim=array.ndim, batch_size=global_batch_size)
        out[name] = jax.make_array_from_process_local_data(
            sharding, array, (global_batch_size,) + array.shape[1:])
    return out
