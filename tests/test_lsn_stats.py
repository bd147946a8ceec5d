"""LSN statistics: the jitted pass equals a plain numpy computation, merges exactly, and is mesh-independent."""
import jax
import numpy as np
import pytest
from flax import nnx

from seallm_jax.lsn.stats import NeuronStats, StatisticsPass, compute_statistics
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM

TOP_K = 5


def data_mesh():
    """8 fake CPU devices on the data axis (automatic sharding, as the training mesh uses)."""
    return jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)


@pytest.fixture(scope="module")
def tiny_model():
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    return Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))


def packed_batches(seed: int, num_batches: int = 2, rows: int = 8, length: int = 16):
    """Packed batches: 1-3 documents per row, some rows end in padding (segment 0)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        segment_ids = np.zeros((rows, length), np.int32)
        for row in range(rows):
            cuts = np.sort(rng.choice(np.arange(1, length), size=rng.integers(0, 3), replace=False))
            end = length - rng.integers(0, 4)  # trailing padding
            bounds = [0, *[c for c in cuts if c < end], end]
            for doc, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
                segment_ids[row, lo:hi] = doc
        input_ids = rng.integers(0, 64, size=(rows, length)).astype(np.int32)
        batches.append({"input_ids": input_ids, "segment_ids": segment_ids})
    return batches


def numpy_statistics(model, batches, top_k):
    """The same statistics from the model's raw per-layer activations, in plain numpy."""
    raw_probe = lambda gate, hidden, down: (gate, hidden, down)  # noqa: E731
    active = importance = topk = 0
    tokens = documents = 0
    for batch in batches:
        segment_ids = batch["segment_ids"]
        _, (gate, hidden, down) = model.hidden_states(batch["input_ids"], segment_ids=segment_ids,
                                                      ffn_probe=raw_probe)
        gate, hidden, down = (np.asarray(a, np.float64) for a in (gate, hidden, down))  # [L,B,T,I], [L,I,E]
        valid = segment_ids > 0
        active = active + ((gate > 0) & valid[None, ..., None]).sum(axis=(1, 2))
        token_importance = np.abs(hidden) * np.linalg.norm(down, axis=-1)[:, None, None, :]
        importance = importance + (token_importance * valid[None, ..., None]).sum(axis=(1, 2))
        membership = np.zeros(active.shape, np.int64)
        for row in range(segment_ids.shape[0]):
            for doc in np.unique(segment_ids[row][valid[row]]):
                documents += 1
                doc_importance = token_importance[:, row, segment_ids[row] == doc].sum(axis=1)  # [L, I]
                for layer in range(doc_importance.shape[0]):
                    membership[layer, np.argsort(-doc_importance[layer], kind="stable")[:top_k]] += 1
        topk = topk + membership
        tokens += int(valid.sum())
    return active, importance, topk, tokens, documents


def test_statistics_equal_numpy(tiny_model):
    batches = packed_batches(seed=0)
    stats = StatisticsPass(tiny_model, top_k=TOP_K)(batches, "th")
    active, importance, topk, tokens, documents = numpy_statistics(tiny_model, batches, TOP_K)
    assert stats.languages == ["th"] and stats.token_count[0] == tokens and stats.document_count[0] == documents
    np.testing.assert_array_equal(stats.active_count[0], active)
    np.testing.assert_allclose(stats.importance_sum[0], importance, rtol=1e-5)
    np.testing.assert_array_equal(stats.topk_count[0], topk)
    # every document contributes exactly top_k memberships per layer
    assert (stats.topk_count[0].sum(axis=1) == documents * TOP_K).all()


def test_lape_only_pass_counts_the_same_and_refuses_plnd_selection(tiny_model, tmp_path):
    """`plnd=False` (`lsn stats --lape-only`): the same LAPE counts, and a saved file that PLND selection refuses."""
    from seallm_jax.errors import ConfigError
    from seallm_jax.lsn.select import select_plnd

    batches = packed_batches(seed=0)
    full = StatisticsPass(tiny_model, top_k=TOP_K)(batches, "th")
    lape = StatisticsPass(tiny_model, top_k=TOP_K, plnd=False)(batches, "th")
    np.testing.assert_array_equal(lape.active_count, full.active_count)
    np.testing.assert_array_equal(lape.token_count, full.token_count)
    assert full.has_plnd and not lape.has_plnd and not lape.topk_count.any()
    lape.save(tmp_path / "lape.npz")
    loaded = NeuronStats.load(tmp_path / "lape.npz")
    assert not loaded.has_plnd and not full.merge(loaded).has_plnd
    with pytest.raises(ConfigError, match="--lape-only"):
        select_plnd(loaded)


def test_padding_is_ignored(tiny_model):
    """Appending all-padding rows changes nothing."""
    batch = packed_batches(seed=1, num_batches=1)[0]
    padded = {key: np.concatenate([value, np.zeros_like(value)], axis=0) for key, value in batch.items()}
    padded["input_ids"][8:] = 7
    statistics_pass = StatisticsPass(tiny_model, top_k=TOP_K)
    plain, with_padding = statistics_pass([batch], "en"), statistics_pass([padded], "en")
    np.testing.assert_array_equal(plain.active_count, with_padding.active_count)
    np.testing.assert_array_equal(plain.topk_count, with_padding.topk_count)
    np.testing.assert_array_equal(plain.token_count, with_padding.token_count)
    np.testing.assert_array_equal(plain.document_count, with_padding.document_count)
    np.testing.assert_allclose(plain.importance_sum, with_padding.importance_sum, rtol=1e-6)


def test_merge_is_exact_and_save_load_round_trips(tiny_model, tmp_path):
    batches = packed_batches(seed=2, num_batches=3)
    statistics_pass = StatisticsPass(tiny_model, top_k=TOP_K, metadata={"model": "tiny"})
    whole = statistics_pass(batches, "vi")
    parts = [statistics_pass([batch], "vi") for batch in batches]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    np.testing.assert_array_equal(merged.active_count, whole.active_count)
    np.testing.assert_array_equal(merged.topk_count, whole.topk_count)
    np.testing.assert_array_equal(merged.token_count, whole.token_count)
    np.testing.assert_array_equal(merged.document_count, whole.document_count)
    np.testing.assert_allclose(merged.importance_sum, whole.importance_sum, rtol=1e-12)
    # languages merge side by side
    both = whole.merge(statistics_pass(batches[:1], "th"))
    assert both.languages == ["vi", "th"]
    np.testing.assert_array_equal(both.active_count[0], whole.active_count[0])
    path = tmp_path / "stats.npz"
    both.save(path)
    loaded = NeuronStats.load(path)
    assert loaded.languages == ["vi", "th"] and loaded.top_k == TOP_K
    assert loaded.metadata["model"] == "tiny" and loaded.metadata["token_count"]["vi"] == int(whole.token_count[0])
    for name in ("active_count", "importance_sum", "topk_count", "token_count", "document_count"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(both, name))


def test_merge_rejects_other_shapes(tiny_model):
    stats = NeuronStats.zeros(["en"], 3, 48, TOP_K)
    with pytest.raises(ValueError, match="FFN"):
        stats.merge(NeuronStats.zeros(["en"], 3, 40, TOP_K))
    with pytest.raises(ValueError, match="top_k"):
        stats.merge(NeuronStats.zeros(["en"], 3, 48, TOP_K + 1))


def test_eight_devices_match_one(tiny_model):
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
    batches = packed_batches(seed=3)
    single = compute_statistics(tiny_model, {"en": batches, "th": batches[:1]}, top_k=TOP_K)
    mesh = data_mesh()
    sharded = compute_statistics(tiny_model, {"en": batches, "th": batches[:1]}, top_k=TOP_K, mesh=mesh)
    np.testing.assert_array_equal(sharded.active_count, single.active_count)
    np.testing.assert_array_equal(sharded.topk_count, single.topk_count)
    np.testing.assert_array_equal(sharded.token_count, single.token_count)
    np.testing.assert_array_equal(sharded.document_count, single.document_count)
    np.testing.assert_allclose(sharded.importance_sum, single.importance_sum, rtol=2e-6)


def test_batch_must_split_over_mesh(tiny_model):
    mesh = data_mesh()
    batch = packed_batches(seed=4, num_batches=1, rows=4)[0]
    with pytest.raises(ValueError, match="multiple of 8"):
        StatisticsPass(tiny_model, mesh=mesh, top_k=TOP_K)([batch], "en")


def test_max_tokens_stops_early(tiny_model):
    batches = packed_batches(seed=5, num_batches=4)
    first = int((batches[0]["segment_ids"] > 0).sum())
    stats = StatisticsPass(tiny_model, top_k=TOP_K)(iter(batches), "en", max_tokens=first)
    assert stats.token_count[0] == first
