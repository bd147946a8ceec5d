"""Runs a list of tasks on one model, and reads, writes and prints the results JSON.

The results file is `{"model": ..., "created": ..., "config": {...}, "results": {key: TaskResult}}`
with one entry per task and benchmark ("ppl/corpus-test", "mc/m3exam", "chrf/flores200-devtest", ...).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, TextIO

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.tasks import TASKS
from seallm_jax.errors import ConfigError, DataFormatError
from seallm_jax.files import atomic_file


def parse_tasks(spec: str | list[str]) -> list[str]:
    """"ppl,mc" -> ["ppl", "mc"]; an unknown name lists the known ones."""
    names = [name.strip() for name in (spec.split(",") if isinstance(spec, str) else spec) if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise ConfigError(f"--tasks {spec if isinstance(spec, str) else ','.join(spec)!r}: unknown task(s) "
                          f"{', '.join(unknown) or '(none given)'}; known: {', '.join(TASKS)}")
    return names


def run_tasks(ctx: EvalContext, task_names: list[str], *, table_stream: TextIO | None = None) -> dict[str, TaskResult]:
    """Run each task in turn; print each benchmark's table as soon as it is done."""
    results: dict[str, TaskResult] = {}
    for name in task_names:
        for result in TASKS[name](ctx):
            results[result.key] = result
            if table_stream is not None:
                print(format_table(result), file=table_stream, flush=True)
    return results


def check_data(ctx: EvalContext, task_names: list[str]) -> None:
    """Fail before any model work when a requested task's data is missing (cheap directory checks)."""
    expected = {
        "mc": [("m3exam",), ("seaexam",)], "mgsm": [("mgsm",)], "refusal": [("searefuse",)],
        "safety": [("multijail", "MultiJail.csv")], "seabench": [("seabench",)],
    }
    for name in task_names:
        if name not in expected:
            continue  # ppl and chrf always have the shipped corpus
        paths = [ctx.data_path(*parts) for parts in expected[name]]
        if not any(path.exists() for path in paths):
            raise MissingDataError(
                f"task {name!r} needs {' or '.join(str(p) for p in paths)} (see docs/eval.md for the layout)"
            )


def results_document(model: str, results: dict[str, TaskResult], config: Any = None) -> dict[str, Any]:
    return {
        "model": model,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "results": {key: result.to_json() for key, result in results.items()},
    }


def save_results(path: str | Path, document: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_file(path) as staging:
        Path(staging).write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def load_results(path: str | Path) -> tuple[str, dict[str, TaskResult]]:
    """(model name, results) from a results JSON written by `seallm-jax eval`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path} is not a seallm-jax eval results file (not JSON: {error})") from None
    if not isinstance(document, dict):
        raise DataFormatError(f"{path} is not a seallm-jax eval results file (not a JSON object)")
    if "results" not in document:
        raise DataFormatError(f"{path} is not a seallm-jax eval results file (no 'results' key)")
    return document.get("model", str(path)), {key: TaskResult.from_json(value) for key, value in document["results"].items()}


def _format_value(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return str(int(value))
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def format_table(result: TaskResult) -> str:
    """A plain-text table: one row per language (or pair), primary metric first, then the rest."""
    columns: list[str] = [result.primary_metric]
    for metrics in result.by_language.values():
        columns += [name for name in metrics if name not in columns]
    rows = [[language, *(_format_value(metrics[c]) if c in metrics else "" for c in columns)]
            for language, metrics in sorted(result.by_language.items())]
    if result.overall:
        rows.append(["overall", *(_format_value(result.overall[c]) if c in result.overall else "" for c in columns)])
    header = ["language", *columns]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"== {result.key}  ({result.seconds:.1f}s, {result.compile_count} compilations)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines) + "\n"
