"""Compiled train-step memory, two modes in one script (nothing is allocated in either).

**Lengths** (default): the old path (dense `xla` attention, full float32 logits) against the new one
(`flash` attention, chunked loss) at growing sequence length, tokens per step held fixed.

    python benchmarks/memory.py                                   # Qwen2-0.5B shape, 16k tokens/step
    python benchmarks/memory.py --lengths 1024,4096 --layers 4    # a quicker look
    python benchmarks/memory.py --config configs/qwen2_0_5b.py:tpu --tokens 65536

The "loss" column is the temporaries of the loss and its gradient alone (final hidden states -> summed
cross-entropy, both heads' shapes), the share of the step's temporaries the vocabulary costs.

**Budget** (`--budget`): per-device bytes of one config's train step on one mesh, split into
parameters, optimizer state, gradients and temporaries.

    python -m benchmarks.memory --budget                          # the table of docs/training.md (one
                                                                  # fresh process per row)
    python -m benchmarks.memory --budget --row 7b-lsn-lean        # one row of it
    python -m benchmarks.memory --budget --config configs/qwen2_7b.py:gpu --devices 32 \
        --config.train.micro_batches=4                            # any config, mesh and overrides

`--devices N` fakes N CPU devices (`--xla_force_host_platform_device_count`, set before JAX is
imported) so a pod-sized mesh compiles on a laptop. Parameters and optimizer state are the per-device
shard bytes of the state's leaves under their shardings (what `memory_analysis()` counts among the
arguments); gradients are the per-device bytes of the tree the step differentiates (every parameter
today, also in LSN modes: `train/step.py` takes `jax.grad` w.r.t. all params), a part of XLA's
temporaries, cross-checked with `--check-grads` (compiles the loss-and-gradient function alone: its
output bytes are the gradient tree); total = arguments + outputs - aliased (donated) + temporaries.
`step_memory(config, mesh)` and `budget(config, mesh)` are the reusable parts: any config, any mesh.
Both modes print the machine probe (`benchmarks/machine.py`) first and store it in every row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time


def _fake_devices(argv: list[str]) -> None:
    """`--devices N` => N fake CPU devices; must run before the first `import jax`."""
    count = 0
    for i, arg in enumerate(argv):
        if arg == "--devices" and i + 1 < len(argv):
            count = int(argv[i + 1])
        elif arg.startswith("--devices="):
            count = int(arg.split("=", 1)[1])
    if count > 1:
        if "jax" in sys.modules:
            raise SystemExit("--devices must be handled before jax is imported: run benchmarks/memory.py as a script")
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
        os.environ["JAX_PLATFORMS"] = "cpu"


if __name__ == "__main__":
    _fake_devices(sys.argv[1:])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from benchmarks.machine import announce  # noqa: E402
from seallm_jax import sharding as shd  # noqa: E402
from seallm_jax.train.config import load_config  # noqa: E402
from seallm_jax.model.qwen2 import LMHead, head_logits  # noqa: E402
from seallm_jax.train.loss import DEFAULT_CHUNK_TOKENS, chunked_cross_entropy_loss, cross_entropy_sums  # noqa: E402
from seallm_jax.train.optim import build_optimizer, build_schedule  # noqa: E402
from seallm_jax.train.step import Trainer  # noqa: E402

GIB = 2**30
# (label, attention_impl, loss_chunk_tokens): the two paths the table compares.
PATHS = (("old", "xla", 0), ("new", "flash", DEFAULT_CHUNK_TOKENS))


def step_memory(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, int]:
    """Bytes per device of the compiled train step for `config` on `mesh` (arguments, outputs,
    temporaries, and the aliased bytes the donated state shares with the outputs)."""
    trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
    analysis = trainer.lower_train_step().compile().memory_analysis()
    return {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
            "temporaries": analysis.temp_size_in_bytes, "aliased": analysis.alias_size_in_bytes}


def loss_memory(config: ml_collections.ConfigDict, chunk_tokens: int) -> int:
    """Temporary bytes of the loss and its gradient alone (one device): hidden -> head -> summed CE."""
    model, train = config.model, config.train
    rows = train.global_batch_size // train.micro_batches
    dtype = jnp.dtype(model.dtype)
    hidden = jax.ShapeDtypeStruct((rows, train.seq_len, model.hidden_size), dtype)
    head = jax.ShapeDtypeStruct((model.hidden_size, model.vocab_size), jnp.dtype(model.param_dtype))
    targets = jax.ShapeDtypeStruct((rows, train.seq_len), jnp.int32)
    mask = jax.ShapeDtypeStruct((rows, train.seq_len), jnp.float32)

    def loss(hidden, head, targets, mask):
        head = LMHead(head.astype(dtype), vocab_first=False)
        if chunk_tokens:
            return chunked_cross_entropy_loss(hidden, head, targets, mask, chunk_tokens=chunk_tokens)[0]
        return cross_entropy_sums(head_logits(hidden, head), targets, mask)[0]

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, head, targets, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def configure(config: ml_collections.ConfigDict, seq_len: int, tokens: int, attention_impl: str,
              loss_chunk_tokens: int) -> ml_collections.ConfigDict:
    """A copy of `config` at `seq_len` with `tokens` tokens per step (one micro-batch) and one path."""
    config = ml_collections.ConfigDict(config.to_dict())
    if tokens % seq_len:
        raise SystemExit(f"--tokens {tokens} is not a multiple of length {seq_len}")
    config.train.update(seq_len=seq_len, global_batch_size=tokens // seq_len, micro_batches=1)
    config.train.loss_chunk_tokens = loss_chunk_tokens
    config.model.update(attention_impl=attention_impl, max_position_embeddings=max(seq_len, 32768))
    return config


# ---- budget mode ------------------------------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NEURONS_7B = os.path.join("benchmarks", "fixtures", "qwen2_7b_lsn_0.1pct.json")
ONE_DEVICE = ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1",
              "--config.train.global_batch_size=1", "--config.train.micro_batches=1", "--config.train.seq_len=4096"]
LSN_7B = ONE_DEVICE + [f"--config.lsn.neurons={NEURONS_7B}"]
# name -> (config, fake devices, overrides, what it is). The 1-device rows: batch 1 x 4096, one micro-batch;
# the recipes' bf16 compute, float32 master weights, remat full, flash attention, chunked loss, AdamW.
BUDGET_ROWS: dict[str, tuple[str, int, list[str], str]] = {
    "7b-gpu-full": ("configs/qwen2_7b.py:gpu", 32, [],
                    "Qwen2-7B full training, configs/qwen2_7b.py:gpu as is (32 devices: data 4 x fsdp 8; "
                    "256 x 4096 tokens in 8 micro-batches)"),
    "7b-lsn-dense": ("configs/qwen2_7b.py:gpu", 1, LSN_7B + ["--config.lsn.lean=false"],
                     "Qwen2-7B LSN dense (masked AdamW on full-shape state), 1 device"),
    "7b-lsn-lean": ("configs/qwen2_7b.py:gpu", 1, LSN_7B + ["--config.lsn.lean=true"],
                    "Qwen2-7B LSN lean (config.lsn.lean=true: the step differentiates the neuron slices), 1 device"),
    "7b-lsn-lean-bf16": ("configs/qwen2_7b.py:gpu", 1,
                         LSN_7B + ["--config.lsn.lean=true", "--config.model.param_dtype=bfloat16"],
                         "Qwen2-7B LSN lean with the weights stored in bf16 (float32 masters of the neuron "
                         "slices in the optimizer state), 1 device"),
    "0.5b-full": ("configs/qwen2_0_5b.py:gpu", 1, ONE_DEVICE,
                  "Qwen2-0.5B full training, 1 device"),
}


def synthetic_neuron_set(num_layers: int, intermediate_size: int, languages, rate: float, seed: int = 0,
                         hidden_size: int | None = None, num_parameters: int | None = None):
    """A neuron set of the model's shape with `rate` of all FFN neurons per language, drawn uniformly over
    (layer, neuron) with a fixed seed: stands in for a selection (`lsn select`) when only the memory counts."""
    import numpy as np

    from seallm_jax.lsn.neurons import NeuronSet

    total = num_layers * intermediate_size
    per_language = max(1, round(rate * total))
    chosen = {}
    for index, lang in enumerate(languages):
        flat = np.sort(np.random.default_rng(seed + index).choice(total, per_language, replace=False))
        layers, ids = np.divmod(flat, intermediate_size)
        chosen[lang] = {int(layer): ids[layers == layer].tolist() for layer in np.unique(layers)}
    return NeuronSet("synthetic", num_layers=num_layers, intermediate_size=intermediate_size, languages=chosen,
                     hidden_size=hidden_size, num_parameters=num_parameters,
                     config={"rate_per_language": rate, "seed": seed, "draw": "uniform over (layer, neuron)",
                             "purpose": "benchmarks/memory.py --budget (memory only; not a real selection)"})


def _first_layers(neuron_set, num_layers: int):
    """The neuron set restricted to its first `num_layers` layers (a shallower model of the same width)."""
    import dataclasses as dc
    languages = {lang: {layer: ids for layer, ids in layers.items() if layer < num_layers}
                 for lang, layers in neuron_set.languages.items()}
    return dc.replace(neuron_set, num_layers=num_layers, languages=languages)


def tree_device_bytes(abstract, shardings) -> int:
    """Bytes one device holds of `abstract` (ShapeDtypeStruct leaves) laid out by `shardings` (its shards)."""
    sizes = jax.tree.map(lambda leaf, s: math.prod(s.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize,
                         abstract, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def _abstract(tree, shardings):
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), tree, shardings)


def _activation_context(trainer: Trainer):
    """The activation-sharding context the train step runs its loss under."""
    return shd.activation_sharding(trainer.mesh, trainer.rules)


def gradient_tree(trainer: Trainer):
    """Abstract tree of what the step differentiates: every parameter, or lean LSN's neuron slices."""
    if trainer.trainable is None:
        return trainer.abstract_params
    return jax.eval_shape(trainer.trainable.gather, trainer.abstract_params)


def grad_memory(trainer: Trainer) -> dict[str, int]:
    """The loss-and-gradient function of the step compiled alone: its outputs are the gradient tree (+ 3
    scalars), laid out like the parameters. Differentiates what `Trainer._loss_and_grads` differentiates."""
    from seallm_jax.train.step import BATCH_KEYS

    def grads_of(params, batch):
        with _activation_context(trainer):
            return trainer._loss_and_grads(params, batch)

    rep = shd.replicated(trainer.mesh)
    grad_shardings = trainer.param_shardings if trainer.trainable is None else None  # slices: XLA decides
    fn = jax.jit(grads_of, in_shardings=(trainer.param_shardings, trainer.batch_shardings),
                 out_shardings=(rep, grad_shardings))
    seq_len = int(trainer.config.train.seq_len)
    batch = {key: jax.ShapeDtypeStruct((trainer.global_batch_size, seq_len),
                                       jnp.float32 if key == "loss_mask" else jnp.int32,
                                       sharding=trainer.batch_shardings[key]) for key in BATCH_KEYS}
    analysis = fn.lower(_abstract(trainer.abstract_params, trainer.param_shardings), batch).compile().memory_analysis()
    return {"grad_fn_outputs": analysis.output_size_in_bytes, "grad_fn_temporaries": analysis.temp_size_in_bytes}


def budget_trainer(config: ml_collections.ConfigDict, mesh: Mesh) -> Trainer:
    """The trainer `seallm-jax train` builds for `config` (LSN's / LoRA's wrapper when asked for, and
    lean LSN's trainable view)."""
    from seallm_jax.train.cli import optimizer_wrapper_for

    wrapper = optimizer_wrapper_for(config)
    trainable = getattr(wrapper, "trainable", None)
    return Trainer(config, mesh, build_optimizer(config, wrapper), build_schedule(config),
                   trainable=trainable(config) if trainable is not None else None)


def update_memory(trainer: Trainer) -> dict[str, int]:
    """The step's optimizer half compiled alone (gradients in; params and optimizer state donated, as in the
    step): `optimizer.update` + `apply_updates` -- the temporaries the update path adds (e.g. full-shape
    masked-update trees in LSN modes)."""
    import optax

    def apply(grads, opt_state, params):
        view = trainer.trainable
        if view is None:
            updates, opt_state = trainer.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        trained = view.gather(params)
        updates, opt_state = trainer.optimizer.update(grads, opt_state, trained, trainable_only=True)
        return view.scatter(params, optax.apply_updates(trained, updates)), opt_state

    shardings = (trainer.param_shardings, trainer.opt_shardings, trainer.param_shardings)
    fn = jax.jit(apply, in_shardings=shardings, out_shardings=(trainer.param_shardings, trainer.opt_shardings),
                 donate_argnums=(1, 2))
    params = _abstract(trainer.abstract_params, trainer.param_shardings)
    opt_state = _abstract(trainer.abstract_state.opt_state, trainer.opt_shardings)
    grads = params if trainer.trainable is None else gradient_tree(trainer)
    if trainer.trainable is not None:
        fn = jax.jit(apply, in_shardings=(None,) + shardings[1:],
                     out_shardings=(trainer.param_shardings, trainer.opt_shardings), donate_argnums=(1, 2))
    analysis = fn.lower(grads, opt_state, params).compile().memory_analysis()
    return {"update_fn_temporaries": analysis.temp_size_in_bytes}


def budget(config: ml_collections.ConfigDict, mesh: Mesh, check_grads: bool = False,
           measure: bool = False) -> dict:
    """Per-device bytes of `config`'s compiled train step on `mesh`: parameters, optimizer state, gradients
    (a part of the temporaries), temporaries, total; plus the compile times. `measure`: also run it for
    real (`measure_step`)."""
    import resource

    start = time.perf_counter()
    trainer = budget_trainer(config, mesh)
    lowered = trainer.lower_train_step()
    lowered_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lowered_s
    analysis = compiled.memory_analysis()
    params = tree_device_bytes(trainer.abstract_params, trainer.param_shardings)
    optimizer = tree_device_bytes(trainer.abstract_state.opt_state, trainer.state_shardings.opt_state)
    # One gradient per element the step differentiates: every parameter (full training, dense LSN), in the
    # parameter's dtype and sharding, or lean LSN's neuron slices (counted as held whole on each device).
    # With micro_batches > 1 a float32 accumulator of the same shape is live next to each micro-batch's
    # gradient (counted in the temporaries, not here).
    if trainer.trainable is None:
        gradients = tree_device_bytes(trainer.abstract_params, trainer.param_shardings)
    else:
        gradients = int(sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(gradient_tree(trainer))))
    row = {
        "parameters": params, "optimizer_state": optimizer, "gradients": gradients,
        "temporaries": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes, "aliased": analysis.alias_size_in_bytes,
        "total": (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
                  + analysis.temp_size_in_bytes),
        "lower_s": round(lowered_s, 1), "compile_s": round(compile_s, 1),
        "devices": int(mesh.devices.size), "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "layers": int(trainer.model_config.num_hidden_layers), "batch": trainer.global_batch_size,
        "seq_len": int(config.train.seq_len), "micro_batches": trainer.settings.micro_batches,
        "parameter_count": int(trainer.model_config.num_parameters()),
    }
    if check_grads:
        start = time.perf_counter()
        row.update(grad_memory(trainer))
        row.update(update_memory(trainer))
        row["grad_fn_compile_s"] = round(time.perf_counter() - start, 1)
    if measure:
        row.update(measure_step(trainer, compiled))
    row["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


def _memory_stats(device) -> dict[str, int] | None:
    stats = device.memory_stats()  # None on CPU
    if not stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


def measure_step(trainer: Trainer, compiled, steps: int = 2) -> dict:
    """Allocate the state for real (random init) and run `steps` train steps on a random batch: the
    device's `memory_stats()` after init and after the steps (peak), and the step time. Needs the memory."""
    import numpy as np

    device = trainer.mesh.devices.flat[0]
    state = trainer.init_state(0)
    jax.block_until_ready(state)
    after_init = _memory_stats(device)
    rows, seq_len = trainer.global_batch_size, int(trainer.config.train.seq_len)
    tokens = np.random.default_rng(0).integers(0, trainer.model_config.vocab_size, (rows, seq_len + 1)).astype(np.int32)
    batch = trainer.put_batch({"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
                               "loss_mask": np.ones((rows, seq_len), np.float32),
                               "segment_ids": np.ones((rows, seq_len), np.int32),
                               "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy()})
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"measured": {"platform": device.platform, "device_kind": device.device_kind,
                         "memory_stats_after_init": after_init, "memory_stats_after_steps": _memory_stats(device),
                         "step_s": [round(t, 3) for t in times], "loss": float(metrics["loss"])}}


def _budget_config(spec: str, overrides: list[str], layers: int, workdir: str) -> ml_collections.ConfigDict:
    from seallm_jax.lsn.neurons import NeuronSet

    config = load_config(spec, overrides)
    if layers:
        config.model.num_hidden_layers = layers
        if config.lsn.neurons:
            neuron_set = NeuronSet.load(config.lsn.neurons)
            if neuron_set.num_layers != layers:
                path = os.path.join(workdir, f"neurons_{layers}_layers.json")
                _first_layers(neuron_set, layers).save(path)
                config.lsn.neurons = path
    return config


def write_neurons(path: str, spec: str = "configs/qwen2_7b.py:gpu", rate: float = 0.001) -> None:
    """The neuron fixture of the LSN rows: `rate` of the FFN neurons per language of `spec`'s languages."""
    from seallm_jax.model import Qwen2Config

    config = load_config(spec)
    m = config.model
    num_parameters = Qwen2Config(**{k: v for k, v in m.to_dict().items() if k != "init_from"}).num_parameters()
    neuron_set = synthetic_neuron_set(m.num_hidden_layers, m.intermediate_size, list(config.data.languages), rate,
                                      hidden_size=m.hidden_size, num_parameters=num_parameters)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    neuron_set.save(path)
    union = int(neuron_set.mask().sum())
    print(f"{path}: {len(neuron_set.languages)} languages x {neuron_set.counts()[neuron_set.languages and next(iter(neuron_set.languages))]} "
          f"neurons; union {union} of {m.num_hidden_layers * m.intermediate_size} neurons "
          f"({100 * union / (m.num_hidden_layers * m.intermediate_size):.2f}%), "
          f"{100 * neuron_set.parameter_fraction():.3f}% of the parameters")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


BUDGET_COLUMNS = ("parameters", "optimizer_state", "gradients", "temporaries", "total")


def budget_table(rows: list[dict]) -> str:
    """The markdown table of docs/training.md (GiB per device)."""
    lines = ["| row | devices | batch x seq (micro-batches) | params | opt state | grads (in temps) | temporaries "
             "| total | temps of grad fn alone | temps of update alone | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        grad_fn = _gib(row["grad_fn_temporaries"]) if "grad_fn_temporaries" in row else "-"
        update_fn = _gib(row["update_fn_temporaries"]) if "update_fn_temporaries" in row else "-"
        lines.append(f"| {row['row']} | {row['devices']} | {row['batch']} x {row['seq_len']} ({row['micro_batches']}) | "
                     + " | ".join(_gib(row[k]) for k in BUDGET_COLUMNS) + f" | {grad_fn} | {update_fn} | {row['compile_s']} |")
    return "\n".join(lines)


def budget_main(args, overrides: list[str]) -> list[dict]:
    if args.write_neurons:
        write_neurons(args.write_neurons)
        return []
    if args.config is None and args.row is None:  # the whole table, one fresh process per row
        rows = []
        for name in BUDGET_ROWS:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "row.json")
                command = [sys.executable, os.path.abspath(__file__), "--budget", "--row", name, "--json", out,
                           "--devices", str(BUDGET_ROWS[name][1])]
                if args.layers:
                    command += ["--layers", str(args.layers)]
                if args.check_grads:
                    command.append("--check-grads")
                if args.measure:
                    command.append("--measure")
                command += overrides
                subprocess.run(command, check=True, cwd=REPO)
                with open(out, encoding="utf-8") as f:
                    rows.extend(json.load(f))
        print(budget_table(rows))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
        return rows
    if args.row is not None:
        spec, devices, row_overrides, what = BUDGET_ROWS[args.row]
        if devices > len(jax.devices()):
            raise SystemExit(f"row {args.row} needs {devices} devices; run it as "
                             f"`python benchmarks/memory.py --budget --row {args.row} --devices {devices}`"
                             if devices > 1 else f"row {args.row} wants 1 device")
        overrides = row_overrides + overrides
        name = args.row
    else:
        spec, what, name = args.config, " ".join([args.config] + overrides), args.config
        devices = len(jax.devices())
    with tempfile.TemporaryDirectory() as tmp:
        config = _budget_config(spec, overrides, args.layers, tmp)
        mesh = shd.make_mesh(config.mesh.to_dict(), jax.devices()[:devices])
        row = {"row": name, "what": what, "config": spec, "overrides": overrides, "machine": args.machine,
               **budget(config, mesh, check_grads=args.check_grads, measure=args.measure)}
    m, t = config.model, config.train
    print(f"{name}: {what}\n  {row['layers']} layers ({row['parameter_count'] / 1e9:.2f}B params at this depth), "
          f"mesh {row['mesh']}, batch {t.global_batch_size} x {t.seq_len} in {t.micro_batches} micro-batch(es), "
          f"dtype {m.dtype}/{m.param_dtype}, remat {m.remat}, attention {m.attention_impl}, "
          f"lsn {'lean' if config.lsn.lean else 'dense'} {config.lsn.neurons or '-'}; jax {jax.__version__} "
          f"on {jax.devices()[0].platform}")
    print("  GiB per device: " + ", ".join(f"{k} {_gib(row[k])}" for k in BUDGET_COLUMNS)
          + f" (XLA: arguments {_gib(row['arguments'])}, outputs {_gib(row['outputs'])}, "
          f"aliased {_gib(row['aliased'])})")
    if "grad_fn_outputs" in row:
        print(f"  loss-and-gradient function alone: outputs {_gib(row['grad_fn_outputs'])} GiB "
              f"(gradient tree from shapes: {_gib(row['gradients'])}), temporaries {_gib(row['grad_fn_temporaries'])}, "
              f"compiled in {row['grad_fn_compile_s']} s; optimizer update alone: temporaries "
              f"{_gib(row['update_fn_temporaries'])}")
    if "measured" in row:
        measured = row["measured"]
        stats = measured["memory_stats_after_steps"]
        peak = f"peak_bytes_in_use {_gib(stats['peak_bytes_in_use'])} GiB" if stats and "peak_bytes_in_use" in stats \
            else "no memory_stats() on this platform"
        print(f"  measured on {measured['device_kind']}: {peak}; steps {measured['step_s']} s, loss {measured['loss']:.3f}")
    print(f"  lowered in {row['lower_s']} s, compiled in {row['compile_s']} s, peak RSS {row['max_rss_gib']} GiB",
          flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([row], f, indent=1)
    return [row]



def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="recipe whose model/optimizer to measure (lengths mode default: "
                             "configs/qwen2_0_5b.py:cpu, Qwen2-0.5B, float32, no remat)")
    parser.add_argument("--budget", action="store_true", help="budget mode (see above)")
    parser.add_argument("--row", choices=sorted(BUDGET_ROWS), help="budget mode: one row of the standard table")
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices (set before JAX is imported)")
    parser.add_argument("--check-grads", action="store_true",
                        help="budget mode: also compile the loss-and-gradient function alone")
    parser.add_argument("--measure", action="store_true",
                        help="budget mode: also allocate the state and run two steps, recording the device's "
                             "memory_stats() (GPU/TPU; needs the memory)")
    parser.add_argument("--write-neurons", metavar="PATH", help="budget mode: write the 7B neuron fixture and exit")
    parser.add_argument("--json", help="budget mode: also write the rows to this file")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per step, held fixed")
    parser.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the config's)")
    parser.add_argument("--remat", default="", help="override model.remat")
    args, overrides = parser.parse_known_args(argv)
    # The machine probe first (benchmarks/machine.py), stored with every row: `--measure`'s step times and
    # the compile times depend on it.
    args.machine = None if args.write_neurons else announce()
    if args.budget:
        return budget_main(args, overrides)
    if overrides:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.config = args.config or "configs/qwen2_0_5b.py:cpu"
    base = load_config(args.config)
    if args.layers:
        base.model.num_hidden_layers = args.layers
    if args.remat:
        base.model.remat = args.remat
    mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    m = base.model
    print(f"{args.config}: {m.num_hidden_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}, "
          f"dtype {m.dtype}, remat {m.remat}; {args.tokens} tokens per step; GiB per device; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"{'T':>6s} {'batch':>5s} | {'path':4s} {'arguments':>9s} {'outputs':>8s} {'temps':>8s} "
          f"{'loss':>7s} {'loss %':>6s}")
    rows = []
    for seq_len in (int(n) for n in args.lengths.split(",")):
        for label, attention_impl, chunk_tokens in PATHS:
            config = configure(base, seq_len, args.tokens, attention_impl, chunk_tokens)
            memory = step_memory(config, mesh)
            loss = loss_memory(config, chunk_tokens)
            row = {"seq_len": seq_len, "path": label, **memory, "loss_temporaries": loss, "machine": args.machine}
            rows.append(row)
            print(f"{seq_len:6d} {args.tokens // seq_len:5d} | {label:4s} {memory['arguments'] / GIB:9.2f} "
                  f"{memory['outputs'] / GIB:8.2f} {memory['temporaries'] / GIB:8.2f} {loss / GIB:7.2f} "
                  f"{100 * loss / max(memory['temporaries'], 1):5.1f}%", flush=True)
    return rows


if __name__ == "__main__":
    main()
