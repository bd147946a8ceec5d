"""What every evaluation task shares: the config, the context (model, tokenizer, scorer, generator,
data directory, languages) and the result record that goes into the results JSON.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from seallm_jax.errors import MissingDataError
from seallm_jax.eval.generation import BatchGenerator, GenerationConfig
from seallm_jax.eval.refusal import RefusalDetectorConfig
from seallm_jax.eval.scoring import LoglikelihoodScorer, ScoringConfig


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Every knob of the harness, with the defaults used by `seallm-jax eval`."""

    scoring: ScoringConfig = ScoringConfig()
    generation: GenerationConfig = GenerationConfig()
    # At most this many examples per language (or language pair) per benchmark; None = all.
    limit: int | None = None
    # The shipped corpus split used by perplexity and corpus translation ("test": held out, parallel);
    # whether a document's first token is scored (given end-of-text as context, as in packed
    # pretraining) rather than skipped.
    corpus_split: str = "test"
    score_first_token: bool = True
    # Multiple choice: shots from the dev file (or, without one, from the head of the test file).
    num_shots: int = 3
    mc_header: str = "The following are multiple choice questions (with answers)."
    # MGSM: appended to each question inside the chat template.
    mgsm_instruction: str = (
        "Solve this problem step by step, then give the final answer as a number on the last line."
    )
    mgsm_max_new_tokens: int = 512
    # Translation: Flores-200 split, directions relative to English, decoding length.
    flores_split: str = "devtest"
    translation_directions: tuple[str, ...] = ("en-x", "x-en")
    translation_max_new_tokens: int = 256
    translation_chat: bool = False
    # Refusal and safety: decoding length and the refusal detector.
    refusal_max_new_tokens: int = 256
    refusal_detector: RefusalDetectorConfig = RefusalDetectorConfig()
    # SeaBench: decoding length of each of the two turns.
    seabench_max_new_tokens: int = 1024


@dataclasses.dataclass
class TaskResult:
    """One benchmark's numbers: per language (or pair) and overall, plus how it was computed."""

    task: str                 # "ppl", "mc", "mgsm", "chrf", "refusal", "safety", "seabench"
    benchmark: str            # which data: "corpus-heldout", "m3exam", "flores200", ...
    primary_metric: str       # the column tables and plots show first
    by_language: dict[str, dict[str, float]]
    overall: dict[str, float] = dataclasses.field(default_factory=dict)
    compile_count: int = 0    # XLA compilations of the scorer/decoder during this benchmark
    seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.benchmark}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaskResult":
        return cls(**data)


@dataclasses.dataclass
class EvalContext:
    """The model and everything a task needs to run; scorer and generator are built on first use."""

    model: nnx.Module
    tokenizer: PreTrainedTokenizerBase
    config: EvalConfig = EvalConfig()
    data_dir: Path | None = None
    languages: list[str] | None = None   # None: every language the data has
    output_dir: Path | None = None       # where generated outputs (SeaBench answers) are written
    model_name: str = "model"
    mesh: Mesh | None = None
    _scorer: LoglikelihoodScorer | None = dataclasses.field(default=None, repr=False)
    _generator: BatchGenerator | None = dataclasses.field(default=None, repr=False)

    @property
    def scorer(self) -> LoglikelihoodScorer:
        if self._scorer is None:
            self._scorer = LoglikelihoodScorer(self.model, self.config.scoring, self.mesh)
        return self._scorer

    @property
    def generator(self) -> BatchGenerator:
        if self._generator is None:
            self._generator = BatchGenerator(self.model, self.tokenizer, self.config.generation, self.mesh)
        return self._generator

    def wants(self, language: str) -> bool:
        return self.languages is None or language in self.languages

    def limited(self, items: list) -> list:
        return items if self.config.limit is None else items[: self.config.limit]

    def data_path(self, *parts: str) -> Path:
        if self.data_dir is None:
            raise MissingDataError(f"this task reads benchmark files: pass --data-dir (expected {'/'.join(parts)} in it)")
        return Path(self.data_dir, *parts)

    def write_responses(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write generated responses as JSON lines (`{name}-{model_name}.jsonl` in output_dir), so that
        an external judge can re-grade them; returns the path."""
        directory = Path(self.output_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}-{self.model_name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Yields a dict that, on exit, holds the compilations and seconds spent inside the block."""
        stats: dict[str, float] = {}
        scorer_before = self._scorer.compile_count if self._scorer is not None else 0
        generator_before = self._generator.compile_count if self._generator is not None else 0
        start = time.perf_counter()
        yield stats
        stats["seconds"] = time.perf_counter() - start
        scorer_after = self._scorer.compile_count if self._scorer is not None else 0
        generator_after = self._generator.compile_count if self._generator is not None else 0
        stats["compile_count"] = (scorer_after - scorer_before) + (generator_after - generator_before)
