"""Masked optimizers for LSN training: only the selected neurons' parameters change, bit-for-bit elsewhere.

`lsn_masked(inner, neuron_set, ...)` wraps any optax optimizer; `lean=True` keeps optimizer state (and, with
`NeuronSlices` in the train step, gradients) only for the selected neurons' gathered kernel slices.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seallm_jax.errors import ConfigError, UnknownLanguageError
from seallm_jax.lsn.neurons import FFN_MATRICES, NeuronSet
from seallm_jax.train.optim import OptimizerWrapper
from seallm_jax.trees import Path, get_path, has_path, path_names, set_path

Params = Mapping[str, Any]  # nested dict of arrays (nnx.split(...)[1].to_pure_dict())

# Added to a frozen parameter, -0.0 leaves every float bit-identical (x + -0.0 == x, including x = -0.0,
# whereas -0.0 + +0.0 = +0.0); frozen elements therefore receive -0.0 as their update.
FROZEN_UPDATE = -0.0


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Trainable units of one stacked parameter: `layer_ids[l]` indexes axis `axis` of layer l's slice.

    The parameter is `[layers, ...]` (the scan axis first); e.g. gate_proj/kernel `[L, E, I]` has its
    neurons on axis 2 (columns), down_proj/kernel `[L, I, E]` on axis 1 (rows).
    """

    path: Path
    axis: int
    size: int  # units along `axis`
    layer_ids: tuple[np.ndarray, ...]

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def num_units(self) -> int:
        return int(sum(ids.size for ids in self.layer_ids))

    @property
    def max_units(self) -> int:
        """Units of the fullest layer: the width of the gathered slice (lean mode pads the others)."""
        return max((ids.size for ids in self.layer_ids), default=0)

    def element_mask(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean mask broadcastable to `shape`: True on the selected units (all other axes size 1)."""
        mask_shape = [1] * len(shape)
        mask_shape[0], mask_shape[self.axis] = shape[0], shape[self.axis]
        mask = np.zeros((shape[0], shape[self.axis]), bool)
        for layer, ids in enumerate(self.layer_ids):
            mask[layer, ids] = True
        return mask.reshape(mask_shape)

    def padded_index(self) -> np.ndarray:
        """`[L, max_units]` int32 unit ids; padding uses `size` (out of range: gathers 0, scatters nothing)."""
        index = np.full((len(self.layer_ids), max(self.max_units, 1)), self.size, np.int32)
        for layer, ids in enumerate(self.layer_ids):
            index[layer, : ids.size] = ids
        return index


def _ffn_path(matrix: str) -> Path:
    return ("model", "layers", "mlp", matrix, "kernel")


def trainable_groups(neuron_set: NeuronSet, languages: Sequence[str] | None = None,
                     matrices: Sequence[str] = FFN_MATRICES, params: Params | None = None) -> list[UnitGroup]:
    """The parameter slices LSN training updates, from the union of `languages`' neurons (all when None).

    matrices: which FFN kernels train ('gate_proj', 'up_proj', 'down_proj'; PLND's reference uses up + down).
    params: when given, the groups are checked against the parameter tree.
    """
    unknown = [m for m in matrices if m not in FFN_MATRICES]
    if unknown:
        raise ConfigError(f"unknown FFN matrices {unknown}; expected a subset of {FFN_MATRICES}")
    union = neuron_set.union(languages)
    layer_ids = tuple(union.get(layer, np.zeros(0, np.int64)) for layer in range(neuron_set.num_layers))
    groups = [
        UnitGroup(_ffn_path(m), axis=1 if m == "down_proj" else 2, size=neuron_set.intermediate_size,
                  layer_ids=layer_ids)
        for m in matrices
    ]
    if params is not None:
        check_groups(groups, params)
    return groups


def check_groups(groups: Sequence[UnitGroup], params: Params) -> None:
    """A `ConfigError` naming the parameter when a group does not fit the parameter tree."""
    for group in groups:
        if not has_path(params, group.path):
            raise ConfigError(f"LSN training: the model has no parameter {group.name}")
        shape = get_path(params, group.path).shape
        if shape[0] != len(group.layer_ids) or shape[group.axis] != group.size:
            raise ConfigError(
                f"LSN training: {group.name} has shape {tuple(shape)}, but the neuron set is for "
                f"{len(group.layer_ids)} layers x {group.size} units on axis {group.axis}: select neurons "
                "from statistics of this model (`seallm-jax lsn stats`, then `lsn select`)"
            )


def _trainable_leaf_tree(params: Params, groups: Sequence[UnitGroup]) -> Any:
    paths = {group.path for group in groups}
    return jax.tree_util.tree_map_with_path(lambda kp, _: path_names(kp) in paths, params)


# ---- gathered slices (lean mode) --------------------------------------------------------------------------
class NeuronSlices:
    """Gather the selected units' slices of a parameter-shaped tree into a small tree, and scatter them back.

    `gather(tree)` -> nested dict with only the groups' paths, each `[L, max_units, ...]` (the unit axis
    moved to position 1; padding rows are 0). `scatter(tree, slices)` writes the slices back (padding is
    dropped). A gradient-lean train step differentiates w.r.t. the slices:

        slices = NeuronSlices(groups)
        trainable = slices.gather(params)
        grads = jax.grad(lambda t: loss(slices.scatter(params, t), batch))(trainable)
        updates, opt_state = inner.update(grads, opt_state, trainable)
        params = slices.scatter(params, optax.apply_updates(trainable, updates))
    """

    def __init__(self, groups: Sequence[UnitGroup]):
        self.groups = list(groups)
        self._index = {group.path: group.padded_index() for group in self.groups}

    def _where(self, group: UnitGroup, leaf: jax.Array) -> tuple:
        """Index of the units in `leaf`: (layers [L, 1], full slices up to `axis`, units [L, U]). NumPy's rule
        for advanced indices split by a slice puts their [L, U] first: the slices come out [L, U, ...] with
        no transpose of the (large) parameter."""
        rows = jnp.arange(leaf.shape[0])[:, None]
        return (rows, *(slice(None),) * (group.axis - 1), self._index[group.path])

    def _gather_one(self, group: UnitGroup, leaf: jax.Array) -> jax.Array:
        leaf = jnp.asarray(leaf)
        return leaf.at[self._where(group, leaf)].get(mode="fill", fill_value=0)

    def gather(self, tree: Params) -> dict:
        out: dict = {}
        for group in self.groups:
            set_path(out, group.path, self._gather_one(group, get_path(tree, group.path)))
        return out

    def _scatter_one(self, group: UnitGroup, leaf: jax.Array, values: jax.Array) -> jax.Array:
        leaf = jnp.asarray(leaf)
        return leaf.at[self._where(group, leaf)].set(values.astype(leaf.dtype), mode="drop")

    def scatter(self, tree: Params, slices: Params) -> Any:
        """A copy of `tree` with the groups' slices replaced by `slices` (other leaves are the same arrays)."""
        by_path = {group.path: group for group in self.groups}

        def one(key_path, leaf):
            path = path_names(key_path)
            group = by_path.get(path)
            return leaf if group is None else self._scatter_one(group, leaf, get_path(slices, path))

        return jax.tree_util.tree_map_with_path(one, tree)

    def scatter_updates(self, template: Params, slice_updates: Params) -> Any:
        """A full update tree: `slice_updates` on the selected units, -0.0 (bit-exact no-op) everywhere else.
        A leaf holding units has the wider of its own and its slice updates' dtypes (float32 updates of
        bfloat16 parameters stay float32: see `LeanMasterState`)."""
        by_path = {group.path: group for group in self.groups}

        def one(key_path, leaf):
            path = path_names(key_path)
            group = by_path.get(path)
            if group is None:
                return jnp.full(leaf.shape, FROZEN_UPDATE, leaf.dtype)
            values = get_path(slice_updates, path)
            frozen = jnp.full(leaf.shape, FROZEN_UPDATE, jnp.promote_types(leaf.dtype, values.dtype))
            return self._scatter_one(group, frozen, values)

        return jax.tree_util.tree_map_with_path(one, template)


# ---- the masked optimizer ----------------------------------------------------------------------------------
class LeanMasterState(NamedTuple):
    """Lean optimizer state when the parameters are stored narrower than float32 (e.g.
    `config.model.param_dtype='bfloat16'`, half the memory of the frozen weights): `inner`'s state and
    float32 master copies of the trained slices. `inner` updates the masters; the stored weights get each
    master rounded to their dtype, so small updates accumulate in float32 instead of rounding away, and
    every frozen element is untouched. With float32 parameters the state is `inner`'s alone."""

    inner: Any
    master: Any


def _masked(inner: optax.GradientTransformation, groups: Sequence[UnitGroup], *,
            lean: bool = False) -> optax.GradientTransformation:
    """`inner` changing only the groups' units (see `lsn_masked`)."""
    groups = list(groups)
    by_path = {group.path: group for group in groups}

    if lean:
        slices = NeuronSlices(groups)

        def init_lean(params):
            check_groups(groups, params)
            gathered = slices.gather(params)
            if all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(gathered)):
                return inner.init(gathered)
            master = jax.tree.map(lambda leaf: leaf.astype(jnp.float32), gathered)
            return LeanMasterState(inner=inner.init(master), master=master)

        def update_slices(slice_grads, state, slice_params, extra):
            """(updates of the stored slices, new state). With float32 masters, `inner` steps the masters and
            the updates (float32) take each stored slice to its master rounded to the stored dtype."""
            if not isinstance(state, LeanMasterState):
                return inner.update(slice_grads, state, slice_params, **extra)
            if slice_params is None:
                raise ValueError("the lean LSN optimizer with float32 masters needs `params` in update()")
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), slice_grads)
            master_updates, inner_state = inner.update(grads, state.inner, state.master, **extra)
            master = optax.apply_updates(state.master, master_updates)
            # p + (round(m) - p) == round(m) exactly in float32 (both are values of p's dtype), so
            # optax.apply_updates then stores the master's rounding, and nothing else.
            updates = jax.tree.map(lambda m, p: m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32),
                                   master, slice_params)
            return updates, LeanMasterState(inner=inner_state, master=master)

        def update_lean(updates, state, params=None, *, trainable_only: bool = False, **extra):
            if trainable_only:  # a step that differentiates the slices (`NeuronView`): already gathered
                return update_slices(updates, state, params, extra)
            gathered_params = None if params is None else slices.gather(params)
            slice_updates, state = update_slices(slices.gather(updates), state, gathered_params, extra)
            return slices.scatter_updates(updates, slice_updates), state

        return optax.GradientTransformationExtraArgs(init_lean, update_lean)

    def masked_inner(params):
        return optax.masked(inner, _trainable_leaf_tree(params, groups))

    def keep_units(updates, frozen_value: float | None):
        """Selected units keep their value; others get `frozen_value` (None: leave whole frozen leaves as they
        are and zero the rest of trainable leaves, which is what gradients need)."""
        def one(key_path, leaf):
            group = by_path.get(path_names(key_path))
            if group is None:
                return leaf if frozen_value is None else jnp.full(leaf.shape, frozen_value, leaf.dtype)
            outside = 0.0 if frozen_value is None else frozen_value
            return jnp.where(group.element_mask(leaf.shape), leaf, jnp.asarray(outside, leaf.dtype))

        return jax.tree_util.tree_map_with_path(one, updates)

    def init_dense(params):
        check_groups(groups, params)
        return masked_inner(params).init(params)

    def update_dense(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("the LSN-masked optimizer needs `params` in update() (to know which leaves train)")
        gradients = keep_units(updates, frozen_value=None)  # zero outside the units; frozen leaves are skipped by masked
        new_updates, state = masked_inner(params).update(gradients, state, params, **extra)
        return keep_units(new_updates, frozen_value=FROZEN_UPDATE), state

    return optax.GradientTransformationExtraArgs(init_dense, update_dense)


def lsn_masked(inner: optax.GradientTransformation, neuron_set: NeuronSet, *,
               languages: Sequence[str] | None = None, matrices: Sequence[str] = FFN_MATRICES,
               lean: bool = False) -> optax.GradientTransformation:
    """`inner` restricted to the neurons of `languages` in `matrices` (see `trainable_groups`): only those
    units change; everything else gets a -0.0 (no-op) update, so it stays bit-identical.

    Dense mode: `inner` runs under `optax.masked` on the parameters that hold selected units (frozen
    parameters carry no state); gradients outside the units are zeroed first (so clipping by global norm
    sees only trainable elements) and `inner`'s updates outside the units (weight decay!) are discarded.
    Lean mode: `inner` runs on the gathered `[L, max_units, ...]` slices only, so its state is proportional
    to the number of selected units; updates are scattered back. Both give the same parameters for
    element-wise optimizers (SGD, Adam(W), Lion, ...), to float32 rounding.
    """
    groups = trainable_groups(neuron_set, languages, matrices)
    if not any(group.num_units for group in groups):
        raise UnknownLanguageError(f"the neuron set selects no neurons for languages {languages or sorted(neuron_set.languages)}")
    return _masked(inner, groups, lean=lean)


def trainable_count(params: Params, groups: Sequence[UnitGroup]) -> tuple[int, int]:
    """(trainable parameter elements, all parameter elements) — for the 'trainable fraction' log line."""
    total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    trainable = 0
    for group in groups:
        shape = get_path(params, group.path).shape
        per_unit = math.prod(shape) // (shape[0] * shape[group.axis])
        trainable += group.num_units * per_unit
    return trainable, total


def _comma_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value or ())


def _settings(config: Any) -> dict[str, Any]:
    """config.lsn as masked-optimizer arguments: neurons (neuron-set JSON), languages (list or comma
    string; empty = all in the file), matrices (default gate/up/down), lean."""
    lsn = config.lsn
    return dict(neuron_set=NeuronSet.load(lsn.neurons), languages=_comma_list(lsn.get("languages")) or None,
                matrices=tuple(_comma_list(lsn.get("matrices")) or FFN_MATRICES), lean=bool(lsn.get("lean", False)))


def check_config(config: Any) -> None:
    """`config.lsn` checked before a run starts: the neuron file exists, has the asked languages and fits
    the model (`model.init_from`'s config.json, or `config.model`); weights stored in a 16-bit dtype train
    lean only (dense training has no float32 copy of the neurons, so most small updates would round away)."""
    from seallm_jax.data.corpus import check_languages
    from seallm_jax.errors import require_file
    from seallm_jax.model.config import read_config_json

    lsn = config.lsn
    param_dtype = str(config.model.get("param_dtype", "float32"))
    if param_dtype != "float32" and not bool(lsn.get("lean", False)):
        raise ConfigError(f"config.model.param_dtype={param_dtype} trains LSN neurons only with config.lsn.lean=true "
                          "(float32 masters of the trained neurons); dense LSN training would round most updates "
                          f"away in {param_dtype} weights (or set param_dtype=float32)")
    require_file(lsn.neurons, "config.lsn.neurons")
    neuron_set = NeuronSet.load(lsn.neurons)
    check_languages(_comma_list(lsn.get("languages")), sorted(neuron_set.languages), where=f"neuron file {lsn.neurons}")
    model = read_config_json(config.model.init_from) if config.model.get("init_from") else config.model
    neuron_set.check_compatible(int(model["num_hidden_layers"]), int(model["intermediate_size"]))


def wrap(optimizer: optax.GradientTransformation, config: Any) -> optax.GradientTransformation:
    """`optimizer` restricted per `config.lsn` (see `_settings`)."""
    return lsn_masked(optimizer, **_settings(config))


class NeuronView:
    """The engine's `TrainableView` for lean LSN training: the train step differentiates only the selected
    neurons' slices, so gradients and optimizer state are proportional to them and the backward pass
    computes no weight gradient of a frozen parameter.

    The slices (`NeuronSlices.gather`: `[L, max_units, E]` per trained FFN matrix) enter the model through
    its `ffn_neuron_slices` hook, which adds `x @ (s - stop_gradient(s))` (zero) at the neurons' positions:
    the forward pass is unchanged, and the gradient reaches the slices alone. After the update they are
    scattered back into the full weights (padding units are dropped), so checkpoints and exports are the
    same as dense training's and every other element stays bit-identical.
    """

    def __init__(self, groups: Sequence[UnitGroup]):
        self.groups = list(groups)
        self.slices = NeuronSlices(self.groups)
        matrices = [group.path[-2] for group in self.groups]
        if any(group.path[:-2] != ("model", "layers", "mlp") for group in self.groups) or len(set(matrices)) != len(matrices):
            raise ConfigError(f"lean LSN training differentiates FFN neurons only, got {[g.name for g in self.groups]}")
        indices = {group.padded_index().tobytes() for group in self.groups}
        if len(indices) != 1:
            raise ConfigError("lean LSN training needs the same neurons in every trained FFN matrix")
        self.index = self.groups[0].padded_index()  # [L, max_units]; padding = intermediate_size
        self.matrices = tuple(matrices)

    def gather(self, params: Params) -> dict:
        return self.slices.gather(params)

    def scatter(self, params: Params, trainable: Params) -> Any:
        return self.slices.scatter(params, trainable)

    def model_kwargs(self, trainable: Params) -> dict[str, Any]:
        layers = get_path(trainable, ("model", "layers", "mlp"))
        slices = {matrix: layers[matrix]["kernel"] for matrix in self.matrices}
        return {"ffn_neuron_slices": {"index": jnp.asarray(self.index), **slices}}


def trainable_view(config: Any) -> NeuronView | None:
    """With `config.lsn.lean`, the view that makes the train step differentiate only the neurons."""
    if not bool(config.lsn.get("lean", False)):
        return None
    settings = _settings(config)
    return NeuronView(trainable_groups(settings["neuron_set"], settings["languages"], settings["matrices"]))


def trainable_summary(config: Any, params: Params) -> str:
    """The line the training loop prints at the start of LSN training: what trains, and how much of the model."""
    settings = _settings(config)
    groups = trainable_groups(settings["neuron_set"], settings["languages"], settings["matrices"], params=params)
    trainable, total = trainable_count(params, groups)
    languages = ",".join(settings["languages"] or settings["neuron_set"].languages)
    return (f"LSN: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.4f}%): "
            f"the neurons of {languages} in {'/'.join(settings['matrices'])}; everything else stays bit-identical")


# How LSN joins the training engine: `train(config, workdir, optimizer_wrapper=WRAPPER)` trains only the
# neurons `config.lsn` names and prints `trainable_summary` at the start.
WRAPPER = OptimizerWrapper(wrap=wrap, describe=trainable_summary, check=check_config, trainable=trainable_view)
