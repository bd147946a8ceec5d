"""Training config: the defaults every recipe starts from, config-file loading and `--config.KEY=VALUE` overrides.

Config files (configs/*.py) define `get_config(arg=None)`; `path.py:arg` passes `arg` (e.g. `gpu`/`tpu`).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from seallm_jax.errors import ConfigError, MissingDataError
from seallm_jax.model.config import Qwen2Config
from seallm_jax.sharding import DEFAULT_LOGICAL_AXIS_RULES
from seallm_jax.train.loss import DEFAULT_CHUNK_TOKENS


def base_config() -> ml_collections.ConfigDict:
    """Every field a training run reads, with its default; recipes override what they need."""
    c = ml_collections.ConfigDict()
    # Every Qwen2Config field with its default (Qwen2-0.5B; see seallm_jax/model/config.py), plus
    # init_from: a model to start from ('' = random init): a Hugging Face directory, an Orbax checkpoint
    # (`convert hf-to-orbax`) or a training workdir (its latest step); with init_from the architecture
    # comes from its config.json and only the computation fields (dtype, remat, attention_impl, ...) apply.
    c.model = ml_collections.ConfigDict(dict(init_from="", **{
        field.name: field.default for field in dataclasses.fields(Qwen2Config) if field.name != "model_type"}))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.sharding = ml_collections.ConfigDict(dict(
        logical_axis_rules=[list(rule) if not isinstance(rule[1], tuple) else [rule[0], list(rule[1])]
                            for rule in DEFAULT_LOGICAL_AXIS_RULES]))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, global_batch_size=8, seq_len=512, micro_batches=1, seed=0, z_loss_weight=0.0,
        log_every=10, eval_every=200, eval_batches=4, peak_flops=0.0, progress_bar=True,
        loss_chunk_tokens=DEFAULT_CHUNK_TOKENS))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-4, warmup_steps=100, schedule="cosine", end_lr_ratio=0.1,
        decay_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0))
    # on_damage: a saved step that no longer restores (truncated file, missing metadata) is moved
    # aside to STEP.damaged and the newest step that restores is resumed ('fallback'), or the run
    # stops with an error naming it ('error').
    c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True, on_damage="fallback"))
    # source: 'synthetic' (random documents of arithmetic token sequences, learnable; tests and
    # benchmarks), 'tokens' (token stores written by `seallm-jax data tokenize`, read by the
    # deterministic loader seallm_jax.data.loader; docs/data.md), 'corpus' (the shipped SEA corpus, or
    # `files` of one's own text, tokenized once into a cached store and read by the same loader) or 'sft'
    # (ChatML conversations, loss on assistant tokens, tokenized once into a cached conversation store).
    # tokens: path = one store directory or several, comma-separated; languages ([] = every language of
    # the stores; corpus: en, zh, id, vi, th); weights = explicit mixture weights as LANG=WEIGHT items
    # (th=0.7,vi=0.3; they override `weighting`); mixture_block_rows = rows per mixture block (0 = 1024,
    # rounded up to whole global batches): every block holds each language's share to within one row;
    # allow_data_changes = resume a checkpoint although its stores, tokenizer or mixture changed.
    # tokens, corpus and sft: tokenizer ('' = the model's (init_from's) own or the bundled Qwen2 tokenizer;
    # a directory may hold a vocabulary subset), weighting of languages ('proportional' | 'temperature' |
    # 'uniform', see seallm_jax.data.mixture) with `temperature` T for p ∝ n^(1/T).
    # corpus: files = JSON-lines / text / Parquet files, as LANG=PATH items or plain paths when
    # `languages` names one language.
    # sft only: files = JSON-lines conversation files ([] = translation conversations built from the
    # shipped parallel corpus); min_source_chars = keep translation pairs whose source has at least
    # this many characters (0 = all; a higher-quality subset); max_per_language = a fixed subset of at
    # most this many conversations per language (0 = all); truncation of a conversation longer than
    # a row: 'turns' | 'tokens' | 'drop' (docs/data.md).
    c.data = ml_collections.ConfigDict(dict(source="synthetic", languages=[], path="", weights=[],
                                            mixture_block_rows=0, allow_data_changes=False,
                                            tokenizer="", weighting="proportional", temperature=3.0, seed=0,
                                            files=[], min_source_chars=0, max_per_language=0,
                                            truncation="turns"))
    # LSN training: neurons = a neuron-set JSON; set => seallm_jax.lsn.optim.masked(optimizer, config)
    # wraps the optimizer (languages: [] = all in the file; matrices: which FFN matrices train;
    # lean: optimizer state on the gathered neurons only).
    c.lsn = ml_collections.ConfigDict(dict(neurons="", languages=[], matrices=["gate_proj", "up_proj", "down_proj"],
                                           lean=False))
    # LoRA: rank > 0 => seallm_jax.lora.wrap(optimizer, config): rank-`rank` adapters of the `targets`
    # kernels, scale alpha / rank (alpha 0: 2 x rank); the parameters hold the merged weights.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"]))
    # Multi-process: 'auto' (SLURM / TPU pod / JAX_* env vars), 'none' (single process).
    # stall_timeout: seconds a process of a multi-process run may go, once its first step is done,
    # without finishing a step, an evaluation or a checkpoint before it stops with one error line and
    # exit code 75: a process that died or hangs would otherwise leave the others waiting in a
    # collective forever. 0 disables.
    c.distributed = ml_collections.ConfigDict(dict(mode="auto", initialization_timeout=300, stall_timeout=300))
    return c


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load `path.py[:arg]` and apply `--config.a.b=value` overrides (types follow the defaults)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise MissingDataError(f"config file {path} does not exist")
    module_name = f"_seallm_config_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"config file {path}, line {error.lineno}: {error.msg}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    return config


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply absl-style overrides: `--config.train.steps=10` or `--config.train.steps 10`."""
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--config."):
            raise ConfigError(f"unrecognized argument {item!r}: overrides look like --config.KEY=VALUE")
        key, eq, value = item[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(items):
                raise ConfigError(f"override {item} has no value")
            value = items[i + 1]
            i += 1
        i += 1
        _set(config, key, value)


def _set(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigError(f"--config.{key}: config has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"--config.{key}: no such field (known in this section: {sorted(node.keys())})")
    current = node[leaf]
    value = _parse_value(text)
    if isinstance(current, str) and not isinstance(value, str):
        value = text  # '--config.model.init_from=123' stays a string
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, (list, tuple)) and isinstance(value, str):
        value = [v for v in value.split(",") if v]  # --config.data.languages=th,vi
    try:
        node[leaf] = value
    except TypeError as error:
        raise ConfigError(f"--config.{key}={text}: {error}") from None


def check_run_inputs(config: ml_collections.ConfigDict, workdir: str, optimizer_wrapper: Any = None) -> None:
    """The paths and names a run reads, checked before anything heavy starts (a `UserError` names
    the field): the workdir, `model.init_from`, `data.tokenizer`, `data.files`, `data.languages`, and
    what `optimizer_wrapper.check` checks (LSN: `lsn.neurons` and `lsn.languages`)."""
    from seallm_jax.data.corpus import check_language
    from seallm_jax.errors import require_dir
    from seallm_jax.paths import require_model_dir
    from seallm_jax.files import check_output_dir

    check_output_dir(workdir, "--workdir")
    from seallm_jax.checkpoint import ON_DAMAGE

    if config.checkpoint.on_damage not in ON_DAMAGE:
        raise ConfigError(f"config.checkpoint.on_damage={config.checkpoint.on_damage!r}: expected one of "
                          f"{', '.join(ON_DAMAGE)}")
    if config.model.get("init_from"):
        require_model_dir(config.model.init_from, remote_ok=True)
    data = config.data
    if data.source not in ("synthetic", "tokens", "corpus", "sft"):
        raise ConfigError(f"config.data.source={data.source!r}: expected 'synthetic', 'tokens', 'corpus' or 'sft'")
    if data.source != "synthetic":
        if data.get("tokenizer"):
            require_dir(data.tokenizer, "config.data.tokenizer")
        for language in data.get("languages") or []:
            check_language(language, "config.data.languages")
        from seallm_jax.train.data_source import check_data_inputs

        check_data_inputs(config)
    check = getattr(optimizer_wrapper, "check", None)
    if check is not None:
        check(config)
