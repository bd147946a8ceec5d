"""Language-specific neurons: statistics (LAPE, PLND), selection, neuron sets, masked training, ablation.

Typical flow: `compute_statistics` -> `select` -> `NeuronSet.save`; train with `lsn_masked(optimizer, ...)`;
check with `ablation_matrix`. The same steps run as `seallm-jax lsn stats | select | ablate`.
"""
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.optim import NeuronSlices, lsn_masked, masked_by_groups, trainable_count, trainable_groups
from seallm_jax.lsn.select import LapeConfig, PlndConfig, plot_neuron_heatmap, select, select_lape, select_plnd
from seallm_jax.lsn.ablate import AblationResult, ablation_matrix
from seallm_jax.lsn.stats import NeuronStats, StatisticsPass, compute_statistics

__all__ = [
    "NeuronSet", "NeuronStats", "StatisticsPass", "compute_statistics",
    "LapeConfig", "PlndConfig", "select", "select_lape", "select_plnd", "plot_neuron_heatmap",
    "lsn_masked", "masked_by_groups", "trainable_groups", "trainable_count", "NeuronSlices",
    "AblationResult", "ablation_matrix",
]
