"""The benchmarks' own bookkeeping: what they time must be what the model computes."""
import jax
from flax import nnx

from benchmarks.step_dots import projections
from benchmarks.train_step import parse_args
from seallm_jax.model.config import Qwen2Config
from seallm_jax.model.qwen2 import Qwen2ForCausalLM


def test_step_dots_times_every_kernel_of_the_model_once():
    """benchmarks.step_dots times three matmuls per weight: its list of (in, out) shapes must be exactly the
    model's kernels (every layer's projections and the untied head), or its "a step of dots only" ratio lies."""
    args = parse_args(["--vocab", "512", "--hidden", "64", "--intermediate", "96", "--layers", "3",
                       "--heads", "4", "--kv-heads", "2", "--batch", "2", "--seq", "16"])
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, tie_word_embeddings=False)
    model = nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))
    kernels = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        if "kernel" in jax.tree_util.keystr(path):  # [in, out], or [layers, in, out] under the layer scan
            kernels += [leaf.shape[-2:]] * (leaf.shape[0] if leaf.ndim == 3 else 1)
    kernels.sort()
    tokens = args.batch * args.seq
    timed = sorted((fan_in, fan_out) for _, fan_in, fan_out, _, count in projections(args, tokens, 0)
                   for _ in range(count))
    assert timed == kernels
    # the head runs chunk by chunk, as the chunked loss does: 32 tokens in chunks of 12 -> 3 matmuls of 12 rows
    head = [p for p in projections(args, tokens, 12) if p[0] == "lm_head"]
    assert head == [("lm_head", 64, 512, 12, 3)]
