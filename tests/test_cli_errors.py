"""The command line's error contract, case by case: an everyday mistake prints one line
`seallm-jax <command>: error: <message naming the culprit>` to stderr, exits 2, shows no traceback
and writes nothing where output was asked for. A genuine bug keeps its traceback; --debug shows it.

Each case runs `seallm_jax.cli.main` in-process (one JAX import for the whole catalog); a few run the
real command in a subprocess to check the process-level exit code.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from seallm_jax import cli, hf
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM
from test_lsn_cli import TEXTS, byte_level_tokenizer
from train_helpers import ROOT, TINY, cli_env


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny HF model, its damaged copies, data files and neuron files: name -> path."""
    root = tmp_path_factory.mktemp("cli_errors")
    config = Qwen2Config(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=256)
    model_dir = root / "model"
    hf.save_pretrained(Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)), model_dir, tokenizer=byte_level_tokenizer())
    paths = {"model": model_dir}

    def damaged(name, change):
        target = root / name
        shutil.copytree(model_dir, target)
        change(target)
        paths[name] = target

    def rewrite_config(**fields):
        def change(target):
            data = json.loads((target / "config.json").read_text())
            data.update(fields)
            (target / "config.json").write_text(json.dumps(data))
        return change

    def edit_tensors(edit):
        def change(target):
            tensors = load_file(target / "model.safetensors")
            edit(tensors)
            save_file(tensors, target / "model.safetensors")
        return change

    def truncate(target):
        data = (target / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) // 2])

    def shard(target):
        tensors = load_file(target / "model.safetensors")
        (target / "model.safetensors").unlink()
        names = sorted(tensors)
        first = names[: len(names) // 2]
        save_file({n: tensors[n] for n in first}, target / "model-00001-of-00002.safetensors")
        weight_map = {n: f"model-0000{1 if n in first else 2}-of-00002.safetensors" for n in names}
        (target / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    def pickle_only(target):
        (target / "model.safetensors").unlink()
        (target / "pytorch_model.bin").write_bytes(b"not loaded")

    damaged("no_config", lambda t: (t / "config.json").unlink())
    damaged("bad_json", lambda t: (t / "config.json").write_text('{"hidden_size": 32,, }'))
    damaged("gpt2", rewrite_config(architectures=["GPT2LMHeadModel"], model_type="gpt2"))
    damaged("wrong_width", rewrite_config(hidden_size=48))
    damaged("sliding", rewrite_config(use_sliding_window=True))
    damaged("truncated", truncate)
    damaged("garbage", lambda t: (t / "model.safetensors").write_bytes(b"this is not a safetensors file"))
    damaged("pickle_only", pickle_only)
    damaged("missing_tensor", edit_tensors(lambda t: t.pop("model.layers.0.mlp.down_proj.weight")))
    damaged("extra_tensor", edit_tensors(lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)})))
    damaged("missing_shard", shard)

    for language, lines in TEXTS.items():
        paths[language] = root / f"{language}.txt"
        paths[language].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["empty"] = root / "empty.txt"
    paths["empty"].write_text("")
    paths["bad_jsonl"] = root / "bad.jsonl"
    paths["bad_jsonl"].write_text('{"text": "fine"}\n{not json\n')
    paths["no_text_field"] = root / "no_text.jsonl"
    paths["no_text_field"].write_text('{"txt": "a typo in the field name"}\n')
    paths["a_file"] = root / "a_file"
    paths["a_file"].write_text("x")
    paths["neurons"] = root / "neurons.json"
    NeuronSet("lape", 2, 64, languages={"th": {0: [1, 2]}, "vi": {1: [5]}}).save(paths["neurons"])
    paths["neurons_other_model"] = root / "neurons_other_model.json"
    NeuronSet("lape", 3, 128, languages={"th": {0: [1, 2]}}).save(paths["neurons_other_model"])
    paths["bad_neurons"] = root / "bad_neurons.json"
    paths["bad_neurons"].write_text("{oops")
    paths["bad_stats"] = root / "bad_stats.npz"
    paths["bad_stats"].write_bytes(b"not an npz")
    paths["syntax_config"] = root / "broken_config.py"
    paths["syntax_config"].write_text("def get_config(:\n    pass\n")
    paths["out"] = root / "out"
    paths["out"].mkdir()
    return paths


# (case id, argv with {name} placeholders for the fixture's paths, command, text the message must hold)
CASES = [
    # convert
    ("convert-missing-config", "convert hf-to-orbax {no_config} {out}/c", "convert hf-to-orbax", "has no config.json"),
    ("convert-malformed-config", "convert hf-to-orbax {bad_json} {out}/c", "convert hf-to-orbax", "config.json is not valid JSON"),
    ("convert-unsupported-arch", "convert hf-to-orbax {gpt2} {out}/c", "convert hf-to-orbax", "GPT2LMHeadModel"),
    ("convert-sliding-window", "convert hf-to-orbax {sliding} {out}/c", "convert hf-to-orbax", "use_sliding_window"),
    ("convert-misshaped-tensor", "convert hf-to-orbax {wrong_width} {out}/c", "convert hf-to-orbax", "model.embed_tokens.weight has shape"),
    ("convert-missing-tensor", "convert hf-to-orbax {missing_tensor} {out}/c", "convert hf-to-orbax", "model.layers.0.mlp.down_proj.weight is missing"),
    ("convert-unexpected-tensor", "convert hf-to-orbax {extra_tensor} {out}/c", "convert hf-to-orbax", "model.extra.weight"),
    ("convert-truncated-safetensors", "convert hf-to-orbax {truncated} {out}/c", "convert hf-to-orbax", "truncated"),
    ("convert-garbage-safetensors", "convert hf-to-orbax {garbage} {out}/c", "convert hf-to-orbax", "model.safetensors is not a readable"),
    ("convert-missing-shard", "convert hf-to-orbax {missing_shard} {out}/c", "convert hf-to-orbax", "model-00002-of-00002.safetensors"),
    ("convert-pickle-only", "convert hf-to-orbax {pickle_only} {out}/c", "convert hf-to-orbax", "pytorch_model.bin is a pickle"),
    ("convert-no-such-dir", "convert hf-to-orbax {out}/nowhere {out}/c", "convert hf-to-orbax", "nowhere' does not exist"),
    ("convert-hf-as-orbax", "convert orbax-to-hf {model} {out}/c", "convert orbax-to-hf", "Hugging Face directory"),
    ("convert-output-is-a-file", "convert hf-to-orbax {model} {a_file}", "convert hf-to-orbax", "a_file' exists and is a file"),
    # generate
    ("generate-no-such-model", "generate --model {out}/nowhere --prompt hi", "generate", "nowhere' does not exist"),
    ("generate-model-is-a-file", "generate --model {a_file} --prompt hi", "generate", "a_file' is a file"),
    ("generate-bad-dtype", "generate --model {model} --prompt hi --dtype float33", "generate", "float33"),
    ("generate-bad-max-new-tokens", "generate --model {model} --prompt hi --max-new-tokens 0", "generate", "max_new_tokens"),
    ("generate-bad-repetition-penalty", "generate --model {model} --prompt hi --repetition-penalty -1", "generate", "repetition_penalty"),
    ("generate-no-such-tokenizer", "generate --model {model} --prompt hi --tokenizer {out}/nowhere", "generate", "--tokenizer"),
    # train
    ("train-no-such-config", "train --config {out}/nowhere.py --workdir {out}/t", "train", "nowhere.py does not exist"),
    ("train-config-syntax-error", "train --config {syntax_config} --workdir {out}/t", "train", "broken_config.py, line 1"),
    ("train-unknown-override", f"train --config {TINY} --workdir {{out}}/t --config.train.stepz=3", "train", "--config.train.stepz: no such field"),
    ("train-bad-override-type", f"train --config {TINY} --workdir {{out}}/t --config.train.steps=many", "train", "--config.train.steps=many"),
    ("train-unknown-variant", f"train --config {TINY}:nosuch --workdir {{out}}/t", "train", "has no variants"),
    ("train-mesh-does-not-fit", f"train --config {TINY} --workdir {{out}}/t --config.mesh.tensor=3", "train", "config.mesh"),
    ("train-workdir-is-a-file", f"train --config {TINY} --workdir {{a_file}}", "train", "a_file' exists and is a file"),
    ("train-unknown-language", f"train --config {TINY} --workdir {{out}}/t --config.data.source=corpus --config.data.languages=xx", "train", "'xx'"),
    ("train-no-such-init-from", f"train --config {TINY} --workdir {{out}}/t --config.model.init_from={{out}}/nowhere", "train", "nowhere' does not exist"),
    ("train-no-such-neurons", f"train --config {TINY} --workdir {{out}}/t --config.lsn.neurons={{out}}/nowhere.json", "train", "config.lsn.neurons"),
    ("train-neurons-lack-language", f"train --config {TINY} --workdir {{out}}/t --config.lsn.neurons={{neurons}} --config.lsn.languages=km", "train", "has no data for km"),
    ("train-head-dim-not-a-number", f"train --config {TINY} --workdir {{out}}/t --config.model.head_dim=abc", "train", "head_dim='abc'"),
    ("train-bad-on-damage", f"train --config {TINY} --workdir {{out}}/t --config.checkpoint.on_damage=maybe", "train", "config.checkpoint.on_damage='maybe'"),
    ("train-negative-loss-chunk", f"train --config {TINY} --workdir {{out}}/t --config.train.loss_chunk_tokens=-1", "train", "loss_chunk_tokens=-1"),
    ("train-unknown-source", f"train --config {TINY} --workdir {{out}}/t --config.data.source=nosuch", "train", "config.data.source='nosuch'"),
    ("train-bad-dtype", f"train --config {TINY} --workdir {{out}}/t --config.model.dtype=float33", "train", "float33"),
    ("train-missing-data-file", f"train --config {TINY} --workdir {{out}}/t --config.data.source=sft --config.data.files={{out}}/nowhere.jsonl", "train", "nowhere.jsonl' does not exist"),
    ("train-dense-lsn-bf16-weights", f"train --config {TINY} --workdir {{out}}/t --config.lsn.neurons={{neurons}} --config.model.param_dtype=bfloat16", "train", "config.lsn.lean=true"),
    ("train-neurons-of-other-model", f"train --config {TINY} --workdir {{out}}/t --config.lsn.neurons={{neurons_other_model}}", "train", "3 layers x 128"),
    ("train-unknown-optimizer", f"train --config {TINY} --workdir {{out}}/t --config.optimizer.name=adamx", "train", "config.optimizer.name='adamx'"),
    ("train-override-without-value", f"train --config {TINY} --workdir {{out}}/t --config.train.steps", "train", "--config.train.steps has no value"),
    # data
    ("data-unknown-language", "data stats --languages xx", "data stats", "'xx'"),
    ("data-missing-file", "data stats --file th={out}/nowhere.txt", "data stats", "nowhere.txt' does not exist"),
    ("data-malformed-file-arg", "data stats --file th", "data stats", "LANG=PATH"),
    # lsn stats
    ("stats-unknown-language", "lsn stats --model {model} --languages th,xx --out {out}/s.npz", "lsn stats", "'xx'"),
    ("stats-language-not-shipped", "lsn stats --model {model} --languages th,jv --out {out}/s.npz", "lsn stats", "has no data for jv"),
    ("stats-missing-data", "lsn stats --model {model} --languages th --data th={out}/nowhere.txt --out {out}/s.npz", "lsn stats", "nowhere.txt' does not exist"),
    ("stats-empty-data", "lsn stats --model {model} --languages th --data th={empty} --out {out}/s.npz", "lsn stats", "empty.txt' is empty"),
    ("stats-malformed-jsonl", "lsn stats --model {model} --languages th --data th={bad_jsonl} --out {out}/s.npz", "lsn stats", "bad.jsonl:2"),
    ("stats-jsonl-without-text", "lsn stats --model {model} --languages th --data th={no_text_field} --out {out}/s.npz", "lsn stats", "no_text.jsonl:1"),
    ("stats-data-for-unlisted-language", "lsn stats --model {model} --languages th --data vi={vi} --out {out}/s.npz", "lsn stats", "--data is given for vi"),
    ("stats-binary-data", "lsn stats --model {model} --languages th --data th={model}/model.safetensors --out {out}/s.npz", "lsn stats", "not UTF-8 text"),
    ("stats-bad-data-arg", "lsn stats --model {model} --languages th --data th --out {out}/s.npz", "lsn stats", "LANG=PATH"),
    ("stats-no-such-model", "lsn stats --model {out}/nowhere --languages th --out {out}/s.npz", "lsn stats", "nowhere' does not exist"),
    ("stats-malformed-config", "lsn stats --model {bad_json} --languages th --out {out}/s.npz", "lsn stats", "config.json is not valid JSON"),
    ("stats-bad-mesh-spec", "lsn stats --model {model} --languages th --mesh data=0 --out {out}/s.npz", "lsn stats", "--mesh 'data=0'"),
    ("stats-mesh-does-not-fit", "lsn stats --model {model} --languages th --mesh data=3 --out {out}/s.npz", "lsn stats", "--mesh data=3"),
    ("stats-out-under-a-file", "lsn stats --model {model} --languages th --out {a_file}/s.npz", "lsn stats", "is a file, not a directory"),
    ("stats-missing-argument", "lsn stats --model {model} --out {out}/s.npz", "lsn stats", "--languages"),
    # lsn select
    ("select-no-such-stats", "lsn select --stats {out}/nowhere.npz --method lape --out {out}/n.json", "lsn select", "nowhere.npz' does not exist"),
    ("select-not-a-stats-file", "lsn select --stats {bad_stats} --method lape --out {out}/n.json", "lsn select", "not a neuron-statistics .npz file"),
    ("select-unknown-method", "lsn select --stats {bad_stats} --method magic --out {out}/n.json", "lsn select", "magic"),
    # lsn ablate
    ("ablate-language-not-in-neurons", "lsn ablate --model {model} --neurons {neurons} --languages km --out {out}/a.json", "lsn ablate", "none of which --languages evaluates"),
    ("ablate-deactivate-not-in-neurons", "lsn ablate --model {model} --neurons {neurons} --deactivate km --out {out}/a.json", "lsn ablate", "has no data for km"),
    ("ablate-neurons-of-other-model", "lsn ablate --model {model} --neurons {neurons_other_model} --out {out}/a.json", "lsn ablate", "3 layers x 128"),
    ("ablate-malformed-neurons", "lsn ablate --model {model} --neurons {bad_neurons} --out {out}/a.json", "lsn ablate", "bad_neurons.json: not a neuron-set JSON"),
    ("ablate-no-such-neurons", "lsn ablate --model {model} --neurons {out}/nowhere.json --out {out}/a.json", "lsn ablate", "nowhere.json' does not exist"),
    # eval
    ("eval-no-such-model", "eval --model {out}/nowhere --out {out}/e.json", "eval", "nowhere' does not exist"),
    ("eval-unknown-task", "eval --model {model} --tasks nosuch --out {out}/e.json", "eval", "unknown task(s) nosuch"),
    ("eval-no-such-data-dir", "eval --model {model} --tasks mc --data-dir {out}/nowhere --out {out}/e.json", "eval", "--data-dir"),
    ("eval-missing-benchmark", "eval --model {model} --tasks mc --data-dir {out} --out {out}/e.json", "eval", "m3exam"),
    ("eval-unknown-language", "eval --model {model} --languages xx --out {out}/e.json", "eval", "'xx'"),
    ("eval-plot-not-results", "eval plot {bad_neurons} --out {out}/p.png", "eval plot", "not a seallm-jax eval results file"),
    # demo
    ("demo-only-the-target", "demo --languages th --out {out}/d", "demo", "at least one other language"),
    ("demo-unknown-language", "demo --languages th,xx --out {out}/d", "demo", "'xx'"),
    ("demo-out-is-a-file", "demo --out {a_file}", "demo", "a_file' exists and is a file"),
    ("demo-target-not-listed", "demo --languages en,vi --target th --out {out}/d", "demo", "--target th"),
    ("demo-top-rate-zero", "demo --top-rate 0 --out {out}/d", "demo", "--top-rate 0.0"),
    ("demo-no-lsn-steps", "demo --lsn-steps 0 --out {out}/d", "demo", "--lsn-steps 0"),
]


def run_cli(argv, capsys):
    """(exit code, stderr lines) of `seallm-jax ARGV` run in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize("case_id, argv, command, culprit", CASES, ids=[case[0] for case in CASES])
def test_mistake_gives_one_clear_line_and_exit_2(files, capsys, case_id, argv, command, culprit):
    before = set(os.listdir(files["out"]))
    code, err = run_cli(argv.format(**files).split(), capsys)
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"seallm-jax {command}: error: "), err[0]
    assert culprit in err[0], err[0]
    assert set(os.listdir(files["out"])) == before  # nothing (half-)written where output was asked for


def test_catalog_covers_every_command():
    commands = {case[2].split()[0] for case in CASES} | {" ".join(case[2].split()[:2]) for case in CASES}
    assert {"convert", "generate", "train", "data", "lsn stats", "lsn select", "lsn ablate", "eval", "demo"} <= commands
    assert len(CASES) >= 30


def test_debug_shows_the_traceback(files, capsys):
    argv = ["lsn", "ablate", "--model", str(files["model"]), "--neurons", str(files["bad_neurons"]),
            "--out", str(files["out"] / "a.json")]
    code, err = run_cli([*argv, "--debug"], capsys)
    assert code == 2
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith("seallm-jax lsn ablate: error: ")


def test_a_bug_keeps_its_traceback(monkeypatch):
    from seallm_jax.lsn import cli as lsn_cli

    def broken(args):
        raise KeyError("an internal invariant")

    monkeypatch.setattr(lsn_cli, "run_select", broken)
    with pytest.raises(KeyError, match="an internal invariant"):
        cli.main(["lsn", "select", "--stats", "x.npz", "--method", "lape", "--out", "n.json"])


def test_the_installed_command_exits_2_without_traceback(files):
    """The real process: exit status 2, one line on stderr (no JAX import needed to say it)."""
    result = subprocess.run([sys.executable, "-m", "seallm_jax.cli", "generate", "--model",
                             str(files["out"] / "nowhere"), "--prompt", "hi"],
                            capture_output=True, text=True, env=cli_env(1), cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"seallm-jax generate: error: model directory '{files['out'] / 'nowhere'}' does not exist"]
