"""`seallm-jax lsn compare`: is training only a language's neurons worth it? Every arm from the same start.

For one model and each target language, train *arms* (LAPE neurons, PLND neurons at LAPE's budget, random
neurons with LAPE's count per layer, full fine-tuning, LoRA at LAPE's trainable count and at a larger rank),
each `--seeds` times (seed s: data order s, and the random arm's s-th neuron draw), with the same steps, batch
and schedule; each arm picks its learning rate per target from a sweep on the target's validation split
(seed 0; the other seeds reuse it). Before training, a deactivation check: every language's change when the
target's LAPE neurons are zeroed vs random neurons of the same count per layer. Every run is scored every
`--eval-every` steps from its checkpoints on every language's test split and on held-out text of another
domain (`seallm_jax.data.other_domain`): a curve of target gain against English's change and the other
languages' mean |change|, compared across arms at matched target gains (10/20/30%), with 95% t-intervals over
seeds. Writes OUT/compare.json, OUT/compare.md (the tables), OUT/curves.png and prints the tables; a rerun
continues where it stopped, and `--report-only` reports the finished arms without training (also while a run
is going on).

Modules: `settings` (CompareSettings), `arms` (ARM_BUILDERS), `run` (training and the orchestration),
`score` (Scorer, changes, curves, intervals), `report` (compare.json, tables, plot), `cli` (flags; `register`
for `seallm-jax lsn`).
"""
from seallm_jax.lsn.compare.settings import (CONFIDENCE, DEFAULT_ARMS, DEFAULT_LEARNING_RATES,  # noqa: F401
                                             DEFAULT_TARGET_GAINS, EVAL_SPLITS, CompareSettings)
from seallm_jax.lsn.compare.arms import ARM_BUILDERS, Arm, Context, random_neurons  # noqa: F401,E402
from seallm_jax.lsn.compare.score import Scorer  # noqa: F401,E402
from seallm_jax.lsn.compare.report import (  # noqa: F401,E402
    SCHEMA_VERSION, format_markdown, format_table, plot_curves, tables)
from seallm_jax.lsn.compare.run import compare, train_config  # noqa: F401,E402
