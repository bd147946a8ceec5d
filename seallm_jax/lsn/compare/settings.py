"""What an `lsn compare` run depends on: `CompareSettings` (saved in compare.json as `config`) and its defaults.

Checked when made, so that a bad flag fails before any statistics, training or scoring starts.
"""
from __future__ import annotations

import dataclasses
import json
import os

from seallm_jax.errors import ConfigError

DEFAULT_ARMS = ("lape", "plnd", "random", "full", "lora")  # every arm; arms.ARM_BUILDERS builds each
# Learning-rate grids per arm kind (neuron arms share one); the first look used 2e-3 for LSN, 5e-5 full.
DEFAULT_LEARNING_RATES = {"neurons": (1e-3, 3e-3, 1e-2), "full": (1e-5, 3e-5, 1e-4), "lora": (3e-4, 1e-3, 3e-3)}
DEFAULT_TARGET_GAINS = (10.0, 20.0, 30.0)  # target perplexity reductions (%) the arms are compared at
EVAL_SPLITS = ("test", "other_domain")
CONFIDENCE = 0.95  # of every interval over seeds (Student's t)
RANDOM_NEURON_SEED = 1000  # seed s of the random arm draws its neurons with RANDOM_NEURON_SEED + s
# CompareSettings fields that the results cached in OUT depend on (`CompareSettings.cache_key`).
CACHE_FIELDS = ("model", "tokenizer", "steps", "batch_size", "seq_len", "eval_every", "learning_rates", "warmup_steps",
                "top_rate", "neurons", "matrices", "lean", "lora_targets", "lora_larger_factor", "stats_tokens",
                "eval_tokens", "sweep_eval_tokens", "eval_seq_len", "eval_batch_size", "seed", "sweep_targets")


@dataclasses.dataclass
class CompareSettings:
    """Everything a comparison depends on (saved in compare.json as `config`)."""

    model: str
    out: str
    targets: tuple[str, ...]
    languages: tuple[str, ...]  # statistics and evaluation languages (the targets among them)
    arms: tuple[str, ...] = DEFAULT_ARMS
    tokenizer: str | None = None
    steps: int = 30
    batch_size: int = 4
    seq_len: int = 256
    # Every arm runs once per seed: seed s trains on data order `seed + s` (and the random arm on its s-th
    # neuron draw); the intervals are over these runs.
    seeds: int = 3
    eval_every: int = 5  # score every arm every this many steps along its training (0: at the end only)
    target_gains: tuple[float, ...] = DEFAULT_TARGET_GAINS
    learning_rates: dict[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    warmup_steps: int = 3
    top_rate: float = 0.01
    neurons: str | None = None  # a given LAPE neuron-set JSON instead of selecting one
    matrices: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    lean: bool = False  # neuron arms keep optimizer state on their neurons only (config.lsn.lean)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_larger_factor: int = 4
    stats_tokens: int = 20_000
    eval_tokens: int = 4_096  # per language and split
    sweep_eval_tokens: int = 2_048  # target's validation split, per sweep run
    eval_seq_len: int = 128
    eval_batch_size: int = 8
    seed: int = 0
    keep_checkpoints: bool = False  # False: a run's checkpoints are deleted once its curve has been scored
    # Targets whose arms sweep the learning rate (None: all, each choosing its own); the others reuse the rate
    # the same arm chose on the first swept target. Seeds after the first reuse the rate of the first.
    sweep_targets: tuple[str, ...] | None = None
    progress: bool = True
    # Train and score nothing: report the arms whose runs and curves OUT already holds, name the others. Safe
    # beside a process still training into OUT (every file is replaced whole; the later write wins).
    report_only: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("lsn compare: give at least one target language")
        missing = [t for t in self.targets if t not in self.languages]
        if missing:
            raise ConfigError(f"lsn compare: target(s) {missing} must be among --languages "
                              f"({','.join(self.languages)})")
        if len(self.languages) < 2:
            raise ConfigError("lsn compare: LAPE needs the target and at least one other language")
        if self.sweep_targets is not None and (not self.sweep_targets or set(self.sweep_targets) - set(self.targets)):
            raise ConfigError(f"lsn compare: sweep targets {list(self.sweep_targets)} must be a non-empty subset "
                              f"of the targets ({','.join(self.targets)})")
        unknown = [a for a in self.arms if a not in DEFAULT_ARMS]  # every arm there is (arms.ARM_BUILDERS)
        if unknown:
            raise ConfigError(f"lsn compare: unknown arm(s) {unknown}; known: {sorted(DEFAULT_ARMS)}")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("seq_len", self.seq_len),
                            ("seeds", self.seeds), ("eval_tokens", self.eval_tokens)):
            if int(value) < 1:
                raise ConfigError(f"lsn compare: {name}={value} must be >= 1")
        if int(self.lora_larger_factor) < 0:
            raise ConfigError(f"lsn compare: lora_larger_factor={self.lora_larger_factor} must be >= 0")
        if not 0 <= int(self.eval_every) <= int(self.steps):
            raise ConfigError(f"lsn compare: eval_every={self.eval_every} must be between 0 (end only) and "
                              f"the steps ({self.steps})")
        if not self.target_gains or any(not 0.0 < float(g) < 100.0 for g in self.target_gains):
            raise ConfigError(f"lsn compare: target gains {list(self.target_gains)} must be percentages in (0, 100)")
        for kind, grid in self.learning_rates.items():
            if not grid or any(float(lr) <= 0 for lr in grid):
                raise ConfigError(f"lsn compare: learning rates for {kind} must be positive, got {grid}")

    def cache_key(self) -> dict:
        """The settings the cached statistics, runs and scores in OUT were made with. A rerun may add targets,
        arms, seeds or languages, or change what is only reported (`target_gains`, `report_only`) or kept
        (`keep_checkpoints`, `progress`); any other change would mix results made two ways."""
        fields = {name: getattr(self, name) for name in CACHE_FIELDS}
        for name in ("model", "tokenizer", "neurons"):  # paths compare as absolute (a tokenizer may be a name)
            if fields[name] and os.path.exists(fields[name]):
                fields[name] = os.path.abspath(fields[name])
        fields["learning_rates"] = {kind: [float(lr) for lr in grid]
                                    for kind, grid in sorted(self.learning_rates.items())}
        return json.loads(json.dumps(fields))  # tuples as lists, as read back from JSON

    def curve_steps(self) -> list[int]:
        """The steps each run is scored at: every `eval_every` steps and the last."""
        every = int(self.eval_every)
        steps = list(range(every, int(self.steps), every)) if every else []
        return steps + [int(self.steps)]
