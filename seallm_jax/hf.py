"""Hugging Face import/export: safetensors + config.json in, the same out, and Orbax conversion.

One table (`WEIGHT_NAMES`) maps Hugging Face tensor names to seallm-jax parameter paths, used in
both directions. Weights are read from safetensors only (never pickle / `torch.load`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from seallm_jax import files, paths
from seallm_jax.errors import CheckpointError, DTypeLike
from seallm_jax.files import atomic_directory
from seallm_jax.paths import require_model_dir
from seallm_jax.model.config import Qwen2Config, read_config_json
from seallm_jax.model.qwen2 import Qwen2ForCausalLM
from seallm_jax.sharding import place_host_arrays
from seallm_jax.trees import get_path, has_path, set_path
from seallm_jax.tokenizer.vocabulary import FILE_NAME as VOCABULARY_SUBSET_FILE

Params = dict[str, Any]  # nested dict of arrays, as `nnx.state(model, nnx.Param).to_pure_dict()`

# (Hugging Face name, seallm-jax path, transposed). "{i}" marks a per-layer tensor, stacked on the
# leading 'layers' axis here. HF Linear weights are [out, in]; our kernels are [in, out].
WEIGHT_NAMES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("model.embed_tokens.weight", ("model", "embed_tokens", "embedding"), False),
    ("model.layers.{i}.input_layernorm.weight", ("model", "layers", "input_layernorm", "scale"), False),
    ("model.layers.{i}.self_attn.q_proj.weight", ("model", "layers", "self_attn", "q_proj", "kernel"), True),
    ("model.layers.{i}.self_attn.q_proj.bias", ("model", "layers", "self_attn", "q_proj", "bias"), False),
    ("model.layers.{i}.self_attn.k_proj.weight", ("model", "layers", "self_attn", "k_proj", "kernel"), True),
    ("model.layers.{i}.self_attn.k_proj.bias", ("model", "layers", "self_attn", "k_proj", "bias"), False),
    ("model.layers.{i}.self_attn.v_proj.weight", ("model", "layers", "self_attn", "v_proj", "kernel"), True),
    ("model.layers.{i}.self_attn.v_proj.bias", ("model", "layers", "self_attn", "v_proj", "bias"), False),
    ("model.layers.{i}.self_attn.o_proj.weight", ("model", "layers", "self_attn", "o_proj", "kernel"), True),
    ("model.layers.{i}.post_attention_layernorm.weight", ("model", "layers", "post_attention_layernorm", "scale"), False),
    ("model.layers.{i}.mlp.gate_proj.weight", ("model", "layers", "mlp", "gate_proj", "kernel"), True),
    ("model.layers.{i}.mlp.up_proj.weight", ("model", "layers", "mlp", "up_proj", "kernel"), True),
    ("model.layers.{i}.mlp.down_proj.weight", ("model", "layers", "mlp", "down_proj", "kernel"), True),
    ("model.norm.weight", ("model", "norm", "scale"), False),
    ("lm_head.weight", ("lm_head", "kernel"), True),
)
# Buffers some checkpoints carry that are recomputed here.
IGNORED_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "qwen.tiktoken", VOCABULARY_SUBSET_FILE,
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def abstract_model(config: Qwen2Config) -> Qwen2ForCausalLM:
    """The model with shape-only parameters (nothing allocated)."""
    return nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))


# ---- reading --------------------------------------------------------------------------------------


class _SafetensorsReader:
    """Tensors by name across a single file or a sharded (indexed) checkpoint, read lazily."""

    def __init__(self, directory: str):
        index_path = os.path.join(directory, SAFETENSORS_INDEX)
        single_path = os.path.join(directory, "model.safetensors")
        self._handles: dict[str, Any] = {}
        if os.path.exists(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
                raise CheckpointError(f"{index_path} is not a safetensors index (a JSON object with a "
                                      f"'weight_map'): {type(error).__name__}: {error}") from None
            self.file_of = {name: os.path.join(directory, file) for name, file in weight_map.items()}
        elif os.path.exists(single_path):
            self.file_of = {name: single_path for name in self._open(single_path).keys()}
        else:
            found = sorted(os.listdir(directory)) if os.path.isdir(directory) else "no such directory"
            pickled = [name for name in found if name.endswith((".bin", ".pt", ".pth", ".ckpt"))] if isinstance(found, list) else []
            hint = (f"; {', '.join(pickled)} is a pickle, which seallm-jax never loads (it can run code): convert it "
                    "to safetensors first, e.g. with transformers' save_pretrained(safe_serialization=True)"
                    if pickled else "; seallm-jax reads safetensors only")
            raise CheckpointError(f"no model.safetensors or {SAFETENSORS_INDEX} in {directory}{hint}")

    def _open(self, path: str) -> Any:
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(path, framework="numpy")
            except Exception as error:  # safetensors raises its own error type for damaged files
                raise CheckpointError(f"{path} is not a readable safetensors file ({error}); it may be truncated "
                                      "or damaged: copy or export it again") from None
        return self._handles[path]

    def names(self) -> set[str]:
        return set(self.file_of)

    def get(self, name: str) -> np.ndarray:
        path = self.file_of[name]
        if not os.path.exists(path):
            raise CheckpointError(f"safetensors shard {path} (holding {name}, listed in {SAFETENSORS_INDEX}) is missing")
        try:
            return self._open(path).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(f"tensor {name} in {path} cannot be read ({error}); the file may be damaged") from None


def _tensor_names(template: str, num_layers: int) -> list[str]:
    return [template.format(i=i) for i in range(num_layers)] if "{i}" in template else [template]


def read_params(directory: str, config: Qwen2Config, abstract_params: Params) -> Params:
    """Numpy parameters from a HF directory, checked against the abstract parameter tree."""
    reader = _SafetensorsReader(directory)
    unused = {name for name in reader.names() if not IGNORED_TENSORS.fullmatch(name)}
    params: Params = {}
    for template, path, transposed in WEIGHT_NAMES:
        names = _tensor_names(template, config.num_hidden_layers)
        if not has_path(abstract_params, path):  # e.g. biases of a bias-free model, lm_head when tied
            if path == ("lm_head", "kernel") and "lm_head.weight" in unused:
                unused.discard("lm_head.weight")  # tied: some checkpoints store the copy anyway
            continue
        missing = [name for name in names if name not in unused]
        if missing:
            raise CheckpointError(f"tensor {missing[0]} is missing from {directory} ({len(missing)} missing in all)")
        expected = get_path(abstract_params, path)
        tensors = []
        for name in names:
            tensor = reader.get(name)
            tensor = tensor.T if transposed else tensor
            if tensor.shape != expected.shape[-tensor.ndim:] or len(names) > 1 and tensor.ndim + 1 != len(expected.shape):
                hf_shape = tuple(reversed(expected.shape[-tensor.ndim:])) if transposed else expected.shape[len(names) > 1:]
                raise CheckpointError(
                    f"tensor {name} has shape {tuple(reader.get(name).shape)}, expected {tuple(hf_shape)} "
                    f"for config {os.path.join(directory, 'config.json')}"
                )
            tensors.append(tensor.astype(expected.dtype))
            unused.discard(name)
        set_path(params, path, np.stack(tensors) if "{i}" in template else tensors[0])
    if unused:
        raise CheckpointError(f"unexpected tensors in {directory}: {sorted(unused)[:5]}{' ...' if len(unused) > 5 else ''}")
    return params


def place_params(params: Params, sharding: Params | Callable[[Params], Params] | None) -> Params:
    """Numpy params onto devices: default device, or each array straight into its sharding
    (only the local shards are copied, so this works on every process of a multi-host job)."""
    if sharding is None:
        return jax.tree.map(jax.numpy.asarray, params)
    if callable(sharding):
        sharding = sharding(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    return place_host_arrays(params, sharding)


def model_from_params(config: Qwen2Config, params: Params) -> Qwen2ForCausalLM:
    graphdef, _ = nnx.split(abstract_model(config), nnx.Param)
    return nnx.merge(graphdef, params)


def load_pretrained(
    path: str | os.PathLike, *, dtype: DTypeLike = "float32", param_dtype: DTypeLike = "float32",
    sharding: Params | Callable[[Params], Params] | None = None, **config_overrides: Any,
) -> Qwen2ForCausalLM:
    """A Qwen2ForCausalLM from a local Hugging Face directory (config.json + safetensors).

    `dtype` is the compute dtype, `param_dtype` the stored one, each a name ("bfloat16"), a JAX
    scalar type (`jnp.bfloat16`) or an `np.dtype`. `sharding` is a tree of shardings
    matching the parameters, or a function from the abstract parameter tree to one.
    """
    path = os.fspath(path)
    config = Qwen2Config.from_hf(path, dtype=dtype, param_dtype=param_dtype, **config_overrides)
    _, abstract = nnx.split(abstract_model(config), nnx.Param)
    params = read_params(path, config, abstract.to_pure_dict())
    return model_from_params(config, place_params(params, sharding))


def load_model(
    path: str | os.PathLike, *, dtype: DTypeLike = "float32",
    sharding: Params | Callable[[Params], Params] | None = None,
) -> Qwen2ForCausalLM:
    """A model from any directory seallm-jax writes or reads: a Hugging Face directory
    (safetensors), an Orbax checkpoint (`convert hf-to-orbax`) or a training workdir (latest step)."""
    path = require_model_dir(path)
    if any(name.endswith(".safetensors") or name == SAFETENSORS_INDEX for name in os.listdir(path)):
        return load_pretrained(path, dtype=dtype, sharding=sharding)
    config, params = load_orbax(path)
    params = place_params(jax.device_get(params), sharding)
    return model_from_params(config.replace(dtype=dtype), params)


# ---- writing --------------------------------------------------------------------------------------


def hf_tensors(params: Params, config: Qwen2Config) -> Iterator[tuple[str, np.ndarray]]:
    """(Hugging Face name, numpy tensor) for every parameter, via the same table as loading."""
    for template, path, transposed in WEIGHT_NAMES:
        if not has_path(params, path):
            continue
        array = np.asarray(jax.device_get(get_path(params, path)))
        names = _tensor_names(template, config.num_hidden_layers)
        for layer, name in enumerate(names):
            tensor = array[layer] if "{i}" in template else array
            yield name, np.ascontiguousarray(tensor.T if transposed else tensor)


def copy_tokenizer_files(source: str | os.PathLike | None, destination: str) -> list[str]:
    """Copy the tokenizer files found in `source` (if any) to `destination`; returns their names.
    Either side may be in object storage (seallm_jax.paths)."""
    if source is None or not paths.isdir(source):
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if paths.exists(paths.join(source, name)):
            paths.copy_file(paths.join(source, name), paths.join(destination, name))
            copied.append(name)
    return copied


def save_pretrained(
    model: Qwen2ForCausalLM | tuple[Qwen2Config, Params], path: str | os.PathLike, *,
    tokenizer: Any = None, dtype: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Write a Hugging Face directory that `transformers` loads as Qwen2ForCausalLM (or Llama).

    `tokenizer`: a directory to copy tokenizer files from, or an object with `save_pretrained`.
    Above `max_shard_bytes` the weights are sharded with a `model.safetensors.index.json`.
    The directory appears whole or not at all.
    """
    if isinstance(model, tuple):
        config, params = model
    else:
        config, params = model.config, nnx.state(model, nnx.Param).to_pure_dict()
    path = os.fspath(path)
    with atomic_directory(path) as staging:
        shards: list[dict[str, np.ndarray]] = [{}]
        shard_bytes = 0
        for name, tensor in hf_tensors(params, config):
            if dtype is not None:
                tensor = tensor.astype(dtype)
            if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
                shards.append({})
                shard_bytes = 0
            shards[-1][name] = tensor
            shard_bytes += tensor.nbytes
        if len(shards) == 1:
            save_file(shards[0], os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for number, shard in enumerate(shards, start=1):
                file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(staging, file), metadata={"format": "pt"})
                weight_map.update({name: file for name in shard})
                total += sum(t.nbytes for t in shard.values())
            with open(os.path.join(staging, SAFETENSORS_INDEX), "w", encoding="utf-8") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        hf_config = config.to_hf()
        if dtype is not None:
            hf_config["torch_dtype"] = str(np.dtype(dtype))
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        if config.pad_token_id is not None:
            generation["pad_token_id"] = config.pad_token_id
        with open(os.path.join(staging, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(generation, f, indent=2)
        if hasattr(tokenizer, "save_pretrained"):
            from seallm_jax.tokenizer import save_tokenizer  # transformers only when there is one to save

            save_tokenizer(tokenizer, staging)
        else:
            copy_tokenizer_files(tokenizer, staging)
    return path


# ---- Orbax ---------------------------------------------------------------------------------------

ORBAX_PARAMS = "params"  # CKPT_DIR/params: the Orbax parameter tree; CKPT_DIR/config.json: the HF config


def _orbax_checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_orbax(config: Qwen2Config, params: Params, ckpt_dir: str | os.PathLike, *, tokenizer_dir: str | None = None) -> str:
    """An Orbax parameter checkpoint plus the HF config.json (and tokenizer files) beside it; in object
    storage too (written locally, then uploaded with config.json last)."""
    ckpt_dir = paths.resolve(ckpt_dir)
    with atomic_directory(ckpt_dir) as staging:
        checkpointer = _orbax_checkpointer()
        checkpointer.save(os.path.join(staging, ORBAX_PARAMS), params)
        checkpointer.wait_until_finished()
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_hf(), f, indent=2)
        copy_tokenizer_files(tokenizer_dir, staging)
    return ckpt_dir


def load_orbax(ckpt_dir: str | os.PathLike, **config_overrides: Any) -> tuple[Qwen2Config, Params]:
    """(config, params) from a `convert hf-to-orbax` directory or a training workdir (latest step),
    local or in object storage (Orbax reads the arrays from the bucket)."""
    ckpt_dir = paths.resolve(ckpt_dir)
    hf_config = (read_config_json(files.local_copy(ckpt_dir, only=("config.json",))) if paths.is_remote(ckpt_dir)
                 else read_config_json(ckpt_dir))
    stored_dtype = hf_config.get("torch_dtype") or "float32"
    config_overrides.setdefault("param_dtype", stored_dtype)
    config_overrides.setdefault("dtype", stored_dtype)
    config = Qwen2Config.from_hf(hf_config, **config_overrides)
    _, abstract = nnx.split(abstract_model(config), nnx.Param)
    abstract_params = abstract.to_pure_dict()
    if paths.isdir(paths.join(ckpt_dir, ORBAX_PARAMS)):
        params_dir = paths.join(ckpt_dir, ORBAX_PARAMS)
        try:
            params = _orbax_checkpointer().restore(paths.epath(params_dir), abstract_params)
        except (ValueError, KeyError, OSError) as error:  # Orbax/tensorstore on damaged or foreign files
            raise CheckpointError(f"the Orbax checkpoint {params_dir} cannot be restored for the model in "
                                  f"{paths.join(ckpt_dir, 'config.json')}: {type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}") from None
    elif paths.isdir(paths.join(ckpt_dir, "checkpoints")):
        from seallm_jax.checkpoint import load_params  # a training workdir

        params = load_params(ckpt_dir, abstract_params)
    else:
        hint = " (it is a Hugging Face directory: use it as it is, or `convert hf-to-orbax`)" if any(
            name.endswith(".safetensors") for name in paths.listdir(ckpt_dir)) else ""
        raise CheckpointError(f"{ckpt_dir} holds neither an Orbax '{ORBAX_PARAMS}' checkpoint nor a training "
                              f"'checkpoints' folder{hint}")
    return config, params


def convert_hf_to_orbax(hf_dir: str | os.PathLike, ckpt_dir: str | os.PathLike) -> str:
    """HF directory -> Orbax checkpoint directory, bit-exact (parameters kept in their stored dtype)."""
    hf_dir = os.fspath(hf_dir)
    config = Qwen2Config.from_hf(hf_dir)
    stored_dtype = _stored_dtype(hf_dir)
    config = config.replace(param_dtype=stored_dtype, dtype=stored_dtype)
    _, abstract = nnx.split(abstract_model(config), nnx.Param)
    params = read_params(hf_dir, config, abstract.to_pure_dict())
    return save_orbax(config, params, ckpt_dir, tokenizer_dir=hf_dir)


def convert_orbax_to_hf(ckpt_dir: str | os.PathLike, hf_dir: str | os.PathLike) -> str:
    """Orbax checkpoint directory (or a training workdir) -> HF directory, bit-exact."""
    config, params = load_orbax(ckpt_dir)
    return save_pretrained((config, params), hf_dir, tokenizer=os.fspath(ckpt_dir))


def _stored_dtype(hf_dir: str) -> str:
    reader = _SafetensorsReader(hf_dir)
    first = sorted(reader.names())[0]
    return str(reader.get(first).dtype)
