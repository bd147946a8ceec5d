"""LSN selection (LAPE, PLND, budgets) on hand-computed synthetic statistics, and the neuron-set file."""
import json
import math

import numpy as np
import pytest

from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.select import LapeConfig, PlndConfig, lape_entropy, plot_neuron_heatmap, select_lape, select_plnd
from seallm_jax.lsn.stats import NeuronStats


def stats_from_probability(probability_by_language: dict[str, list[list[float]]], tokens: int = 100, **metadata):
    """NeuronStats whose activation probability is exactly the given [L, I] table per language."""
    languages = list(probability_by_language)
    active = np.stack([np.rint(np.asarray(p) * tokens) for p in probability_by_language.values()]).astype(np.int64)
    zeros = np.zeros_like(active)
    return NeuronStats(languages=languages, top_k=1, active_count=active, importance_sum=zeros.astype(float),
                       topk_count=zeros, token_count=np.full(len(languages), tokens),
                       document_count=np.ones(len(languages)), metadata=metadata)


# Activation probability p[layer][neuron] per language a, b, c:
#   layer 0: n0 (.9, 0, 0) entropy 0; n1 (.6, .6, 0) entropy ln 2; n2 (.2, .2, .2) entropy ln 3
#   layer 1: n0 (0, 0, .7) entropy 0; n1 (.3, 0, .1) entropy 0.562; n2 (0, 0, 0)
# Sorted, the 18 values are 9 zeros, .1, .2, .2, .2, .3, .6, .6, .7, .9.
LAPE_STATS = dict(
    a=[[0.9, 0.6, 0.2], [0.0, 0.3, 0.0]],
    b=[[0.0, 0.6, 0.2], [0.0, 0.0, 0.0]],
    c=[[0.0, 0.0, 0.2], [0.7, 0.1, 0.0]],
)


def as_lists(neuron_set: NeuronSet) -> dict:
    return {lang: {layer: ids.tolist() for layer, ids in layers.items()} for lang, layers in neuron_set.languages.items()}


def test_lape_entropy_by_hand():
    probability = np.moveaxis(stats_from_probability(LAPE_STATS).active_count / 100, 0, -1)
    entropy = lape_entropy(probability)
    expected = [[0.0, math.log(2), math.log(3)], [0.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), 0.0]]
    np.testing.assert_allclose(entropy, expected, atol=1e-12)


def test_lape_selection_by_hand():
    stats = stats_from_probability(LAPE_STATS)
    # filter bar: the round(18 * .8) = 14th smallest = .3, so only L0n0, L0n1, L1n0 are candidates;
    # top_rate .5 selects round(6 * .5) = 3 of them; activation bar .3 assigns L0n1 to both a and b.
    chosen = select_lape(stats, LapeConfig(top_rate=0.5, filter_rate=0.8, activation_bar_ratio=0.8))
    assert as_lists(chosen) == {"a": {0: [0, 1]}, "b": {0: [1]}, "c": {1: [0]}}
    assert chosen.method == "lape" and chosen.config["filter_bar"] == 0.3
    # two neurons: the two zero-entropy ones (L0n1 with entropy ln 2 drops out)
    chosen = select_lape(stats, LapeConfig(top_rate=1 / 3, filter_rate=0.8, activation_bar_ratio=0.8))
    assert as_lists(chosen) == {"a": {0: [0]}, "b": {}, "c": {1: [0]}}
    # a higher activation bar (the 16th smallest = .6, strictly exceeded) removes the shared neuron
    chosen = select_lape(stats, LapeConfig(top_rate=0.5, filter_rate=0.8, activation_bar_ratio=0.9))
    assert as_lists(chosen) == {"a": {0: [0]}, "b": {}, "c": {1: [0]}}


def test_lape_budget_counts_parameters():
    # 3 matrices x hidden 10 = 30 parameters per neuron; a budget of 0.3 of 200 parameters buys 2 neurons.
    stats = stats_from_probability(LAPE_STATS, hidden_size=10, num_parameters=200)
    chosen = select_lape(stats, LapeConfig(budget=0.3, filter_rate=0.8, activation_bar_ratio=0.8))
    assert as_lists(chosen) == {"a": {0: [0]}, "b": {}, "c": {1: [0]}}
    assert chosen.parameter_fraction() == pytest.approx(2 * 30 / 200)
    with pytest.raises(ValueError, match="hidden_size"):
        select_lape(stats_from_probability(LAPE_STATS), LapeConfig(budget=0.1))


def test_lape_paper_defaults():
    config = LapeConfig()
    assert (config.top_rate, config.filter_rate, config.activation_bar_ratio) == (0.01, 0.95, 0.95)


def plnd_stats(**metadata):
    # documents: a 10, b 4; top-k membership per neuron (one layer, four neurons)
    topk = np.array([[[10, 9, 3, 0]], [[4, 0, 4, 1]]])
    importance = np.array([[[5.0, 1.0, 1.0, 0.0]], [[1.0, 0.0, 2.0, 1.0]]])
    return NeuronStats(languages=["a", "b"], top_k=2, active_count=np.zeros_like(topk), importance_sum=importance,
                       topk_count=topk, token_count=np.array([50, 20]), document_count=np.array([10, 4]),
                       metadata=metadata)


def test_plnd_selection_by_hand():
    assert as_lists(select_plnd(plnd_stats())) == {"a": {0: [0]}, "b": {0: [0, 2]}}  # strict intersection
    assert as_lists(select_plnd(plnd_stats(), PlndConfig(membership_fraction=0.9))) == {"a": {0: [0, 1]}, "b": {0: [0, 2]}}
    only_one = PlndConfig(max_languages_per_neuron=1)
    assert as_lists(select_plnd(plnd_stats(), only_one)) == {"a": {}, "b": {0: [2]}}


def test_plnd_budget_keeps_most_frequent_then_most_important():
    stats = plnd_stats(hidden_size=10, num_parameters=100)  # 30 parameters per neuron: budget .3 = 1 neuron
    chosen = select_plnd(stats, PlndConfig(membership_fraction=0.9, budget=0.3))
    assert as_lists(chosen) == {"a": {0: [0]}, "b": {0: [2]}}  # b: n0 and n2 tie on 4 documents; n2 is more important


def test_neuron_set_round_trip_and_views(tmp_path):
    neuron_set = NeuronSet("plnd", num_layers=2, intermediate_size=5,
                           languages={"th": {0: [1, 3], 1: [4]}, "vi": {1: [0, 4]}}, hidden_size=8, num_parameters=1000)
    path = tmp_path / "neurons.json"
    neuron_set.save(path)
    data = json.loads(path.read_text())
    assert data["languages"] == {"th": {"0": [1, 3], "1": [4]}, "vi": {"1": [0, 4]}}
    assert data["counts"] == {"th": 3, "vi": 2} and data["union_count"] == 4
    assert data["parameter_fraction"]["th"] == pytest.approx(3 * 3 * 8 / 1000)
    loaded = NeuronSet.load(path)
    assert as_lists(loaded) == as_lists(neuron_set)
    expected_mask = np.zeros((2, 5), bool)
    expected_mask[0, [1, 3]] = expected_mask[1, [0, 4]] = True
    np.testing.assert_array_equal(loaded.mask(), expected_mask)
    np.testing.assert_array_equal(loaded.gate_scale(["vi"]), [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert {k: v.tolist() for k, v in loaded.union(["th", "vi"]).items()} == {0: [1, 3], 1: [0, 4]}
    np.testing.assert_array_equal(loaded.counts_per_layer(["th", "vi"]), [[2, 1], [0, 2]])
    with pytest.raises(ValueError, match="language"):
        loaded.mask(["km"])
    plot_neuron_heatmap(loaded, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000


@pytest.mark.parametrize("languages, message", [
    ({"th": {0: [5]}}, "outside 0..4"),
    ({"th": {0: [3, 1]}}, "sorted and unique"),
    ({"th": {2: [1]}}, "layer 2"),
])
def test_neuron_set_rejects_bad_ids(languages, message):
    with pytest.raises(ValueError, match=message):
        NeuronSet("lape", num_layers=2, intermediate_size=5, languages=languages)
