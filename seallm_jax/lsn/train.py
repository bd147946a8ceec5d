"""LSN training from Python: train a language's neurons for N steps and get the model back, and measure
each language's held-out perplexity before and after.

`train_neurons` builds the run config from `seallm_jax.train.base_config` and runs the one training
engine (`seallm_jax.train.train`) with the masked optimizer; it is `seallm-jax train --config.lsn...`
without a config file. Training knows nothing of LSN: only this module imports both.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from seallm_jax.errors import ConfigError, UserError
from seallm_jax.lsn.neurons import FFN_MATRICES, NeuronSet

if TYPE_CHECKING:  # imported for real inside the functions: `import seallm_jax.lsn` stays light
    from seallm_jax.tokenizer.vocabulary import VocabularySubset
    from seallm_jax.model.qwen2 import Qwen2ForCausalLM
    from transformers import PreTrainedTokenizerBase

    Tokenizer = str | os.PathLike | PreTrainedTokenizerBase | VocabularySubset

DEFAULT_LEARNING_RATE = 2e-3  # the demo's LSN rate: few parameters train, so a higher rate than full fine-tuning
DEFAULT_BATCH_SIZE = 16
DEFAULT_SEQ_LEN = 128


@dataclasses.dataclass
class NeuronTraining:
    """What `train_neurons` returns: the trained model, its loss per step, and where the run lives.

    `workdir` is the training workdir (resumable, `convert orbax-to-hf` exports it), or None when
    `train_neurons` ran in a temporary directory that is gone now.
    """

    model: Qwen2ForCausalLM
    losses: dict[int, float]  # step -> training loss
    languages: list[str]
    trained_neurons: int  # neurons of the union of `languages`, over all layers
    trained_parameter_fraction: float | None  # of the model's parameters (None when the set does not know it)
    workdir: str | None
    config: ml_collections.ConfigDict  # the full training config that ran

    def loss_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses) as arrays, in step order (for plotting)."""
        steps = np.asarray(sorted(self.losses), np.int64)
        return steps, np.asarray([self.losses[int(step)] for step in steps], np.float64)


def _languages(languages: str | Sequence[str]) -> list[str]:
    if isinstance(languages, str):
        languages = [code.strip() for code in languages.split(",")]
    codes = [code for code in languages if code]
    if not codes:
        raise ConfigError("train_neurons: name at least one language whose neurons train (e.g. languages='th')")
    return list(dict.fromkeys(codes))


def _set_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"train_neurons: override {key!r}: the training config has no section {part!r} "
                              f"(sections: {sorted(config.keys())})")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"train_neurons: override {key!r}: no such field (known in this section: {sorted(node.keys())})")
    try:
        node[leaf] = value
    except TypeError as error:
        raise ConfigError(f"train_neurons: override {key}={value!r}: {error}") from None


def neuron_training_config(*, init_from: str, neurons: str, languages: Sequence[str], steps: int,
                           tokenizer: str = "", learning_rate: float = DEFAULT_LEARNING_RATE,
                           batch_size: int = DEFAULT_BATCH_SIZE, seq_len: int = DEFAULT_SEQ_LEN,
                           warmup_steps: int = 5, matrices: Sequence[str] = FFN_MATRICES,
                           mesh: Mapping[str, int] | None = None,
                           overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The training config of an LSN run on the shipped corpus: `base_config()` with the model,
    neurons, languages and schedule filled in (`overrides`: {'section.field': value}, applied last).
    Run it with `train(config, workdir, optimizer_wrapper=seallm_jax.lsn.optim.WRAPPER)`."""
    from seallm_jax.train.config import base_config

    config = base_config()
    config.model.init_from = init_from
    config.data.update(source="corpus", languages=list(languages), tokenizer=tokenizer, weighting="uniform")
    config.train.update(steps=steps, global_batch_size=batch_size, seq_len=seq_len, log_every=max(1, min(10, steps)),
                        eval_every=0, progress_bar=True)
    config.optimizer.update(learning_rate=float(learning_rate), warmup_steps=min(warmup_steps, max(steps - 1, 0)),
                            weight_decay=0.0)
    config.checkpoint.update(every=0, keep=1)
    config.lsn.update(neurons=neurons, languages=list(languages), matrices=list(matrices))
    config.mesh.update(dict(mesh or {"data": -1, "fsdp": 1, "tensor": 1}))
    config.distributed.mode = "none"
    for key, value in (overrides or {}).items():
        _set_override(config, key, value)
    return config


def _save_tokenizer(tokenizer: Tokenizer, directory: str) -> str:
    from seallm_jax.tokenizer import VocabularySubset, save_tokenizer

    if not isinstance(tokenizer, VocabularySubset) and not hasattr(tokenizer, "save_pretrained"):
        raise UserError(f"train_neurons: tokenizer must be a directory, a transformers tokenizer or a "
                        f"VocabularySubset, got {type(tokenizer).__name__}")
    save_tokenizer(tokenizer, directory)
    return directory


def _check_vocabulary(tokenizer_dir: str, vocab_size: int) -> None:
    """A tokenizer whose ids do not fit the model's embedding would train on clamped garbage."""
    from seallm_jax.tokenizer import load_tokenizer

    size = len(load_tokenizer(tokenizer_dir or None))
    if size > vocab_size:
        where = f"the tokenizer in {tokenizer_dir}" if tokenizer_dir else "the built-in Qwen2 tokenizer"
        raise ConfigError(f"train_neurons: {where} has {size:,} tokens but the model's vocabulary is {vocab_size:,}: "
                          "pass the tokenizer the model was trained with (tokenizer=...)")


def train_neurons(model: Qwen2ForCausalLM | str | os.PathLike, neurons: NeuronSet | str | os.PathLike,
                  languages: str | Sequence[str], *, steps: int, tokenizer: Tokenizer | None = None, workdir: str | os.PathLike | None = None,
                  learning_rate: float = DEFAULT_LEARNING_RATE, batch_size: int = DEFAULT_BATCH_SIZE,
                  seq_len: int = DEFAULT_SEQ_LEN, warmup_steps: int = 5, matrices: Sequence[str] = FFN_MATRICES,
                  mesh: Mapping[str, int] | None = None, overrides: Mapping[str, Any] | None = None) -> NeuronTraining:
    """Train only `languages`' neurons of `model` for `steps` steps on their shipped-corpus text; returns
    the trained model (a new object; `model` is untouched) with its losses.

    model: a `Qwen2ForCausalLM`, or a model directory (Hugging Face, Orbax, training workdir).
    neurons: a `NeuronSet` (e.g. from `select_lape`) or its JSON file.
    tokenizer: a directory, a `transformers` tokenizer or a `VocabularySubset`; None = the model
      directory's own tokenizer files, else the built-in Qwen2 tokenizer.
    workdir: the training workdir (kept; rerunning with the same one resumes). None: a temporary
      directory, removed once the trained model is loaded.
    mesh: `{'data', 'fsdp', 'tensor'}` sizes (-1 = the remaining devices); default all devices on 'data'.
    overrides: any other training field, `{'optimizer.b2': 0.99, 'model.remat': 'full'}`.

    Every parameter outside the selected neurons stays bit-identical (the masked optimizer);
    bad input is a `UserError` (`ConfigError`, `UnknownLanguageError`, ...) raised before training starts.
    """
    from seallm_jax import hf
    from seallm_jax.data.corpus import check_languages, shipped_languages
    from seallm_jax.paths import require_model_dir
    from seallm_jax.lsn.optim import WRAPPER
    from seallm_jax.model.qwen2 import Qwen2ForCausalLM
    from seallm_jax.tokenizer import has_tokenizer_files
    from seallm_jax.train.config import check_run_inputs
    from seallm_jax.train.loop import train

    codes = _languages(languages)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"train_neurons: steps must be a positive integer, got {steps!r}")
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ConfigError(f"train_neurons: learning_rate must be positive, got {learning_rate!r}")
    if isinstance(model, Qwen2ForCausalLM):
        model_config = model.config
    elif isinstance(model, (str, os.PathLike)):
        from seallm_jax.model.config import Qwen2Config

        model = require_model_dir(model)
        model_config = Qwen2Config.from_hf(model)
    else:
        raise UserError(f"train_neurons: model must be a Qwen2ForCausalLM or a model directory, "
                        f"got {type(model).__name__}")
    neuron_set = neurons if isinstance(neurons, NeuronSet) else NeuronSet.load(neurons)
    check_languages(codes, sorted(neuron_set.languages), where="the neuron set")
    check_languages(codes, shipped_languages(), where="the shipped corpus")
    neuron_set.check_compatible(model_config.num_hidden_layers, model_config.intermediate_size)
    trained = int(neuron_set.mask(codes).sum())
    if trained == 0:
        raise ConfigError(f"train_neurons: the neuron set has no neurons for {', '.join(codes)}: nothing would "
                          "train (select more neurons, e.g. a larger LAPE top_rate)")

    temporary = workdir is None
    root = tempfile.mkdtemp(prefix="seallm_lsn_") if temporary else os.path.abspath(os.fspath(workdir))
    try:
        os.makedirs(root, exist_ok=True)
        inputs = os.path.join(root, "inputs")  # what the run reads: the model, neurons and tokenizer as files
        os.makedirs(inputs, exist_ok=True)
        if isinstance(model, Qwen2ForCausalLM):
            init_from = os.path.join(inputs, "model")
            if not os.path.isdir(init_from):  # a resumed run keeps the model it started from
                hf.save_pretrained(model, init_from)
        else:
            init_from = os.path.abspath(model)
        neurons_path = os.path.join(inputs, "neurons.json")
        neuron_set.save(neurons_path)
        if tokenizer is None:
            tokenizer_dir = init_from if has_tokenizer_files(init_from) else ""
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer_dir = os.fspath(tokenizer)
        else:
            tokenizer_dir = _save_tokenizer(tokenizer, os.path.join(inputs, "tokenizer"))
        _check_vocabulary(tokenizer_dir, model_config.vocab_size)
        config = neuron_training_config(init_from=init_from, neurons=neurons_path, languages=codes, steps=int(steps),
                                        tokenizer=tokenizer_dir, learning_rate=learning_rate, batch_size=batch_size,
                                        seq_len=seq_len, warmup_steps=warmup_steps, matrices=matrices, mesh=mesh,
                                        overrides=overrides)
        run_dir = os.path.join(root, "train")
        check_run_inputs(config, run_dir, WRAPPER)
        result = train(config, run_dir, optimizer_wrapper=WRAPPER)
        trained_model = hf.load_model(run_dir)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return NeuronTraining(model=trained_model, losses=dict(result["losses"]), languages=codes, trained_neurons=trained,
                          trained_parameter_fraction=(neuron_set.parameter_fraction(codes)
                                                      if neuron_set.num_parameters else None),
                          workdir=None if temporary else run_dir, config=config)


def heldout_perplexity(model: Qwen2ForCausalLM, languages: Sequence[str], *, tokenizer: Tokenizer, split: str = "validation",
                       max_tokens: int | None = 8192, seq_len: int = DEFAULT_SEQ_LEN,
                       batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """Perplexity of `model` on each language's shipped-corpus `split` (held out from training by
    default), over at most `max_tokens` target tokens per language (whole batches)."""
    from seallm_jax.train.evaluate import Evaluator
    from seallm_jax.lsn.inputs import batches_by_language, take_tokens

    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"heldout_perplexity: max_tokens must be positive (or None for all), got {max_tokens!r}")
    evaluator = Evaluator(model)
    streams = batches_by_language(list(languages), tokenizer=tokenizer, split=split, seq_len=seq_len,
                                  batch_size=batch_size)
    return {lang: float(np.exp(evaluator.loss(list(take_tokens(streams[lang], max_tokens)))[0])) for lang in languages}
