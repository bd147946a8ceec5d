"""Command-line values shared by several commands (`--mesh`, `--languages`, `--data LANG=PATH`),
parsed and checked before any heavy import: a mistake is a `UserError` that names the flag."""
from __future__ import annotations

from collections.abc import Sequence

from seallm_jax.defaults import MESH_AXES
from seallm_jax.errors import ConfigError, require_file


def parse_mesh(spec: str | None, flag: str = "--mesh") -> dict[str, int] | None:
    """"data=2,fsdp=-1" -> {"data": 2, "fsdp": -1}; None stays None."""
    if spec is None:
        return None
    sizes: dict[str, int] = {}
    for item in spec.split(","):
        axis, _, size = (part.strip() for part in item.partition("="))
        if axis not in MESH_AXES or not size.lstrip("-").isdigit() or (int(size) < 1 and int(size) != -1):
            raise ConfigError(f"{flag} {spec!r}: expected AXIS=SIZE items with AXIS in {', '.join(MESH_AXES)} "
                              "and SIZE a positive integer or -1 (the remaining devices), e.g. data=-1,fsdp=1")
        if axis in sizes:
            raise ConfigError(f"{flag} {spec!r} gives {axis} twice")
        sizes[axis] = int(size)
    return sizes


def parse_languages(text: str | None, flag: str = "--languages") -> list[str] | None:
    """"th,vi" -> ["th", "vi"] with every code checked; None or "" -> None."""
    from seallm_jax.data.corpus import check_language

    if not text:
        return None
    languages = [check_language(code.strip(), flag) for code in text.split(",") if code.strip()]
    if len(set(languages)) != len(languages):
        raise ConfigError(f"{flag} {text!r} names a language twice")
    if not languages:
        raise ConfigError(f"{flag} {text!r} names no language")
    return languages


def parse_data_args(items: Sequence[str] | None, languages: Sequence[str] | None = None,
                    flag: str = "--data", stores: bool = False) -> dict[str, list[str]]:
    """`["th=a.jsonl", "th=b.txt"]` -> {"th": ["a.jsonl", "b.txt"]}; each file must exist and not be
    empty, and (given `languages`) each language must be one of them. With `stores`, a PATH may also be
    a token store directory (`seallm-jax data tokenize`) that holds the language."""
    import os

    from seallm_jax.data.corpus import check_language

    files: dict[str, list[str]] = {}
    for item in items or []:
        language, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not language or not path:
            raise ConfigError(f"{flag} {item!r}: expected LANG=PATH, e.g. th=data/th.jsonl")
        check_language(language, f"{flag} {item}")
        if stores and os.path.isdir(path):
            from seallm_jax.data.store import TokenStore

            TokenStore.open(path).documents(language)  # a complete store that holds the language
        else:
            require_file(path, f"{flag} {language}:")
        files.setdefault(language, []).append(path)
    if languages is not None:
        unused = sorted(set(files) - set(languages))
        if unused:
            raise ConfigError(f"{flag} is given for {', '.join(unused)}, which --languages does not list "
                              f"({', '.join(languages)}); add it there or drop the {flag}")
    return files
