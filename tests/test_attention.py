"""Attention kernels: the blockwise `flash` kernel and `splash` (Pallas interpret mode) equal the dense
reference (values and gradients; segments, padding, GQA ratios 1/2/7, ragged block sizes), and the
whole model still matches `transformers` with flash."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_models import PARITY_CONFIGS, make_hf_model, save_hf_model, torch_logits
from seallm_jax import Qwen2Config, hf
from seallm_jax.errors import ConfigError
from seallm_jax.model.attention import causal_attention

TOLERANCE = 1e-5


def random_qkv(batch, length, heads, kv_heads, head_dim, seed=0):
    rng = np.random.RandomState(seed)
    q = rng.randn(batch, length, heads, head_dim).astype(np.float32)
    k = rng.randn(batch, length, kv_heads, head_dim).astype(np.float32)
    v = rng.randn(batch, length, kv_heads, head_dim).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def packed_segments(batch, length):
    """Row 0: one document; row 1: three documents and right padding; row 2: left padding, two documents."""
    segments = np.ones((batch, length), np.int32)
    if batch > 1:
        a, b, c = length // 4, length // 2, length - 3
        segments[1, a:b], segments[1, b:c], segments[1, c:] = 2, 3, 0
    if batch > 2:
        segments[2, :3], segments[2, length // 2:] = 0, 2
    return jnp.asarray(segments)


def attention_and_grads(implementation, q, k, v, segments, **blocks):
    """The output and d(sum(output * weights))/d(q, k, v), in one jitted call."""
    weights = jnp.asarray(np.random.RandomState(1).randn(*q.shape).astype(np.float32))

    def objective(q, k, v):
        out = causal_attention(q, k, v, segments, implementation=implementation, **blocks)
        return jnp.sum(out * weights), out

    grads, out = jax.jit(jax.grad(objective, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("heads, kv_heads, length, block_q, block_k", [
    (4, 4, 16, 4, 4), (4, 2, 13, 4, 4), (7, 1, 24, 8, 4), (4, 2, 24, 4, 8), (7, 1, 10, 512, 512), (4, 4, 19, 8, 4),
], ids=["gqa1-even", "gqa2-ragged", "gqa7-wide_queries", "gqa2-wide_keys", "gqa7-one_block", "gqa1-ragged_mixed"])
def test_flash_equals_reference_values_and_gradients(heads, kv_heads, length, block_q, block_k):
    q, k, v = random_qkv(3, length, heads, kv_heads, 8)
    segments = packed_segments(3, length)
    reference, reference_grads = attention_and_grads("xla", q, k, v, segments)
    flash, flash_grads = attention_and_grads("flash", q, k, v, segments, block_q=block_q, block_k=block_k)
    np.testing.assert_allclose(flash, reference, atol=TOLERANCE, rtol=0)
    for name, ours, theirs in zip("qkv", flash_grads, reference_grads):
        np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0, err_msg=f"d{name}")


def test_flash_under_jit_and_bfloat16():
    q, k, v = random_qkv(2, 32, 4, 2, 16)
    segments = packed_segments(2, 32)
    flash = jax.jit(lambda q, k, v: causal_attention(q, k, v, segments, implementation="flash", block_q=8, block_k=8))
    reference = causal_attention(q, k, v, segments, implementation="xla")
    np.testing.assert_allclose(flash(q, k, v), reference, atol=TOLERANCE, rtol=0)
    bf16 = flash(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf16.astype(jnp.float32), reference, atol=5e-2)


def test_flash_residuals_hold_no_length_squared_array():
    """What the forward saves for the backward is O(T): no [T, T]-sized residual."""
    length, heads, kv_heads, head_dim = 256, 4, 2, 8
    q, k, v = random_qkv(1, length, heads, kv_heads, head_dim)
    segments = jnp.ones((1, length), jnp.int32)
    def attention(q, k, v):
        return causal_attention(q, k, v, segments, implementation="flash", block_q=32, block_k=32)

    residuals = jax.eval_shape(lambda q, k, v: jax.vjp(attention, q, k, v)[1], q, k, v)
    largest = max(leaf.size for leaf in jax.tree.leaves(residuals))
    assert largest <= length * heads * head_dim


@pytest.mark.parametrize("field, value", [("attention_impl", "fast"), ("attention_block_q", 0),
                                          ("attention_block_k", 1.5), ("scan_unroll", 0)])
def test_bad_attention_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        Qwen2Config(**{field: value})


@pytest.mark.parametrize("length, expected", [(16, "xla"), (128, "xla"), (129, "flash"), (4096, "flash")])
def test_auto_is_flash_beyond_one_key_block(length, expected):
    """The default kernel: `flash` once the keys span more than one block (128), dense `xla` below; it is
    what `causal_attention` runs (flash's custom VJP shows in the program) and it equals the reference."""
    from seallm_jax.model.attention import resolve_implementation

    assert Qwen2Config().attention_impl == "auto"
    assert resolve_implementation("auto", length, 128) == expected
    assert resolve_implementation("xla", 4096, 128) == "xla"  # an explicit choice is kept
    q, k, v = random_qkv(1, length, 4, 2, 8)
    segments = jnp.ones((1, length), jnp.int32)
    program = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v, segments, implementation="auto"))(q, k, v))
    assert ("custom_vjp" in program) == (expected == "flash")
    if length <= 256:
        np.testing.assert_allclose(causal_attention(q, k, v, segments, implementation="auto"),
                                   causal_attention(q, k, v, segments, implementation="xla"), atol=TOLERANCE)


def test_cudnn_refuses_float32():
    with pytest.raises(ConfigError, match="cudnn"):
        Qwen2Config(attention_impl="cudnn", dtype="float32")


# ---- whole model, flash kernel, against transformers ----------------------------------------------

@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def flash_model_pair(request, tmp_path_factory):
    torch_model = make_hf_model(request.param)
    path = save_hf_model(torch_model, tmp_path_factory.mktemp(request.param))
    # Blocks of 4 so the 13-token rows below span several (ragged) query and key blocks.
    return torch_model, hf.load_pretrained(path, attention_impl="flash", attention_block_q=4, attention_block_k=4)


def test_flash_model_matches_transformers(flash_model_pair):
    torch_model, model = flash_model_pair
    ids = np.random.RandomState(0).randint(0, torch_model.config.vocab_size, (2, 13)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(model(ids)), torch_logits(torch_model, ids), atol=1e-4, rtol=0)


def test_flash_model_matches_transformers_with_padding(flash_model_pair):
    torch_model, model = flash_model_pair
    ids = np.random.RandomState(1).randint(0, torch_model.config.vocab_size, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    ours = np.asarray(model(ids, attention_mask=mask))
    theirs = torch_logits(torch_model, ids, attention_mask=mask)
    np.testing.assert_allclose(ours[mask.astype(bool)], theirs[mask.astype(bool)], atol=1e-4, rtol=0)


def test_flash_model_packed_segments_equal_separate_runs(flash_model_pair):
    torch_model, model = flash_model_pair
    vocab = torch_model.config.vocab_size
    lengths = [5, 3, 6]
    documents = [np.random.RandomState(10 + i).randint(0, vocab, (1, n)).astype(np.int32) for i, n in enumerate(lengths)]
    packed = np.concatenate(documents + [np.zeros((1, 2), np.int32)], axis=1)
    segments = np.concatenate([np.full((1, n), i + 1) for i, n in enumerate(lengths)] + [np.zeros((1, 2))], axis=1)
    ours = np.asarray(model(packed, segment_ids=segments.astype(np.int32)))
    start = 0
    for document in documents:
        n = document.shape[1]
        np.testing.assert_allclose(ours[0, start:start + n], torch_logits(torch_model, document)[0], atol=1e-4, rtol=0)
        start += n


# ---- splash (Pallas TPU kernel) in interpret mode on CPU -------------------------------------------

@pytest.mark.parametrize("heads, kv_heads, length", [(4, 2, 13), (7, 1, 130)], ids=["gqa2-short", "gqa7-two_blocks"])
def test_splash_interpret_equals_reference_values_and_gradients(heads, kv_heads, length):
    q, k, v = random_qkv(3, length, heads, kv_heads, 16)
    segments = packed_segments(3, length)
    reference, reference_grads = attention_and_grads("xla", q, k, v, segments)
    splash, splash_grads = attention_and_grads("splash", q, k, v, segments)
    np.testing.assert_allclose(splash, reference, atol=TOLERANCE, rtol=0)
    for name, ours, theirs in zip("qkv", splash_grads, reference_grads):
        np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0, err_msg=f"d{name}")


def test_splash_shard_maps_over_batch_and_heads():
    from jax.sharding import NamedSharding, PartitionSpec

    from seallm_jax import sharding as shd

    mesh = shd.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    q, k, v = random_qkv(2, 20, 4, 2, 16)
    segments = packed_segments(2, 20)

    @jax.jit
    def sharded(q, k, v, segments):
        with shd.activation_sharding(mesh):  # the default rules: batch over 'data', heads over 'tensor'
            return causal_attention(q, k, v, segments, implementation="splash")

    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    heads_spec = PartitionSpec("data", None, "tensor", None)
    out = sharded(put(q, heads_spec), put(k, heads_spec), put(v, heads_spec), put(segments, PartitionSpec("data")))
    assert "shard_map" in str(jax.make_jaxpr(sharded)(q, k, v, segments))
    np.testing.assert_allclose(out, causal_attention(q, k, v, segments), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("implementation, platform", [("cudnn", "cpu"), ("splash", "gpu"), ("splash", "cpu")])
def test_kernel_on_the_wrong_platform_is_refused_at_start_up(implementation, platform):
    from seallm_jax.model.attention import check_platform

    with pytest.raises(ConfigError, match=f"attention_impl='{implementation}'.*flash"):
        check_platform(implementation, platform)
    check_platform("flash", platform)


@pytest.mark.parametrize("layout", [
    pytest.param(dict(data=2, fsdp=2, tensor=2), id="data2-fsdp2-tensor2"),
    pytest.param(dict(tensor=2, fsdp=4), id="tensor2-fsdp4", marks=pytest.mark.slow),
])
def test_flash_train_losses_on_a_mesh_equal_the_single_device_reference(layout):
    """The new path (flash attention, chunked loss) on a sharded mesh = the old path on one device."""
    from seallm_jax import sharding as shd
    from seallm_jax.train.config import load_config
    from seallm_jax.train.data_source import SyntheticSource
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import Trainer
    from train_helpers import TINY

    def losses(attention_impl, loss_chunk_tokens, data=1, fsdp=1, tensor=1):
        config = load_config(TINY)
        config.model.update(attention_impl=attention_impl, attention_block_q=8, attention_block_k=8)
        config.train.loss_chunk_tokens = loss_chunk_tokens
        mesh = shd.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices()[:data * fsdp * tensor])
        trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
        source = SyntheticSource(vocab_size=config.model.vocab_size, seq_len=config.train.seq_len,
                                 global_batch_size=config.train.global_batch_size, row_start=0,
                                 row_stop=config.train.global_batch_size, seed=0)
        state, out = trainer.init_state(0), []
        for _ in range(2):
            state, metrics = trainer.train_step(state, trainer.put_batch(next(source)))
            out.append(float(metrics["loss"]))
        return np.array(out)

    np.testing.assert_allclose(losses("flash", 64, **layout), losses("xla", 0), rtol=1e-5)
