"""LSN statistics: `NeuronStats` (additive per-language counts per FFN neuron) and the jitted pass computing them.

One forward per batch without the LM head; every layer's FFN is probed inside the layer scan (LAPE and PLND).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from seallm_jax import sharding
from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError, require_file
from seallm_jax.files import atomic_file

STATS_FORMAT_VERSION = 1


@dataclasses.dataclass
class NeuronStats:
    """Statistics of FFN neurons over the tokens of each language.

    Arrays have a leading language axis in the order of `languages`:
      active_count   int64   [K, L, I]  tokens with silu(gate) > 0 (LAPE)
      importance_sum float64 [K, L, I]  sum over tokens of |h_j| * ||W_down[j, :]|| (PLND)
      topk_count     int64   [K, L, I]  documents whose top-`top_k` neurons (per layer) include j (PLND)
      token_count    int64   [K]        real (non-padding) tokens seen
      document_count int64   [K]        documents (segments) seen
    """

    languages: list[str]
    top_k: int
    active_count: np.ndarray
    importance_sum: np.ndarray
    topk_count: np.ndarray
    token_count: np.ndarray
    document_count: np.ndarray
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = list(self.languages)
        self.active_count = np.asarray(self.active_count, dtype=np.int64)
        self.importance_sum = np.asarray(self.importance_sum, dtype=np.float64)
        self.topk_count = np.asarray(self.topk_count, dtype=np.int64)
        self.token_count = np.asarray(self.token_count, dtype=np.int64).reshape(-1)
        self.document_count = np.asarray(self.document_count, dtype=np.int64).reshape(-1)
        num_languages = len(self.languages)
        if len(set(self.languages)) != num_languages:
            raise DataFormatError(f"NeuronStats: duplicate languages in {self.languages}")
        if self.active_count.ndim != 3 or self.active_count.shape[0] != num_languages:
            raise ValueError(
                f"NeuronStats: active_count must be [languages={num_languages}, layers, intermediate], "
                f"got {self.active_count.shape}"
            )
        for name in ("importance_sum", "topk_count"):
            if getattr(self, name).shape != self.active_count.shape:
                raise ValueError(
                    f"NeuronStats: {name} has shape {getattr(self, name).shape}, expected {self.active_count.shape}"
                )
        for name in ("token_count", "document_count"):
            if getattr(self, name).shape != (num_languages,):
                raise ValueError(f"NeuronStats: {name} must have one entry per language ({num_languages})")

    @property
    def has_plnd(self) -> bool:
        """Whether the PLND arrays were computed (statistics of a LAPE-only pass have them zero)."""
        return bool(self.metadata.get("plnd", True))

    @property
    def num_layers(self) -> int:
        return int(self.active_count.shape[1])

    @property
    def intermediate_size(self) -> int:
        return int(self.active_count.shape[2])

    @classmethod
    def zeros(cls, languages: Sequence[str], num_layers: int, intermediate_size: int, top_k: int,
              metadata: dict | None = None) -> "NeuronStats":
        shape = (len(languages), num_layers, intermediate_size)
        return cls(
            languages=list(languages), top_k=top_k,
            active_count=np.zeros(shape, np.int64), importance_sum=np.zeros(shape, np.float64),
            topk_count=np.zeros(shape, np.int64),
            token_count=np.zeros(len(languages), np.int64), document_count=np.zeros(len(languages), np.int64),
            metadata=dict(metadata or {}),
        )

    def index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise KeyError(f"statistics have no language {language!r}; they have {self.languages}") from None

    def select_languages(self, languages: Iterable[str]) -> "NeuronStats":
        """The statistics of `languages` only, in that order."""
        rows = [self.index(lang) for lang in languages]
        return NeuronStats(
            languages=[self.languages[r] for r in rows], top_k=self.top_k,
            active_count=self.active_count[rows], importance_sum=self.importance_sum[rows],
            topk_count=self.topk_count[rows], token_count=self.token_count[rows],
            document_count=self.document_count[rows], metadata=dict(self.metadata),
        )

    def merge(self, other: "NeuronStats") -> "NeuronStats":
        """Sum of two statistics (languages in either; shared languages are added). Counts merge exactly."""
        if (self.num_layers, self.intermediate_size) != (other.num_layers, other.intermediate_size):
            raise DataFormatError(
                f"cannot merge statistics of a {self.num_layers}x{self.intermediate_size} FFN with "
                f"{other.num_layers}x{other.intermediate_size}"
            )
        if self.top_k != other.top_k:
            raise DataFormatError(f"cannot merge statistics with PLND top_k {self.top_k} and {other.top_k}")
        for key in ("model", "hidden_size", "num_parameters"):
            mine, theirs = self.metadata.get(key), other.metadata.get(key)
            if key != "model" and mine is not None and theirs is not None and mine != theirs:
                raise DataFormatError(f"cannot merge statistics of different models ({key}: {mine} vs {theirs})")
        languages = self.languages + [lang for lang in other.languages if lang not in self.languages]
        merged = NeuronStats.zeros(languages, self.num_layers, self.intermediate_size, self.top_k,
                                   metadata={**other.metadata, **self.metadata})
        for source in (self, other):
            rows = [languages.index(lang) for lang in source.languages]
            merged.active_count[rows] += source.active_count
            merged.importance_sum[rows] += source.importance_sum
            merged.topk_count[rows] += source.topk_count
            merged.token_count[rows] += source.token_count
            merged.document_count[rows] += source.document_count
        merged.metadata["token_count"] = dict(zip(languages, merged.token_count.tolist()))
        merged.metadata["plnd"] = self.has_plnd and other.has_plnd
        return merged

    # ---- file format: one .npz, metadata as a JSON string (no pickle) ---------------------------------
    def save(self, path: str | os.PathLike) -> None:
        metadata = dict(self.metadata)
        metadata.update(
            format_version=STATS_FORMAT_VERSION, languages=self.languages, top_k=self.top_k,
            num_layers=self.num_layers, intermediate_size=self.intermediate_size,
            token_count=dict(zip(self.languages, self.token_count.tolist())),
            document_count=dict(zip(self.languages, self.document_count.tolist())),
        )
        # np.savez appends .npz to names without it; write to the exact path the user gave.
        with atomic_file(path) as staging, open(staging, "wb") as f:
            np.savez(
                f, active_count=self.active_count, importance_sum=self.importance_sum,
                topk_count=self.topk_count, token_count=self.token_count, document_count=self.document_count,
                metadata_json=np.asarray(json.dumps(metadata)),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronStats":
        require_file(path, "statistics file")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            reason = "written by something else" if "pickled" in str(error) else str(error)
            raise DataFormatError(f"{path}: not a neuron-statistics .npz file ({reason}); "
                                  "write one with `seallm-jax lsn stats`") from None
        required = ("active_count", "importance_sum", "topk_count", "token_count", "document_count", "metadata_json")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise DataFormatError(f"{path}: neuron statistics file lacks {missing}")
        metadata = json.loads(str(arrays["metadata_json"]))
        return cls(
            languages=metadata["languages"], top_k=int(metadata["top_k"]),
            active_count=arrays["active_count"], importance_sum=arrays["importance_sum"],
            topk_count=arrays["topk_count"], token_count=arrays["token_count"],
            document_count=arrays["document_count"], metadata=metadata,
        )

    def activation_probability(self) -> np.ndarray:
        """LAPE's p: `[L, I, K]` share of each language's tokens on which the neuron fires (silu(gate) > 0)."""
        if np.any(self.token_count <= 0):
            empty = [lang for lang, n in zip(self.languages, self.token_count) if n <= 0]
            raise UnknownLanguageError(f"statistics have no tokens for language(s) {empty}")
        return np.moveaxis(self.active_count / self.token_count[:, None, None], 0, -1)

    def summary(self) -> str:
        lines = [f"{'lang':>6} {'tokens':>12} {'documents':>10}"]
        for lang, tokens, docs in zip(self.languages, self.token_count, self.document_count):
            lines.append(f"{lang:>6} {tokens:>12,} {docs:>10,}")
        return "\n".join(lines)


# ======================================================================================================
# The statistics pass: one jitted forward (no LM head) per batch, probing every layer's FFN in the scan.
# ======================================================================================================

DEFAULT_TOP_K_FRACTION = 0.05  # PLND per-document top-k when not given: 5% of a layer's neurons

Batch = Mapping[str, np.ndarray]


def default_top_k(intermediate_size: int) -> int:
    """PLND's per-document top-k when none is given: 5% of a layer's FFN neurons.

    The reference uses model-specific values (FFN 12,000 of Llama-3-8B's 14,336 neurons per layer, 2,000 for
    Mistral-7B); a smaller k makes "in the top-k of (nearly) every document" stricter. Pass `top_k` to choose.
    """
    return max(1, int(round(intermediate_size * DEFAULT_TOP_K_FRACTION)))


def make_ffn_probe(token_mask: jax.Array, segment_ids: jax.Array, top_k: int, num_segments: int,
                   plnd: bool = True) -> Callable:
    """The per-layer FFN probe: counts, importance sums and per-document top-k membership over real tokens
    (with `plnd=False`, the LAPE counts only).

    token_mask [B, T] (True = real token); segment_ids [B, T] (1..num_segments are documents, 0 = padding).
    """
    valid = token_mask[..., None]  # [B, T, 1]
    # One-hot document membership [B, T, S] for documents 1..S; per-document sums become one matmul.
    documents = (segment_ids[..., None] == jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)) & valid
    document_present = documents.any(axis=1)  # [B, S]
    documents = documents.astype(jnp.float32)

    def probe(gate_activation: jax.Array, hidden_mlp: jax.Array, down_kernel: jax.Array) -> dict[str, jax.Array]:
        intermediate = gate_activation.shape[-1]
        # LAPE: tokens on which silu(gate) > 0 (int32 per batch; the host accumulates in int64).
        active = jnp.sum((gate_activation > 0) & valid, axis=(0, 1), dtype=jnp.int32)
        if not plnd:
            return {"active": active}
        # PLND: zeroing neuron j changes the FFN output by h_j * W_down[j, :], whose norm is |h_j| * ||W_down[j]||.
        down_norm = jnp.sqrt(jnp.sum(jnp.square(down_kernel.astype(jnp.float32)), axis=-1))  # [I]
        importance = jnp.where(valid, jnp.abs(hidden_mlp.astype(jnp.float32)) * down_norm, 0.0)  # [B, T, I]
        importance_sum = jnp.sum(importance, axis=(0, 1))
        document_importance = jnp.einsum(
            "bts,bti->bsi", documents, importance, precision=jax.lax.Precision.HIGHEST
        )  # [B, S, I]
        _, top_ids = jax.lax.top_k(document_importance, top_k)  # [B, S, k]
        weight = jnp.broadcast_to(document_present[..., None], top_ids.shape).astype(jnp.int32)
        topk_count = jnp.zeros((intermediate,), jnp.int32).at[top_ids.reshape(-1)].add(weight.reshape(-1))
        return {"active": active, "importance": importance_sum, "topk": topk_count}

    return probe


def _batch_statistics(graphdef: nnx.GraphDef, params, batch: dict[str, jax.Array], *, top_k: int,
                      num_segments: int, plnd: bool = True) -> dict[str, jax.Array]:
    model = nnx.merge(graphdef, params)
    input_ids, segment_ids = batch["input_ids"], batch["segment_ids"]
    token_mask = segment_ids > 0
    probe = make_ffn_probe(token_mask, segment_ids, top_k, num_segments, plnd)
    _, probes = model.hidden_states(input_ids, positions=batch.get("positions"), segment_ids=segment_ids,
                                    ffn_probe=probe)
    # Documents in this batch: distinct (row, segment) pairs, each segment id counted where it starts.
    starts = token_mask & jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    return {**probes, "tokens": jnp.sum(token_mask, dtype=jnp.int32), "documents": jnp.sum(starts, dtype=jnp.int32)}


# Fewest document slots per row a PLND pass compiles for. Every new slot count is a new program (a compile
# that took 10-25 s on a loaded 2-core CPU, in the middle of the pass); packed rows of 256 tokens of the
# shipped corpus hold 2-16 documents, and 16 slots cost little more than 8 (a [rows, slots, tokens] matmul
# and a top-k per slot, ~1% of a SmolLM2 batch).
MIN_DOCUMENT_SLOTS = 16


def _segments_bucket(max_segment_id: int) -> int:
    """Static number of document slots per row: at least MIN_DOCUMENT_SLOTS, rounded up to a power of two,
    so that few shapes get compiled."""
    return max(MIN_DOCUMENT_SLOTS, 1 << max(0, math.ceil(math.log2(max(1, max_segment_id)))))


class StatisticsPass:
    """Compiled statistics forward for one model; `__call__(batches)` accumulates one language's NeuronStats.

    With a mesh, each batch is split over the mesh's batch axes and the parameters are placed, both as in
    training (`sharding.shard_batch`, `sharding.place_params`); on one device it runs unsharded.
    `plnd=False` computes the LAPE counts only (the PLND arrays stay zero and the statistics say so in
    `metadata["plnd"]`, which `select_plnd` checks): the pass is then the forward and one comparison per neuron.
    """

    def __init__(self, model: nnx.Module, *, top_k: int | None = None, mesh: Mesh | None = None,
                 metadata: dict | None = None, plnd: bool = True):
        config = model.config
        self.num_layers = config.num_hidden_layers
        self.intermediate_size = config.intermediate_size
        self.top_k = default_top_k(self.intermediate_size) if top_k is None else int(top_k)
        if not 1 <= self.top_k <= self.intermediate_size:
            raise ConfigError(f"PLND top_k must be in 1..{self.intermediate_size} (intermediate_size), got {top_k}")
        self.mesh = mesh
        self.plnd = bool(plnd)
        self.graphdef, params = nnx.split(model, nnx.Param)
        params = params.to_pure_dict()
        self.params = sharding.place_params(params, mesh) if mesh is not None else params
        self.batch_divisor = sharding.batch_shard_count(mesh) if mesh is not None else 1
        self.metadata = {
            "hidden_size": config.hidden_size,
            "num_parameters": config.num_parameters(),
            "num_layers": self.num_layers,
            "intermediate_size": self.intermediate_size,
            "model_type": config.model_type,
            **(metadata or {}),
            "plnd": self.plnd,
        }
        self._compiled = jax.jit(_batch_statistics, static_argnums=0,
                                 static_argnames=("top_k", "num_segments", "plnd"))

    def _put(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        if self.mesh is None:
            return {key: jnp.asarray(value) for key, value in arrays.items()}
        # Each process passes its own rows; jax assembles the global batch (works on one process too).
        rows = next(iter(arrays.values())).shape[0] * jax.process_count()
        return sharding.shard_batch(arrays, self.mesh, rows)

    def dispatch(self, batch: Batch, num_segments: int | None = None) -> dict[str, jax.Array]:
        """Start the statistics of one batch (asynchronously) and return the device results.

        `num_segments` (document slots per row, static) must be the same on every process; by default it
        comes from this batch's largest segment id.
        """
        input_ids = np.asarray(batch["input_ids"], np.int32)
        segment_ids = _segment_ids_np(batch)
        if segment_ids.shape != input_ids.shape:
            raise ValueError(f"segment_ids {segment_ids.shape} must match input_ids {input_ids.shape}")
        arrays = {"input_ids": input_ids, "segment_ids": segment_ids}
        if "positions" in batch:  # otherwise they restart in every segment (the model's default)
            arrays["positions"] = np.asarray(batch["positions"], np.int32)
        rows = input_ids.shape[0] * jax.process_count()
        if rows % self.batch_divisor:
            raise ValueError(
                f"a global batch of {rows} rows does not split over the {self.batch_divisor} devices of the "
                f"mesh's batch axes; use a multiple of {self.batch_divisor} rows"
            )
        if num_segments is None:
            num_segments = _segments_bucket(int(segment_ids.max(initial=0)))
        return self._compiled(self.graphdef, self.params, self._put(arrays), top_k=self.top_k,
                              num_segments=num_segments if self.plnd else 1, plnd=self.plnd)

    def __call__(self, batches: Iterable[Batch], language: str, *, max_tokens: int | None = None,
                 progress: bool = False) -> NeuronStats:
        """Accumulate `language`'s statistics over `batches`, stopping after the batch that reaches
        `max_tokens` real tokens (all processes together), or when any process runs out of batches."""
        stats = NeuronStats.zeros([language], self.num_layers, self.intermediate_size, self.top_k,
                                  metadata=self.metadata)
        bar = _progress_bar(progress, language, max_tokens)
        started = time.perf_counter()

        def collect(result: dict[str, jax.Array]) -> None:
            host = jax.device_get(result)  # int32 per batch, summed into int64 / float64 on the host: exact
            stats.active_count[0] += host["active"]
            if self.plnd:
                stats.importance_sum[0] += host["importance"]
                stats.topk_count[0] += host["topk"]
            stats.token_count[0] += int(host["tokens"])
            stats.document_count[0] += int(host["documents"])

        seen, pending = 0, None
        iterator = iter(batches)
        while max_tokens is None or seen < max_tokens:
            batch = next(iterator, None)
            local = np.zeros(3, np.int64)
            if batch is not None:
                segment_ids = _segment_ids_np(batch)
                local[:] = (1, np.count_nonzero(segment_ids), segment_ids.max(initial=0))
            # Every process must run the same programs: agree on whether to go on and on the static shape.
            have_batch, tokens, max_segment = _across_processes(local)
            if have_batch < jax.process_count():
                break
            result = self.dispatch(batch, num_segments=_segments_bucket(int(max_segment)))
            # One batch in flight: read the previous batch's results while this one computes.
            if pending is not None:
                collect(pending)
            pending = result
            seen += int(tokens)
            if bar is not None:
                bar.update(int(tokens))
        if pending is not None:
            collect(pending)
        if bar is not None:
            bar.close()
        stats.metadata = {**stats.metadata, "seconds": {language: time.perf_counter() - started}}
        return stats


def _across_processes(local: np.ndarray) -> np.ndarray:
    """(processes with a batch, total real tokens, max segment id) over all processes."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, 3]
    return np.array([gathered[:, 0].sum(), gathered[:, 1].sum(), gathered[:, 2].max()])


def _segment_ids_np(batch: Batch) -> np.ndarray:
    if "segment_ids" in batch:
        return np.asarray(batch["segment_ids"], np.int32)
    if "attention_mask" in batch:
        return np.asarray(batch["attention_mask"], np.int32)
    return np.ones(np.shape(batch["input_ids"]), np.int32)


def _progress_bar(enabled: bool, language: str, max_tokens: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=max_tokens, desc=f"lsn stats [{language}]", unit="tok", unit_scale=True)


def compute_statistics(model: nnx.Module, batches_by_language: Mapping[str, Iterable[Batch]], *,
                       top_k: int | None = None, mesh: Mesh | None = None, max_tokens: int | None = None,
                       progress: bool = False, metadata: dict | None = None, plnd: bool = True) -> NeuronStats:
    """NeuronStats of every language (one compiled pass reused across languages), merged into one object
    (`plnd=False`: the LAPE counts only, see `StatisticsPass`)."""
    statistics_pass = StatisticsPass(model, top_k=top_k, mesh=mesh, metadata=metadata, plnd=plnd)
    merged: NeuronStats | None = None
    seconds: dict[str, float] = {}
    for language, batches in batches_by_language.items():
        stats = statistics_pass(batches, language, max_tokens=max_tokens, progress=progress)
        seconds.update(stats.metadata.get("seconds", {}))
        merged = stats if merged is None else merged.merge(stats)
    if merged is None:
        raise ConfigError("compute_statistics needs at least one language")
    merged.metadata["seconds"] = seconds
    merged.metadata["languages"] = merged.languages
    merged.metadata["token_count"] = dict(zip(merged.languages, merged.token_count.tolist()))
    return merged
