"""The lm-eval backend `seallm-jax` against lm-eval's own `hf` backend on one tiny model exported to
Hugging Face: local YAML tasks over the shipped corpus (multiple choice, rolling perplexity, greedy
generation); every request's log-likelihood within 1e-4, is_greedy and greedy texts identical, the
task metrics identical; and `seallm-jax eval --lm-eval-tasks` writes lm-eval's results."""
import json

import numpy as np
import pytest

pytest.importorskip("lm_eval")
import torch  # noqa: E402
import transformers  # noqa: E402

from seallm_jax.cli import main  # noqa: E402
from seallm_jax.eval.testing import TINY_VOCAB_SIZE, BYTE_VOCAB_SIZE, tiny_tokenizer, write_corpus_tasks  # noqa: E402

TASKS = ["sea_corpus_mc", "sea_corpus_ppl", "sea_corpus_gen"]
# A context of 40 tokens (byte tokenizer): long requests are left-truncated and long texts take two
# rolling windows, so both of those paths are compared too. Texts stay short (Latin-script languages,
# at most 28 characters) because 1e-4 is an absolute bound on float32 sums of ~5.6 nats per byte
# token: at a sum of 1,000 it is two float32 ulps, below both backends' rounding.
MAX_POSITIONS = 40


def export_tiny_model(path) -> str:
    """A tiny random Qwen2 with peaked distributions (weights ~ N(0, 0.05)) and the byte tokenizer."""
    config = transformers.Qwen2Config(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=BYTE_VOCAB_SIZE, pad_token_id=BYTE_VOCAB_SIZE)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            norm = name.endswith("norm.weight")
            parameter.copy_((1.0 if norm else 0.0) + (0.2 if norm else 0.08) * torch.randn(parameter.shape,
                                                                                             generator=generator))
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def evaluate(model: str, model_dir: str, task_dir: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import seallm_jax.eval.lm_eval  # noqa: F401 - registers the backend

    args = {"pretrained": model_dir, "dtype": "float32"}
    if model == "hf":
        args["device"] = "cpu"
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=TASKS, batch_size=4,
                                   task_manager=TaskManager(include_path=task_dir, include_defaults=False),
                                   log_samples=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    model_dir = export_tiny_model(root / "model")
    task_dir = str(root / "tasks")
    write_corpus_tasks(task_dir, languages=("id", "ms"), docs_per_language=3, max_chars=28, max_gen_toks=12)
    return {"model_dir": model_dir, "task_dir": task_dir,
            "hf": evaluate("hf", model_dir, task_dir), "seallm-jax": evaluate("seallm-jax", model_dir, task_dir)}


def responses(run: dict, task: str) -> list:
    return [sample["resps"] for sample in sorted(run["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("task", ["sea_corpus_mc", "sea_corpus_ppl"])
def test_every_log_likelihood_matches_hf_within_1e_4_and_is_greedy_is_identical(runs, task):
    ours, theirs = responses(runs["seallm-jax"], task), responses(runs["hf"], task)
    assert len(ours) == len(theirs) == 6
    for our_doc, their_doc in zip(ours, theirs):
        assert len(our_doc) == len(their_doc)
        for (our,), (their,) in zip(our_doc, their_doc):
            if task == "sea_corpus_mc":
                (our_ll, our_greedy), (their_ll, their_greedy) = our, their
                assert our_greedy == their_greedy
            else:
                our_ll, their_ll = our, their
            assert abs(float(our_ll) - float(their_ll)) <= 1e-4, (our_ll, their_ll)


def test_the_tasks_exercise_truncation_rolling_windows_and_greedy_continuations(runs):
    """The comparison is not vacuous: some request is longer than the context, some text needs more than
    one window, and some continuation is the model's greedy choice."""
    mc = runs["seallm-jax"]["samples"]["sea_corpus_mc"]
    tokenizer = tiny_tokenizer()
    lengths = [len(tokenizer.encode(s["arguments"][0][0] + s["arguments"][0][1])) for s in mc]
    assert max(lengths) > MAX_POSITIONS + 1
    texts = [s["arguments"][0][0] for s in runs["seallm-jax"]["samples"]["sea_corpus_ppl"]]
    assert max(len(tokenizer.encode(text)) for text in texts) > MAX_POSITIONS


def test_generate_until_gives_hf_greedy_text(runs):
    ours, theirs = responses(runs["seallm-jax"], "sea_corpus_gen"), responses(runs["hf"], "sea_corpus_gen")
    assert ours == theirs
    assert any(text[0] for text in ours)  # something was generated


def test_task_metrics_are_identical(runs):
    for task in TASKS:
        ours, theirs = runs["seallm-jax"]["results"][task], runs["hf"]["results"][task]
        metrics = [key for key in theirs if "," in key and "stderr" not in key]
        assert metrics
        for metric in metrics:
            np.testing.assert_allclose(ours[metric], theirs[metric], rtol=1e-6, err_msg=f"{task} {metric}")


def test_seallm_jax_eval_lm_eval_tasks_writes_lm_evals_results(runs, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["eval", "--model", runs["model_dir"], "--lm-eval-tasks", "sea_corpus_mc",
                 "--lm-eval-include", runs["task_dir"], "--out", str(out), "--batch-size", "4", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert results["sea_corpus_mc"][metric] == pytest.approx(runs["hf"]["results"]["sea_corpus_mc"][metric])
    assert "sea_corpus_mc" in capsys.readouterr().out  # lm-eval's table


def test_dtype_forms_reach_the_backend(runs):
    import jax.numpy as jnp

    from seallm_jax.eval.lm_eval import SeallmJaxLM

    assert SeallmJaxLM(runs["model_dir"], dtype=jnp.bfloat16).model.config.dtype == "bfloat16"
    assert SeallmJaxLM(runs["model_dir"], dtype=np.dtype("float32")).model.config.dtype == "float32"


def test_repetition_penalty_defaults_to_the_models_generation_config_as_hf_decodes(runs, tmp_path):
    import shutil

    from seallm_jax.eval.lm_eval import SeallmJaxLM

    assert SeallmJaxLM(runs["model_dir"]).generator.config.repetition_penalty == 1.0
    model_dir = shutil.copytree(runs["model_dir"], tmp_path / "chat")
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 256, "repetition_penalty": 1.05}))
    assert SeallmJaxLM(model_dir).generator.config.repetition_penalty == 1.05
    assert SeallmJaxLM(model_dir, repetition_penalty=1.0).generator.config.repetition_penalty == 1.0


@pytest.mark.parametrize("argv, message", [
    # An unknown name makes lm-eval index its own thousands of tasks (tens of seconds): slow.
    pytest.param(["--lm-eval-tasks", "no_such_task_xyz"], "--lm-eval-tasks: unknown lm-eval task(s) no_such_task_xyz",
                 marks=pytest.mark.slow),
    (["--lm-eval-tasks", "sea_corpus_mc", "--tasks", "ppl"], "--tasks and --lm-eval-tasks are separate runs"),
    (["--lm-eval-include", "."], "--lm-eval-include applies to --lm-eval-tasks"),
    (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
])
def test_mistakes_are_one_line_before_the_model_loads(runs, tmp_path, capsys, argv, message):
    code = main(["eval", "--model", runs["model_dir"], "--out", str(tmp_path / "r.json"),
                 "--lm-eval-include", runs["task_dir"], *argv] if "--lm-eval-tasks" in argv else
                ["eval", "--model", runs["model_dir"], "--out", str(tmp_path / "r.json"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("seallm-jax eval: error: ") and message in line, line
    assert not (tmp_path / "r.json").exists()


def test_without_lm_eval_the_command_names_the_extra(runs, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    code = main(["eval", "--model", runs["model_dir"], "--lm-eval-tasks", "x", "--out", str(tmp_path / "r.json")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "pip install 'seallm-jax[lm-eval]'" in line, line


@pytest.mark.slow
def test_two_processes_on_one_mesh_give_the_same_results(runs, tmp_path):
    """A pod slice in miniature (launch/local.py: 2 processes x 2 CPU devices, one mesh): every process runs
    the same requests over the shared mesh, process 0 writes lm-eval's results, equal to hf's."""
    import os
    import subprocess
    import sys

    from train_helpers import ROOT, cli_env

    out = tmp_path / "results.json"
    command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", "2",
               "--devices-per-process", "2", "--", sys.executable, "-m", "seallm_jax.cli", "eval",
               "--model", runs["model_dir"], "--lm-eval-tasks", ",".join(TASKS), "--lm-eval-include", runs["task_dir"],
               "--out", str(out), "--mesh", "data=-1", "--batch-size", "4", "--no-progress"]
    process = subprocess.run(command, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for task in TASKS:
        theirs = runs["hf"]["results"][task]
        for metric in [key for key in theirs if "," in key and "stderr" not in key]:
            np.testing.assert_allclose(results[task][metric], theirs[metric], rtol=1e-6, err_msg=f"{task} {metric}")
