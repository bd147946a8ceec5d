"""Command-line values shared by several commands (`--languages`; `--mesh` is parsed by
`seallm_jax.defaults.parse_mesh`, `--data LANG=PATH` by `seallm_jax.data.store.parse_data_args`), checked before
any heavy import: a mistake is a `UserError` that names the flag."""
from __future__ import annotations

from seallm_jax.errors import ConfigError


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
