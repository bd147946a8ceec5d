"""Language-specific neurons: statistics (LAPE, PLND), selection, neuron sets, masked training, ablation.

Typical flow: `compute_statistics` -> `select_lape` / `select_plnd` (or `lsn.select.select(stats, method)`)
-> `NeuronSet.save`; train with `lsn_masked(optimizer, ...)` (from Python in one call: `train_neurons`);
check with `ablation_matrix` and `heldout_perplexity`. The same steps run as `seallm-jax lsn stats | select | ablate`.
"""
from seallm_jax._lazy import lazy_getattr

_EXPORTS = {
    "NeuronSet": "seallm_jax.lsn.neurons",
    "NeuronSlices": "seallm_jax.lsn.optim",
    "lsn_masked": "seallm_jax.lsn.optim",
    "trainable_count": "seallm_jax.lsn.optim",
    "trainable_groups": "seallm_jax.lsn.optim",
    "LapeConfig": "seallm_jax.lsn.select",
    "PlndConfig": "seallm_jax.lsn.select",
    "plot_neuron_heatmap": "seallm_jax.lsn.select",
    "select_lape": "seallm_jax.lsn.select",
    "select_plnd": "seallm_jax.lsn.select",
    "AblationResult": "seallm_jax.lsn.ablate",
    "ablation_matrix": "seallm_jax.lsn.ablate",
    "NeuronStats": "seallm_jax.lsn.stats",
    "StatisticsPass": "seallm_jax.lsn.stats",
    "compute_statistics": "seallm_jax.lsn.stats",
    "NeuronTraining": "seallm_jax.lsn.train",
    "heldout_perplexity": "seallm_jax.lsn.train",
    "neuron_training_config": "seallm_jax.lsn.train",
    "train_neurons": "seallm_jax.lsn.train",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = [
    "NeuronSet", "NeuronStats", "StatisticsPass", "compute_statistics",
    "LapeConfig", "PlndConfig", "select_lape", "select_plnd", "plot_neuron_heatmap",
    "lsn_masked", "trainable_groups", "trainable_count", "NeuronSlices",
    "AblationResult", "ablation_matrix",
    "train_neurons", "NeuronTraining", "neuron_training_config", "heldout_perplexity",
]
